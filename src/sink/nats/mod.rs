//! The NATS JetStream sink (`stream --nats URL`): one message per row, subject
//! `<prefix>.<database>.<schema>.<table>`, body and headers as `message` says. It accepts at
//! once and becomes durable later: a position is durable once JetStream acknowledged every
//! publish before it, and each acknowledgement wakes the stream's progress so the slot is
//! acknowledged without waiting for the next commit.
//!
//! Exactly once: within the server's duplicate window, `Nats-Msg-Id` drops a re-sent row; beyond
//! it, the sink resumes after the last message of ours in the stream (read on start), skipping
//! the rows of a transaction already published when the process died half way through it. A row
//! is handed to the publisher one behind, so the last row of a transaction can carry its end
//! LSN (the archiver commits its files there).
//!
//! Failures: a lost connection makes the sink drop what it is given (nothing more becomes
//! durable, so the slot stays) while a new connection is tried; once connected, the sink fails
//! as transient so that the stream rewinds to what is durable, reads JetStream's last row of
//! ours again and skips exactly what is stored, as on start. An acknowledgement that does not
//! come (NATS slow) is transient at once. See `publisher` for why JetStream always holds a
//! prefix of our rows, in order. A refusal (no permission, no stream) is fatal.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use tokio::sync::Notify;

use super::{FailureKind, Sink, SinkFailure, Txn};
use crate::capture::Row;
use crate::lsn::Lsn;

pub mod connect;
mod holds;
mod inflight;
pub mod message;
mod publisher;

pub use connect::NatsConfig;
use message::Position;
use publisher::{Command, Rewound, Shared};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "the NATS server at {url} refused us: {reason}: check --nats-user/--nats-password, --nats-token, --nats-creds and the TLS options"
    )]
    Refused { url: String, reason: String },
    #[error("could not read the NATS credentials file {path}: {source}")]
    Creds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream stream \"{stream}\": {reason}")]
    Stream { stream: String, reason: String },
    #[error("could not start the NATS client's thread: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Publish(String),
    #[error(
        "JetStream stream \"{stream}\" holds rows of another PostgreSQL cluster under {subjects}: its last row comes from the server with system identifier {theirs}, this server's is {ours}. Both clusters have a database \"{database}\" and publish to the same subjects, so each would skip the other's rows: give each cluster its own --nats-subject-prefix, with its own --nats-stream (one subject prefix per cluster, see docs/operations.md)"
    )]
    OtherSystem {
        stream: String,
        subjects: String,
        database: String,
        ours: u64,
        theirs: u64,
    },
}

/// The sink; see the module documentation.
pub struct NatsSink {
    prefix: String,
    database: String,
    /// The PostgreSQL server's system identifier, carried by every message.
    system_id: String,
    shared: Arc<Shared>,
    commands: mpsc::SyncSender<Command>,
    /// The row waiting for the next one (or the commit) to learn whether it is its
    /// transaction's last.
    held: Option<(String, Row)>,
    /// Encodes bodies and subjects without a JSON tree per row.
    encoder: message::Encoder,
    txn: Option<Txn>,
    /// The index of the next row in the transaction.
    index: u64,
    /// A transaction published in part before the last stop: its commit LSN and the index of its
    /// last row in the stream.
    partial: Option<(Lsn, u64)>,
    /// Where JetStream's rows of ours stop, as read on start or on the last rewind:
    /// transactions committed below it are there already.
    resume: Lsn,
    /// The failure in `shared` was returned to the stream already.
    reported: bool,
}

/// Where to resume after JetStream's last row of ours: the transactions committed below the
/// returned LSN are stored whole, and the second part is a transaction stored in part (its
/// commit LSN and the index of its last stored row). A row goes out without the end header only
/// once the next row of its transaction has come, so a last row without it has more after it.
pub fn resume_after(last: Option<Position>) -> (Lsn, Option<(Lsn, u64)>) {
    match last {
        None => (Lsn(0), None),
        Some(Position {
            end_lsn: Some(end), ..
        }) => (end, None),
        Some(p) => (p.commit_lsn, Some((p.commit_lsn, p.index))),
    }
}

