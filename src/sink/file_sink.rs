//! The rolling daily files (`files::StreamFiles`) as a `Sink`: they resume from the durable
//! checkpoint, become durable when `make_durable` has fsynced them and stored the checkpoint,
//! and every error of theirs is fatal (a failed fsync cannot be retried safely).

use super::files::StreamFiles;
use super::{Sink, SinkFailure, Txn};
use crate::capture::Row;
use crate::lsn::Lsn;

impl Sink for StreamFiles {
    fn name(&self) -> &'static str {
        "files"
    }

    fn resume_point(&self) -> Option<Lsn> {
        Some(self.durable_lsn())
    }

    fn row(&mut self, row: &Row, txn: Txn) -> Result<(), SinkFailure> {
        self.append(row, txn.commit_time)
            .map_err(SinkFailure::fatal)?;
        crate::metrics::get().inspect(|m| m.row("files", &row.table));
        Ok(())
    }

    fn commit(&mut self, _txn: Txn, end_lsn: Lsn) -> Result<(), SinkFailure> {
        StreamFiles::commit(self, end_lsn);
        crate::metrics::get().inspect(|m| m.commit("files"));
        Ok(())
    }

    fn idle(&mut self, lsn: Lsn) {
        self.advance_idle(lsn);
    }

    fn flush(&mut self) -> Result<(), SinkFailure> {
        self.make_durable().map_err(SinkFailure::fatal)?;
        crate::metrics::get().inspect(|m| m.files_made_durable(self.durable()));
        Ok(())
    }

    fn durable(&self) -> Option<Lsn> {
        Some(self.durable_lsn())
    }

    fn rewind(&mut self) -> Result<(), SinkFailure> {
        StreamFiles::rewind(self).map_err(SinkFailure::fatal)?;
        crate::metrics::get().inspect(|m| m.rewound("files"));
        Ok(())
    }
}
