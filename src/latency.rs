//! Commit-to-disk latency: for every row, the time from its transaction's commit on the server
//! (the Commit message's timestamp) to the fsync that made it durable here. The stream logs the
//! distribution every minute and when it stops, so it is visible in production and measurable
//! by the latency benchmark. Both clocks are the same machine's when audit-tail runs beside the
//! database; across machines the figure includes their clock skew.

use std::time::Duration;

use crate::lsn::PgTimestamp;

/// Latencies weighted by rows, since the last report.
#[derive(Debug, Default)]
pub struct Latency {
    /// (latency in µs, rows) per durable commit.
    samples: Vec<(i64, u64)>,
    /// Commits waiting for the next fsync: (commit time, rows).
    pending: Vec<(PgTimestamp, u64)>,
}

/// p50, p99 and max over the rows of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// A transaction of `rows` rows committed at `commit_time` waits for durability.
    pub fn committed(&mut self, commit_time: PgTimestamp, rows: u64) {
        if rows > 0 {
            self.pending.push((commit_time, rows));
        }
    }

    /// The commits waiting for the next fsync: (commit time, rows).
    pub fn pending(&self) -> &[(PgTimestamp, u64)] {
        &self.pending
    }

    /// Everything pending became durable at `now`.
    pub fn durable(&mut self, now: PgTimestamp) {
        for (commit_time, rows) in self.pending.drain(..) {
            // Both times come from clocks we do not control (the commit's from the wire): any
            // i64 must do, and a commit "in the future" (clock skew) counts as no latency.
            self.samples
                .push((now.0.saturating_sub(commit_time.0).max(0), rows));
        }
    }

    /// The distribution since the last call, and a fresh start; None when no row was written.
    pub fn take_summary(&mut self) -> Option<Summary> {
        let mut samples = std::mem::take(&mut self.samples);
        let rows = samples.iter().fold(0u64, |sum, s| sum.saturating_add(s.1));
        if rows == 0 {
            return None;
        }
        samples.sort_unstable();
        let at = |fraction: f64| {
            let target = ((rows as f64) * fraction).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for &(us, n) in &samples {
                seen = seen.saturating_add(n);
                if seen >= target {
                    return Duration::from_micros(us as u64);
                }
            }
            Duration::from_micros(samples.last().map_or(0, |s| s.0) as u64)
        };
        Some(Summary {
            rows,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_weighted_by_rows() {
        let mut l = Latency::default();
        l.committed(PgTimestamp(0), 98);
        l.durable(PgTimestamp(1_000));
        l.committed(PgTimestamp(0), 1);
        l.committed(PgTimestamp(0), 1);
        l.durable(PgTimestamp(50_000));
        let s = l.take_summary().unwrap();
        assert_eq!(s.rows, 100);
        assert_eq!(s.p50, Duration::from_millis(1));
        assert_eq!(s.p99, Duration::from_millis(50));
        assert_eq!(s.max, Duration::from_millis(50));
        assert_eq!(l.take_summary(), None);
    }
}

#[cfg(test)]
mod extremes {
    use super::*;

    /// Commit times come from the wire: any i64 must be taken without overflow.
    #[test]
    fn extreme_commit_times_do_not_overflow() {
        let mut l = Latency::default();
        l.committed(PgTimestamp(i64::MIN), 1);
        l.durable(PgTimestamp(i64::MAX));
        l.committed(PgTimestamp(i64::MAX), 1);
        l.durable(PgTimestamp(i64::MIN));
        l.committed(PgTimestamp(i64::MIN), u64::MAX);
        l.durable(PgTimestamp(1));
        let s = l.take_summary().unwrap();
        assert_eq!(s.rows, u64::MAX);
        assert_eq!(s.max, Duration::from_micros(i64::MAX as u64));
        assert_eq!(s.p50, Duration::from_micros(i64::MAX as u64));
    }
}
