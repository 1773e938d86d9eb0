//! Command-line arguments (clap). Clap's types end here: commands get plain values.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::lsn::Lsn;
use crate::sink::stdout::Format;
use crate::stream::Until;

/// A PostgreSQL audit trail with a live second copy.
#[derive(Debug, Parser)]
#[command(name = "audit-tail", version, about, long_about = None)]
pub struct Cli {
    /// More log detail on stderr (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

mod usage;

pub use usage::without_env_options;

impl Cli {
    /// Parses the process's arguments, exiting on an error as clap does (help, usage error:
    /// exit 2), but with usage lines that list no option the environment gave.
    pub fn parse_args() -> Cli {
        Cli::try_parse().unwrap_or_else(|e| {
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            without_env_options(e, &args, |var| std::env::var_os(var).is_some()).exit()
        })
    }
}

/// Where to connect: shared by the commands that talk to a server.
#[derive(Debug, clap::Args)]
pub struct DsnArg {
    /// libpq connection URL or key=value string; missing parts come from PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGDATABASE and ~/.pgpass.
    #[arg(long, env = "AUDIT_TAIL_DSN", value_name = "CONNINFO")]
    pub dsn: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream the publication into rolling daily CSV files (exactly once) and to stdout.
    Stream {
        #[command(flatten)]
        dsn: DsnArg,
        /// Logical replication slot; created (pgoutput) when missing.
        #[arg(long, default_value = "audit_tail", value_parser = parse_slot)]
        slot: String,
        /// Publication to stream.
        #[arg(long, default_value = "users_audit_pub")]
        publication: String,
        /// Directory of the CSV files and the state file (none with --no-files).
        #[arg(long, default_value = "./audit-stream")]
        out_dir: PathBuf,
        /// Write no files, only publish to JetStream (--nats): the stream resumes from the slot
        /// and the last row of this database in JetStream. The options about files
        /// (--out-dir, --safe-csv, --accept-gap, --signing-key) do not go with it.
        #[arg(long, requires = "nats",
              conflicts_with_all = ["out_dir", "safe_csv", "accept_gap", "signing_key"])]
        no_files: bool,
        /// How rows are printed on stdout.
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
        /// Stop once everything committed before this position is durable and acknowledged:
        /// `now` (the server's position at start) or an LSN like 0/16B3748.
        #[arg(long, value_parser = parse_until, value_name = "now|X/Y")]
        until: Option<Until>,
        /// Seconds between status updates to the server; a connection silent for three of them
        /// is treated as dead and replaced.
        #[arg(long, default_value_t = 10, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        status_interval: u64,
        /// Write values that a spreadsheet would run as formulas (beginning with = + - @, TAB or
        /// CR) with a leading ' so they open as text. The files then differ from COPY for such
        /// values; verify knows and compares alike. An out-dir keeps the kind it began with.
        #[arg(long)]
        safe_csv: bool,
        /// When the slot was moved ahead of this out-dir's checkpoint (by another out-dir on the
        /// same slot, or a state file restored from an older copy), go on from the slot's
        /// position instead of refusing, and record the skipped range in the out-dir's
        /// audit-tail.gaps, where verify reports it. Those rows are only in the nightly export.
        #[arg(long)]
        accept_gap: bool,
        /// Sign and chain digests of the files with this key (from `audit-tail keygen`), in
        /// out-dir/audit-tail.digests/; `verify --integrity` checks them (docs/security.md).
        #[arg(long, value_name = "PATH")]
        signing_key: Option<PathBuf>,
        /// With --signing-key: seconds between digests while rows arrive (a file that becomes
        /// complete gets one at once); 0 writes one at every durable point.
        #[arg(long, default_value_t = 3600, value_name = "SECS", requires = "signing_key",
              value_parser = clap::value_parser!(u64).range(0..=86400))]
        digest_interval: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics: 127.0.0.1:9187, localhost:9187, or
        /// :9187 for every interface; port 0 picks a free one, logged at start.
        /// docs/operations.md lists them with alert rules.
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        metrics: Option<std::net::SocketAddr>,
        #[command(flatten)]
        nats: Box<NatsArgs>,
    },
    /// Read what `stream --nats` published to JetStream and write the same rolling daily CSV
    /// files as `stream --out-dir`, exactly once (a durable consumer; fsync, then acknowledge),
    /// on any machine. `verify --out-dir` works on them.
    // The NATS options are the stream's (one struct); their help says what they mean here.
    #[command(
        mut_arg("nats", |a| a.help(
            "Read the rows `stream --nats` published from NATS JetStream at this URL \
             (nats://host:4222)")),
        mut_arg("nats_subject_prefix", |a| a.help(
            "The first token of the subjects `stream --nats` publishes to (its \
             --nats-subject-prefix): the archive reads <prefix>.> unless --nats-filter")),
        mut_arg("nats_stream", |a| a.help(
            "The JetStream stream to read from; created with file storage when missing (taking \
             <prefix>.>), so the archive may start before the stream")),
        mut_arg("nats_max_age", |a| a.help(
            "How long the stream keeps messages when the archive is the one to create it, such \
             as 30d or 12h (0: for ever)")),
    )]
    Archive {
        /// Directory of the CSV files and the state file.
        #[arg(long, default_value = "./audit-archive")]
        out_dir: PathBuf,
        /// The durable consumer's name (one per archive).
        #[arg(long, default_value = "audit-tail-archive", value_name = "NAME")]
        nats_consumer: String,
        /// The subjects to archive, such as audit.mydb.> for one database (default: all under
        /// the subject prefix). One database per out-dir.
        #[arg(long, value_name = "SUBJECT")]
        nats_filter: Option<String>,
        /// Write the files as `stream --safe-csv` does.
        #[arg(long)]
        safe_csv: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics as `stream --metrics` does, with
        /// audit_tail_archive_pending_messages: what JetStream holds that is not yet archived.
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        metrics: Option<std::net::SocketAddr>,
        #[command(flatten)]
        nats: Box<NatsArgs>,
        /// The public key (PATH.pub from keygen) the stream signs its digests with; give one per
        /// key across a rotation. The archive then writes only digests it signed. Without it the
        /// stream's digests are still copied, checked for their chain and bytes only.
        #[arg(long, value_name = "PUB")]
        public_key: Vec<PathBuf>,
    },
    /// Apply sql/install.sql, then sql/audit_log.sql (both embedded in this binary), to the database.
    Setup {
        #[command(flatten)]
        dsn: DsnArg,
        /// Server-side directory for the nightly export files (kept from before when omitted;
        /// /tmp on a first install).
        #[arg(long, value_name = "DIR")]
        export_dir: Option<String>,
    },
    /// Compare the nightly export of a day with the live stream's file of that day. Exit 0 when
    /// they agree, 1 when they differ, 2 when an input is missing or malformed.
    // The NATS options are the stream's (one struct); verify only reads the digests there.
    #[command(
        mut_arg("nats", |a| a.help(
            "With --integrity: read the digests `stream --signing-key --nats` published from \
             NATS JetStream at this URL, and compare them with the out-dir's")),
        mut_arg("nats_subject_prefix", |a| a.help(
            "The first token of the subjects `stream --nats` publishes to (its \
             --nats-subject-prefix)")),
        mut_arg("nats_stream", |a| a.help(
            "The stream's --nats-stream: the digests are read from <NAME>_DIGESTS (never \
             created)")),
        mut_arg("nats_max_age", |a| a.hide(true)),
    )]
    Verify {
        /// The day to verify.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date,
              required_unless_present = "integrity", conflicts_with = "integrity")]
        date: Option<chrono::NaiveDate>,
        /// Instead of comparing with the export: walk the signed digests of the out-dir and check
        /// every stream file against them (exit 0 intact, 1 broken, 2 bad input).
        #[arg(long, requires = "public_key")]
        integrity: bool,
        /// With --integrity: a public key (PATH.pub from keygen); give one per key the stream
        /// used, old and new across a rotation.
        #[arg(long, value_name = "PUB", requires = "integrity")]
        public_key: Vec<PathBuf>,
        /// With --integrity: check only files of this day and later.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "integrity")]
        since: Option<chrono::NaiveDate>,
        /// With --integrity: check only files of this day and earlier.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "integrity")]
        until: Option<chrono::NaiveDate>,
        /// The nightly export file; without it the same export is read from the database.
        #[arg(long, value_name = "FILE", conflicts_with = "integrity")]
        nightly: Option<PathBuf>,
        /// The stream's out-dir.
        #[arg(long, default_value = "./audit-stream")]
        out_dir: PathBuf,
        #[command(flatten)]
        dsn: DsnArg,
        /// Report for people (text) or programs (json).
        #[arg(long, value_enum, default_value_t = ReportArg::Text, conflicts_with = "integrity")]
        format: ReportArg,
        /// With --integrity: compare the out-dir's digests with those `stream --signing-key
        /// --nats` published to JetStream (docs/security.md).
        #[command(flatten)]
        nats: Box<NatsArgs>,
    },
    /// The slot, the WAL it keeps, the checkpoint in out-dir and the last runs of the nightly
    /// export.
    Status {
        #[command(flatten)]
        dsn: DsnArg,
        /// The replication slot of the stream to report on.
        #[arg(long, default_value = "audit_tail", value_parser = parse_slot)]
        slot: String,
        /// The stream's out-dir, whose checkpoint is reported.
        #[arg(long, default_value = "./audit-stream")]
        out_dir: PathBuf,
        /// Report for people (text) or programs (json).
        #[arg(long, value_enum, default_value_t = ReportArg::Text)]
        format: ReportArg,
    },
    /// Drop the replication slot (an abandoned slot keeps WAL forever). Refuses while a consumer
    /// holds it, unless --force.
    DropSlot {
        #[command(flatten)]
        dsn: DsnArg,
        /// The replication slot to drop.
        #[arg(long, default_value = "audit_tail", value_parser = parse_slot)]
        slot: String,
        /// End the connection that holds the slot first.
        #[arg(long)]
        force: bool,
    },
    /// Audit a table into audit.log (sql/audit_log.sql): every INSERT, UPDATE, DELETE and
    /// TRUNCATE, with who, when and why. Running it again replaces the options.
    Track {
        /// The table, as SCHEMA.TABLE (or a name the server's search_path finds).
        #[arg(value_name = "SCHEMA.TABLE", value_parser = parse_name)]
        table: String,
        /// Audit only these columns (and the key), comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = parse_name, value_name = "COLUMN,...",
              conflicts_with = "ignore")]
        only: Option<Vec<String>>,
        /// Do not audit these columns: an UPDATE that changes only them writes nothing.
        #[arg(long, value_delimiter = ',', value_parser = parse_name, value_name = "COLUMN,...")]
        ignore: Option<Vec<String>>,
        /// Never write these columns' values to the log, only that they changed.
        #[arg(long, value_delimiter = ',', value_parser = parse_name, value_name = "COLUMN,...")]
        redact: Option<Vec<String>>,
        /// Log only the rows for which this trigger condition holds, such as
        /// "NEW.status <> 'draft'" (applied to the operations that have the row it names; a
        /// row for which it is NULL is logged, only false skips one).
        #[arg(long, value_name = "EXPR")]
        when: Option<String>,
        /// Statement-level triggers, for a table written by big statements (one log INSERT per
        /// statement); without it, row-level triggers, cheapest for one-row statements.
        #[arg(long, conflicts_with = "when")]
        bulk: bool,
        #[command(flatten)]
        dsn: DsnArg,
    },
    /// Stop auditing a table into audit.log; its rows already logged stay.
    Untrack {
        /// The table, as SCHEMA.TABLE.
        #[arg(value_name = "SCHEMA.TABLE", value_parser = parse_name)]
        table: String,
        #[command(flatten)]
        dsn: DsnArg,
    },
    /// The tables audited into audit.log, with their options.
    Tracked {
        #[command(flatten)]
        dsn: DsnArg,
        /// For people (text) or programs (json).
        #[arg(long, value_enum, default_value_t = ReportArg::Text)]
        format: ReportArg,
    },
    /// Make an Ed25519 key pair for `stream --signing-key`: PATH (mode 0600) and PATH.pub.
    /// Refuses to overwrite.
    Keygen {
        /// Where the secret key goes; the public key goes to PATH.pub.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// The whole story on a throwaway local PostgreSQL: stream, the reference scenario live, the
    /// nightly export, verify; then remove everything. Needs only an installed PostgreSQL server.
    Demo {
        /// Leave the cluster and the stream running until Ctrl-C, and print how to connect.
        #[arg(long)]
        keep: bool,
    },
    /// Every change of one record, oldest first, or with --at the record as it was at a moment,
    /// from the stream's files (docs/history.md).
    History {
        /// The table: `users` (its trail is users_audit) or a table tracked into audit.log, as
        /// SCHEMA.TABLE (schema public when left out).
        #[arg(value_name = "TABLE")]
        table: String,
        /// The record's primary key: `3`, `a,b` for a composite key (in the order the log prints
        /// the key), or JSON such as '{"order_id": 7, "n": 2}'.
        #[arg(value_name = "KEY")]
        key: String,
        /// The record as it was at this moment (one object, or nothing/`null` if it did not
        /// exist then).
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        at: Option<String>,
        /// Only the changes of this field (with --at: only this field).
        #[arg(long, value_name = "FIELD")]
        field: Option<String>,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// The trail's changes that match every filter given, oldest first, from the stream's files
    /// (docs/history.md).
    Log {
        /// Only this table: `users` or SCHEMA.TABLE.
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Only the changes made by this actor (audit.actor, else the session user).
        #[arg(long, value_name = "ACTOR")]
        actor: Option<String>,
        /// Only this operation.
        #[arg(long, value_enum, value_name = "OP")]
        op: Option<OpArg>,
        /// Only the changes of this field (column).
        #[arg(long, value_name = "FIELD")]
        field: Option<String>,
        /// Only the changes whose reason (audit.reason) contains this text.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Only the changes of this request (audit.request_id).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// Count the matching changes instead of listing them, by --by.
        #[arg(long)]
        stats: bool,
        /// What --stats counts by: actor, table, op, hour, or several (actor,hour finds bursts).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "table,op",
            value_name = "actor|table|op|hour,..."
        )]
        by: Vec<ByArg>,
        /// With --stats: only the groups of at least N changes.
        #[arg(long, default_value_t = 1, value_name = "N")]
        min: u64,
        #[command(flatten)]
        query: QueryArgs,
    },
}

