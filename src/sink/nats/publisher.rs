//! The NATS sink's own thread: it holds the NATS client, publishes what the sink hands it in
//! order and awaits JetStream's acknowledgements, moving the durable position past each
//! position mark once every publish before it is acknowledged, and waking the stream's
//! progress. The stream's loop never waits on NATS, except when this thread is `QUEUE` messages
//! behind (backpressure) and during a rewind (a new connection, see below).
//!
//! # The prefix property
//!
//! At every moment JetStream holds an exact prefix, in order, of the rows this database's stream
//! publishes (the sequence `S`: every row in commit order, each transaction's rows in order,
//! the same on every run since the server sends the same changes again). Resuming after
//! JetStream's last row of ours is then exact, on start and on every rewind. It holds because:
//!
//! - One connection per epoch: a client is made to connect once and never again by itself
//!   ([`OneConnection`]); when its connection is lost (`Event::Disconnected`), an
//!   acknowledgement times out or the stream rewinds, the epoch ends and its runtime is dropped
//!   with the client's tasks, so publishes it still buffered are never written anywhere. (A
//!   client that reconnects on its own writes them on the new connection, after the ones lost
//!   in the dead socket: a hole, the defect this replaced.)
//! - A connection carries a contiguous run of `S` that starts right after what JetStream held
//!   when it was made: the epoch reads JetStream's last row of ours before it publishes, and
//!   the sink skips what is at or below it. TCP delivers a connection's bytes in order or not
//!   at all past a loss, and the server stores one connection's publishes to a stream in the
//!   order it reads them, so what JetStream takes from one connection is a prefix of its run.
//! - An old connection's late messages (closed by us with publishes still in the server's
//!   socket buffer, or a server that stalled) may arrive while a newer connection publishes
//!   the same rows: both carry the same rows with the same `Nats-Msg-Id` in the same order.
//!   Induction: when a row arrives and is not yet stored, the row before it in `S` is stored
//!   (it came earlier on the same connection, or it was JetStream's last when that connection
//!   was made), so the row extends the prefix; a row already stored is dropped as a duplicate.
//!   This needs the late copy to come within the stream's duplicate window (2 minutes by
//!   default): a server that holds a dead connection's bytes longer than that, then stores
//!   them, can store a row twice.
//!
//! If, on a rewind, JetStream holds less than it acknowledged (its last sequence went back, or
//! its last row of ours is below the last acknowledged), the server lost acknowledged
//! messages: the thread says so as an error with both positions, counts it, and goes on from
//! what JetStream holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Notify;

use super::NatsError;
use super::connect::{NatsConfig, OneConnection, ServerErrors};
use super::holds::{Acked, check_nothing_lost, check_same_system, last_position};
use super::message::{self, Position};
use crate::lsn::Lsn;
use crate::sink::FailureKind;

/// Commands queued between the sink and this thread.
pub const QUEUE: usize = 4096;
/// Publishes awaiting their acknowledgement at once.
pub const IN_FLIGHT: usize = 8192;
/// How long a publish waits for its acknowledgement before the link is taken for broken.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A row's place in `S`: its transaction's commit LSN and its index there.
pub type RowAt = (Lsn, u64);

pub enum Command {
    Publish {
        subject: String,
        headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
        at: RowAt,
    },
    /// Everything handed over before this is complete up to this position.
    Mark(Lsn),
    /// Forget everything not acknowledged, make a new connection and answer with what
    /// JetStream holds.
    Rewind(mpsc::SyncSender<Rewound>),
}

/// The answer to a rewind.
pub enum Rewound {
    /// Connected again; JetStream's last row of ours, if any.
    Last(Option<Position>),
    /// NATS is unreachable: drop what comes until the thread asks for a rewind (a transient
    /// failure) once it is connected again.
    Down,
    /// Told to stop while NATS was unreachable.
    Stopped,
    /// Going on cannot help (credentials refused, the stream gone).
    Fatal(String),
}

/// What the thread and the sink share.
#[derive(Default)]
pub struct Shared {
    pub durable: AtomicU64,
    pub failure: Mutex<Option<(FailureKind, String)>>,
    pub failed: AtomicBool,
    pub wake: Arc<Notify>,
    pub server_errors: ServerErrors,
    pub stop: AtomicBool,
    /// The connection is lost: the sink drops what it is given (nothing becomes durable) until
    /// this thread, connected again, asks for a rewind.
    pub down: AtomicBool,
}

