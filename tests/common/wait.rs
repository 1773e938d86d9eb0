//! Waiting for events instead of sleeping: the slot becoming active (the consumer streams), the
//! slot's confirmed position reaching the server's (everything is durable in the files), a line
//! in the server's log. Each polls every 20 ms and panics with what it waited for on timeout.

use std::time::{Duration, Instant};

use super::TestDb;

/// Polls `ready` until it is true; panics after `timeout` naming `what`.
pub fn until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a walsender holds `slot` (a consumer has started replication on it).
pub fn slot_active(db: &TestDb, slot: &str) -> bool {
    db.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
    ))
    .trim()
        == "1"
}

/// Whether a walsender holds `slot`: a consumer ran START_REPLICATION on it. Not merely
/// `active`: while `pg_create_logical_replication_slot` builds a new slot, the creating backend
/// holds it (active, confirmed_flush_lsn NULL), and rows committed then are before the slot's
/// consistent point, so they are not streamed (tests/slot_start.rs).
pub fn walsender_holds(db: &TestDb, slot: &str) -> bool {
    db.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
         ON r.pid = s.active_pid WHERE s.slot_name = '{slot}'"
    ))
    .trim()
        == "1"
}

/// Waits until a consumer streams from `slot`: every transaction committing from now on is
/// sent to it.
pub fn streaming(db: &TestDb, slot: &str) {
    until(
        &format!("a walsender to stream slot {slot}"),
        Duration::from_secs(30),
        || walsender_holds(db, slot),
    );
}

/// Waits until no consumer holds `slot`.
pub fn released(db: &TestDb, slot: &str) {
    until(
        &format!("slot {slot} to be released"),
        Duration::from_secs(30),
        || !slot_active(db, slot),
    );
}

/// Waits until the consumer on `slot` has acknowledged (made durable) everything written to the
/// server before this call: its confirmed position reaches the WAL position taken now. Idle
/// keepalives move it past WAL of other databases too, so this ends on a busy cluster as well.
pub fn caught_up(db: &TestDb, slot: &str) {
    let target = db.psql("SELECT pg_current_wal_lsn()").trim().to_string();
    until(
        &format!("slot {slot} to confirm {target}"),
        Duration::from_secs(60),
        || {
            db.psql(&format!(
                "SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = '{slot}'"
            ))
            .trim()
                == "t"
        },
    );
}

/// Waits until the server's log holds `text` at least `times` times.
pub fn log_line(db: &TestDb, text: &str, times: usize) {
    until(
        &format!("{times}× {text:?} in the server log"),
        Duration::from_secs(30),
        || db.cluster.log_tail().matches(text).count() >= times,
    );
}
