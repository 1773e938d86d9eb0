//! `audit-tail stream`: drives the flow wire → replication → pgoutput → capture → sinks →
//! checkpoint → acknowledgement, and reconnects when the connection is lost.
//!
//! Durability is batched: after a commit the files are fsynced and the checkpoint stored as soon
//! as no further message is already buffered, or at the latest `FLUSH_DELAY` after the first
//! commit not yet durable. Only then is the commit's end LSN sent to the server as flushed. While
//! no transaction is open and everything is durable, keepalive positions are acknowledged too, so
//! a quiet publication on a busy server does not pin WAL.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDate, Utc};

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use crate::capture::{Capture, CaptureError, Event};
use crate::checkpoint::STATE_FILE;
use crate::coverage::Sampler;
use crate::gaps::{self, Gap, GapError};
use crate::latency::Latency;
use crate::lsn::{Lsn, PgTimestamp};
use crate::pgoutput::{self, DecodeError};
use crate::replication::messages::{self, ReplicationMessageError, ServerMessage};
use crate::replication::slot::{self, PreflightError};
use crate::sink::copy_csv::Cells;
use crate::sink::files::{SinkError, StreamFiles};
use crate::sink::stdout::{Format, Printer};
use crate::sql::{self, SqlError};
use crate::wire::conn::CopyMessage;
use crate::wire::{ConnParams, WalConnection, WireError};