impl NatsSink {
    /// Connects (waiting while NATS is unreachable), makes sure of the stream and reads where
    /// the rows of `database` stop in it; refuses rows another cluster (`system_id` differs)
    /// published there. `Ok(None)`: `stopped` turned true while waiting.
    pub async fn start(
        config: &NatsConfig,
        (database, system_id): (&str, u64),
        stopped: impl Fn() -> bool + Send + 'static,
    ) -> Result<Option<NatsSink>, NatsError> {
        let shared = Arc::new(Shared::default());
        let (commands, receiver) = mpsc::sync_channel(publisher::QUEUE);
        // Relay the caller's stop to the thread while it waits for NATS.
        let watch = shared.clone();
        let relay = tokio::spawn(async move {
            loop {
                if stopped() {
                    watch.stop.store(true, Ordering::Release);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        let started = publisher::start(
            config.clone(),
            database.to_string(),
            system_id,
            shared.clone(),
            receiver,
        )
        .await;
        relay.abort();
        let Some(started) = started? else {
            return Ok(None);
        };
        let (resume, partial) = resume_after(started.last);
        shared.durable.store(resume.0, Ordering::Release);
        tracing::info!(stream = %config.stream, %resume, partial = partial.is_some(),
            "JetStream holds the rows of this database up to here");
        Ok(Some(NatsSink {
            prefix: config.subject_prefix.clone(),
            database: database.to_string(),
            system_id: system_id.to_string(),
            shared,
            commands,
            held: None,
            encoder: message::Encoder::default(),
            txn: None,
            index: 0,
            partial,
            resume,
            reported: false,
        }))
    }

    /// What wakes the stream when an acknowledgement moves the durable position.
    pub fn waker(&self) -> Arc<Notify> {
        self.shared.wake.clone()
    }

    fn check(&mut self) -> Result<(), SinkFailure> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reported = true;
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (kind, why) = failure
            .clone()
            .unwrap_or((FailureKind::Transient, "publishing failed".into()));
        Err(SinkFailure::new(kind, NatsError::Publish(why)))
    }

    fn send(&self, command: Command) -> Result<(), SinkFailure> {
        // The connection is lost: nothing goes out, nothing becomes durable.
        if !matches!(command, Command::Rewind(_)) && self.shared.down.load(Ordering::Acquire) {
            return Ok(());
        }
        self.commands.send(command).map_err(|_| {
            SinkFailure::fatal(NatsError::Publish("the NATS client's thread ended".into()))
        })
    }

    /// Hands the held row over, as its transaction's last when `end` is given.
    fn release(&mut self, end: Option<Lsn>) -> Result<(), SinkFailure> {
        let (Some((subject, row)), Some(txn)) = (self.held.take(), self.txn) else {
            return Ok(());
        };
        let position = Position {
            commit_lsn: txn.commit_lsn,
            commit_time: txn.commit_time,
            index: self.index - 1,
            end_lsn: end,
        };
        let at = (position.commit_lsn, position.index);
        let mut headers = message::headers(&self.database, &position);
        headers.insert(message::SYSTEM_ID, self.system_id.as_str());
        let payload = self.encoder.body(
            (&self.prefix, &self.database),
            &row,
            txn.commit_lsn,
            txn.commit_time,
        );
        self.send(Command::Publish {
            subject,
            headers,
            payload,
            at,
        })
    }
}

/// The system identifier of the server `conn` reaches (every message carries it), waiting
/// while the server is unreachable as the stream does. `Ok(None)`: `stopped` turned true.
pub async fn server_system_id(
    conn: &crate::wire::params::ConnParams,
    stopped: impl Fn() -> bool,
) -> Result<Option<u64>, crate::replication::slot::PreflightError> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        let identified = async {
            let client = crate::sql::connect_params(conn).await?;
            crate::replication::slot::identify(&client, "").await
        };
        match identified.await {
            Ok(identity) => return Ok(Some(identity.system_id)),
            Err(e) if crate::error::kind(&e).is_retried() => {
                tracing::warn!(error = %e, retry_in = ?backoff,
                    "could not read the server's system identifier, which the NATS messages                      carry; retrying");
            }
            Err(e) => return Err(e),
        }
        let mut waited = std::time::Duration::ZERO;
        while waited < backoff {
            if stopped() {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += std::time::Duration::from_millis(100);
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn resume_point(&self) -> Option<Lsn> {
        Some(self.resume)
    }

    fn row(&mut self, row: &Row, txn: Txn) -> Result<(), SinkFailure> {
        self.check()?;
        if self.txn != Some(txn) {
            self.txn = Some(txn);
            self.index = 0;
        }
        let index = self.index;
        if let Some((lsn, last)) = self.partial
            && lsn == txn.commit_lsn
            && index <= last
        {
            // Published before the last stop. A row goes out without the end header only once
            // the next row of its transaction has come, so rows after `last` follow.
            self.index += 1;
            return Ok(());
        }
        self.release(None)?;
        self.index += 1;
        let subject = self.encoder.subject(&self.prefix, &self.database, row);
        self.held = Some((subject.to_owned(), row.clone()));
        Ok(())
    }

    fn commit(&mut self, txn: Txn, end_lsn: Lsn) -> Result<(), SinkFailure> {
        self.check()?;
        if self.txn == Some(txn) {
            self.release(Some(end_lsn))?;
        }
        if self.partial.is_some_and(|(lsn, _)| lsn <= txn.commit_lsn) {
            self.partial = None;
        }
        self.txn = None;
        self.send(Command::Mark(end_lsn))
    }

    fn idle(&mut self, lsn: Lsn) {
        let _ = self.send(Command::Mark(lsn));
    }

    fn flush(&mut self) -> Result<(), SinkFailure> {
        // A transient failure is reported once: after it the stream keeps what is complete (a
        // flush that must succeed) and rewinds, which makes a new connection.
        let reported = self.reported;
        match self.check() {
            Err(e) if reported && e.is_transient() => Ok(()),
            other => other,
        }
    }

    fn durable(&self) -> Option<Lsn> {
        Some(Lsn(self.shared.durable.load(Ordering::Acquire)))
    }

    fn rewind(&mut self) -> Result<(), SinkFailure> {
        self.reported = false;
        self.held = None;
        self.txn = None;
        self.index = 0;
        if self.shared.down.load(Ordering::Acquire) && !self.shared.failed.load(Ordering::Acquire) {
            // Still waiting for NATS (another sink's or the server's rewind): the thread asks
            // for one once it is connected.
            return Ok(());
        }
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Command::Rewind(done))?;
        // The thread answers once connected again, or after a first attempt that failed.
        let answer = wait.recv().map_err(|_| {
            SinkFailure::fatal(NatsError::Publish("the NATS client's thread ended".into()))
        })?;
        match answer {
            Rewound::Last(last) => {
                let (resume, partial) = resume_after(last);
                // Stored, so durable: an acknowledgement lost with the connection.
                self.shared.durable.fetch_max(resume.0, Ordering::AcqRel);
                self.resume = resume;
                self.partial = partial;
                tracing::info!(%resume, partial = partial.is_some(),
                    "connected to NATS again; JetStream holds the rows of this database up to here");
                Ok(())
            }
            Rewound::Down => {
                tracing::warn!(
                    "NATS is unreachable: the other sinks go on, the slot stays where JetStream \
                     holds the rows, and what it lacks is sent once NATS is back"
                );
                Ok(())
            }
            // The stream stops; should it go on, the thread tries again on the next rewind.
            Rewound::Stopped => Ok(()),
            Rewound::Fatal(why) => Err(SinkFailure::fatal(NatsError::Publish(why))),
        }
    }

    fn waker(&self) -> Option<Arc<Notify>> {
        Some(self.shared.wake.clone())
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::PgTimestamp;

    #[test]
    fn resuming_skips_whole_transactions_below_and_the_stored_rows_of_a_partial_one() {
        assert_eq!(resume_after(None), (Lsn(0), None));
        let last = |end_lsn| Position {
            commit_lsn: Lsn(0x100),
            commit_time: PgTimestamp(0),
            index: 4,
            end_lsn,
        };
        assert_eq!(
            resume_after(Some(last(Some(Lsn(0x108))))),
            (Lsn(0x108), None)
        );
        assert_eq!(
            resume_after(Some(last(None))),
            (Lsn(0x100), Some((Lsn(0x100), 4)))
        );
    }
}
