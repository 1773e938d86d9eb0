//! Sinks: where captured rows go, after `capture` and before the acknowledgement in the flow.
//! `files` writes the rolling daily CSV files through the one COPY-identical encoder `copy_csv`
//! (its `Sink` side is in `file_sink`); `stdout` prints rows for people (`text`) or programs
//! (`json`); `memory` keeps them in memory for tests. `seal` writes the manifest of a day
//! whose files can receive no more rows.
//!
//! Every sink speaks one interface, `Sink`: rows and commits in, a durable position out. The
//! stream's progress (src/stream/progress.rs) acknowledges to the server the lowest durable
//! position over all sinks, so a sink that accepts now and becomes durable later (a broker's
//! publish acknowledgements) simply holds the acknowledgement back until it is.

use std::fmt;

use crate::capture::Row;
use crate::lsn::{Lsn, PgTimestamp};

pub mod copy_csv;
pub mod file_sink;
pub mod files;
pub mod memory;
pub mod nats;
pub mod seal;
pub mod stdout;
pub mod text;

/// The transaction a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    pub commit_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// One destination of the stream.
///
/// The stream calls `row` for each row of a transaction and `commit` at its end; the sink may
/// keep them wherever it likes, but reports through `durable` only what survives a crash. Before
/// each connection, `resume_point` says which transactions the sink already holds: the stream
/// gives it none whose commit LSN is below (the skip rule, per sink).
pub trait Sink {
    /// A short name for logs ("files", "stdout").
    fn name(&self) -> &'static str;

    /// Where this sink resumes: transactions committed below it are already in the sink and are
    /// not given again. `None`: the sink keeps nothing (a live view) and takes whatever the
    /// server sends, repeats after a reconnect included.
    fn resume_point(&self) -> Option<Lsn>;

    /// A row of `txn`.
    fn row(&mut self, row: &Row, txn: Txn) -> Result<(), SinkFailure>;

    /// `txn` is complete; its rows become durable with the position `end_lsn`.
    fn commit(&mut self, txn: Txn, end_lsn: Lsn) -> Result<(), SinkFailure>;

    /// Nothing before `lsn` holds a row for this sink (a keepalive position while no
    /// transaction is open): a sink that records its position may move it there.
    fn idle(&mut self, lsn: Lsn) {
        let _ = lsn;
    }

    /// Makes what was accepted durable, or starts to: a sink whose durability comes later may
    /// return at once and move `durable` when it does.
    fn flush(&mut self) -> Result<(), SinkFailure>;

    /// The position up to which everything this sink accepted is durable; `None` for a sink
    /// that holds nothing back (it never delays the acknowledgement).
    fn durable(&self) -> Option<Lsn>;

    /// Forgets everything that is not durable, before the server sends it again on a new
    /// connection.
    fn rewind(&mut self) -> Result<(), SinkFailure>;

    /// For a sink that becomes durable later: notified whenever `durable` moves, so the stream
    /// acknowledges at once rather than at its next durable point.
    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// An absent sink (`stream --no-files` has no files in the primary's place): it takes every row
/// and keeps nothing, so it never holds the acknowledgement back; the other sinks decide it.
impl<S: Sink> Sink for Option<S> {
    fn name(&self) -> &'static str {
        self.as_ref().map_or("none", S::name)
    }

    fn resume_point(&self) -> Option<Lsn> {
        self.as_ref().and_then(S::resume_point)
    }

    fn row(&mut self, row: &Row, txn: Txn) -> Result<(), SinkFailure> {
        match self {
            Some(sink) => sink.row(row, txn),
            None => Ok(()),
        }
    }

    fn commit(&mut self, txn: Txn, end_lsn: Lsn) -> Result<(), SinkFailure> {
        match self {
            Some(sink) => sink.commit(txn, end_lsn),
            None => Ok(()),
        }
    }

    fn idle(&mut self, lsn: Lsn) {
        if let Some(sink) = self {
            sink.idle(lsn);
        }
    }

    fn flush(&mut self) -> Result<(), SinkFailure> {
        self.as_mut().map_or(Ok(()), S::flush)
    }

    fn durable(&self) -> Option<Lsn> {
        self.as_ref().and_then(S::durable)
    }

    fn rewind(&mut self) -> Result<(), SinkFailure> {
        self.as_mut().map_or(Ok(()), S::rewind)
    }

    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.as_ref().and_then(S::waker)
    }
}

/// What a sink failure means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Reconnecting and sending again from the durable position may succeed.
    Transient,
    /// Going on cannot help: the stream stops and says why.
    Fatal,
    /// The reader went away (stdout closed by `| head`): the stream stops normally.
    Closed,
}

/// A sink's error and what it means for the stream; shows as its cause.
#[derive(Debug)]
pub struct SinkFailure {
    pub kind: FailureKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl SinkFailure {
    pub fn new(
        kind: FailureKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> SinkFailure {
        SinkFailure {
            kind,
            source: source.into(),
        }
    }

    pub fn fatal(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        SinkFailure::new(FailureKind::Fatal, source)
    }

    pub fn transient(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        SinkFailure::new(FailureKind::Transient, source)
    }

    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }

    /// The sink's own error, to downcast (a file sink's `files::SinkError`).
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.source
    }
}

impl fmt::Display for SinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for SinkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}
