//! The names and help texts of the metrics, registered per command: each command exposes only
//! the figures it has, so a rule written for one (`audit_tail_streaming == 0`) never fires for
//! the other, and a series an alert needs is there from the start (every error kind at 0, so
//! `increase()` sees the first error).

use prometheus_client::registry::Registry;

use super::{KindLabel, Metrics, Role};

/// Every kind `errors_total` is counted by (src/error.rs's `Kind`).
pub(super) const KINDS: [&str; 7] = [
    "transient",
    "refused",
    "setup",
    "data",
    "io",
    "usage",
    "internal",
];

pub(super) const PENDING: &str = "archive_pending_messages";
const PENDING_HELP: &str = "Messages in JetStream the archive's consumer has yet to deliver, as \
                            of the last message delivered";

pub(super) fn register(m: &Metrics, r: &mut Registry, role: Role) {
    common(m, r);
    match role {
        Role::Stream => stream(m, r),
        Role::Archive => archive(m, r),
    }
    for kind in KINDS {
        drop(m.errors.get_or_create(&KindLabel { kind }));
    }
}

/// What both commands have.
fn common(m: &Metrics, r: &mut Registry) {
    r.register(
        "rows_written",
        "Rows durable in a sink (files: fsynced and in the checkpoint; nats: acknowledged by \
         JetStream), by sink and table",
        m.rows.clone(),
    );
    r.register(
        "bytes_written",
        "Bytes durable in a sink (files: growth of the files, headers included; nats: message \
         bodies), by sink and table",
        m.bytes.clone(),
    );
    r.register(
        "reconnects",
        "Times the connection (the stream: to PostgreSQL or NATS; the archive: to NATS) was lost \
         and made again",
        m.reconnects.clone(),
    );
    r.register(
        "errors",
        "Errors that ended a connection or the program, by kind (transient, refused, setup, \
         data, io, usage, internal)",
        m.errors.clone(),
    );
}

fn archive(m: &Metrics, r: &mut Registry) {
    r.register(PENDING, PENDING_HELP, m.pending.clone());
    r.register(
        "archive_seconds_since_last_write",
        "Seconds since the archive last wrote a transaction to its files, or since start when \
         none came yet",
        m.since_write.clone(),
    );
}

fn stream(m: &Metrics, r: &mut Registry) {
    r.register(
        "transactions",
        "Transactions received from the server and given to the sinks",
        m.transactions.clone(),
    );
    r.register(
        "commit_to_durable_seconds",
        "Per transaction: from its commit on the server to the fsync that made it durable here",
        m.latency.clone(),
    );
    r.register(
        "slot_confirmed_lsn_bytes",
        "The position confirmed to the server as flushed (the slot's confirmed_flush_lsn), as a \
         byte offset in the WAL",
        m.confirmed.clone(),
    );
    r.register(
        "server_wal_lsn_bytes",
        "The server's WAL insert position as last sampled (every --status-interval), as a byte \
         offset in the WAL",
        m.server.clone(),
    );
    r.register(
        "slot_lag_bytes",
        "WAL bytes between the server's position and the slot's confirmed position: what the \
         server keeps for us and what we have yet to make durable",
        m.lag.clone(),
    );
    r.register(
        "last_commit_timestamp_seconds",
        "Server time of the last transaction received (Unix seconds; 0 before the first)",
        m.last_commit.clone(),
    );
    r.register(
        "seconds_since_last_commit",
        "Seconds since the server time of the last transaction received, or since start when \
         none came yet",
        m.since_commit.clone(),
    );
    r.register(
        "streaming",
        "1 while a replication connection streams, else 0",
        m.streaming.clone(),
    );
    r.register(
        "sink_durable_lsn_bytes",
        "The position up to which a sink holds everything durably (files: the checkpoint; nats: \
         every publish before it acknowledged by JetStream), as a byte offset in the WAL, by sink",
        m.sink_durable.clone(),
    );
    r.register(
        "sink_behind_bytes",
        "WAL bytes between what the stream gave every sink and what this sink holds durably \
         (nats: publishes awaiting JetStream's acknowledgement), by sink",
        m.sink_behind.clone(),
    );
}
