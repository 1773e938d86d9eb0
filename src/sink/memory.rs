//! An in-memory sink for tests and the fuzz target: it keeps every committed transaction, and
//! can be told to become durable only later (as a broker that acknowledges publishes does) or to
//! fail once, transiently or fatally. Clones share one store, so a test keeps a clone to look
//! inside while the stream owns the other.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{FailureKind, Sink, SinkFailure, Txn};
use crate::capture::Row;
use crate::lsn::Lsn;

/// A committed transaction as the sink received it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub txn: Txn,
    pub end_lsn: Lsn,
    pub rows: Vec<Row>,
}

#[derive(Debug, Default)]
struct Store {
    /// Rows of the transaction being received.
    open: Vec<Row>,
    /// Every transaction accepted, in commit order; the first `durable_count` are durable.
    committed: Vec<Committed>,
    durable_count: usize,
    /// The position everything accepted is complete up to (commits and idle positions).
    accepted: Lsn,
    durable: Lsn,
    /// Whether `flush` makes everything durable (a disk) or only `settle` does (a broker).
    settles_later: bool,
    /// The next call that can fail fails like this.
    fail_next: Option<FailureKind>,
}

/// A sink that keeps rows in memory; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    store: Arc<Mutex<Store>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the memory sink was told to fail")]
struct Injected;

impl MemorySink {
    /// A sink that is durable as soon as it is flushed, like the files.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A sink that accepts at once and becomes durable only when `settle` says so.
    pub fn settling_later() -> MemorySink {
        let sink = MemorySink::default();
        sink.store().settles_later = true;
        sink
    }

    /// A sink that already holds everything up to `lsn` (as after an earlier run).
    pub fn resuming_at(self, lsn: Lsn) -> MemorySink {
        {
            let mut store = self.store();
            store.accepted = lsn;
            store.durable = lsn;
        }
        self
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A test that panicked while holding the lock has failed already; its data is still fine.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes everything accepted up to `lsn` durable (a broker's acknowledgement arriving).
    pub fn settle(&self, lsn: Lsn) {
        let mut store = self.store();
        let count = store
            .committed
            .iter()
            .take_while(|c| c.end_lsn <= lsn)
            .count();
        store.durable_count = store.durable_count.max(count);
        let settled = lsn.min(store.accepted);
        store.durable = store.durable.max(settled);
    }

    /// The next row, commit or flush fails with `kind`.
    pub fn fail_next(&self, kind: FailureKind) {
        self.store().fail_next = Some(kind);
    }

    /// Every transaction accepted, durable or not.
    pub fn committed(&self) -> Vec<Committed> {
        self.store().committed.clone()
    }

    /// The transactions that are durable.
    pub fn durable_transactions(&self) -> Vec<Committed> {
        let store = self.store();
        store.committed[..store.durable_count].to_vec()
    }

    fn injected(&self) -> Result<(), SinkFailure> {
        match self.store().fail_next.take() {
            Some(kind) => Err(SinkFailure::new(kind, Injected)),
            None => Ok(()),
        }
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn resume_point(&self) -> Option<Lsn> {
        Some(self.store().durable)
    }

    fn row(&mut self, row: &Row, _txn: Txn) -> Result<(), SinkFailure> {
        self.injected()?;
        self.store().open.push(row.clone());
        Ok(())
    }

    fn commit(&mut self, txn: Txn, end_lsn: Lsn) -> Result<(), SinkFailure> {
        self.injected()?;
        let mut store = self.store();
        let rows = std::mem::take(&mut store.open);
        store.committed.push(Committed { txn, end_lsn, rows });
        store.accepted = store.accepted.max(end_lsn);
        Ok(())
    }

    fn idle(&mut self, lsn: Lsn) {
        let mut store = self.store();
        store.accepted = store.accepted.max(lsn);
    }

    fn flush(&mut self) -> Result<(), SinkFailure> {
        self.injected()?;
        let mut store = self.store();
        if !store.settles_later {
            store.durable_count = store.committed.len();
            store.durable = store.accepted;
        }
        Ok(())
    }

    fn durable(&self) -> Option<Lsn> {
        Some(self.store().durable)
    }

    fn rewind(&mut self) -> Result<(), SinkFailure> {
        let mut store = self.store();
        let keep = store.durable_count;
        store.committed.truncate(keep);
        store.open.clear();
        store.accepted = store.durable;
        Ok(())
    }
}
