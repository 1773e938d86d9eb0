//! The off-machine copy of the digests (`stream --signing-key K --nats URL`,
//! `verify --integrity --nats URL`; docs/security.md).
//!
//! Each digest, once written and fsynced, goes to JetStream as well: subject
//! `<prefix>-digests.<database>` of the stream `<stream>_DIGESTS` (file storage, kept for ever,
//! deletes and purges refused), `Nats-Msg-Id` `<database>:<seq>` so a digest sent again within
//! the duplicate window is dropped. A stream of its own, not the rows' `<prefix>.>`: consumers
//! of the rows (`archive`, users' own) never see a digest, and the rows' max age does not apply.
//!
//! The slot does not wait for these acknowledgements: a thread of its own publishes in order,
//! retrying while NATS is unreachable, so a digest may lag behind the out-dir. On start it
//! first sends the out-dir's digests newer than the newest on the subject (those a kill -9 or
//! an outage left unsent); on a clean stop it waits a few seconds for the pending ones.
//!
//! `compare` (nats/compare.rs, `verify --integrity --nats`): the digests JetStream holds against
//! the out-dir's. The first message of each sequence number is the reference (whoever holds the
//! credentials can add messages, not take them away): one missing from the out-dir or different
//! there is a break; one of the out-dir newer than everything on the subject is not yet
//! published, not a break.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use super::writer::DigestPublisher;
use super::{IntegrityError, chain};
use crate::sink::nats::NatsConfig;
use crate::sink::nats::message::token;

/// The header naming a digest's sequence number.
pub const SEQ_HEADER: &str = "Audit-Tail-Digest-Seq";
/// How long a clean stop waits for digests not yet acknowledged.
const DRAIN: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

mod compare;
pub use compare::{Published, check, compare, published};

/// The subject of `database`'s digests.
pub fn subject(config: &NatsConfig, database: &str) -> String {
    format!("{}-digests.{}", config.subject_prefix, token(database))
}

/// The JetStream stream holding the digests.
pub fn stream_name(config: &NatsConfig) -> String {
    format!("{}_DIGESTS", config.stream)
}

/// The stream, created when missing: file storage, no max age, no deletes or purges.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: stream_name(config),
        subjects: vec![format!("{}-digests.>", config.subject_prefix)],
        storage: stream::StorageType::File,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("JetStream stream \"{}\": {e}", stream_name(config)))
}

/// The sequence number of the newest digest on `subject` (0: none).
async fn newest_published(stream: &stream::Stream, subject: &str) -> Result<u64, String> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message
            .headers
            .get(SEQ_HEADER)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(format!(
            "could not read the newest digest on {subject}: {e}"
        )),
    }
}

/// The `DigestPublisher` of the stream: hands each digest to its thread.
pub struct NatsDigests {
    queue: Option<tokio::sync::mpsc::UnboundedSender<(u64, String)>>,
    stop: Arc<AtomicBool>,
    done: std::sync::mpsc::Receiver<()>,
}

impl NatsDigests {
    /// Starts the publishing thread for the digests of `out_dir` (the stream of `database`). It
    /// connects in the background: the stream never waits for it.
    pub fn start(
        config: NatsConfig,
        database: &str,
        out_dir: &Path,
    ) -> Result<NatsDigests, IntegrityError> {
        let (queue, receiver) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread_stop = stop.clone();
        let database = database.to_string();
        let out_dir = out_dir.to_path_buf();
        std::thread::Builder::new()
            .name("audit-tail-digests".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(config, database, out_dir, receiver, thread_stop)),
                    Err(e) => tracing::warn!(error = %e,
                        "could not start the thread that publishes digests to NATS; they stay on disk"),
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| IntegrityError::Io {
                action: "start the digest publisher for",
                path: PathBuf::from("NATS"),
                source: e,
            })?;
        Ok(NatsDigests {
            queue: Some(queue),
            stop,
            done,
        })
    }
}

impl DigestPublisher for NatsDigests {
    fn publish(&mut self, seq: u64, text: &str) -> Result<(), String> {
        self.queue
            .as_ref()
            .and_then(|q| q.send((seq, text.to_string())).ok())
            .ok_or_else(|| "the thread publishing digests to NATS ended".to_string())
    }
}

impl Drop for NatsDigests {
    /// Lets the thread send what is queued, for a few seconds at most: the next start sends
    /// whatever is left.
    fn drop(&mut self) {
        self.queue = None;
        if self.done.recv_timeout(DRAIN).is_err() {
            tracing::warn!(
                "digests not yet acknowledged by JetStream; the next start publishes them"
            );
        }
        self.stop.store(true, Ordering::Release);
    }
}

async fn run(
    config: NatsConfig,
    database: String,
    out_dir: PathBuf,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
    stop: Arc<AtomicBool>,
) {
    let stopped = || stop.load(Ordering::Acquire);
    let subject = subject(&config, &database);
    let client = match config.connect(Default::default(), &stopped).await {
        Ok(Some(client)) => client,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "digests are not published to NATS");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client);
    // The stream and the newest digest on the subject, retried while NATS is unreachable.
    let mut wait = RETRY_FIRST;
    let newest = loop {
        let found = match ensure_stream(&js, &config).await {
            Ok(stream) => newest_published(&stream, &subject).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(newest) => break newest,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot publish digests to NATS yet");
                if !pause(&mut wait, &stopped).await {
                    return;
                }
            }
        }
    };
    // What a kill -9 or an outage left unsent.
    let backlog = match chain::list(&out_dir) {
        Ok((digests, _)) => digests,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the digests to publish");
            Vec::new()
        }
    };
    for (seq, path) in backlog.into_iter().filter(|(seq, _)| *seq > newest) {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if !send(&js, &subject, &database, seq, &text, &stopped).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(digest = %path.display(), error = %e, "could not read a digest to publish")
            }
        }
    }
    while let Some((seq, text)) = queue.recv().await {
        if !send(&js, &subject, &database, seq, &text, &stopped).await {
            return;
        }
    }
}

/// Publishes one digest and waits for its acknowledgement, again and again until it comes.
/// False: stopped first.
async fn send(
    js: &jetstream::Context,
    subject: &str,
    database: &str,
    seq: u64,
    text: &str,
    stopped: &dyn Fn() -> bool,
) -> bool {
    let mut wait = RETRY_FIRST;
    loop {
        let message = jetstream::message::PublishMessage::build()
            .message_id(format!("{database}:{seq}"))
            .header(SEQ_HEADER, seq.to_string().as_str())
            .payload(text.to_string().into());
        let result = match js.send_publish(subject.to_string(), message).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                tracing::debug!(seq, %subject, "published a digest to JetStream");
                return true;
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, retry_in = ?wait,
                    "could not publish a digest to JetStream; it is on disk, retrying");
                if !pause(&mut wait, stopped).await {
                    return false;
                }
            }
        }
    }
}

/// Waits `wait` (then doubles it, up to a bound) unless stopped. False: stopped.
async fn pause(wait: &mut Duration, stopped: &dyn Fn() -> bool) -> bool {
    let until = Instant::now() + *wait;
    while Instant::now() < until {
        if stopped() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *wait = (*wait * 2).min(RETRY_MAX);
    true
}
