//! The error policy: what kind each error is, and so whether the stream retries it and which exit
//! code ends the program.
//!
//! Beside the flow: every layer keeps its own typed error (wire, sql, replication, sinks, verify),
//! and this module alone decides what they mean. `stream`'s reconnect loop asks `kind` whether to
//! retry; `main` asks it for the exit code. Every variant of every error is classified here, in
//! exhaustive matches: a new variant does not compile until someone decides its kind.
//!
//! The exit codes stay the three documented ones, each with one meaning (docs/operations.md,
//! "Exit codes"): 0 done, 1 failed (or verify found a difference), 2 input to correct.

use std::io;

use crate::cluster::ClusterError;
use crate::replication::slot::PreflightError;
use crate::sink::files::SinkError;
use crate::sql::SqlError;
use crate::status::StatusError;
use crate::stream::StreamError;
use crate::verify::VerifyError;
use crate::wire::WireError;
use crate::wire::params::ParamsError;

/// SQLSTATE codes the policy names (PostgreSQL's errcodes.txt, appendix A of its manual).
pub mod sqlstate {
    /// Class 08, connection exception: the connection failed or broke.
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
    /// Class 28, invalid authorization specification.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// Class 40, transaction rollback (serialization failure, deadlock): the next try can pass.
    pub const TRANSACTION_ROLLBACK_CLASS: &str = "40";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const INVALID_NAME: &str = "42602";
    /// A missing publication, slot or other object.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// Class 53, insufficient resources: too many connections, out of memory, disk full.
    pub const INSUFFICIENT_RESOURCES_CLASS: &str = "53";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// An invalidated slot, a slot of another database.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// A slot still held by another connection (one that just died, often).
    pub const OBJECT_IN_USE: &str = "55006";
    /// The server is shutting down (pg_terminate_backend too).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// The server is starting up, or in recovery and not yet accepting connections.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// The database was dropped under the connection: it will not come back.
    pub const DATABASE_DROPPED: &str = "57P04";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
}

/// What an error means for whoever must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Input the user must correct: arguments, connection strings, the files given to `verify`
    /// (missing, malformed, of another day). Exit 2.
    Usage,
    /// Waiting can fix it: the server is unreachable, starting, shutting down or out of
    /// connections, the connection broke, a slot is still held by a connection that just died.
    /// `stream` reconnects with backoff; any other command exits 1.
    Transient,
    /// The server refuses us and will until someone changes something there: authentication,
    /// a missing database or object, privileges. Exit 1.
    Refused,
    /// The server, the slot, TLS or the out-dir do not fit together, and a person must decide
    /// (wal_level, a missing publication, a slot of another plugin, dropped, invalidated or
    /// ahead, the out-dir of another server, TLS that cannot be had or does not verify). Exit 1.
    Setup,
    /// What arrived or what is on disk is not what it must be: an undecodable change, an out-dir
    /// edited by hand, a corrupt state file. Exit 1.
    Data,
    /// A local write or read failed: the out-dir, stdout, a temporary file. Exit 1.
    Io,
    /// A bug in audit-tail: nothing to correct, nothing to wait for. Exit 1.
    Internal,
}

impl Kind {
    /// The process exit code for an error of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            Kind::Transient
            | Kind::Refused
            | Kind::Setup
            | Kind::Data
            | Kind::Io
            | Kind::Internal => 1,
        }
    }

    /// Whether `stream` reconnects and tries again rather than stopping.
    pub fn is_retried(self) -> bool {
        self == Kind::Transient
    }
}

/// An error the policy knows. Implemented here, for every error type, so that the whole policy
/// reads in one file.
pub trait Classify {
    fn kind(&self) -> Kind;
}

/// The policy: the kind of `error`.
pub fn kind(error: &impl Classify) -> Kind {
    error.kind()
}

/// The kind of an error the server reported with `code`. Only the codes that waiting can fix are
/// transient; a code not named here stops the program with the server's own words, since
/// retrying an error nobody understood for ever hides it.
pub fn server_code(code: &str) -> Kind {
    use sqlstate::*;
    match code {
        ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW | IDLE_SESSION_TIMEOUT
        | OBJECT_IN_USE => Kind::Transient,
        DATABASE_DROPPED
        | INVALID_PASSWORD
        | INVALID_AUTHORIZATION
        | INVALID_CATALOG_NAME
        | UNDEFINED_OBJECT
        | INSUFFICIENT_PRIVILEGE
        | INVALID_NAME => Kind::Refused,
        OBJECT_NOT_IN_PREREQUISITE_STATE => Kind::Setup,
        _ if code.starts_with(CONNECTION_EXCEPTION_CLASS)
            || code.starts_with(INSUFFICIENT_RESOURCES_CLASS)
            || code.starts_with(TRANSACTION_ROLLBACK_CLASS) =>
        {
            Kind::Transient
        }
        _ => Kind::Refused,
    }
}

