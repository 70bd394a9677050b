# Multi-stage build: compile in the Rust image, run on slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY build.rs ./
COPY migrations ./migrations
COPY migrations_wallet ./migrations_wallet
COPY lua ./lua
COPY web ./web
RUN cargo build --release --locked --bin redeem-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 gateway
COPY --from=build /src/target/release/redeem-gateway /usr/local/bin/redeem-gateway
USER gateway
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=10 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["redeem-gateway"]
CMD ["serve"]
