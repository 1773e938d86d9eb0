//! Bytes as the walsender could send them: each input is a sequence of CopyData payloads, each
//! preceded by a 2-byte big-endian length. Every payload goes through the replication message
//! decoder, XLogData through the pgoutput decoder, decoded messages through one capture, and
//! its events through the stream's progress into two in-memory sinks (one durable at flush, one
//! durable only later, each resuming from its own point), as `stream` does. Nothing may panic,
//! whatever the bytes; errors are the expected outcome. The acknowledged position never moves
//! backwards, never passes what both sinks hold durably, and no sink is given a transaction
//! below its resume point. Every commit time from the wire also goes through the latency report,
//! whose arithmetic must hold for any i64 (i64::MIN and MAX included).
#![no_main]

use audit_tail::capture::{Capture, Event};
use audit_tail::latency::Latency;
use audit_tail::lsn::{Lsn, PgTimestamp};
use audit_tail::pgoutput::{self, Message};
use audit_tail::replication::messages::{self, ServerMessage};
use audit_tail::sink::memory::MemorySink;
use audit_tail::sink::{Sink, Txn};
use audit_tail::stream::progress::Progress;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const DISK_RESUME: Lsn = Lsn(0x100);
const BROKER_RESUME: Lsn = Lsn(0x80);

struct Stream<'a> {
    capture: Capture,
    progress: Progress<'a, MemorySink>,
    disk: MemorySink,
    broker: MemorySink,
    acked: Lsn,
    latency: Latency,
    commit_time: PgTimestamp,
}

impl Stream<'_> {
    fn take(&mut self, message: Message) {
        let event = match self.capture.handle(message) {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => return,
        };
        match event {
            Event::Begin {
                commit_lsn,
                commit_time,
            } => {
                self.commit_time = commit_time;
                self.progress.begin(Txn {
                    commit_lsn,
                    commit_time,
                })
            }
            Event::Row(row) => {
                let _ = self.progress.row(&row);
            }
            Event::Commit { end_lsn, .. } => {
                // Durable "now" at the other end of the range, as a skewed clock could say.
                self.latency.committed(self.commit_time, 1);
                self.latency
                    .durable(PgTimestamp(i64::MAX - (end_lsn.0 % 7) as i64));
                self.latency.durable(PgTimestamp(i64::MIN));
                let _ = self.latency.take_summary();
                if self.progress.commit(end_lsn).is_ok() {
                    let _ = self.progress.flush();
                    // The broker confirms every other commit, late.
                    if end_lsn.0 % 2 == 0 {
                        self.broker.settle(end_lsn);
                    }
                    self.acknowledge();
                }
            }
        }
    }

    fn idle(&mut self, wal_end: Lsn) {
        if self.progress.all_durable() && self.progress.idle(wal_end) {
            let _ = self.progress.flush();
            self.acknowledge();
        }
    }

    fn acknowledge(&mut self) {
        let (written, flushed) = self.progress.status();
        assert!(flushed >= self.acked, "the acknowledgement moved backwards");
        assert!(written >= flushed);
        let held = [self.disk.durable(), self.broker.durable()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        assert!(flushed <= held.max(self.acked), "acknowledged past a sink");
        self.acked = flushed;
    }
}

fuzz_target!(|data: &[u8]| {
    let disk = MemorySink::new().resuming_at(DISK_RESUME);
    let broker = MemorySink::settling_later().resuming_at(BROKER_RESUME);
    let mut progress = Progress::new(disk.clone(), vec![Box::new(broker.clone())]);
    let start = progress.start();
    assert_eq!(start, BROKER_RESUME);
    let mut stream = Stream {
        capture: Capture::new(start),
        progress,
        disk: disk.clone(),
        broker: broker.clone(),
        acked: start,
        latency: Latency::default(),
        commit_time: PgTimestamp(0),
    };
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        // The payload also as a bare pgoutput message, so short inputs reach the decoder.
        if let Ok(message) = pgoutput::decode(payload.clone()) {
            stream.take(message);
        }
        match messages::decode(payload) {
            Ok(ServerMessage::XLogData { start, payload, .. }) => {
                stream.progress.received(start);
                if let Ok(message) = pgoutput::decode(payload) {
                    stream.take(message);
                }
            }
            Ok(ServerMessage::Keepalive { wal_end, .. }) => stream.idle(wal_end),
            Err(_) => {}
        }
    }
    for committed in disk.committed() {
        assert!(
            committed.txn.commit_lsn >= DISK_RESUME,
            "the disk was given what it had"
        );
    }
    for committed in broker.committed() {
        assert!(committed.txn.commit_lsn >= BROKER_RESUME);
    }
});