impl Classify for WireError {
    fn kind(&self) -> Kind {
        match self {
            WireError::Server(e) => server_code(&e.code),
            // A failed login (no password to give, a method we refuse, channel binding).
            WireError::Auth(_) => Kind::Refused,
            WireError::Tls(_) | WireError::TlsRefused { .. } => Kind::Setup,
            // A certificate that does not verify will not verify on the next try either.
            WireError::Handshake { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
                Kind::Setup
            }
            WireError::Handshake { .. }
            | WireError::Connect { .. }
            | WireError::Io(_)
            | WireError::Closed
            | WireError::Ended
            // A garbled message is taken for a broken link, as the replication messages are.
            | WireError::Protocol(_) => Kind::Transient,
        }
    }
}

impl Classify for SqlError {
    fn kind(&self) -> Kind {
        let error = match self {
            SqlError::Connect(e) => return e.kind(),
            SqlError::Server { error, .. } => error,
        };
        if let Some(db) = error.as_db_error() {
            return server_code(db.code().code());
        }
        // Client-side, after wire opened the socket: the connection breaking (an I/O error, or
        // closed) is transient; anything else (no password to give, no channel binding, a
        // protocol violation) is the login being refused.
        let broken = error.is_closed()
            || std::error::Error::source(error).is_some_and(|c| c.is::<io::Error>());
        if broken {
            Kind::Transient
        } else {
            Kind::Refused
        }
    }
}

impl Classify for PreflightError {
    fn kind(&self) -> Kind {
        match self {
            PreflightError::Sql(e) => e.kind(),
            // Most often the connection of a consumer that just died, until the server notices.
            PreflightError::SlotActive(..) => Kind::Transient,
            PreflightError::SlotName(_) => Kind::Usage,
            PreflightError::WalLevel(_)
            | PreflightError::NoPublication { .. }
            | PreflightError::NotPublishingAudit(_)
            | PreflightError::WrongSlot { .. }
            | PreflightError::SlotDatabase { .. }
            | PreflightError::Invalidated(_)
            | PreflightError::SlotDropped { .. }
            | PreflightError::SlotAhead { .. }
            | PreflightError::OtherServer { .. }
            | PreflightError::OtherDatabase { .. }
            | PreflightError::OtherSlot { .. } => Kind::Setup,
        }
    }
}

impl Classify for SinkError {
    fn kind(&self) -> Kind {
        match self {
            SinkError::Io { .. } => Kind::Io,
            // Another audit-tail writes this out-dir; one of the two is misconfigured.
            SinkError::Locked(_) => Kind::Setup,
            SinkError::Refuse(_) => Kind::Data,
            SinkError::Checkpoint(e) => checkpoint(e),
            SinkError::Manifest(e) => manifest(e),
            SinkError::Integrity(e) => integrity(e),
        }
    }
}

fn manifest(error: &crate::sink::seal::ManifestError) -> Kind {
    use crate::sink::seal::ManifestError;
    match error {
        ManifestError::Io { .. } => Kind::Io,
        ManifestError::Corrupt { .. } => Kind::Data,
    }
}

fn checkpoint(error: &crate::checkpoint::CheckpointError) -> Kind {
    use crate::checkpoint::CheckpointError;
    match error {
        CheckpointError::Io { .. } => Kind::Io,
        CheckpointError::Corrupt { .. } => Kind::Data,
    }
}

fn gaps(error: &crate::gaps::GapError) -> Kind {
    use crate::gaps::GapError;
    match error {
        GapError::Io { .. } => Kind::Io,
        GapError::Corrupt { .. } => Kind::Data,
    }
}

