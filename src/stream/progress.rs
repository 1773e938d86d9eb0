//! The stream's position, in one place: what was received, what the sinks accepted, what is
//! durable in all of them, and what was acknowledged to the server. Sits between capture and
//! the acknowledgement in the flow; no I/O of its own (the sinks do theirs).
//!
//! Each sink resumes from its own point: at the start of a connection, a sink is given no
//! transaction committed below its `resume_point` (it has it already), and the stream starts at
//! the lowest of them, so every sink gets what it lacks. The server is told as flushed the
//! lowest durable position over all sinks, and never less than before: a sink that becomes
//! durable later holds the acknowledgement back until it does.
//!
//! The positions *sent* have a floor of their own: the slot's confirmed position when the
//! connection started and the highest flush position sent so far. A sink resuming from further
//! back than the slot (a new or emptied JetStream stream, files ahead of it) makes the durable
//! minimum lower than that; the server must not be told so (PostgreSQL 15 moves the slot's
//! `confirmed_flush_lsn` back to whatever it is sent). The floor touches only what is sent:
//! what counts as durable, and so what the files' checkpoint and idle positions do, stays the
//! sinks' own (raising it broke slot-drop detection, see `sent_floor`).

use crate::capture::Row;
use crate::lsn::Lsn;
use crate::sink::{Sink, SinkFailure, Txn};

/// The sinks of a stream and its position; see the module documentation.
///
/// `primary` is the sink the stream is anchored to (the out-dir's files, whose checkpoint holds
/// the stream's identity and covered stretch); it is called without dynamic dispatch. The other
/// sinks are boxed.
pub struct Progress<'a, P> {
    primary: P,
    others: Vec<Box<dyn Sink + Send + 'a>>,
    /// Per sink, the primary first: transactions committed below this are not given to it on
    /// this connection.
    skip_below: Vec<Option<Lsn>>,
    /// Per sink: whether it takes the transaction in progress.
    takes: Vec<bool>,
    txn: Option<Txn>,
    /// The highest WAL position received (reported as written).
    received: Lsn,
    /// Every sink was given everything up to here (the last commit or idle position).
    accepted: Lsn,
    /// The durable position when a status was last sent (what the server was told, unless the
    /// floor was higher).
    acked: Lsn,
    /// The lowest flush position that may be sent: the slot's confirmed position at the start
    /// of a connection, and every flush position sent since. Never lowers `durable`.
    sent_floor: Lsn,
}

