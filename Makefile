# Redeem Gateway. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
CARGO ?= cargo
SERVICES := scripts/services.sh

.PHONY: run test services-up services-down services-status migrate create-code token reconcile build lint fmt clean-data bench bench-smoke

.env:
	cp .env.example .env

services-up:
	@$(SERVICES) up

services-down:
	@$(SERVICES) down

services-status:
	@$(SERVICES) status

build:
	$(CARGO) build --release

## Start Redis + PostgreSQL, migrate, and serve on HTTP_ADDR (Ctrl-C stops).
run: .env services-up build
	./target/release/redeem-gateway serve

migrate: .env services-up build
	./target/release/redeem-gateway migrate

## make create-code CODE=SPRING AMOUNT=1000000 LIMIT=1000 [STARTS_AT=... ENDS_AT=...]
create-code: .env services-up build
	@test -n "$(CODE)" -a -n "$(AMOUNT)" -a -n "$(LIMIT)" || { echo "usage: make create-code CODE=SPRING AMOUNT=1000000 LIMIT=1000"; exit 2; }
	./target/release/redeem-gateway create-code --code "$(CODE)" --amount "$(AMOUNT)" --limit "$(LIMIT)" \
		$(if $(STARTS_AT),--starts-at "$(STARTS_AT)") $(if $(ENDS_AT),--ends-at "$(ENDS_AT)")

## make token NAME=alice [ADMIN=1]
token: .env services-up build
	@./target/release/redeem-gateway token --user "$(NAME)" $(if $(ADMIN),--admin)

reconcile: .env services-up build
	./target/release/redeem-gateway reconcile

## Unit tests and integration tests against the project-local Redis + PostgreSQL.
test: services-up
	@$(SERVICES) clean-tests
	$(CARGO) test --all-targets -- --test-threads=$${TEST_THREADS:-4}

## Benchmark: gateway vs HTTP/Redis/Postgres ceilings; writes bench/results/latest.md.
bench: services-up
	scripts/bench.sh

## The load generator's smoke test (tiny burst, invariants checked); also part of `make test`.
bench-smoke: services-up
	$(CARGO) test --test loadgen_smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Stop the services and delete their data.
clean-data: services-down
	rm -rf .local