/// Key files and digests: a bad key given on the command line is input to correct; a damaged
/// digest is data; the rest is local I/O.
fn integrity(error: &crate::integrity::IntegrityError) -> Kind {
    use crate::integrity::IntegrityError;
    match error {
        IntegrityError::Io { .. } => Kind::Io,
        IntegrityError::KeyExists { .. }
        | IntegrityError::BadKey { .. }
        | IntegrityError::KeyMode { .. }
        | IntegrityError::NoOutDir(_)
        | IntegrityError::Range { .. } => Kind::Usage,
        IntegrityError::CorruptDigest { .. } => Kind::Data,
        IntegrityError::Rewritten { .. } => Kind::Data,
        IntegrityError::NatsRead { .. } => Kind::Transient,
        IntegrityError::Nats(e) => nats(e),
        IntegrityError::NoDatabase(_) => Kind::Usage,
    }
}

impl Classify for StreamError {
    fn kind(&self) -> Kind {
        match self {
            StreamError::Sink(e) => e.kind(),
            StreamError::Preflight(e) => e.kind(),
            StreamError::Gap(e) => gaps(e),
            StreamError::Sql(e) => e.kind(),
            StreamError::Wire(e) => e.kind(),
            // Taken for a broken link: a new connection resends from the last acknowledged
            // position, and a message that is really invalid fails again as Decode/Capture.
            StreamError::Message(_) => Kind::Transient,
            StreamError::Decode { .. } | StreamError::Capture { .. } => Kind::Data,
            StreamError::Output(e) => match e.kind {
                crate::sink::FailureKind::Transient => Kind::Transient,
                // A closed stdout ends the stream normally before it gets here; if it does not,
                // it is output that failed.
                crate::sink::FailureKind::Fatal | crate::sink::FailureKind::Closed => Kind::Io,
            },
            StreamError::Nats(e) => nats(e),
            StreamError::SlotDroppedUnderNats { .. } => Kind::Setup,
        }
    }
}

fn nats(error: &crate::sink::nats::NatsError) -> Kind {
    use crate::sink::nats::NatsError;
    match error {
        // Credentials, TLS, permissions: someone must change them.
        NatsError::Refused { .. } => Kind::Refused,
        NatsError::Creds { .. } => Kind::Usage,
        // No JetStream on the account, a stream that cannot be made or read.
        NatsError::Stream { .. } => Kind::Setup,
        NatsError::Runtime(_) => Kind::Io,
        NatsError::Publish(_) => Kind::Refused,
        // Two clusters on the same subjects: a --nats-subject-prefix per cluster.
        NatsError::OtherSystem { .. } => Kind::Setup,
    }
}

impl Classify for crate::archive::ArchiveError {
    fn kind(&self) -> Kind {
        use crate::archive::ArchiveError;
        match self {
            ArchiveError::Files(e) => e.kind(),
            ArchiveError::Nats(e) => nats(e),
            // What JetStream holds is not what `stream --nats` writes.
            ArchiveError::Foreign(_) | ArchiveError::Order { .. } => Kind::Data,
            ArchiveError::Link(_) => Kind::Transient,
            ArchiveError::Integrity(e) => integrity(e),
            ArchiveError::State(crate::archive::StateError::Io { .. }) => Kind::Io,
            ArchiveError::State(crate::archive::StateError::Corrupt { .. }) => Kind::Data,
            // A person must pick another consumer name.
            ArchiveError::Consumer { .. } => Kind::Setup,
            ArchiveError::OtherDatabase { .. } => Kind::Data,
            ArchiveError::FilterChanged { .. } => Kind::Usage,
        }
    }
}

impl Classify for VerifyError {
    fn kind(&self) -> Kind {
        match self {
            // The files verify was pointed at: missing, malformed or of another day.
            VerifyError::Csv { .. }
            | VerifyError::Content { .. }
            | VerifyError::Read { .. }
            | VerifyError::NoStream { .. }
            | VerifyError::NoStreamOf { .. }
            | VerifyError::OtherDatabase { .. }
            | VerifyError::WrongDay { .. } => Kind::Usage,
            // The out-dir's own records, as malformed input to correct (docs: "an input is
            // missing or malformed"), unless reading them failed.
            VerifyError::State(e) => match checkpoint(e) {
                Kind::Data => Kind::Usage,
                other => other,
            },
            VerifyError::Gaps(e) => match gaps(e) {
                Kind::Data => Kind::Usage,
                other => other,
            },
            // The database: unreachable, refusing us, or not installed. Never the input's fault:
            // the command line was right, the comparison could not be made.
            VerifyError::Sql(e) => e.kind(),
            // The database has no users_audit verify can use, or an install older than the
            // function verify reads it through: install or upgrade it.
            VerifyError::NoTable { .. } | VerifyError::NoExportFunction { .. } => Kind::Setup,
            VerifyError::List { .. } | VerifyError::Temp(_) => Kind::Io,
        }
    }
}

