//! `audit-tail archive --nats URL --out-dir DIR`: the second copy on another machine. A durable
//! JetStream consumer reads the rows `stream --nats` published and writes them through the file
//! sink (src/sink/files.rs, the same code as `stream --out-dir`), so the files are byte for byte
//! the same and `verify --out-dir` works on them.
//!
//! Exactly once: the files' checkpoint holds the end LSN of the last transaction on disk, and a
//! row whose transaction committed below it is skipped (the stream's own skip rule, on the LSNs
//! the messages carry). Messages are acknowledged only after the files holding them are fsynced
//! and the checkpoint stored, and only up to the last complete transaction (AckAll). On every
//! start and after every NATS failure, the consumer is made again to deliver from the first
//! message after its acknowledged floor: in order, never past anything not on disk.
//!
//! Digests (`digests`): when the stream signs (`--signing-key`), its digests are copied into the
//! out-dir at the durable point, each once the archive's files are durable past what it covers,
//! so `verify --integrity` works on the archive as on the stream's out-dir.

mod decode;
mod digest_reader;
mod digests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio::sync::watch;

use ed25519_dalek::VerifyingKey;

use crate::capture::Table;
use crate::lsn::Lsn;
use crate::sink::copy_csv::Cells;
use crate::sink::files::{SinkError, StreamFiles};
use crate::sink::nats::message::ForeignMessage;
use crate::sink::nats::{NatsConfig, NatsError};

/// Messages asked for at once.
const BATCH: usize = 2000;
/// How long a fetch waits for messages when none are there.
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// How long a fetch may go without a message or its end before NATS is taken for gone.
const STALL: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// While a backlog is read (fetches come back full), the longest between durable points: each
/// costs an fsync of the files, one of the checkpoint and an acknowledgement's round trip, which
/// after every batch took most of the archive's time.
const DURABLE_EVERY: Duration = Duration::from_millis(250);

/// Everything `archive` needs.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub nats: NatsConfig,
    pub out_dir: PathBuf,
    pub cells: Cells,
    /// The durable consumer's name.
    pub consumer: String,
    /// The subjects archived (one database's: `<prefix>.<database>.>`); all under the prefix
    /// when `None`.
    pub filter: Option<String>,
    /// `--public-key`: the keys the stream's digests must be signed with (none: their
    /// signatures are not checked, only their chain and the bytes they name).
    pub public_keys: Vec<VerifyingKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Files(#[from] SinkError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Foreign(#[from] ForeignMessage),
    #[error(
        "the rows in JetStream are out of order at stream sequence {sequence}: {why}; archive \
         one database's subjects per out-dir (--nats-filter <prefix>.<database>.>)"
    )]
    Order { sequence: u64, why: String },
    /// NATS failed in a way waiting can fix (retried).
    #[error("NATS: {0}")]
    Link(String),
    /// Writing the stream's digests into the out-dir.
    #[error(transparent)]
    Integrity(#[from] crate::integrity::IntegrityError),
}

impl ArchiveError {
    fn is_retried(&self) -> bool {
        matches!(self, ArchiveError::Link(_))
    }
}

/// The transaction being written.
#[derive(Debug, Clone, Copy)]
struct Open {
    commit_lsn: Lsn,
    next_index: u64,
}

struct Archive {
    files: StreamFiles,
    tables: Vec<Arc<Table>>,
    open: Option<Open>,
    /// The last message of the last complete transaction, not yet acknowledged.
    to_ack: Option<jetstream::Message>,
    /// Whether anything waits for a durable point.
    dirty: bool,
    rows: u64,
    /// `--metrics`: the consumer's pending messages (the row and byte counts go through the
    /// file sink's hooks).
    pending: Option<prometheus_client::metrics::gauge::Gauge>,
    /// The stream's digests, written at durable points.
    digests: digests::Digests,
    /// This session's reader of the digests' subject.
    reader: Option<digests::Reader>,
}