impl<'a, P: Sink> Progress<'a, P> {
    pub fn new(primary: P, others: Vec<Box<dyn Sink + Send + 'a>>) -> Progress<'a, P> {
        let count = 1 + others.len();
        Progress {
            primary,
            others,
            skip_below: vec![None; count],
            takes: vec![false; count],
            txn: None,
            received: Lsn(0),
            accepted: Lsn(0),
            acked: Lsn(0),
            sent_floor: Lsn(0),
        }
    }

    pub fn primary(&self) -> &P {
        &self.primary
    }

    pub fn primary_mut(&mut self) -> &mut P {
        &mut self.primary
    }

    fn sinks(&self) -> impl Iterator<Item = &dyn Sink> {
        std::iter::once(&self.primary as &dyn Sink).chain(self.others.iter().map(|s| &**s as _))
    }

    fn sinks_mut(&mut self) -> impl Iterator<Item = &mut dyn Sink> {
        std::iter::once(&mut self.primary as &mut dyn Sink)
            .chain(self.others.iter_mut().map(|s| &mut **s as _))
    }

    /// The lowest point the sinks resume from (`None` if no sink keeps one): before the first
    /// connection, where the stream stands.
    pub fn resume_point(&self) -> Option<Lsn> {
        self.sinks().filter_map(|s| s.resume_point()).min()
    }

    /// A new connection: seeds each sink's skip rule from its resume point, and returns where
    /// the stream starts, the lowest of them (`0/0`, the slot's own position, if no sink keeps
    /// one).
    pub fn start(&mut self) -> Lsn {
        self.skip_below = self.sinks().map(|s| s.resume_point()).collect();
        self.report_resumed();
        let start = self.skip_below.iter().flatten().min().copied();
        let start = start.unwrap_or(Lsn(0));
        self.txn = None;
        self.received = self.received.max(start);
        self.accepted = self.accepted.max(start);
        self.acked = self.acked.max(start);
        self.report();
        start
    }

    /// The slot was confirmed up to `lsn` when this connection started (the server streams from
    /// there): no flush position below it is ever sent. Only a floor for what is sent: what is
    /// durable, idle positions and the files' checkpoint are left as they are, so an idle first
    /// catch-up still stores its checkpoint.
    pub fn slot_confirmed(&mut self, lsn: Lsn) {
        self.sent_floor = self.sent_floor.max(lsn);
    }

    /// WAL up to `lsn` was received.
    pub fn received(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// Whether a transaction was begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// A transaction begins: each sink takes it unless it resumes past its commit LSN.
    pub fn begin(&mut self, txn: Txn) {
        for (takes, skip_below) in self.takes.iter_mut().zip(&self.skip_below) {
            *takes = skip_below.is_none_or(|below| txn.commit_lsn >= below);
        }
        self.txn = Some(txn);
    }

    /// A row of the transaction in progress, to every sink that takes it.
    pub fn row(&mut self, row: &Row) -> Result<(), SinkFailure> {
        let Some(txn) = self.txn else { return Ok(()) };
        // The hot path: the primary without dynamic dispatch, the others only if any.
        if self.takes[0] {
            self.primary.row(row, txn)?;
        }
        for (sink, takes) in self.others.iter_mut().zip(&self.takes[1..]) {
            if *takes {
                sink.row(row, txn)?;
            }
        }
        Ok(())
    }

    /// The transaction in progress is complete at `end_lsn`.
    pub fn commit(&mut self, end_lsn: Lsn) -> Result<(), SinkFailure> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        if self.takes[0] {
            self.primary.commit(txn, end_lsn)?;
        }
        for (sink, takes) in self.others.iter_mut().zip(&self.takes[1..]) {
            if *takes {
                sink.commit(txn, end_lsn)?;
                crate::metrics::get().inspect(|m| m.commit_at(sink.name(), end_lsn));
            }
        }
        self.accepted = self.accepted.max(end_lsn);
        Ok(())
    }

    /// Nothing before `lsn` holds a row (a keepalive while no transaction is open); returns
    /// whether that moves the position, so a durable point is due.
    pub fn idle(&mut self, lsn: Lsn) -> bool {
        if self.txn.is_some() || lsn <= self.durable() {
            return false;
        }
        for sink in self.sinks_mut() {
            sink.idle(lsn);
        }
        self.accepted = self.accepted.max(lsn);
        true
    }

    /// Asks every sink to make what it accepted durable (all are asked even if one fails; the
    /// first failure is returned). Returns the durable position.
    pub fn flush(&mut self) -> Result<Lsn, SinkFailure> {
        let mut first = None;
        for sink in self.sinks_mut() {
            if let Err(e) = sink.flush() {
                tracing::debug!(sink = sink.name(), error = %e, "sink flush failed");
                first.get_or_insert(e);
            }
        }
        self.report();
        match first {
            Some(e) => Err(e),
            None => Ok(self.durable()),
        }
    }

    /// Each sink's durable position and how far behind what it was given, to the metrics.
    fn report(&self) {
        let Some(m) = crate::metrics::get() else {
            return;
        };
        for sink in self.sinks() {
            if let Some(durable) = sink.durable() {
                m.sink_position(sink.name(), durable, self.accepted);
            }
        }
    }

    /// A new connection: the sinks besides the primary (which counts its own) have what they
    /// resume from counted, and what they were given past it forgotten, to the metrics.
    fn report_resumed(&self) {
        let Some(m) = crate::metrics::get() else {
            return;
        };
        for (sink, resume) in self.others.iter().zip(&self.skip_below[1..]) {
            m.resumed(sink.name(), resume.unwrap_or(Lsn(0)));
        }
    }

    /// The lowest durable position over the sinks that hold one; what was accepted if none does.
    pub fn durable(&self) -> Lsn {
        self.sinks()
            .filter_map(|s| s.durable())
            .min()
            .unwrap_or(self.accepted)
            .max(self.acked)
    }

    /// Whether everything accepted is durable in every sink.
    pub fn all_durable(&self) -> bool {
        self.durable() >= self.accepted
    }

    /// Whether the durable position is past what the server was told.
    pub fn ack_due(&self) -> bool {
        let durable = self.durable();
        durable > self.acked && durable > self.sent_floor
    }

    /// The positions for a status update, (written, flushed); flushed is then acknowledged.
    /// Only what is durable is acknowledged, and what is sent never moves backwards nor below
    /// the slot's confirmed position (`slot_confirmed`).
    pub fn status(&mut self) -> (Lsn, Lsn) {
        let durable = self.durable();
        self.acked = durable;
        let flushed = durable.max(self.sent_floor);
        self.sent_floor = flushed;
        (self.received.max(self.accepted).max(flushed), flushed)
    }

    /// What wakes the stream when a sink that becomes durable later moves its durable position
    /// (a JetStream acknowledgement), so the slot is acknowledged without waiting for the next
    /// commit. One notifier serves all: the stream re-reads every sink when woken.
    pub fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.sinks().find_map(|s| s.waker())
    }