/// What `history` and `log` share: the time window, the source and the output.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Only changes at or after TIME: ISO 8601 with or without zone, psql's text
    /// (2026-11-23 14:05:01.5+00), or relative (2h, -2h, 30min, 3d, yesterday).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only changes at or before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// The stream's out-dir, whose files are read.
    #[arg(long, default_value = "./audit-stream")]
    pub out_dir: PathBuf,
    /// Ask the database instead of the files: audit.log and users_audit, through their indexes
    /// (libpq URL or key=value string; AUDIT_TAIL_DSN is not used here, the files are the
    /// default source).
    #[arg(long, value_name = "CONNINFO")]
    pub dsn: Option<String>,
    /// Read both the files and the database (--dsn, else the PG* variables) and flag every row on
    /// which they disagree; exit 1 when any does.
    #[arg(long)]
    pub both: bool,
    /// The zone of the trail's changed_at (the server's TimeZone): times given with a zone, and
    /// relative ones, are converted to it. `local` or an IANA name such as UTC.
    #[arg(long, default_value = "local", value_name = "ZONE")]
    pub tz: String,
    /// text for people, json (JSON Lines) or csv for programs.
    #[arg(long, value_enum, default_value_t = QueryFormatArg::Text)]
    pub format: QueryFormatArg,
}

