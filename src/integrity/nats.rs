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
//! `compare`: the digests JetStream holds against the out-dir's. The first message of each
//! sequence number is the reference (whoever holds the credentials can add messages, not take
//! them away): one missing from the out-dir or different there is a break; one of the out-dir
//! newer than everything on the subject is not yet published, not a break.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use super::writer::DigestPublisher;
use super::{IntegrityError, IntegrityReport, chain};
use crate::sink::nats::NatsConfig;
use crate::sink::nats::message::token;

/// The header naming a digest's sequence number.
pub const SEQ_HEADER: &str = "Audit-Tail-Digest-Seq";
/// How long a clean stop waits for digests not yet acknowledged.
const DRAIN: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

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

/// A digest as JetStream holds it: the first message of its sequence number, and whether
/// later ones say something else.
#[derive(Debug, Default)]
pub struct Published {
    pub text: String,
    pub stream_seq: u64,
    pub others: Vec<u64>,
}

/// How long `verify` tries to reach NATS before giving up.
const VERIFY_CONNECT: Duration = Duration::from_secs(20);

/// Every digest on `database`'s subject, by sequence number.
pub async fn published(
    config: &NatsConfig,
    database: &str,
) -> Result<BTreeMap<u64, Published>, IntegrityError> {
    let unreachable = |reason: String| IntegrityError::NatsRead {
        url: config.url.clone(),
        reason,
    };
    let deadline = Instant::now() + VERIFY_CONNECT;
    let client = config
        .connect(Default::default(), &|| Instant::now() > deadline)
        .await?
        .ok_or_else(|| unreachable(format!("no answer in {VERIFY_CONNECT:?}")))?;
    let js = jetstream::new(client);
    let subject = subject(config, database);
    let mut found: BTreeMap<u64, Published> = BTreeMap::new();
    let stream = match js.get_stream(stream_name(config)).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(found);
        }
        Err(e) => return Err(unreachable(e.to_string())),
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut consumer = consumer;
    let mut left = consumer
        .info()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .num_pending;
    while left > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(500) as usize)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unreachable(e.to_string()))?;
            got += 1;
            let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let seq = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SEQ_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let Some(seq) = seq else {
                tracing::warn!(stream_seq, %subject, "a message without a digest sequence number on the digests' subject; ignored");
                continue;
            };
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            match found.get_mut(&seq) {
                Some(first) if first.text != text => first.others.push(stream_seq),
                Some(_) => {}
                None => {
                    found.insert(
                        seq,
                        Published {
                            text,
                            stream_seq,
                            others: Vec::new(),
                        },
                    );
                }
            }
        }
        if got == 0 {
            return Err(unreachable(format!(
                "JetStream announced {left} more digests but sent none"
            )));
        }
        left = left.saturating_sub(got);
    }
    Ok(found)
}