impl Shared {
    pub(super) fn fail(&self, kind: FailureKind, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some((kind, why));
        }
        self.failed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn clear(&self) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.server_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.failed.store(false, Ordering::Release);
    }
}

/// What the thread found on start.
pub struct Started {
    /// The last row of ours in the stream, if any.
    pub last: Option<Position>,
}

type StartAnswer = tokio::sync::oneshot::Sender<Result<Option<Started>, NatsError>>;

/// Whom an epoch answers once connected.
enum Answer {
    Start(StartAnswer),
    Rewind(mpsc::SyncSender<Rewound>),
}

/// How an epoch ended.
pub enum End {
    /// The sink is gone or it could not start: the thread ends.
    Over,
    /// The connection was lost: connect again at once, without waiting for a rewind.
    Lost,
    /// Its connection failed: wait for the rewind.
    Failed,
    /// The stream rewound while the connection was fine: a new epoch answers it.
    Rewind(mpsc::SyncSender<Rewound>),
}

/// Starts the thread; resolves once it is connected and knows the last row published for
/// `database` (or `Ok(None)` when stopped while NATS was unreachable).
pub async fn start(
    config: NatsConfig,
    database: String,
    system_id: u64,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
) -> Result<Option<Started>, NatsError> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    // The sink blocks on a full std channel; this thread forwards into the epochs' runtimes
    // (a blocking task would keep an epoch's runtime from being dropped).
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("audit-tail-nats-queue".into())
        .spawn(move || {
            while let Ok(command) = commands.recv() {
                if tx.blocking_send(command).is_err() {
                    break;
                }
            }
        })
        .map_err(NatsError::Runtime)?;
    std::thread::Builder::new()
        .name("audit-tail-nats".into())
        .spawn(move || run(config, (database, system_id), shared, rx, started_tx))
        .map_err(NatsError::Runtime)?;
    started_rx.await.unwrap_or_else(|_| {
        Err(NatsError::Runtime(std::io::Error::other(
            "the NATS thread ended",
        )))
    })
}

/// The thread: one epoch (a runtime, a client, a connection) after another.
fn run(
    config: NatsConfig,
    (database, system_id): (String, u64),
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<Command>,
    started: StartAnswer,
) {
    let mut answer = Some(Answer::Start(started));
    let mut acked = Acked::default();
    loop {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                match answer {
                    Some(Answer::Start(tx)) => {
                        let _ = tx.send(Err(NatsError::Runtime(e)));
                    }
                    Some(Answer::Rewind(done)) => {
                        let _ = done.send(Rewound::Fatal(format!(
                            "could not start the NATS client's runtime: {e}"
                        )));
                    }
                    None => {}
                }
                return;
            }
        };
        let end = runtime.block_on(epoch(
            &config,
            (&database, system_id),
            &shared,
            &mut rx,
            answer,
            &mut acked,
        ));
        // Ends the client's tasks: what it buffered for its lost connection is never written.
        drop(runtime);
        answer = match end {
            End::Over => return,
            End::Lost => None,
            End::Rewind(done) => Some(Answer::Rewind(done)),
            // Everything handed over until the rewind is sent again after it.
            End::Failed => loop {
                match rx.blocking_recv() {
                    Some(Command::Rewind(done)) => break Some(Answer::Rewind(done)),
                    Some(_) => {}
                    None => return,
                }
            },
        };
    }
}