impl Classify for StatusError {
    fn kind(&self) -> Kind {
        match self {
            StatusError::Sql(e) => e.kind(),
            // No such slot, or held by a consumer `drop-slot` will not end without --force.
            StatusError::NoSlot(_) | StatusError::Active(..) | StatusError::StillActive(_) => {
                Kind::Refused
            }
        }
    }
}

/// `track`, `untrack`, `tracked`: a database without the log, or a table named with the wrong
/// case, is input to correct (exit 2); the server's own refusals keep their kind.
fn track(error: &crate::track::TrackError) -> Kind {
    use crate::track::TrackError;
    match error {
        TrackError::NotInstalled { .. } | TrackError::Case { .. } => Kind::Usage,
        TrackError::Sql(e) => e.kind(),
    }
}

impl Classify for ClusterError {
    fn kind(&self) -> Kind {
        match self {
            ClusterError::ServerNotFound { .. } | ClusterError::NoServerUser => Kind::Setup,
            ClusterError::Directory { .. } | ClusterError::Spawn { .. } => Kind::Io,
            ClusterError::Program { .. } | ClusterError::Start { .. } => Kind::Setup,
        }
    }
}

impl Classify for ParamsError {
    fn kind(&self) -> Kind {
        Kind::Usage
    }
}

impl Classify for crate::Error {
    fn kind(&self) -> Kind {
        use crate::Error;
        match self {
            Error::Cluster(e) => e.kind(),
            Error::Sql(e) => e.kind(),
            Error::Stream(e) => e.kind(),
            Error::Params(e) => e.kind(),
            Error::Verify(e) => e.kind(),
            Error::Status(e) => e.kind(),
            Error::Integrity(e) => integrity(e),
            Error::History(e) => e.kind(),
            Error::Track(e) => track(e),
            Error::Archive(e) => e.kind(),
            Error::Io { .. } | Error::Output(_) => Kind::Io,
            Error::Internal(_) => Kind::Internal,
            Error::Metrics(e) => e.kind(),
        }
    }
}

impl Classify for crate::metrics::MetricsError {
    fn kind(&self) -> Kind {
        use crate::metrics::MetricsError;
        match self {
            // An address in use or not ours to bind: the user picks another.
            MetricsError::Bind { .. } => Kind::Usage,
            MetricsError::Thread(_) => Kind::Io,
            MetricsError::Twice => Kind::Internal,
        }
    }
}

impl Classify for crate::history::HistoryError {
    fn kind(&self) -> Kind {
        use crate::history::HistoryError;
        match self {
            HistoryError::BadTime(_)
            | HistoryError::BadKey(_)
            | HistoryError::BadTable(_)
            | HistoryError::UnknownTable { .. }
            | HistoryError::NoOutDir(_)
            | HistoryError::Malformed { .. } => Kind::Usage,
            HistoryError::Io { .. } | HistoryError::Output(_) => Kind::Io,
            HistoryError::Sql(e) => e.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::wire::ServerError;

    fn server(code: &str) -> WireError {
        WireError::Server(ServerError {
            code: code.to_string(),
            ..ServerError::default()
        })
    }

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "test")
    }

    #[test]
    fn server_codes_waiting_can_fix_are_retried_and_the_rest_stop() {
        for (code, expected) in [
            ("08006", Kind::Transient), // connection failure
            ("08P01", Kind::Transient), // protocol violation
            ("53300", Kind::Transient), // too many connections
            ("53100", Kind::Transient), // disk full
            ("57P01", Kind::Transient), // admin shutdown, pg_terminate_backend
            ("57P02", Kind::Transient),
            ("57P03", Kind::Transient), // starting up
            ("57P05", Kind::Transient),
            ("55006", Kind::Transient), // slot active for another PID
            ("40001", Kind::Transient),
            ("57P04", Kind::Refused), // database dropped
            ("28P01", Kind::Refused),
            ("28000", Kind::Refused),
            ("3D000", Kind::Refused),
            ("42704", Kind::Refused),
            ("42602", Kind::Refused),
            ("42501", Kind::Refused),
            ("55000", Kind::Setup), // invalidated slot, slot of another database
            ("XX000", Kind::Refused), // not understood: stop and say so
            ("42P01", Kind::Refused),
        ] {
            assert_eq!(server_code(code), expected, "{code}");
            assert_eq!(kind(&server(code)), expected, "{code}");
            let sql = SqlError::Connect(server(code));
            assert_eq!(kind(&sql), expected, "{code}");
            let stream = StreamError::Preflight(PreflightError::Sql(sql));
            assert_eq!(stream.is_fatal(), expected != Kind::Transient, "{code}");
        }
    }

