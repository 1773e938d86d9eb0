//! `audit-tail archive --nats URL --out-dir DIR`: the second copy on another machine. A durable
//! JetStream consumer reads the rows `stream --nats` published and writes them through the file
//! sink (src/sink/files.rs, the same code as `stream --out-dir`), so the files are byte for byte
//! the same and `verify --out-dir` works on them.
//!
//! Exactly once: the files' checkpoint holds the end LSN of the last transaction on disk, and a
//! row whose transaction committed below it is skipped (the stream's own skip rule, on the LSNs
//! the messages carry). Messages are acknowledged only after the files holding them are fsynced
//! and the checkpoint stored, and only up to the last complete transaction (AckAll).
//!
//! The out-dir is the truth (`state`, `audit-tail.archive`): it holds the last stream sequence
//! its files hold, the database and the filter it archives, and a random id. On every start and
//! after every NATS failure, the consumer (`cursor`) is made again to deliver from the sequence
//! after the out-dir's last (a new out-dir: the filter's first message), whatever the consumer
//! acknowledged; it carries the out-dir's id, so a consumer of another out-dir, or one another
//! process is reading, is refused. A row of another database is refused before it is written.
//!
//! Digests (`digests`): when the stream signs (`--signing-key`), its digests are copied into the
//! out-dir at the durable point, each once the archive's files are durable past what it covers,
//! so `verify --integrity` works on the archive as on the stream's out-dir.

mod cursor;
mod decode;
mod digest_reader;
mod digests;
mod setup;
mod state;

pub use state::StateError;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
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
/// How long a fetch may go without a message or its end, past its expiry, while the connection
/// is up: then it is given up and another one asked for. Under load nats-server 2.9 leaves a
/// pull request that received part of its batch unanswered now and then (no message, no end):
/// taken for NATS gone after STALL, that was a reconnection several times a minute.
const QUIET: Duration = Duration::from_secs(1);
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
    /// The archive's own state file (`audit-tail.archive`).
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The consumer is another out-dir's, or another process reads it.
    #[error(
        "the NATS consumer {name} is not this archive's to use: {why}; this out-dir is \"{ours}\". \
         Two archives on one consumer take each other's place and each misses the rows the other \
         acknowledged: give each out-dir its own --nats-consumer NAME (any new name; it reads \
         from where this out-dir's files end)"
    )]
    Consumer {
        name: String,
        ours: String,
        why: String,
    },
    /// A row of a database other than the out-dir's.
    #[error(
        "message {subject} (stream sequence {sequence}) is a row of database {theirs}, but this \
         out-dir holds database {ours}'s rows (filter {filter}); nothing of it was written. \
         Archive one database per out-dir: --nats-filter <prefix>.<database>.> with an out-dir \
         and a --nats-consumer of its own for each"
    )]
    OtherDatabase {
        subject: String,
        sequence: u64,
        theirs: String,
        ours: String,
        filter: String,
    },
    /// `--nats-filter` differs from the one the out-dir was made with.
    #[error(
        "--nats-filter {given} differs from {recorded}, the filter {out_dir} archives (in its \
         audit-tail.archive): an out-dir holds one filter's rows; give --nats-filter {recorded} \
         (or none) for this out-dir, or another --out-dir and --nats-consumer for {given}"
    )]
    FilterChanged {
        given: String,
        recorded: String,
        out_dir: String,
    },
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
    /// The out-dir's own state (src/archive/state.rs), and what the consumer says it is.
    state: state::State,
    owner: cursor::Owner,
    out_dir: std::path::PathBuf,
    dir_handle: std::fs::File,
    /// `<prefix>.<database>.`: a row whose subject starts so is of the out-dir's database.
    subject_start: Option<String>,
    /// Set once a session has opened the consumer.
    owner_checked: bool,
}

