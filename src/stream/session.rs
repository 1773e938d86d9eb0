//! One connection's worth of streaming: pre-flight over SQL, the replication connection,
//! START_REPLICATION, then the loop that takes each message through capture into the sinks and
//! acknowledges what is durable. Everything before streaming ends at once on shutdown, as the
//! loop does.
//!
//! The loop decides nothing by itself: `FlushPolicy` says when to make commits durable,
//! `Progress` what to acknowledge, `Liveness` when to send a status and when the connection is
//! dead. It handles messages already in the read buffer without a trip through `select!`, and
//! runs the clock-driven checks when the buffer runs dry and every `CHECK_EVERY` messages.

use std::io;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::flush::FlushPolicy;
use super::liveness::Liveness;
use super::preflight::{claim_out_dir, without_files};
use super::progress::Progress;
use super::{StreamConfig, StreamError, Until, stopped};
use crate::capture::{Capture, CaptureError, Event};
use crate::coverage::Sampler;
use crate::latency::Latency;
use crate::lsn::{Lsn, PgTimestamp};
use crate::metrics::backlog::Backlog;
use crate::pgoutput;
use crate::replication::messages::{self, ServerMessage};
use crate::replication::slot;
use crate::sink::files::StreamFiles;
use crate::sink::{FailureKind, Txn};
use crate::sql;
use crate::wire::conn::CopyMessage;
use crate::wire::{WalConnection, WireError};

/// While messages are buffered, the clock-driven checks run once per this many of them: they
/// are due on a scale of milliseconds, a message takes a microsecond.
const CHECK_EVERY: u32 = 64;
/// How often the commit-to-disk latency is logged (and once more when the stream stops).
const LATENCY_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// One connection's worth of streaming.
pub(super) struct Session<'s, 'a> {
    pub config: &'s StreamConfig,
    pub progress: &'s mut Progress<'a, Option<StreamFiles>>,
    pub target: &'s mut Option<Lsn>,
    /// Whether START_REPLICATION succeeded (resets the reconnect backoff).
    pub streaming: bool,
    /// When the checkpoint last moved (the state file's time), if known.
    pub last_moved: Option<SystemTime>,
}

/// The loop's state between messages.
struct State {
    capture: Capture,
    flush: FlushPolicy,
    live: Liveness,
    /// Messages handled since the periodic checks last ran.
    unchecked: u32,
    /// Rows of the transaction being received.
    rows_in_txn: u64,
    latency: Latency,
    last_latency_report: Instant,
    /// The server's WAL position and clock, for the checkpoint's `covered` line.
    sampler: Sampler,
    /// Progress on stderr while catching up on a backlog.
    backlog: Backlog,
}