/// The longest a committed row waits for its fsync under steady load.
const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// While messages are buffered, the clock-driven checks run once per this many of them.
const CHECK_EVERY: u32 = 64;
/// A commit older than this (server clock against ours) means a backlog is being drained: then
/// fsyncs are batched over `FLUSH_DELAY` even when the read buffer runs dry between reads, since
/// the rows are late anyway and each durable point costs three syncs.
const CATCHING_UP: Duration = Duration::from_secs(1);
/// The default of `--status-interval`: a status update goes to the server at least this often
/// (well inside wal_sender_timeout), asking for a reply; a connection that stays silent for
/// `SILENT_INTERVALS` of them is dead (a stalled network path, a frozen server) and is replaced.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
const SILENT_INTERVALS: u32 = 3;
/// Idle keepalive positions are made durable at most this often.
const IDLE_ACK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the commit-to-disk latency is logged (and once more when the stream stops).
const LATENCY_REPORT_INTERVAL: Duration = Duration::from_secs(60);
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
    pub out_dir: PathBuf,
    pub format: Format,
    pub until: Option<Until>,
    /// How often a status update goes to the server (default `STATUS_INTERVAL`).
    pub status_interval: Duration,
    /// How values are written to the files (`--safe-csv`).
    pub cells: Cells,
    /// Go on when the slot is ahead of the checkpoint, recording the gap (`--accept-gap`).
    pub accept_gap: bool,
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
    #[error("could not write to stdout: {0}")]
    Stdout(io::Error),
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
pub async fn run<W: Write>(
    config: StreamConfig,
    mut shutdown: watch::Receiver<bool>,
    out: W,
) -> Result<(), StreamError> {
    // Read before opening the files, which stores the checkpoint again: should the slot turn out
    // to be ahead, this is when the out-dir's stream last moved, where a gap begins.
    let stored_before = stored_at(&config.out_dir);
    let mut files = StreamFiles::open(&config.out_dir, config.cells)?;
    let opened_at = files.durable_lsn();
    let mut printer = Printer::new(config.format, out);
    let mut target = match config.until {
        Some(Until::Lsn(lsn)) => Some(lsn),
        _ => None,
    };
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        // Once this process moved the checkpoint, the state file's time is its last move.
        let last_moved = if files.durable_lsn() == opened_at {
            stored_before
        } else {
            stored_at(&config.out_dir)
        };
        let mut session = Session {
            config: &config,
            files: &mut files,
            printer: &mut printer,
            target: &mut target,
            streaming: false,
            last_moved,
        };
        let result = session.run(&mut shutdown).await;
        let streamed = session.streaming;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fatal() => {
                // Keep what is complete; the files stay consistent with the checkpoint either way.
                if let Err(sink) = files.make_durable() {
                    tracing::error!(error = %sink, "could not make the last rows durable");
                }
                return Err(e);
            }
            Err(e) => {
                files.make_durable()?;
                files.rewind()?;
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

/// Resolves once `shutdown` is true; never when its sender is gone without saying so.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One connection's worth of streaming.
struct Session<'a, W: Write> {
    config: &'a StreamConfig,
    files: &'a mut StreamFiles,
    printer: &'a mut Printer<W>,
    target: &'a mut Option<Lsn>,
    /// Whether START_REPLICATION succeeded (resets the reconnect backoff).
    streaming: bool,
    /// When the checkpoint last moved (the state file's time), if known.
    last_moved: Option<SystemTime>,
}

/// The transaction being received.
#[derive(Clone, Copy)]
struct Txn {
    commit_lsn: Lsn,
    commit_time: PgTimestamp,
}

impl<W: Write> Session<'_, W> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), StreamError> {
        let cfg = self.config;
        let client = sql::connect_params(&cfg.conn).await?;
        self.claim_out_dir(&client).await?;
        drop(client);

        let mut conn = WalConnection::connect(&cfg.conn).await?;
        if cfg.until == Some(Until::Now) && self.target.is_none() {
            let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
            let position = rows
                .first()
                .and_then(|row| row.get(2).cloned().flatten())
                .and_then(|text| text.parse::<Lsn>().ok())
                .ok_or_else(|| WireError::Protocol("IDENTIFY_SYSTEM without xlogpos".into()))?;
            *self.target = Some(position);
            tracing::info!(until = %position, "will stop once every transaction committed before this position is durable");
        }
        let start = self.files.durable_lsn();
        conn.start_copy_both(&slot::start_replication_command(
            &cfg.slot,
            start,
            &cfg.publication,
        ))
        .await?;
        self.streaming = true;
        tracing::info!(slot = %cfg.slot, %start, server = %cfg.conn, "streaming");

        let mut state = State {
            capture: Capture::new(start),
            rows_in_txn: 0,
            latency: Latency::default(),
            last_latency_report: Instant::now(),
            txn: None,
            received: start,
            acked: start,
            pending_since: None,
            unchecked: 0,
            catching_up: false,
            last_status: Instant::now(),
            last_received: Instant::now(),
            last_idle_ack: Instant::now(),
            // Sampled from here on: the slot now sends everything that commits later.
            sampler: Sampler::spawn(cfg.conn.clone(), cfg.status_interval),
        };
        loop {
            let status_every = if self.target.is_some() {
                IDLE_ACK_INTERVAL.min(cfg.status_interval)
            } else {
                cfg.status_interval
            };
            // Between buffered messages the clock is read only every CHECK_EVERY of them: the
            // checks below are due on a scale of milliseconds, a message takes a microsecond.
            if state.unchecked >= CHECK_EVERY || !conn.has_buffered_message() {
                state.unchecked = 0;
                if let Some(target) = *self.target
                    && self.files.durable_lsn() >= target
                    && !state.capture.in_transaction()
                {
                    tracing::info!(%target, "reached --until");
                    return self.stop(conn, &mut state, "stopping").await;
                }
                if let Some(since) = state.pending_since
                    && (since.elapsed() >= FLUSH_DELAY
                        || (!state.catching_up && !conn.has_buffered_message()))
                {
                    self.make_durable(&mut conn, &mut state).await?;
                }
                let silent_for = cfg.status_interval * SILENT_INTERVALS;
                if state.last_received.elapsed() >= silent_for {
                    return Err(WireError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing from the server for {} s although replies were asked for",
                            silent_for.as_secs()
                        ),
                    ))
                    .into());
                }
                // Checked here too: under steady load `recv` is always ready and would starve
                // the timer branch below.
                if state.last_status.elapsed() >= status_every {
                    // Always ask for a reply: its arrival proves the connection is alive.
                    let ask = true;
                    self.send_status(&mut conn, &mut state, ask).await?;
                }
            }
            // A message already buffered needs no wait: the select below (timers, the signal)
            // would cost more than handling it, and the checks above run between messages.
            let buffered = match conn.try_recv()? {
                Some(_) if *shutdown.borrow() => {
                    return self.stop(conn, &mut state, "stopped on signal").await;
                }
                buffered => buffered,
            };
            let message = match buffered {
                Some(message) => message,
                None => {
                    let status_at = state.last_status + status_every;
                    let flush_at = state.pending_since.map(|t| t + FLUSH_DELAY);
                    tokio::select! {
                        biased;
                        _ = stopped(shutdown) => {
                            return self.stop(conn, &mut state, "stopped on signal").await;
                        }
                        message = conn.recv() => {
                            state.last_received = Instant::now();
                            message?
                        }
                        _ = sleep_until(flush_at.unwrap_or(status_at)), if flush_at.is_some() => {
                            self.make_durable(&mut conn, &mut state).await?;
                            continue;
                        }
                        _ = sleep_until(status_at) => {
                            // Ask for a keepalive: it proves the connection alive, and while
                            // waiting for --until it tells the server's position.
                            let ask = true;
                            self.send_status(&mut conn, &mut state, ask).await?;
                            continue;
                        }
                    }
                }
            };
            state.unchecked += 1;
            let data = match message {
                CopyMessage::Data(data) => data,
                CopyMessage::Done => return Err(WireError::Ended.into()),
            };
            match self.handle(messages::decode(data)?, &mut state) {
                Ok(true) => self.send_status(&mut conn, &mut state, false).await?,
                Ok(false) => {}
                Err(StreamError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return self
                        .stop(conn, &mut state, "stdout was closed; stopping")
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pre-flight, and the out-dir's claim on the slot: refuses an out-dir of another server,
    /// database or slot, and a slot ahead of the checkpoint unless `--accept-gap` (then the gap
    /// is recorded before the checkpoint moves to the slot's position); records the identity of
    /// an out-dir that has none yet.
    async fn claim_out_dir(&mut self, client: &tokio_postgres::Client) -> Result<(), StreamError> {
        let cfg = self.config;
        let out_dir = cfg.out_dir.display().to_string();
        let identity = slot::identify(client, &cfg.slot).await?;
        let checkpoint = self.files.durable();
        let adopt = checkpoint.identity.is_none();
        slot::check_identity(checkpoint.identity.as_ref(), &identity, &out_dir)?;
        let found = slot::preflight(
            client,
            &cfg.slot,
            &cfg.publication,
            self.files.durable_lsn(),
            &out_dir,
        )
        .await?;
        let checkpoint = self.files.durable();
        let resume = slot::resume(
            found,
            checkpoint.lsn,
            !checkpoint.files.is_empty(),
            cfg.accept_gap,
            &cfg.slot,
            &out_dir,
        )?;
        match resume {
            slot::Resume::Continue => {}
            slot::Resume::NewOutDir { confirmed } if adopt => {
                tracing::warn!(
                    slot = %cfg.slot, %confirmed, out_dir,
                    "the replication slot already exists and was confirmed up to this position by \
                     another consumer: this new out-dir starts there, and rows committed before are \
                     not in this out-dir. If another out-dir streams from this slot, it will be \
                     refused from now on: give each out-dir a --slot of its own"
                );
            }
            slot::Resume::NewOutDir { .. } => {}
            slot::Resume::Gap { from, to } => {
                let gap = self.gap(client, from, to).await?;
                gaps::record(&cfg.out_dir, &gap)?;
                tracing::warn!(
                    %from, %to, first_day = %gap.first_day, last_day = %gap.last_day,
                    "--accept-gap: transactions in this range are not in the files; recorded in {}",
                    gaps::GAPS_FILE
                );
                self.files.skip_gap(to);
            }
        }
        if adopt {
            tracing::info!(
                system_id = identity.system_id, database = %identity.database, slot = %identity.slot,
                "recording which server, database and slot this out-dir streams"
            );
            self.files.set_identity(identity);
        }
        if !self.files.is_durable() {
            self.files.make_durable()?;
        }
        Ok(())
    }

    /// The gap from the checkpoint at `from` to the slot's `to`, dated on the server's clock.
    async fn gap(
        &self,
        client: &tokio_postgres::Client,
        from: Lsn,
        to: Lsn,
    ) -> Result<Gap, StreamError> {
        let recorded = Utc::now();
        let since: DateTime<Utc> = self.last_moved.map_or(recorded, DateTime::from);
        let row = client
            .query_one(
                "SELECT to_timestamp($1::float8)::date::text, current_date::text",
                &[&(since.timestamp_micros() as f64 / 1e6)],
            )
            .await
            .map_err(|e| SqlError::new("could not read the server's date", e))?;
        let day = |i: usize| {
            row.get::<_, String>(i)
                .parse::<NaiveDate>()
                .map_err(|e| WireError::Protocol(format!("the server's date is not a date: {e}")))
        };
        let (first_day, last_day) = (day(0)?, day(1)?);
        Ok(Gap {
            from,
            to,
            since,
            recorded,
            first_day: first_day.min(last_day),
            last_day,
        })
    }

    /// Makes everything received durable, acknowledges it, and closes the connection politely.
    async fn stop(
        &mut self,
        mut conn: WalConnection,
        state: &mut State,
        why: &str,
    ) -> Result<(), StreamError> {
        self.make_durable(&mut conn, state).await?;
        report_latency(state);
        conn.finish().await?;
        tracing::info!(durable = %self.files.durable_lsn(), "{why}");
        Ok(())
    }

    /// Takes one message from the walsender; returns whether the server asked for a reply.
    fn handle(&mut self, message: ServerMessage, state: &mut State) -> Result<bool, StreamError> {
        match message {
            ServerMessage::XLogData { start, payload, .. } => {
                state.received = state.received.max(start);
                let decoded = pgoutput::decode(payload)
                    .map_err(|source| StreamError::Decode { lsn: start, source })?;
                let event = state
                    .capture
                    .handle(decoded)
                    .map_err(|source| StreamError::Capture { lsn: start, source })?;
                match event {
                    None => {}
                    Some(Event::Begin {
                        commit_lsn,
                        commit_time,
                    }) => {
                        state.txn = Some(Txn {
                            commit_lsn,
                            commit_time,
                        });
                        state.catching_up = is_late(commit_time);
                    }
                    Some(Event::Row(row)) => {
                        let txn = state.txn.ok_or(StreamError::Capture {
                            lsn: start,
                            source: CaptureError::OutOfOrder("row outside a transaction"),
                        })?;
                        self.files.append(&row, txn.commit_time)?;
                        state.rows_in_txn += 1;
                        self.printer
                            .row(&row, txn.commit_lsn, txn.commit_time)
                            .map_err(StreamError::Stdout)?;
                    }
                    Some(Event::Commit {
                        end_lsn,
                        commit_time,
                        ..
                    }) => {
                        state.txn = None;
                        state
                            .latency
                            .committed(commit_time, std::mem::take(&mut state.rows_in_txn));
                        self.files.commit(end_lsn);
                        self.printer.flush().map_err(StreamError::Stdout)?;
                        state.pending_since.get_or_insert_with(Instant::now);
                        state.catching_up = is_late(commit_time);
                    }
                }
                Ok(false)
            }
            ServerMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                let idle = !state.capture.in_transaction() && self.files.is_durable();
                let due = state.last_idle_ack.elapsed() >= IDLE_ACK_INTERVAL
                    || reply_requested
                    || self.target.is_some_and(|t| wal_end >= t);
                if idle && due && wal_end > self.files.durable_lsn() {
                    self.files.advance_idle(wal_end);
                    state.last_idle_ack = Instant::now();
                    // Due now: nothing to wait for.
                    state.pending_since = Some(Instant::now() - FLUSH_DELAY);
                }
                if let Some(sample) = state.sampler.latest()
                    && self.files.cover(&sample)
                {
                    state.pending_since.get_or_insert_with(Instant::now);
                }
                Ok(reply_requested)
            }
        }
    }

    /// fsyncs the files, stores the checkpoint, and acknowledges the new durable position.
    async fn make_durable(
        &mut self,
        conn: &mut WalConnection,
        state: &mut State,
    ) -> Result<(), StreamError> {
        if let Some(sample) = state.sampler.latest() {
            self.files.cover(&sample);
        }
        // fsync blocks this task; a disk slower than wal_sender_timeout would trip it, which the
        // periodic status cannot help.
        let durable = self.files.make_durable()?;
        state.latency.durable(PgTimestamp::now());
        state.pending_since = None;
        if state.last_latency_report.elapsed() >= LATENCY_REPORT_INTERVAL {
            report_latency(state);
        }
        if durable > state.acked {
            self.send_status(conn, state, false).await?;
        }
        Ok(())
    }

    async fn send_status(
        &mut self,
        conn: &mut WalConnection,
        state: &mut State,
        reply: bool,
    ) -> Result<(), StreamError> {
        // Only what is durable is acknowledged, and it never moves backwards.
        let flushed = self.files.durable_lsn().max(state.acked);
        let written = state.received.max(flushed);
        let mut buf = BytesMut::with_capacity(34);
        messages::standby_status(&mut buf, written, flushed, PgTimestamp::now(), reply);
        conn.send_copy_data(&buf).await?;
        state.acked = flushed;
        state.last_status = Instant::now();
        tracing::trace!(%written, %flushed, "status update");
        Ok(())
    }
}