/// `verify --integrity --nats`: adds to `report` how the digests of `out_dir` compare with those
/// JetStream holds for the out-dir's database (as its state file names it).
pub async fn check(
    out_dir: &Path,
    config: &NatsConfig,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let checkpoint =
        crate::checkpoint::Checkpoint::load(out_dir).map_err(|e| IntegrityError::Io {
            action: "read the state file of",
            path: out_dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let Some(identity) = checkpoint.and_then(|c| c.identity) else {
        return Err(IntegrityError::NoDatabase(out_dir.to_path_buf()));
    };
    let found = published(config, &identity.database).await?;
    compare(
        out_dir,
        &subject(config, &identity.database),
        &found,
        report,
    )
}

/// Adds to `report` how the digests of `out_dir` compare with `published` (those of `subject`).
pub fn compare(
    out_dir: &Path,
    subject: &str,
    published: &BTreeMap<u64, Published>,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let (digests, _) = chain::list(out_dir)?;
    let on_disk: BTreeMap<u64, PathBuf> = digests.into_iter().collect();
    let place = |seq: u64| format!("{}/{}", chain::DIGESTS_DIR, chain::name(seq));
    let newest_published = published.keys().next_back().copied().unwrap_or(0);
    let newest_on_disk = on_disk.keys().next_back().copied().unwrap_or(0);
    if published.is_empty() && !on_disk.is_empty() {
        report.broken(
            place(newest_on_disk),
            None,
            format!(
                "JetStream holds none of the out-dir's digests on {subject}: the off-machine copy is gone, or this is not the server, --nats-subject-prefix or --nats-stream the stream published to"
            ),
        );
        return Ok(());
    }
    for (&seq, copy) in published {
        let reference = format!(
            "the copy in JetStream (stream sequence {})",
            copy.stream_seq
        );
        match on_disk.get(&seq) {
            None if seq > newest_on_disk => report.broken(
                place(seq),
                None,
                format!(
                    "removed: {reference} exists, but the out-dir's digests end at {newest_on_disk}: the newest digests were deleted (the rows they covered with them, most likely)"
                ),
            ),
            None => report.broken(
                place(seq),
                None,
                format!("removed: {reference} exists, but the out-dir has no such digest"),
            ),
            Some(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if text != copy.text {
                    report.broken(
                        place(seq),
                        Some(first_difference(&text, &copy.text)),
                        format!(
                            "replaced: it differs from {reference}; the chain was rebuilt from here, by someone holding the key or not"
                        ),
                    );
                }
            }
        }
        if !copy.others.is_empty() {
            report.broken(
                place(seq),
                None,
                format!(
                    "JetStream holds other digests with this number after the first (stream sequences {:?}): a chain rebuilt on the machine was published again",
                    copy.others
                ),
            );
        }
    }
    let lagging: Vec<u64> = on_disk
        .keys()
        .copied()
        .filter(|seq| !published.contains_key(seq))
        .collect();
    if let (Some(first), Some(last)) = (lagging.first(), lagging.last()) {
        let newer = lagging.iter().all(|&s| s > newest_published);
        report.notes.push(if newer {
            format!(
                "digests {first} to {last} are not yet published to JetStream ({subject}); the stream sends them when NATS answers (not a break)"
            )
        } else {
            format!(
                "digests {lagging:?} of the out-dir were never published to JetStream ({subject}) (not a break: the out-dir's chain checks them)"
            )
        });
    }
    report.notes.push(format!(
        "compared with {} digests in JetStream on {subject}",
        published.len()
    ));
    Ok(())
}

/// The first line where two texts differ (1-based).
fn first_difference(a: &str, b: &str) -> u64 {
    let mut line = 1;
    let (mut la, mut lb) = (a.lines(), b.lines());
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (None, None) => return line,
            _ => return line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(text: &str, stream_seq: u64) -> Published {
        Published {
            text: text.into(),
            stream_seq,
            others: Vec::new(),
        }
    }

    fn out_dir_with(digests: &[(u64, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(chain::DIGESTS_DIR)).unwrap();
        for (seq, text) in digests {
            std::fs::write(
                dir.path().join(chain::DIGESTS_DIR).join(chain::name(*seq)),
                text,
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn removed_replaced_and_lagging_digests_are_told_apart() {
        let dir = out_dir_with(&[(1, "a\n"), (2, "b\nx\n"), (4, "d\n"), (5, "e\n")]);
        let published: BTreeMap<u64, Published> = [
            (1, copy("a\n", 10)),
            (2, copy("b\ny\n", 11)),
            (3, copy("c\n", 12)),
            (4, copy("d\n", 13)),
        ]
        .into_iter()
        .collect();
        let mut report = IntegrityReport::default();
        compare(dir.path(), "audit-digests.db", &published, &mut report).unwrap();
        let places: Vec<(&str, Option<u64>)> = report
            .breaks
            .iter()
            .map(|b| (b.place.as_str(), b.line))
            .collect();
        assert_eq!(
            places,
            [
                ("audit-tail.digests/00000002.digest", Some(2)),
                ("audit-tail.digests/00000003.digest", None)
            ]
        );
        assert!(report.breaks[0].what.starts_with("replaced"));
        assert!(report.breaks[1].what.starts_with("removed"));
        assert!(
            report.notes[0].contains("digests 5 to 5 are not yet published"),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn the_newest_digests_deleted_are_a_break_and_an_empty_copy_too() {
        let dir = out_dir_with(&[(1, "a\n")]);
        let published: BTreeMap<u64, Published> = [
            (1, copy("a\n", 1)),
            (2, copy("b\n", 2)),
            (3, copy("c\n", 3)),
        ]
        .into_iter()
        .collect();
        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &published, &mut report).unwrap();
        assert_eq!(report.breaks.len(), 2, "{:?}", report.breaks);
        assert!(report.breaks[1].what.contains("digests end at 1"));

        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &BTreeMap::new(), &mut report).unwrap();
        assert!(!report.intact());

        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &[(1, copy("a\n", 1))].into(), &mut report).unwrap();
        assert!(report.intact(), "{:?}", report.breaks);

        // A rebuilt digest 1 published after the genuine one: the first is the reference.
        let mut first = copy("a\n", 1);
        first.others.push(7);
        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &[(1, first)].into(), &mut report).unwrap();
        assert_eq!(report.breaks.len(), 1, "{:?}", report.breaks);
        assert!(report.breaks[0].what.contains("stream sequences [7]"));
    }
}
