//! The NATS sink's own thread: a current-thread runtime that holds the NATS client, publishes
//! what the sink hands it in order and awaits JetStream's acknowledgements, moving the durable
//! position past each position mark once every publish before it is acknowledged, and waking
//! the stream's progress. The stream's loop never waits on NATS, except when this thread is
//! `QUEUE` messages behind (backpressure).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use tokio::sync::Notify;

use super::NatsError;
use super::connect::{NatsConfig, ServerErrors};
use super::message::{self, Position};
use crate::lsn::Lsn;
use crate::sink::FailureKind;

/// Commands queued between the sink and this thread.
pub const QUEUE: usize = 4096;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 8192;
/// How long a publish waits for its acknowledgement before the link is taken for broken.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Command {
    Publish {
        subject: String,
        message: jetstream::message::PublishMessage,
    },
    /// Everything handed over before this is complete up to this position.
    Mark(Lsn),
    /// Forget everything not acknowledged; answer when done.
    Rewind(mpsc::SyncSender<()>),
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
}

impl Shared {
    fn fail(&self, kind: FailureKind, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some((kind, why));
        }
        self.failed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// What the thread found on start.
pub struct Started {
    /// The last row of ours in the stream, if any.
    pub last: Option<Position>,
}

/// Starts the thread; resolves once it is connected and knows the last row published for
/// `database` (or `Ok(None)` when stopped while NATS was unreachable).
pub async fn start(
    config: NatsConfig,
    database: String,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
) -> Result<Option<Started>, NatsError> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("audit-tail-nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(NatsError::Runtime(e)));
                    return;
                }
            };
            runtime.block_on(run(config, database, shared, commands, started_tx));
        })
        .map_err(NatsError::Runtime)?;
    started_rx.await.unwrap_or_else(|_| {
        Err(NatsError::Runtime(std::io::Error::other(
            "the NATS thread ended",
        )))
    })
}

async fn run(
    config: NatsConfig,
    database: String,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    started: tokio::sync::oneshot::Sender<Result<Option<Started>, NatsError>>,
) {
    let stopped = || shared.stop.load(Ordering::Acquire);
    let client = match config.connect(shared.server_errors.clone(), &stopped).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            let _ = started.send(Ok(None));
            return;
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .max_ack_inflight(IN_FLIGHT * 2)
        .build(client);
    let setup = async {
        let stream = config.stream(&js).await?;
        let filter = format!("{}.{}.>", config.subject_prefix, message::token(&database));
        last_position(&stream, &filter, &config.stream).await
    };
    match setup.await {
        Ok(last) => {
            if started.send(Ok(Some(Started { last }))).is_err() {
                return;
            }
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    }
    // The sink blocks on a full std channel; a blocking task forwards into this runtime.
    let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        while let Ok(command) = commands.recv() {
            if tx.blocking_send(command).is_err() {
                break;
            }
        }
    });
    publish_loop(&js, &shared, &mut rx).await;
}

type Pending = BoxFuture<'static, Result<Option<Lsn>, (FailureKind, String)>>;

async fn publish_loop(
    js: &jetstream::Context,
    shared: &Shared,
    rx: &mut tokio::sync::mpsc::Receiver<Command>,
) {
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    loop {
        tokio::select! {
            command = rx.recv(), if in_flight.len() < IN_FLIGHT => {
                let Some(command) = command else { return };
                match command {
                    Command::Rewind(done) => {
                        in_flight = FuturesOrdered::new();
                        *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        shared.server_errors.lock().unwrap_or_else(|e| e.into_inner()).take();
                        shared.failed.store(false, Ordering::Release);
                        let _ = done.send(());
                    }
                    // After a failure nothing more goes out until the stream rewinds.
                    _ if shared.failed.load(Ordering::Acquire) => {}
                    Command::Mark(lsn) => {
                        in_flight.push_back(Box::pin(async move { Ok(Some(lsn)) }));
                    }
                    Command::Publish { subject, message } => {
                        match js.send_publish(subject, message).await {
                            Ok(ack) => in_flight.push_back(Box::pin(async move {
                                ack.await.map(|_| None).map_err(|e| classify(e.kind(), e.to_string()))
                            })),
                            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => shared.fail(
                                FailureKind::Fatal,
                                format!("a row is too large for the NATS server ({e}): raise max_payload in \
                                         the server's configuration (up to 64MB)")),
                            Err(e) => shared.fail(FailureKind::Fatal, format!("could not publish to JetStream: {e}")),
                        }
                    }
                }
            }
            done = in_flight.next(), if !in_flight.is_empty() => {
                match done {
                    Some(Ok(Some(lsn))) => {
                        shared.durable.fetch_max(lsn.0, Ordering::AcqRel);
                        shared.wake.notify_one();
                    }
                    Some(Ok(None)) | None => {}
                    Some(Err((kind, why))) => {
                        // A permission violation shows as a missing acknowledgement; the server
                        // said why beside it.
                        let server = shared.server_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        match server {
                            Some(server) => shared.fail(FailureKind::Fatal, format!(
                                "the NATS server refused a publish: {server}: give the account \
                                 permission to publish to the subject prefix, or pick another \
                                 --nats-subject-prefix")),
                            None => shared.fail(kind, why),
                        }
                        in_flight = FuturesOrdered::new();
                    }
                }
            }
        }
    }
}

fn classify(kind: PublishErrorKind, text: String) -> (FailureKind, String) {
    match kind {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => (
            FailureKind::Transient,
            format!("JetStream did not acknowledge a publish ({text}); NATS unreachable or slow"),
        ),
        PublishErrorKind::StreamNotFound => (
            FailureKind::Fatal,
            "no JetStream stream takes the subject published to: create the stream or \
             check --nats-stream and --nats-subject-prefix"
                .to_string(),
        ),
        _ => (
            FailureKind::Fatal,
            format!("JetStream refused a publish: {text}"),
        ),
    }
}

/// The position of the last message under `filter`, read through an ephemeral consumer that
/// starts at the last matching message.
async fn last_position(
    stream: &jetstream::stream::Stream,
    filter: &str,
    name: &str,
) -> Result<Option<Position>, NatsError> {
    let err = |e: &dyn std::fmt::Display| NatsError::Stream {
        stream: name.to_string(),
        reason: format!("could not read the last message published: {e}"),
    };
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::Last,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let pending = consumer.info().await.map_err(|e| err(&e))?.num_pending;
    if pending == 0 {
        return Ok(None);
    }
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| err(&e))?;
    let Some(message) = batch.next().await else {
        return Ok(None);
    };
    let message = message.map_err(|e| err(&e))?;
    let what = format!("on {}", message.subject);
    message::position(message.headers.as_ref(), &what)
        .map(Some)
        .map_err(|e| err(&e))
}
