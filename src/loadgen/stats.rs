//! Per-worker recording (latency of every request, count by status) and the
//! summary of a run: rates, latency percentiles, statuses and errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one worker saw. Latencies are kept exactly (microseconds), not binned.
#[derive(Debug, Default)]
pub struct Recorder {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    last_success: Option<Instant>,
}

impl Recorder {
    pub fn with_capacity(n: usize) -> Self {
        Recorder { latencies_us: Vec::with_capacity(n), ..Default::default() }
    }

    pub fn record(&mut self, status: u16, sent: Instant, done: Instant) {
        let micros = done.duration_since(sent).as_micros().min(u128::from(u32::MAX)) as u32;
        self.latencies_us.push(micros);
        *self.statuses.entry(status).or_default() += 1;
        if status == 200 {
            self.last_success = Some(self.last_success.map_or(done, |t| t.max(done)));
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.last_success = match (self.last_success, other.last_success) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Summarises a run that started at `start` and lasted `elapsed`. `expected`
    /// are the non-200 statuses the scenario calls for (e.g. 410 once sold out).
    pub fn summarize(mut self, start: Instant, elapsed: Duration, expected: &[u16]) -> Summary {
        self.latencies_us.sort_unstable();
        let successes = self.statuses.get(&200).copied().unwrap_or(0);
        let errors = self.statuses.iter().filter(|(s, _)| **s != 200 && !expected.contains(s)).map(|(_, n)| n).sum();
        let success_window = self.last_success.map_or(elapsed, |t| t.duration_since(start));
        Summary {
            requests: self.latencies_us.len() as u64,
            successes,
            errors,
            elapsed,
            success_window,
            p50: percentile(&self.latencies_us, 50.0),
            p90: percentile(&self.latencies_us, 90.0),
            p99: percentile(&self.latencies_us, 99.0),
            p999: percentile(&self.latencies_us, 99.9),
            max: self.latencies_us.last().map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us))),
            statuses: self.statuses,
        }
    }
}

/// Nearest-rank percentile of sorted microsecond latencies (`p` to 0.1,
/// in integer per-mille so that 99.9 of 1,000 is rank 999, not 1,000).
fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let per_mille = (p * 10.0).round() as usize;
    let rank = (per_mille * sorted_us.len()).div_ceil(1000);
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Duration::from_micros(u64::from(sorted_us[index]))
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub requests: u64,
    pub successes: u64,
    /// Answers that are neither 200 nor an expected status (transport errors count as status 0).
    pub errors: u64,
    pub elapsed: Duration,
    /// From the start to the last successful answer (the whole run if none).
    pub success_window: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub statuses: BTreeMap<u16, u64>,
}

impl Summary {
    pub fn requests_per_sec(&self) -> f64 {
        per_sec(self.requests, self.elapsed)
    }

    /// Successes per second over the window in which they happened.
    pub fn successes_per_sec(&self) -> f64 {
        per_sec(self.successes, self.success_window)
    }

    /// `200: 1000, 410: 19000` (status 0 = no HTTP answer).
    pub fn statuses_text(&self) -> String {
        let parts: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        parts.join(", ")
    }
}

fn per_sec(n: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_micros(500));
        assert_eq!(percentile(&sorted, 99.9), Duration::from_micros(999));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_micros(1000));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_separates_expected_statuses_from_errors() {
        let start = Instant::now();
        let mut a = Recorder::default();
        a.record(200, start, start + Duration::from_millis(2));
        a.record(410, start, start + Duration::from_millis(1));
        let mut b = Recorder::default();
        b.record(503, start, start + Duration::from_millis(3));
        a.merge(b);
        let s = a.summarize(start, Duration::from_secs(1), &[410]);
        assert_eq!((s.requests, s.successes, s.errors), (3, 1, 1));
        assert_eq!(s.success_window, Duration::from_millis(2));
        assert_eq!(s.statuses_text(), "200: 1, 410: 1, 503: 1");
    }
}