/// `history --format`, `log --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormatArg {
    Text,
    Json,
    Csv,
}

/// `log --by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    Actor,
    Table,
    Op,
    Hour,
}

impl From<ByArg> for crate::history::stats::By {
    fn from(b: ByArg) -> Self {
        use crate::history::stats::By;
        match b {
            ByArg::Actor => By::Actor,
            ByArg::Table => By::Table,
            ByArg::Op => By::Op,
            ByArg::Hour => By::Hour,
        }
    }
}

/// `log --op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl OpArg {
    /// As the log writes it.
    pub fn as_op(self) -> &'static str {
        match self {
            OpArg::Insert => "INSERT",
            OpArg::Update => "UPDATE",
            OpArg::Delete => "DELETE",
            OpArg::Truncate => "TRUNCATE",
        }
    }
}

impl QueryArgs {
    /// The plain settings of src/history.
    pub fn common(&self) -> Result<crate::history::Common, crate::history::HistoryError> {
        use crate::history::{Common, Format, HistoryError, Zone};
        Ok(Common {
            out_dir: self.out_dir.clone(),
            format: match self.format {
                QueryFormatArg::Text => Format::Text,
                QueryFormatArg::Json => Format::Json,
                QueryFormatArg::Csv => Format::Csv,
            },
            zone: Zone::parse(&self.tz).map_err(HistoryError::BadTime)?,
            since: self.since.clone(),
            until: self.until.clone(),
        })
    }
}