/// One connection: connect (waiting while NATS is unreachable), read what JetStream holds,
/// answer, then publish until the connection fails or the stream rewinds.
async fn epoch(
    config: &NatsConfig,
    (database, system_id): (&str, u64),
    shared: &Shared,
    rx: &mut tokio::sync::mpsc::Receiver<Command>,
    answer: Option<Answer>,
    acked: &mut Acked,
) -> End {
    let rewinding = !matches!(answer, Some(Answer::Start(_)));
    if rewinding {
        shared.clear();
    }
    // A rewind does not wait for NATS: after the first failed attempt it answers `Down`, the
    // sink drops what it is given (its durable position stays, and so does the slot) and the
    // stream goes on with its other sinks; once connected, this asks for a rewind again.
    let pending = std::cell::RefCell::new(answer);
    let stopped = || {
        let mut pending = pending.borrow_mut();
        if matches!(*pending, Some(Answer::Rewind(_)))
            && let Some(Answer::Rewind(done)) = pending.take()
        {
            shared.down.store(true, Ordering::Release);
            let _ = done.send(Rewound::Down);
        }
        shared.stop.load(Ordering::Acquire)
    };
    let mut backoff = Duration::from_millis(500);
    let (js, once, last) = loop {
        let once = OneConnection::default();
        let connected = config
            .connect_once(shared.server_errors.clone(), &stopped, &once)
            .await;
        let client = match connected {
            Ok(Some(client)) => client,
            Ok(None) => return stopped_waiting(shared, pending.take()),
            Err(e) => return fatal(pending.take(), e),
        };
        if pending.borrow().is_none() {
            // The sink was told NATS is down: ask the stream for a rewind and wait for it.
            shared.fail(
                FailureKind::Transient,
                "connected to NATS again; sending what JetStream lacks".into(),
            );
            let done = loop {
                match rx.recv().await {
                    Some(Command::Rewind(done)) => break done,
                    Some(_) => {}
                    None => return End::Over,
                }
            };
            shared.clear();
            shared.down.store(false, Ordering::Release);
            *pending.borrow_mut() = Some(Answer::Rewind(done));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(IN_FLIGHT * 2)
            .build(client.clone());
        let setup = async {
            let stream = config.stream(&js).await?;
            let filter = format!("{}.{}.>", config.subject_prefix, message::token(database));
            let last = last_position(&stream, &filter, &config.stream).await?;
            Ok::<_, NatsError>((last, stream.cached_info().state.last_sequence))
        };
        match setup.await {
            Ok(((last, from), sequence)) => {
                // Another cluster's rows: refused on start and on every rewind.
                if let Err(e) = check_same_system(config, database, system_id, from) {
                    return fatal(pending.take(), e);
                }
                check_nothing_lost(acked, last.as_ref(), sequence);
                break (js, once, last);
            }
            // NATS went away again, or JetStream is not ready yet after a restart: the slot
            // waits. (On start, a stream that cannot be made or read is the user's to fix.)
            Err(e)
                if rewinding
                    || client.connection_state() != async_nats::connection::State::Connected =>
            {
                tracing::warn!(error = %e, retry_in = ?backoff,
                    "could not read where this database's rows stop in JetStream; the slot \
                     stays where it is, retrying");
            }
            Err(e) => return fatal(pending.take(), e),
        }
        drop(js);
        let mut waited = Duration::ZERO;
        while waited < backoff {
            if stopped() {
                return stopped_waiting(shared, pending.take());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    if let Some(p) = &last {
        acked.row = acked.row.max(Some((p.commit_lsn, p.index)));
    }
    match pending.take() {
        None => return End::Over,
        Some(Answer::Start(tx)) => {
            if tx.send(Ok(Some(Started { last }))).is_err() {
                return End::Over;
            }
        }
        Some(Answer::Rewind(done)) => {
            if done.send(Rewound::Last(last)).is_err() {
                return End::Over;
            }
        }
    }
    super::inflight::publish_loop(&js.client(), shared, rx, &once.lost, acked).await
}

fn stopped_waiting(shared: &Shared, answer: Option<Answer>) -> End {
    match answer {
        Some(Answer::Start(tx)) => {
            let _ = tx.send(Ok(None));
            End::Over
        }
        Some(Answer::Rewind(done)) => {
            shared.fail(
                FailureKind::Transient,
                "stopped while waiting for NATS".into(),
            );
            let _ = done.send(Rewound::Stopped);
            End::Failed
        }
        None => End::Over,
    }
}

/// Going on cannot help; told to whoever waits (after `Down`, the sink learns it from the
/// thread's end).
fn fatal(answer: Option<Answer>, e: NatsError) -> End {
    match answer {
        Some(Answer::Start(tx)) => {
            let _ = tx.send(Err(e));
        }
        Some(Answer::Rewind(done)) => {
            let _ = done.send(Rewound::Fatal(e.to_string()));
        }
        None => {}
    }
    End::Over
}
