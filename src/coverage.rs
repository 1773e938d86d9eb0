//! What stretch of server time the stream's files are complete for, so that `verify` can tell a
//! quiet day (no file because no row) from a day the stream missed.
//!
//! Beside the flow, between the stream and the checkpoint. A keepalive's send time alone proves
//! nothing about time: its WAL end is how far the walsender has *decoded*, which lags behind the
//! server's WAL while it drains a backlog (or replays a large transaction of another table) and
//! still answers our status requests. So a task samples, over an ordinary SQL connection, the
//! server's WAL insert position and its clock together: `(F, T)`. Every transaction that had
//! committed at T has its commit record before F (the record is inserted before the commit is
//! visible, even with synchronous_commit off). Once the stream's committed position reaches F,
//! everything committed up to T is in the files: the checkpoint's `covered` line then ends at T.
//! It starts at the first such T of the out-dir, sampled after START_REPLICATION, when the slot
//! already sends everything that commits later.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::Covered;
use crate::lsn::Lsn;
use crate::sql;
use crate::wire::ConnParams;

/// One sample: the server's WAL insert position `lsn` at its clock time `at`, and its TimeZone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub lsn: Lsn,
    pub at: DateTime<Utc>,
    pub zone: Option<String>,
}

/// The stretch `covered` grown by `sample`, for files committed up to `committed`; None when the
/// files have not reached the sample's position yet, or it adds nothing.
pub fn extend(covered: Option<&Covered>, committed: Lsn, sample: &Sample) -> Option<Covered> {
    if committed < sample.lsn {
        return None;
    }
    let grown = match covered {
        Some(c) if c.zone == sample.zone && sample.at <= c.to => return None,
        Some(c) if c.zone == sample.zone => Covered {
            to: sample.at,
            ..c.clone()
        },
        // The first stretch of this out-dir; or the server's TimeZone changed, and a stretch is
        // read in one zone, so a new one begins.
        _ => Covered {
            from: sample.at,
            to: sample.at,
            zone: sample.zone.clone(),
        },
    };
    Some(grown)
}

const QUERY: &str = "SELECT pg_current_wal_insert_lsn()::text, \
     (extract(epoch FROM now()) * 1000000)::int8, current_setting('TimeZone')";

/// The sampling task; stops when dropped.
pub struct Sampler {
    latest: watch::Receiver<Option<Sample>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling the server of `params` now and then every `every`.
    pub fn spawn(params: ConnParams, every: Duration) -> Sampler {
        let (tx, latest) = watch::channel(None);
        let task = tokio::spawn(run(params, every, tx));
        Sampler { latest, task }
    }

    /// The newest sample, if one arrived.
    pub fn latest(&self) -> Option<Sample> {
        self.latest.borrow().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(params: ConnParams, every: Duration, tx: watch::Sender<Option<Sample>>) {
    let mut warned = false;
    loop {
        match sample_forever(&params, every, &tx).await {
            Ok(()) => return,
            Err(e) => {
                // Only coverage waits; the stream goes on.
                if !warned {
                    tracing::warn!(error = %e, "could not sample the server's WAL position and clock; \
                        verify cannot vouch for quiet days until this works");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
    }
}

/// Ok only when nobody listens any more.
async fn sample_forever(
    params: &ConnParams,
    every: Duration,
    tx: &watch::Sender<Option<Sample>>,
) -> Result<(), String> {
    let client = sql::connect_params(params)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let row = client
            .query_one(QUERY, &[])
            .await
            .map_err(|e| sql::describe(&e))?;
        let lsn: String = row.get(0);
        let micros: i64 = row.get(1);
        let zone: String = row.get(2);
        let sample = Sample {
            lsn: lsn.parse().map_err(|_| format!("bad LSN {lsn:?}"))?,
            at: DateTime::from_timestamp_micros(micros).ok_or("a clock out of range")?,
            zone: Some(zone),
        };
        crate::metrics::get().inspect(|m| m.server_position(sample.lsn));
        if tx.send(Some(sample)).is_err() {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretch_grows_only_once_the_files_reach_the_sample() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let sample = |lsn, t, zone: &str| Sample {
            lsn: Lsn(lsn),
            at: at(t),
            zone: Some(zone.into()),
        };
        let first = sample(100, "2025-10-21T00:00:00Z", "UTC");
        assert_eq!(extend(None, Lsn(99), &first), None);
        let c = extend(None, Lsn(100), &first).unwrap();
        assert_eq!((c.from, c.to), (first.at, first.at));
        let later = sample(200, "2025-10-22T00:00:00Z", "UTC");
        assert_eq!(extend(Some(&c), Lsn(150), &later), None);
        let c = extend(Some(&c), Lsn(250), &later).unwrap();
        assert_eq!((c.from, c.to), (first.at, later.at));
        assert_eq!(extend(Some(&c), Lsn(250), &later), None, "nothing new");
        let moved = sample(300, "2025-10-23T00:00:00Z", "Europe/Paris");
        let c = extend(Some(&c), Lsn(300), &moved).unwrap();
        assert_eq!(
            (c.from, c.zone.as_deref()),
            (moved.at, Some("Europe/Paris"))
        );
    }
}