/// `--nats` and its options, shared by `stream`, `archive` and `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// Publish every row to NATS JetStream at this URL too (nats://host:4222); the slot is then
    /// acknowledged only up to what JetStream has acknowledged.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The first token of the subjects: <prefix>.<database>.<schema>.<table>.
    #[arg(long, default_value = "audit", value_name = "PREFIX")]
    pub nats_subject_prefix: String,
    /// The JetStream stream; created with file storage when missing (taking <prefix>.>), used
    /// as it is otherwise.
    #[arg(long, default_value = "AUDIT", value_name = "NAME")]
    pub nats_stream: String,
    /// How long a stream created by audit-tail keeps messages, such as 30d or 12h (0: for ever).
    #[arg(long, default_value = "0", value_parser = parse_age, value_name = "AGE")]
    pub nats_max_age: std::time::Duration,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (better through NATS_PASSWORD; never printed).
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub nats_password: Option<String>,
    /// NATS token (better through NATS_TOKEN; never printed).
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub nats_token: Option<String>,
    /// NATS credentials file (JWT and nkey seed), as `nats --creds` takes it.
    #[arg(long, env = "NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate to verify the NATS server with (turns TLS on).
    #[arg(long, env = "NATS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS TLS (with --nats-tls-key).
    #[arg(
        long,
        env = "NATS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key for NATS TLS (with --nats-tls-cert).
    #[arg(
        long,
        env = "NATS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// The sink's configuration, if --nats was given.
    pub fn config(self: Box<Self>) -> Option<crate::sink::nats::NatsConfig> {
        let url = self.nats?;
        Some(crate::sink::nats::NatsConfig {
            url,
            subject_prefix: self.nats_subject_prefix,
            stream: self.nats_stream,
            max_age: self.nats_max_age,
            user: self.nats_user,
            password: self.nats_password,
            token: self.nats_token,
            creds: self.nats_creds,
            tls_ca: self.nats_tls_ca,
            tls_cert: self.nats_tls_cert,
            tls_key: self.nats_tls_key,
        })
    }
}