/// When the state file of `dir` was last stored, if there is one.
fn stored_at(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(STATE_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// Milliseconds to one decimal, for the log.
fn tenth_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Whether a transaction committed at `commit_time` arrives as part of a backlog.
fn is_late(commit_time: PgTimestamp) -> bool {
    PgTimestamp::now().0.saturating_sub(commit_time.0) > CATCHING_UP.as_micros() as i64
}

/// Logs the commit-to-disk latency of the rows made durable since the last report.
fn report_latency(state: &mut State) {
    state.last_latency_report = Instant::now();
    if let Some(s) = state.latency.take_summary() {
        tracing::info!(
            rows = s.rows,
            p50_ms = tenth_ms(s.p50),
            p99_ms = tenth_ms(s.p99),
            max_ms = tenth_ms(s.max),
            "commit-to-disk latency"
        );
    }
}

struct State {
    capture: Capture,
    /// Rows of the transaction being received.
    rows_in_txn: u64,
    latency: Latency,
    last_latency_report: Instant,
    txn: Option<Txn>,
    received: Lsn,
    acked: Lsn,
    /// When the first commit that is not yet durable arrived.
    pending_since: Option<Instant>,
    /// Messages handled since the periodic checks last ran.
    unchecked: u32,
    /// Whether the last commit was older than `CATCHING_UP`: a backlog is being drained, so
    /// durable points wait for `FLUSH_DELAY` rather than for the read buffer to run dry.
    catching_up: bool,
    last_status: Instant,
    last_received: Instant,
    last_idle_ack: Instant,
    /// The server's WAL position and clock, for the checkpoint's `covered` line.
    sampler: Sampler,
}
