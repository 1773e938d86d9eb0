//! The bookkeeping behind the rows and bytes counters: rows a sink accepted wait, per
//! transaction, until the sink says they are durable (or forgets them on a rewind, since the
//! server sends them again), so the counters agree with what a crash would leave. The file sink's
//! bytes are the growth of its files between durable checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::capture::Table;
use crate::checkpoint::Checkpoint;

/// Rows of one table waiting to be durable in one sink.
struct Waiting {
    sink: &'static str,
    table: Arc<Table>,
    /// Rows of the transaction being received.
    open: u64,
    /// Rows of committed transactions, not yet durable.
    committed: u64,
}

#[derive(Default)]
pub(super) struct Figures {
    /// A handful of entries (one per sink and table), searched from the last one used.
    waiting: Vec<Waiting>,
    last: usize,
    /// The file sink's durable file lengths, by file name.
    lengths: BTreeMap<String, u64>,
}

fn qualified(table: &Table) -> String {
    format!("{}.{}", table.schema, table.name)
}

impl Figures {
    pub fn row(&mut self, sink: &'static str, table: &Arc<Table>) {
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
                        committed: 0,
                    });
                    self.waiting.len() - 1
                }
            };
        }
        self.waiting[self.last].open += 1;
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