/// Archives until `shutdown` turns true (exit 0) or a fatal error.
pub async fn run(
    config: ArchiveConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ArchiveError> {
    let files = StreamFiles::open(&config.out_dir, config.cells)?;
    let metrics = crate::metrics::get();
    metrics.inspect(|m| m.files_opened(files.durable()));
    let pending = metrics.map(|m| {
        m.gauge(
            "archive_pending_messages",
            "messages in JetStream the archive's consumer has yet to deliver",
        )
    });
    let digests = digests::Digests::open(&config.out_dir, &config.public_keys)?;
    tracing::info!(out_dir = %config.out_dir.display(), durable = %files.durable_lsn(),
        newest_digest = digests.newest(), "archiving");
    let mut archive = Archive {
        files,
        tables: Vec::new(),
        open: None,
        to_ack: None,
        dirty: false,
        rows: 0,
        pending,
        digests,
        reader: None,
    };
    let mut backoff = BACKOFF_FIRST;
    loop {
        match archive.session(&config, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retried() => {
                // Keep what is complete, forget the rest: it is delivered again.
                archive.make_durable()?;
                archive.files.rewind()?;
                crate::metrics::get().inspect(|m| {
                    m.rewound("files");
                    m.error(crate::error::kind(&e));
                    m.reconnected();
                });
                archive.open = None;
                archive.to_ack = None;
                archive.reader = None;
                archive.digests.forget_received();
                tracing::warn!(error = %e, retry_in = ?backoff, "archive interrupted; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                if let Err(files) = archive.make_durable() {
                    tracing::error!(error = %files, "could not make the last rows durable");
                }
                return Err(e);
            }
        }
    }
}

impl Archive {
    async fn session(
        &mut self,
        config: &ArchiveConfig,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ArchiveError> {
        let errors = Arc::new(Mutex::new(None));
        let stop = shutdown.clone();
        let stopped_now = move || *stop.borrow();
        let Some(client) = config.nats.connect(errors, &stopped_now).await? else {
            return Ok(());
        };
        let js = jetstream::new(client);
        let stream = config.nats.stream(&js).await?;
        let consumer = self.consumer(config, &stream).await?;
        self.reader = Some(digests::Reader::start(
            js.clone(),
            config.nats.clone(),
            format!("{}-digests", config.consumer),
            digests::subject_for(&config.nats, config.filter.as_deref()),
        ));
        if let Some(pending) = &self.pending {
            pending.set(consumer.cached_info().num_pending as i64);
        }
        let mut last_durable = std::time::Instant::now();
        loop {
            let batch = tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.durable_point().await?;
                    tracing::info!(durable = %self.files.durable_lsn(), rows = self.rows, "stopped on signal");
                    return Ok(());
                }
                batch = consumer.fetch().max_messages(BATCH).expires(FETCH_WAIT).messages() => batch,
            };
            let mut batch = batch.map_err(|e| ArchiveError::Link(e.to_string()))?;
            let mut got = 0;
            loop {
                // While NATS is down a fetch neither ends nor fails: give up on it after STALL
                // and connect again, and stop on a signal at any message.
                let next = tokio::select! {
                    biased;
                    _ = stopped(shutdown) => {
                        self.durable_point().await?;
                        tracing::info!(durable = %self.files.durable_lsn(), rows = self.rows, "stopped on signal");
                        return Ok(());
                    }
                    next = tokio::time::timeout(STALL, batch.next()) => next,
                };
                match next {
                    Err(_) => {
                        return Err(ArchiveError::Link(format!(
                            "no answer from NATS for {} s",
                            STALL.as_secs()
                        )));
                    }
                    Ok(None) => break,
                    Ok(Some(message)) => {
                        got += 1;
                        self.take(message.map_err(|e| ArchiveError::Link(e.to_string()))?)?
                    }
                }
            }
            // Caught up (the fetch came back short): durable at once. Reading a backlog: every
            // DURABLE_EVERY.
            if got < BATCH || last_durable.elapsed() >= DURABLE_EVERY {
                self.durable_point().await?;
                last_durable = std::time::Instant::now();
            }
        }
    }

    /// The durable consumer, made again to deliver from the first message after its
    /// acknowledged floor (see the module documentation).
    async fn consumer(
        &self,
        config: &ArchiveConfig,
        stream: &jetstream::stream::Stream,
    ) -> Result<consumer::PullConsumer, ArchiveError> {
        let link = |e: &dyn std::fmt::Display| ArchiveError::Link(e.to_string());
        let floor = match stream
            .get_consumer::<consumer::pull::Config>(&config.consumer)
            .await
        {
            Ok(mut existing) => {
                let floor = existing
                    .info()
                    .await
                    .map_err(|e| link(&e))?
                    .ack_floor
                    .stream_sequence;
                stream
                    .delete_consumer(&config.consumer)
                    .await
                    .map_err(|e| link(&e))?;
                floor
            }
            Err(e) if e.to_string().contains("not found") => 0,
            Err(e) => return Err(link(&e)),
        };
        let filter = config
            .filter
            .clone()
            .unwrap_or_else(|| config.nats.stream_subjects());
        tracing::info!(consumer = %config.consumer, %filter, from_sequence = floor + 1, "reading JetStream");
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                },
                ack_policy: consumer::AckPolicy::All,
                ack_wait: Duration::from_secs(300),
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| link(&e))
    }

    /// One message: a row for the files, or one already there (skipped).
    fn take(&mut self, message: jetstream::Message) -> Result<(), ArchiveError> {
        let info = message.info().ok();
        let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        if let (Some(pending), Some(info)) = (&self.pending, &info) {
            pending.set(info.pending as i64);
        }
        // Named only in an error: formatting it for every row cost as much as a header.
        let what = || format!("{} (stream sequence {sequence})", message.subject);
        let position = decode::position(message.headers.as_ref())
            .map_err(|why| ForeignMessage { what: what(), why })?;
        let order = |why: String| ArchiveError::Order { sequence, why };
        if position.commit_lsn < self.files.durable_lsn()
            && self
                .open
                .is_none_or(|o| o.commit_lsn != position.commit_lsn)
        {
            // Already in the files (delivered again after a lost acknowledgement).
            if position.end_lsn.is_some() {
                self.to_ack = Some(message);
            }
            return Ok(());
        }
        match self.open {
            Some(open) if open.commit_lsn == position.commit_lsn => {
                if position.index < open.next_index {
                    return Ok(()); // a row of this transaction delivered again
                }
                if position.index > open.next_index {
                    return Err(order(format!(
                        "row {} of the transaction at {} follows row {}",
                        position.index,
                        position.commit_lsn,
                        open.next_index - 1
                    )));
                }
            }
            Some(open) => {
                return Err(order(format!(
                    "the transaction at {} begins before the one at {} ended",
                    position.commit_lsn, open.commit_lsn
                )));
            }
            None if position.index != 0 => {
                return Err(order(format!(
                    "the transaction at {} begins with row {}",
                    position.commit_lsn, position.index
                )));
            }
            None => {}
        }
        let row = decode::decode_row(&message.payload, &mut self.tables)
            .map_err(|why| ForeignMessage { what: what(), why })?;
        self.files.append(&row, position.commit_time)?;
        crate::metrics::get().inspect(|m| m.row("files", &row.table));
        self.rows += 1;
        self.dirty = true;
        match position.end_lsn {
            Some(end) => {
                self.files.commit(end);
                crate::metrics::get().inspect(|m| m.commit("files"));
                self.open = None;
                self.to_ack = Some(message);
            }
            None => {
                self.open = Some(Open {
                    commit_lsn: position.commit_lsn,
                    next_index: position.index + 1,
                });
            }
        }
        Ok(())
    }

    /// fsync and store the checkpoint; what became durable is counted.
    fn make_durable(&mut self) -> Result<(), SinkError> {
        self.files.make_durable()?;
        crate::metrics::get().inspect(|m| m.files_made_durable(self.files.durable()));
        Ok(())
    }

    /// fsync, store the checkpoint, then acknowledge up to the last complete transaction.
    async fn durable_point(&mut self) -> Result<(), ArchiveError> {
        if self.dirty {
            self.make_durable()?;
            self.dirty = false;
        }
        if let Some(message) = self.to_ack.take() {
            message
                .double_ack()
                .await
                .map_err(|e| ArchiveError::Link(format!("could not acknowledge: {e}")))?;
        }
        // The digests the files now cover: after the fsync and the checkpoint, never before.
        if let Some(reader) = &mut self.reader {
            self.digests.receive_from(reader);
        }
        self.digests.after_durable(self.files.durable())?;
        self.digests.acknowledge().await;
        Ok(())
    }
}

/// Resolves once `shutdown` is true.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
