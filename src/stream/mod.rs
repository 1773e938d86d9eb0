//! `audit-tail stream`: drives the flow wire → replication → pgoutput → capture → sinks →
//! acknowledgement, and reconnects when the connection is lost.
//!
//! `run` owns the sinks and their `Progress` across connections; `session` is one connection's
//! worth of streaming. The loop's pure parts live beside it: `flush` (when to make commits
//! durable), `progress` (positions, the skip rule per sink, the acknowledgement as the minimum
//! durable position over the sinks) and `liveness` (status updates, a silent connection).
//! Only what every sink holds durably is sent to the server as flushed. While no transaction is
//! open and everything is durable, keepalive positions are acknowledged too, so a quiet
//! publication on a busy server does not pin WAL.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::sleep;

use crate::capture::CaptureError;
use crate::checkpoint::STATE_FILE;
use crate::gaps::GapError;
use crate::lsn::Lsn;
use crate::pgoutput::DecodeError;
use crate::replication::messages::ReplicationMessageError;
use crate::replication::slot::PreflightError;
use crate::sink::copy_csv::Cells;
use crate::sink::files::{SinkError, StreamFiles};
use crate::sink::stdout::{Format, Printer};
use crate::sink::{Sink, SinkFailure};
use crate::sql::SqlError;
use crate::wire::{ConnParams, WireError};

mod flush;
mod liveness;
mod preflight;
pub mod progress;
mod session;

pub use liveness::STATUS_INTERVAL;
use progress::Progress;
use session::Session;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// When `--until` stops the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The server's WAL position when the stream starts.
    Now,
    Lsn(Lsn),
}

/// Everything `stream` needs, past the command line.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub conn: ConnParams,
    pub slot: String,
    pub publication: String,
    /// The rolling daily files and their checkpoint; `None` (`--no-files`) streams to the other
    /// sinks alone, which then need one that keeps what it takes (`nats`): the restart point
    /// comes from the slot and JetStream's last message.
    pub out_dir: Option<PathBuf>,
    pub format: Format,
    pub until: Option<Until>,
    /// How often a status update goes to the server (default `STATUS_INTERVAL`).
    pub status_interval: Duration,
    /// How values are written to the files (`--safe-csv`).
    pub cells: Cells,
    /// Go on when the slot is ahead of the checkpoint, recording the gap (`--accept-gap`).
    pub accept_gap: bool,
    /// Sign and chain digests of the files with this key (`--signing-key`, src/integrity/).
    pub signing_key: Option<PathBuf>,
    /// The longest between two digests while rows arrive (`--digest-interval`).
    pub digest_interval: Duration,
    /// Publish every row to JetStream too (`--nats`).
    pub nats: Option<crate::sink::nats::NatsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("could not record the accepted gap: {0}")]
    Gap(#[from] GapError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the walsender sent an invalid message: {0}")]
    Message(#[from] ReplicationMessageError),
    #[error("could not decode the change at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("invalid change stream at {lsn}: {source}")]
    Capture { lsn: Lsn, source: CaptureError },
    /// A sink other than the files failed (the files' errors stay `Sink`).
    #[error(transparent)]
    Output(SinkFailure),
    /// Without files (`--no-files`), the slot is missing although JetStream holds rows of this
    /// database: it was dropped, and what committed since is in no stream.
    #[error(
        "replication slot \"{slot}\" does not exist, but JetStream stream \"{stream}\" holds this \
         database's rows up to {lsn}: the slot was dropped, so rows committed since are not in \
         JetStream (they are in the nightly export); to go on from now, publish to another \
         --nats-stream or --nats-subject-prefix (a new slot is then created), or create the slot \
         yourself and accept the gap"
    )]
    SlotDroppedUnderNats {
        slot: String,
        stream: String,
        lsn: Lsn,
    },
    /// NATS could not be set up (`--nats`): refused credentials, no stream.
    #[error(transparent)]
    Nats(#[from] crate::sink::nats::NatsError),
}

impl From<SinkFailure> for StreamError {
    fn from(failure: SinkFailure) -> StreamError {
        if failure.kind != crate::sink::FailureKind::Fatal {
            return StreamError::Output(failure);
        }
        let kind = failure.kind;
        match failure.into_inner().downcast::<SinkError>() {
            Ok(files) => StreamError::Sink(*files),
            Err(other) => match other.downcast::<crate::sink::nats::NatsError>() {
                Ok(nats) => StreamError::Nats(*nats),
                Err(other) => StreamError::Output(SinkFailure::new(kind, other)),
            },
        }
    }
}