/// A duration like 30d, 12h, 90m, 45s or 0.
fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not an age like 30d, 12h, 90m or 45s");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let (number, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Text,
    Json,
    None,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
            FormatArg::None => Format::None,
        }
    }
}

/// `verify --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportArg {
    Text,
    Json,
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("{s:?} is not a date like 2025-10-21 ({e})"))
}

/// A table or column name: not empty (the server checks that it exists).
fn parse_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a name must not be empty".to_string());
    }
    Ok(s.to_string())
}

fn parse_slot(s: &str) -> Result<String, String> {
    crate::replication::slot::validate_slot_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// An address to listen on: `IP:PORT`, `NAME:PORT` (the first address it resolves to), or
/// `:PORT` for every interface, as Prometheus exporters take it.
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    let wrong = |e: &dyn std::fmt::Display| {
        format!("{s:?} is not an address to listen on, like 127.0.0.1:9187 or :9187 ({e})")
    };
    if let Ok(addr) = full.parse() {
        return Ok(addr);
    }
    full.to_socket_addrs()
        .map_err(|e| wrong(&e))?
        .next()
        .ok_or_else(|| wrong(&"it resolves to no address"))
}

fn parse_until(s: &str) -> Result<Until, String> {
    if s == "now" {
        return Ok(Until::Now);
    }
    s.parse::<Lsn>()
        .map(Until::Lsn)
        .map_err(|e| format!("{e}, or `now`"))
}

#[cfg(test)]
mod tests;
