//! Logs and metrics, set up once per process. Tracing: `RUST_LOG` filters
//! (default `info`), `LOG_FORMAT=json` for structured logs. Metrics: a
//! Prometheus recorder rendered at /metrics on the metrics listener
//! (`METRICS_ADDR`); every metric name is a constant
//! here, so they are easy to find and never misspelt.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init: a second call (tests) is a no-op, not a panic.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// HTTP requests, by `route` (the pattern, not the raw path), `method`, `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Redemptions by `code` and `outcome` (success, sold_out, already_redeemed,
/// not_eligible, code_not_found, try_again, error). `code` is the name of a
/// tracked code, else `untracked` (or `unknown` for no such code).
pub const REDEMPTIONS: &str = "redemptions_total";
/// Time of the Redis claim script, and of the Postgres commit statement.
pub const GATE_DURATION: &str = "gate_claim_duration_seconds";
pub const COMMIT_DURATION: &str = "commit_duration_seconds";
/// Rows per group-commit statement of credit codes.
pub const COMMIT_BATCH_ROWS: &str = "commit_batch_rows";
/// Requests per group-read statement of balances.
pub const BALANCE_BATCH_ROWS: &str = "balance_batch_rows";
/// Pool gauges, by `pool` (postgres, redis): size, idle, waiting.
pub const POOL_SIZE: &str = "pool_connections";
pub const POOL_IDLE: &str = "pool_connections_idle";
pub const POOL_WAITING: &str = "pool_waiters";
/// Reconciler runs, claims released, claims confirmed, codes rebuilt, run time.
pub const RECONCILER_RUNS: &str = "reconciler_runs_total";
pub const RECONCILER_RELEASED: &str = "reconciler_claims_released_total";
pub const RECONCILER_CONFIRMED: &str = "reconciler_claims_confirmed_total";
pub const RECONCILER_REBUILDS: &str = "reconciler_codes_rebuilt_total";
pub const RECONCILER_DURATION: &str = "reconciler_run_duration_seconds";
/// Gate limits repaired to Postgres's, and lost tickets the audit gave back.
pub const RECONCILER_LIMITS_REPAIRED: &str = "reconciler_limits_repaired_total";
pub const RECONCILER_TICKETS_FREED: &str = "reconciler_tickets_freed_total";

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}