    #[test]
    fn wire_errors() {
        let target = "server at \"h\", port 1".to_string();
        let host = "h".to_string();
        for (error, expected) in [
            (
                WireError::Connect {
                    target,
                    source: io(io::ErrorKind::ConnectionRefused),
                },
                Kind::Transient,
            ),
            (
                WireError::Io(io(io::ErrorKind::ConnectionReset)),
                Kind::Transient,
            ),
            (WireError::Closed, Kind::Transient),
            (WireError::Ended, Kind::Transient),
            (WireError::Protocol("x".into()), Kind::Transient),
            (WireError::Auth("no password".into()), Kind::Refused),
            (
                WireError::TlsRefused {
                    target: "t".into(),
                    mode: "require",
                },
                Kind::Setup,
            ),
            (
                WireError::Handshake {
                    host: host.clone(),
                    source: io(io::ErrorKind::InvalidData),
                },
                Kind::Setup,
            ),
            (
                WireError::Handshake {
                    host,
                    source: io(io::ErrorKind::ConnectionReset),
                },
                Kind::Transient,
            ),
        ] {
            assert_eq!(kind(&error), expected, "{error}");
        }
    }

    #[test]
    fn the_stream_retries_only_what_waiting_can_fix() {
        let retried = [
            StreamError::Output(crate::sink::SinkFailure::transient(io(
                io::ErrorKind::Other,
            ))),
            StreamError::Wire(WireError::Closed),
            StreamError::Message(crate::replication::messages::ReplicationMessageError::Empty),
            StreamError::Preflight(PreflightError::SlotActive("s".into(), 7)),
        ];
        for e in &retried {
            assert!(!e.is_fatal(), "{e}");
        }
        let fatal = [
            StreamError::Decode {
                lsn: Lsn(1),
                source: crate::pgoutput::DecodeError::Empty,
            },
            StreamError::Preflight(PreflightError::WalLevel("replica".into())),
            StreamError::Preflight(PreflightError::Invalidated("s".into())),
            StreamError::Sink(SinkError::Refuse("edited by hand".into())),
            StreamError::Output(crate::sink::SinkFailure::fatal(io(io::ErrorKind::Other))),
            StreamError::Wire(server("28P01")),
        ];
        for e in &fatal {
            assert!(e.is_fatal(), "{e}");
        }
    }

    #[test]
    fn exit_codes_2_for_input_1_for_the_rest() {
        use crate::Error;
        let unreachable = || {
            SqlError::Connect(WireError::Connect {
                target: "server at \"h\", port 1".into(),
                source: io(io::ErrorKind::ConnectionRefused),
            })
        };
        let content = VerifyError::Content {
            file: "f".into(),
            line: 1,
            reason: "wrong header".into(),
        };
        for (error, code) in [
            (Error::Params(ParamsError::Invalid("x".into())), 2),
            (Error::Verify(content), 2),
            (
                Error::Verify(VerifyError::Read {
                    file: "f".into(),
                    source: io(io::ErrorKind::NotFound),
                }),
                2,
            ),
            // The database being down is not the user's input: 1, as for every other command.
            (Error::Verify(VerifyError::Sql(unreachable())), 1),
            (
                Error::Verify(VerifyError::Sql(SqlError::Connect(server("28P01")))),
                1,
            ),
            (
                Error::Verify(VerifyError::Temp(io(io::ErrorKind::StorageFull))),
                1,
            ),
            (Error::Sql(unreachable()), 1),
            (Error::Status(StatusError::NoSlot("s".into())), 1),
            (
                Error::Stream(StreamError::Preflight(PreflightError::SlotName("S".into()))),
                2,
            ),
            (Error::Stream(StreamError::Wire(WireError::Closed)), 1),
            (Error::Output(io(io::ErrorKind::Other)), 1),
            (Error::Internal("x".into()), 1),
        ] {
            assert_eq!(kind(&error).exit_code(), code, "{error}");
        }
    }
}