impl Session<'_, '_> {
    pub async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), StreamError> {
        // Connecting and pre-flight wait on the network (up to connect_timeout, or longer for a
        // server that accepts and never answers): a signal ends them at once. Nothing they do
        // is left half done, since the out-dir changes they make have no await in between.
        let (conn, start) = tokio::select! {
            biased;
            _ = stopped(shutdown) => {
                tracing::info!("stopped on signal before streaming began");
                return Ok(());
            }
            connected = self.connect() => connected?,
        };
        self.stream(conn, start, shutdown).await
    }

    /// Pre-flight, the replication connection, and START_REPLICATION from where the sinks
    /// resume.
    async fn connect(&mut self) -> Result<(WalConnection, Lsn), StreamError> {
        let cfg = self.config;
        let client = sql::connect_params(&cfg.conn).await?;
        let found = self.preflight(&client).await?;
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
        let start = self.progress.start();
        // A sink resuming from further back than the slot (JetStream behind the files) does
        // not make the flush position sent go below where the slot already is.
        if let Some(confirmed) = found.streams_from(Lsn::ZERO) {
            self.progress.slot_confirmed(confirmed);
        }
        conn.start_copy_both(&slot::start_replication_command(
            &cfg.slot,
            start,
            &cfg.publication,
        ))
        .await?;
        self.streaming = true;
        crate::metrics::get().inspect(|m| m.streaming(true));
        // The server sends what commits after the larger of `start` and the slot's position:
        // say which, so a reader of the log knows from where the files are complete.
        match found.streams_from(start) {
            Some(from) => tracing::info!(
                slot = %cfg.slot, %start, %from, server = %cfg.conn,
                "streaming: every transaction committing after {from} goes to the {}",
                if cfg.out_dir.is_some() { "files" } else { "sinks" }
            ),
            None => tracing::info!(slot = %cfg.slot, %start, server = %cfg.conn, "streaming"),
        }
        Ok((conn, start))
    }

    async fn stream(
        &mut self,
        mut conn: WalConnection,
        start: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError> {
        let cfg = self.config;
        let now = Instant::now();
        let mut state = State {
            capture: Capture::new(start),
            flush: FlushPolicy::default(),
            live: Liveness::new(cfg.status_interval, now),
            unchecked: 0,
            rows_in_txn: 0,
            latency: Latency::default(),
            last_latency_report: now,
            // Sampled from here on: the slot now sends everything that commits later.
            sampler: Sampler::spawn(cfg.conn.clone(), cfg.status_interval),
            backlog: Backlog::new(cfg.status_interval),
        };
        let waker = self.progress.waker();
        loop {
            if state.unchecked >= CHECK_EVERY || !conn.has_buffered_message() {
                state.unchecked = 0;
                if let Some(why) = self.checks(&mut conn, &mut state).await? {
                    return self.stop(conn, &mut state, why).await;
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
                    let status_at = state.live.status_at(self.target.is_some());
                    let flush_at = state.flush.deadline();
                    tokio::select! {
                        biased;
                        _ = stopped(shutdown) => {
                            return self.stop(conn, &mut state, "stopped on signal").await;
                        }
                        message = conn.recv() => {
                            state.live.received(Instant::now());
                            message?
                        }
                        _ = sleep_until(flush_at.unwrap_or(status_at)), if flush_at.is_some() => {
                            self.make_durable(&mut conn, &mut state).await?;
                            continue;
                        }
                        _ = notified(waker.as_deref()), if waker.is_some() => {
                            // A later-durable sink (JetStream) moved, or failed: acknowledge
                            // at once, or stop on its failure even if no row comes any more.
                            self.progress.flush()?;
                            if self.progress.ack_due() {
                                self.send_status(&mut conn, &mut state, false).await?;
                            }
                            continue;
                        }
                        _ = sleep_until(status_at) => {
                            // Ask for a keepalive: it proves the connection alive, and while
                            // waiting for --until it tells the server's position.
                            self.send_status(&mut conn, &mut state, true).await?;
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
                Err(StreamError::Output(f)) if f.kind == FailureKind::Closed => {
                    return self
                        .stop(conn, &mut state, "stdout was closed; stopping")
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The clock-driven checks: `--until` reached (returns why to stop), a durable point due, a
    /// connection silent for too long (an error: it is replaced), a status update due.
    async fn checks(
        &mut self,
        conn: &mut WalConnection,
        state: &mut State,
    ) -> Result<Option<&'static str>, StreamError> {
        if let Some(target) = *self.target
            && self.progress.durable() >= target
            && !state.capture.in_transaction()
        {
            tracing::info!(%target, "reached --until");
            return Ok(Some("stopping"));
        }
        state.backlog.tick(&state.sampler);
        if state.flush.due(Instant::now(), conn.has_buffered_message()) {
            self.make_durable(conn, state).await?;
        }
        let now = Instant::now();
        if let Some(silent_for) = state.live.silent(now) {
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "nothing from the server for {} s although replies were asked for",
                    silent_for.as_secs()
                ),
            ))
            .into());
        }
        // Checked here too: under steady load `recv` is always ready and would starve the timer
        // branch of the select. Always ask for a reply: its arrival proves the connection alive.
        if state.live.status_due(now, self.target.is_some()) {
            self.send_status(conn, state, true).await?;
        }
        Ok(None)
    }

    /// Pre-flight: the out-dir's claim on the slot, or without files, JetStream's.
    async fn preflight(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<slot::SlotFound, StreamError> {
        let cfg = self.config;
        let last_moved = self.last_moved;
        if let (Some(files), Some(out_dir)) =
            (self.progress.primary_mut().as_mut(), cfg.out_dir.as_deref())
        {
            return claim_out_dir(cfg, files, out_dir, last_moved, client).await;
        }
        let held = self.progress.resume_point().unwrap_or(Lsn::ZERO);
        without_files(cfg, held, client).await
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
        tracing::info!(durable = %self.progress.durable(), "{why}");
        Ok(())
    }

    /// Takes one message from the walsender; returns whether the server asked for a reply.
    fn handle(&mut self, message: ServerMessage, state: &mut State) -> Result<bool, StreamError> {
        match message {
            ServerMessage::XLogData { start, payload, .. } => {
                self.progress.received(start);
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
                        self.progress.begin(Txn {
                            commit_lsn,
                            commit_time,
                        });
                        state.flush.began(commit_time, PgTimestamp::now());
                    }
                    Some(Event::Row(row)) => {
                        if !self.progress.in_transaction() {
                            return Err(StreamError::Capture {
                                lsn: start,
                                source: CaptureError::OutOfOrder("row outside a transaction"),
                            });
                        }
                        self.progress.row(&row)?;
                        state.rows_in_txn += 1;
                    }
                    Some(Event::Commit {
                        end_lsn,
                        commit_time,
                        ..
                    }) => {
                        state
                            .latency
                            .committed(commit_time, std::mem::take(&mut state.rows_in_txn));
                        crate::metrics::get().inspect(|m| m.transaction(commit_time));
                        state.backlog.committed(commit_time, end_lsn);
                        self.progress.commit(end_lsn)?;
                        state
                            .flush
                            .committed(commit_time, PgTimestamp::now(), Instant::now());
                    }
                }
                Ok(false)
            }
            ServerMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.keepalive(wal_end, reply_requested, state);
                Ok(reply_requested)
            }
        }
    }

    /// A keepalive at `wal_end`: while no transaction is open and everything is durable, the
    /// position is confirmed too (at most each second, or when asked or `--until` is reached),
    /// so a quiet publication on a busy server does not pin WAL.
    fn keepalive(&mut self, wal_end: Lsn, reply_requested: bool, state: &mut State) {
        let now = Instant::now();
        let idle = !state.capture.in_transaction() && self.progress.all_durable();
        let due = state.live.idle_ack_due(now)
            || reply_requested
            || self.target.is_some_and(|t| wal_end >= t);
        if idle && due && self.progress.idle(wal_end) {
            state.live.idle_acked(now);
            // Nothing to batch with: make it durable at the next check.
            state.flush.urgent(now);
        }
        if let Some(sample) = state.sampler.latest()
            && let Some(files) = self.progress.primary_mut()
            && files.cover(&sample)
        {
            state.flush.pending(now);
        }
    }

    /// Makes what the sinks accepted durable, and acknowledges the new durable position.
    async fn make_durable(
        &mut self,
        conn: &mut WalConnection,
        state: &mut State,
    ) -> Result<(), StreamError> {
        if let (Some(sample), Some(files)) = (state.sampler.latest(), self.progress.primary_mut()) {
            files.cover(&sample);
        }
        // fsync blocks this task; a disk slower than wal_sender_timeout would trip it, which the
        // periodic status cannot help.
        self.progress.flush()?;
        let now = PgTimestamp::now();
        crate::metrics::get().inspect(|m| m.made_durable(state.latency.pending(), now));
        state.latency.durable(now);
        state.flush.flushed();
        if state.last_latency_report.elapsed() >= LATENCY_REPORT_INTERVAL {
            report_latency(state);
        }
        if self.progress.ack_due() {
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
        let (written, flushed) = self.progress.status();
        let mut buf = BytesMut::with_capacity(34);
        messages::standby_status(&mut buf, written, flushed, PgTimestamp::now(), reply);
        conn.send_copy_data(&buf).await?;
        crate::metrics::get().inspect(|m| m.confirmed(flushed));
        state.live.status_sent(Instant::now());
        tracing::trace!(%written, %flushed, "status update");
        Ok(())
    }
}

/// Resolves when `waker` is notified (never without one).
async fn notified(waker: Option<&tokio::sync::Notify>) {
    match waker {
        Some(waker) => waker.notified().await,
        None => std::future::pending().await,
    }
}

/// Milliseconds to one decimal, for the log.
fn tenth_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
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