impl StreamError {
    /// Whether reconnecting cannot help, so the program must stop and say why.
    pub fn is_fatal(&self) -> bool {
        // The policy lives in src/error.rs, with main's exit codes.
        !crate::error::kind(self).is_retried()
    }
}

/// Streams until `--until` is reached, `shutdown` turns true, or stdout is closed (all exit 0),
/// or a fatal error.
pub async fn run<W: Write + Send>(
    config: StreamConfig,
    mut shutdown: watch::Receiver<bool>,
    out: W,
) -> Result<(), StreamError> {
    // Read before opening the files, which stores the checkpoint again: should the slot turn out
    // to be ahead, this is when the out-dir's stream last moved, where a gap begins.
    let stored_before = config.out_dir.as_deref().and_then(stored_at);
    let files = match &config.out_dir {
        Some(dir) => Some(open_files(&config, dir)?),
        None => None,
    };
    let opened_at = files.as_ref().map(StreamFiles::durable_lsn);
    if let Some(files) = &files {
        crate::metrics::get().inspect(|m| m.files_opened(files.durable()));
    }
    let mut others: Vec<Box<dyn Sink + Send + '_>> = Vec::new();
    if config.format != Format::None {
        others.push(Box::new(Printer::new(config.format, out)));
    }
    if let Some(nats) = &config.nats {
        let stop = shutdown.clone();
        let Some(system_id) =
            crate::sink::nats::server_system_id(&config.conn, || *stop.borrow()).await?
        else {
            tracing::info!("stopped on signal while waiting for PostgreSQL");
            return Ok(());
        };
        let stop = shutdown.clone();
        let sink =
            crate::sink::nats::NatsSink::start(nats, (&config.conn.dbname, system_id), move || {
                *stop.borrow()
            })
            .await?;
        match sink {
            Some(sink) => others.push(Box::new(sink)),
            None => {
                tracing::info!("stopped on signal while waiting for NATS");
                return Ok(());
            }
        }
    }
    let mut progress = Progress::new(files, others);
    let mut target = match config.until {
        Some(Until::Lsn(lsn)) => Some(lsn),
        _ => None,
    };
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        // Once this process moved the checkpoint, the state file's time is its last move.
        let last_moved = if progress.primary().as_ref().map(StreamFiles::durable_lsn) == opened_at {
            stored_before
        } else {
            config.out_dir.as_deref().and_then(stored_at)
        };
        let mut session = Session {
            config: &config,
            progress: &mut progress,
            target: &mut target,
            streaming: false,
            last_moved,
        };
        let result = session.run(&mut shutdown).await;
        let streamed = session.streaming;
        crate::metrics::record_end(result.as_ref().err());
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fatal() => {
                // Keep what is complete; the files stay consistent with the checkpoint either way.
                if let Err(sink) = progress.flush() {
                    tracing::error!(error = %sink, "could not make the last rows durable");
                }
                return Err(e);
            }
            Err(e) => {
                // Keep what is complete, forget the rest: the server sends it again.
                progress.flush()?;
                progress.rewind()?;
                if streamed {
                    backoff = BACKOFF_FIRST;
                    attempt = 0;
                }
                attempt += 1;
                tracing::warn!(attempt, retry_in = ?backoff, error = %e, "stream interrupted; reconnecting");
                tokio::select! {
                    _ = sleep(backoff) => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Opens the files of `dir`, with the signer of their digests when `--signing-key` is given.
fn open_files(config: &StreamConfig, dir: &std::path::Path) -> Result<StreamFiles, StreamError> {
    let signing_key = match &config.signing_key {
        Some(path) => Some(crate::integrity::load_signing_key(path).map_err(SinkError::from)?),
        None => None,
    };
    let mut files = StreamFiles::open(dir, config.cells)?;
    if let Some(key) = signing_key {
        let mut writer =
            crate::integrity::DigestWriter::open(dir, key, config.digest_interval, files.durable())
                .map_err(SinkError::from)?;
        tracing::info!(key = writer.key_id(), "signing digests of the files");
        if let Some(nats) = &config.nats {
            // Each digest to JetStream as well, off this machine (src/integrity/nats.rs).
            writer.add_publisher(Box::new(
                crate::integrity::nats::NatsDigests::start(nats.clone(), &config.conn.dbname, dir)
                    .map_err(SinkError::from)?,
            ));
        }
        files.set_signer(writer);
    }
    Ok(files)
}

/// Resolves once `shutdown` is true; never when its sender is gone without saying so.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// When the state file of `dir` was last stored, if there is one.
fn stored_at(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(STATE_FILE))
        .and_then(|m| m.modified())
        .ok()
}