    /// Before sending again on a new connection: every sink forgets what is not durable.
    pub fn rewind(&mut self) -> Result<(), SinkFailure> {
        self.txn = None;
        let mut first = None;
        for sink in self.sinks_mut() {
            if let Err(e) = sink.rewind() {
                first.get_or_insert(e);
            }
        }
        self.accepted = self.durable();
        self.report();
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::capture::Table;
    use crate::lsn::PgTimestamp;
    use crate::sink::FailureKind;
    use crate::sink::memory::MemorySink;

    fn txn(lsn: u64) -> Txn {
        Txn {
            commit_lsn: Lsn(lsn),
            commit_time: PgTimestamp(0),
        }
    }

    fn row(id: &str) -> Row {
        Row {
            table: Arc::new(Table {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                columns: vec!["id".into()],
                changed_at: None,
            }),
            values: vec![Some(Bytes::copy_from_slice(id.as_bytes()))],
        }
    }

    /// A transaction of one row committing at `lsn`, ending at `lsn + 8`.
    fn transaction<P: Sink>(progress: &mut Progress<'_, P>, lsn: u64) -> Result<(), SinkFailure> {
        progress.begin(txn(lsn));
        progress.row(&row(&lsn.to_string()))?;
        progress.commit(Lsn(lsn + 8))
    }

    fn ids(transactions: &[crate::sink::memory::Committed]) -> Vec<u64> {
        transactions.iter().map(|c| c.txn.commit_lsn.0).collect()
    }

    #[test]
    fn the_slower_sink_holds_the_acknowledgement_back() {
        let disk = MemorySink::new();
        let broker = MemorySink::settling_later();
        let mut progress = Progress::new(disk.clone(), vec![Box::new(broker.clone())]);
        assert_eq!(progress.start(), Lsn(0));
        transaction(&mut progress, 100).unwrap();
        transaction(&mut progress, 200).unwrap();
        assert_eq!(
            progress.flush().unwrap(),
            Lsn(0),
            "the broker has settled nothing"
        );
        assert!(!progress.ack_due());
        assert_eq!(progress.status(), (Lsn(208), Lsn(0)));
        broker.settle(Lsn(108));
        assert!(progress.ack_due());
        assert_eq!(progress.status(), (Lsn(208), Lsn(108)));
        broker.settle(Lsn(208));
        assert_eq!(progress.status().1, Lsn(208));
        assert_eq!(ids(&disk.durable_transactions()), [100, 200]);
        assert_eq!(ids(&broker.durable_transactions()), [100, 200]);
    }

    #[test]
    fn each_sink_resumes_from_its_own_point() {
        // The disk kept everything up to 208; the broker only up to 108 (its acks were lost).
        let disk = MemorySink::new().resuming_at(Lsn(208));
        let broker = MemorySink::new().resuming_at(Lsn(108));
        let mut progress = Progress::new(disk.clone(), vec![Box::new(broker.clone())]);
        assert_eq!(
            progress.start(),
            Lsn(108),
            "the stream starts at the lowest point"
        );
        transaction(&mut progress, 200).unwrap();
        transaction(&mut progress, 300).unwrap();
        progress.flush().unwrap();
        assert_eq!(ids(&disk.committed()), [300], "the disk had 200 already");
        assert_eq!(ids(&broker.committed()), [200, 300]);
        assert_eq!(progress.status().1, Lsn(308));
    }

    #[test]
    fn a_transient_failure_of_one_sink_rewinds_to_what_all_hold() {
        let disk = MemorySink::new();
        let broker = MemorySink::new();
        let mut progress = Progress::new(disk.clone(), vec![Box::new(broker.clone())]);
        progress.start();
        transaction(&mut progress, 100).unwrap();
        progress.flush().unwrap();
        assert_eq!(progress.status().1, Lsn(108));
        broker.fail_next(FailureKind::Transient);
        let err = transaction(&mut progress, 200).unwrap_err();
        assert!(err.is_transient(), "{err}");
        // What the stream does before reconnecting: keep what is complete, forget the rest.
        progress.flush().unwrap();
        progress.rewind().unwrap();
        assert_eq!(progress.durable(), Lsn(108), "the broker never got 200");
        assert_eq!(progress.start(), Lsn(108));
        // The server sends 200 again: the broker takes it, the disk (which has it) does not.
        transaction(&mut progress, 200).unwrap();
        progress.flush().unwrap();
        assert_eq!(ids(&disk.durable_transactions()), [100, 200]);
        assert_eq!(ids(&broker.durable_transactions()), [100, 200]);
        assert_eq!(progress.status().1, Lsn(208));
    }

    #[test]
    fn a_sink_behind_the_slot_never_lowers_the_position_sent() {
        // The files hold everything up to 308 and the slot is confirmed there; JetStream's last
        // row is older (108). The server streams from 308 and must not be told 108.
        let disk = MemorySink::new().resuming_at(Lsn(308));
        let broker = MemorySink::settling_later().resuming_at(Lsn(108));
        let mut progress = Progress::new(disk.clone(), vec![Box::new(broker.clone())]);
        assert_eq!(progress.start(), Lsn(108));
        progress.slot_confirmed(Lsn(308));
        assert_eq!(progress.status(), (Lsn(308), Lsn(308)));
        // What is durable stays the sinks' own: the floor is only on what is sent.
        assert_eq!(progress.durable(), Lsn(108));
        assert!(
            progress.idle(Lsn(200)),
            "an idle position below the slot still moves the sinks"
        );
        transaction(&mut progress, 400).unwrap();
        progress.flush().unwrap();
        assert_eq!(progress.durable(), Lsn(108), "the broker settled nothing");
        assert!(!progress.ack_due(), "nothing past what was sent");
        assert_eq!(progress.status(), (Lsn(408), Lsn(308)));
        broker.settle(Lsn(300));
        assert!(!progress.ack_due(), "still below what was sent");
        assert_eq!(progress.status(), (Lsn(408), Lsn(308)));
        broker.settle(Lsn(408));
        assert!(progress.ack_due());
        assert_eq!(progress.status(), (Lsn(408), Lsn(408)));
        // A new connection that reads an older slot position (the server's confirmed position
        // reaches its disk only at checkpoints): what was sent stays the floor.
        progress.rewind().unwrap();
        progress.start();
        progress.slot_confirmed(Lsn(208));
        assert_eq!(progress.status(), (Lsn(408), Lsn(408)));
    }

    #[test]
    fn idle_positions_move_every_sink_and_never_backwards() {
        let disk = MemorySink::new();
        let mut progress: Progress<'_, MemorySink> = Progress::new(disk.clone(), vec![]);
        progress.start();
        assert!(progress.idle(Lsn(50)));
        assert!(!progress.all_durable());
        progress.flush().unwrap();
        assert!(progress.all_durable());
        assert_eq!(progress.status().1, Lsn(50));
        assert!(!progress.idle(Lsn(40)), "behind the durable position");
        progress.begin(txn(60));
        assert!(!progress.idle(Lsn(70)), "not inside a transaction");
    }

    #[test]
    fn a_sink_that_keeps_nothing_never_holds_the_acknowledgement_back() {
        let mut out = Vec::new();
        let printer =
            crate::sink::stdout::Printer::new(crate::sink::stdout::Format::Json, &mut out);
        let disk = MemorySink::new();
        let mut progress = Progress::new(disk, vec![Box::new(printer)]);
        progress.start();
        transaction(&mut progress, 100).unwrap();
        assert_eq!(progress.flush().unwrap(), Lsn(108));
        drop(progress);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }
}
