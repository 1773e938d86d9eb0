//! The bookkeeping behind the rows and bytes counters: rows a sink accepted wait, per
//! transaction, until the sink says they are durable (or forgets them on a rewind, since the
//! server sends them again), so the counters agree with what a crash would leave. The file sink's
//! bytes are the growth of its files between durable checkpoints.
//!
//! A sink that becomes durable later than it accepts (JetStream: when the server acknowledges)
//! has its committed rows and bytes queued by the end position of their transaction, and counted
//! when its durable position reaches it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::capture::Table;
use crate::checkpoint::Checkpoint;
use crate::lsn::Lsn;

/// Rows of one table waiting to be durable in one sink.
struct Waiting {
    sink: &'static str,
    table: Arc<Table>,
    /// Rows of the transaction being received.
    open: u64,
    /// Their bytes (sinks that report them per row).
    open_bytes: u64,
    /// Rows of committed transactions, not yet durable.
    committed: u64,
}

/// Rows and bytes of one table in a transaction that ends at `end`, not yet durable in `sink`.
struct Queued {
    sink: &'static str,
    end: Lsn,
    table: String,
    rows: u64,
    bytes: u64,
}

/// Rows and bytes now durable, by `schema.table`.
pub(super) type Counted = Vec<(String, u64, u64)>;

#[derive(Default)]
pub(super) struct Figures {
    /// A handful of entries (one per sink and table), searched from the last one used.
    waiting: Vec<Waiting>,
    last: usize,
    /// Committed transactions of later-durable sinks, in the order committed.
    queued: VecDeque<Queued>,
    /// The file sink's durable file lengths, by file name.
    lengths: BTreeMap<String, u64>,
}

fn qualified(table: &Table) -> String {
    format!("{}.{}", table.schema, table.name)
}

impl Figures {
    pub fn row(&mut self, sink: &'static str, table: &Arc<Table>) {
        self.waiting(sink, table).open += 1;
    }

    pub fn row_bytes(&mut self, sink: &'static str, table: &Arc<Table>, bytes: u64) {
        let waiting = self.waiting(sink, table);
        waiting.open += 1;
        waiting.open_bytes += bytes;
    }

    fn waiting(&mut self, sink: &'static str, table: &Arc<Table>) -> &mut Waiting {
        // Most rows are of the table the previous row was: compare pointers first.
        let hit = self
            .waiting
            .get(self.last)
            .is_some_and(|w| w.sink == sink && Arc::ptr_eq(&w.table, table));
        if !hit {
            let found = self.waiting.iter().position(|w| {
                w.sink == sink
                    && (Arc::ptr_eq(&w.table, table)
                        || (w.table.schema == table.schema && w.table.name == table.name))
            });
            self.last = match found {
                Some(i) => i,
                None => {
                    self.waiting.push(Waiting {
                        sink,
                        table: table.clone(),
                        open: 0,
                        open_bytes: 0,
                        committed: 0,
                    });
                    self.waiting.len() - 1
                }
            };
        }
        &mut self.waiting[self.last]
    }

    pub fn commit_at(&mut self, sink: &'static str, end: Lsn) {
        for w in self
            .waiting
            .iter_mut()
            .filter(|w| w.sink == sink && w.open > 0)
        {
            self.queued.push_back(Queued {
                sink,
                end,
                table: qualified(&w.table),
                rows: std::mem::take(&mut w.open),
                bytes: std::mem::take(&mut w.open_bytes),
            });
        }
    }

    /// `sink` is durable up to `durable`: its transactions ending there or before are counted.
    pub fn durable_at(&mut self, sink: &'static str, durable: Lsn) -> Counted {
        let mut counted: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        self.queued.retain(|q| {
            let done = q.sink == sink && q.end <= durable;
            if done {
                let c = counted.entry(q.table.clone()).or_default();
                c.0 += q.rows;
                c.1 += q.bytes;
            }
            !done
        });
        counted.into_iter().map(|(t, (r, b))| (t, r, b)).collect()
    }

    /// `sink` is given everything from `resume` on again: what ends at or below it is durable
    /// (counted), the rest and any open transaction is forgotten.
    pub fn resumed(&mut self, sink: &'static str, resume: Lsn) -> Counted {
        let counted = self.durable_at(sink, resume);
        self.queued.retain(|q| q.sink != sink);
        for w in self.waiting.iter_mut().filter(|w| w.sink == sink) {
            w.open = 0;
            w.open_bytes = 0;
        }
        counted
    }

    pub fn commit(&mut self, sink: &'static str) {
        for w in self.waiting.iter_mut().filter(|w| w.sink == sink) {
            w.committed += std::mem::take(&mut w.open);
        }
    }

    /// The rows now durable, by `schema.table`.
    pub fn durable(&mut self, sink: &'static str) -> Vec<(String, u64)> {
        self.waiting
            .iter_mut()
            .filter(|w| w.sink == sink && w.committed > 0)
            .map(|w| (qualified(&w.table), std::mem::take(&mut w.committed)))
            .collect()
    }

    pub fn rewound(&mut self, sink: &'static str) {
        for w in self.waiting.iter_mut().filter(|w| w.sink == sink) {
            w.open = 0;
            w.open_bytes = 0;
            w.committed = 0;
        }
    }

    pub fn files_opened(&mut self, checkpoint: &Checkpoint) {
        self.lengths = checkpoint.files.clone();
    }

    /// Bytes each table's files grew by since the last durable checkpoint, by `schema.table`.
    pub fn files_durable(&mut self, checkpoint: &Checkpoint) -> Vec<(String, u64)> {
        let mut grown: BTreeMap<String, u64> = BTreeMap::new();
        for (name, &len) in &checkpoint.files {
            let before = self.lengths.get(name).copied().unwrap_or(0);
            if len > before
                && let Some(file) = crate::layout::parse(name)
            {
                *grown
                    .entry(format!("{}.{}", file.schema, file.table))
                    .or_default() += len - before;
            }
        }
        // Sealed files leave the checkpoint: forget them too.
        if self.lengths != checkpoint.files {
            self.lengths.clone_from(&checkpoint.files);
        }
        grown.into_iter().collect()
    }
}