/// Archives until `shutdown` turns true (exit 0) or a fatal error.
pub async fn run(
    config: ArchiveConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ArchiveError> {
    // NATS first: refused credentials leave no out-dir behind.
    let stop = shutdown.clone();
    let stopped_now = move || *stop.borrow();
    let Some(client) = config
        .nats
        .connect(Arc::new(Mutex::new(None)), &stopped_now)
        .await?
    else {
        return Ok(());
    };
    let files = StreamFiles::open(&config.out_dir, config.cells)?;
    let (state, dir_handle) = setup::load_state(&config.out_dir)?;
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
        sequence = ?state.sequence.map(|(seq, _)| seq), filter = ?state.filter,
        database = ?state.database, newest_digest = digests.newest(), "archiving");
    let subject_start = state.database.as_ref().map(|d| {
        format!(
            "{}.{}.",
            config.nats.subject_prefix,
            crate::sink::nats::message::token(d)
        )
    });
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
        owner: cursor::Owner::new(&state.id, &config.out_dir),
        state,
        out_dir: config.out_dir.clone(),
        dir_handle,
        subject_start,
        owner_checked: false,
    };
    let mut client = Some(client);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let rows_before = archive.rows;
        match archive.session(&config, client.take(), &mut shutdown).await {
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
                if archive.rows > rows_before {
                    // A session that archived rows was a good one: wait as after the first.
                    backoff = BACKOFF_FIRST;
                }
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
    /// One connection's worth of archiving (`client`: one already made).
    async fn session(
        &mut self,
        config: &ArchiveConfig,
        client: Option<async_nats::Client>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ArchiveError> {
        let client = match client {
            Some(client) => client,
            None => {
                let errors = Arc::new(Mutex::new(None));
                let stop = shutdown.clone();
                let stopped_now = move || *stop.borrow();
                let Some(client) = config.nats.connect(errors, &stopped_now).await? else {
                    return Ok(());
                };
                client
            }
        };
        let link_state = client.clone();
        let js = jetstream::new(client);
        let stream = config.nats.stream(&js).await?;
        let Some(filter) = self.filter(config, &stream, shutdown).await? else {
            return Ok(());
        };
        let start = self.state.resume_from(self.files.durable_lsn());
        // Whether another process reads the consumer is asked on the first connect only: after
        // a reconnection, a pull request of this process's last session may still be waiting.
        let first = !self.owner_checked;
        let consumer = cursor::open(
            &stream,
            &config.consumer,
            &self.owner,
            &filter,
            start,
            first,
        )
        .await?;
        self.owner_checked = true;
        self.reader = Some(digests::Reader::start(
            js.clone(),
            config.nats.clone(),
            format!("{}-digests", config.consumer),
            digests::subject_for(&config.nats, Some(&filter)),
        ));
        if let Some(pending) = &self.pending {
            pending.set(consumer.cached_info().num_pending as i64);
        }
        let mut last_durable = std::time::Instant::now();
        // The consumer's delivery count of the last message taken: a gap means NATS delivered
        // messages to a pull request given up on (QUIET), which this session never saw.
        let mut delivered = 0;
        // The last answer from NATS (a message or a fetch's end).
        let mut quiet_since = std::time::Instant::now();
        // The client's connections so far: one more is a reconnection under this session.
        let stats = link_state.statistics();
        let connects = || stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        let mut connected = connects();
        loop {
            if connects() > connected {
                connected = connects();
                crate::metrics::get().inspect(|m| m.reconnected());
                tracing::info!("connected to NATS again; the archive reads on from its consumer");
            }
            let batch = tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.durable_point().await?;
                    tracing::info!(durable = %self.files.durable_lsn(), rows = self.rows, "stopped on signal");
                    return Ok(());
                }
                // Asking for a batch can itself wait while NATS is down: the same STALL bounds it.
                batch = tokio::time::timeout(
                    STALL,
                    consumer.fetch().max_messages(BATCH).expires(FETCH_WAIT).messages(),
                ) => batch,
            };
            let mut batch = batch
                .map_err(|_| {
                    ArchiveError::Link(format!("no answer from NATS for {} s", STALL.as_secs()))
                })?
                .map_err(|e| ArchiveError::Link(e.to_string()))?;
            let mut got = 0;
            loop {
                // While NATS is down a fetch neither ends nor fails: give up on it after STALL
                // and connect again, and stop on a signal at any message. With the connection
                // up, a fetch unanswered past its expiry is given up on and another one made.
                let next = tokio::select! {
                    biased;
                    _ = stopped(shutdown) => {
                        self.durable_point().await?;
                        tracing::info!(durable = %self.files.durable_lsn(), rows = self.rows, "stopped on signal");
                        return Ok(());
                    }
                    next = tokio::time::timeout(FETCH_WAIT + QUIET, batch.next()) => next,
                };
                match next {
                    Err(_) if quiet_since.elapsed() >= STALL => {
                        return Err(ArchiveError::Link(format!(
                            "no answer from NATS for {} s",
                            STALL.as_secs()
                        )));
                    }
                    Err(_) => {
                        if link_state.connection_state() == async_nats::connection::State::Connected
                        {
                            tracing::debug!(
                                got,
                                "a fetch went unanswered past its expiry; asking again"
                            );
                            break;
                        }
                    }
                    Ok(None) => {
                        // The client ends a fetch at its expiry on its own: that is an answer
                        // from NATS only while the connection is up.
                        if link_state.connection_state() == async_nats::connection::State::Connected
                        {
                            quiet_since = std::time::Instant::now();
                        }
                        break;
                    }
                    Ok(Some(message)) => {
                        got += 1;
                        quiet_since = std::time::Instant::now();
                        let message = message.map_err(|e| ArchiveError::Link(e.to_string()))?;
                        let count = message.info().map_or(0, |i| i.consumer_sequence);
                        if count != 0 && delivered != 0 && count != delivered + 1 {
                            return Err(ArchiveError::Link(format!(
                                "NATS delivered messages {}..{} of this consumer to a fetch given \
                                 up on; reading again from where the files end",
                                delivered + 1,
                                count - 1
                            )));
                        }
                        delivered = count;
                        self.check_database(&message, &config.nats.subject_prefix)?;
                        self.take(message)?
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

    /// fsync and store the checkpoint, then the out-dir's last stream sequence (after the
    /// checkpoint: it never names more than the files hold); what became durable is counted.
    fn make_durable(&mut self) -> Result<(), ArchiveError> {
        self.files.make_durable()?;
        crate::metrics::get().inspect(|m| m.files_made_durable(self.files.durable()));
        let last = self
            .to_ack
            .as_ref()
            .and_then(|m| m.info().ok())
            .map(|i| i.stream_sequence);
        if let Some(last) = last
            && self.state.sequence.map(|(seq, _)| seq) != Some(last)
        {
            self.state.sequence = Some((last, self.files.durable_lsn()));
            self.store_state()?;
        }
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
