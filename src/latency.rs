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

    /// Everything pending became durable at `now`.
    pub fn durable(&mut self, now: PgTimestamp) {
        for (commit_time, rows) in self.pending.drain(..) {
            self.samples.push(((now.0 - commit_time.0).max(0), rows));
        }
    }

    /// The distribution since the last call, and a fresh start; None when no row was written.
    pub fn take_summary(&mut self) -> Option<Summary> {
        let mut samples = std::mem::take(&mut self.samples);
        let rows: u64 = samples.iter().map(|s| s.1).sum();
        if rows == 0 {
            return None;
        }
        samples.sort_unstable();
        let at = |fraction: f64| {
            let target = ((rows as f64) * fraction).ceil().max(1.0) as u64;
            let mut seen = 0;
            for &(us, n) in &samples {
                seen += n;
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
