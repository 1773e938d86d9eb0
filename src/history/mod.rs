//! `history` and `log`: the questions an audit trail exists to answer (who changed record x, what
//! did person p do between t1 and t2, what did record x look like at time t), answered from the
//! stream's files, with no database.
//!
//! Beside the flow, after the sinks: reads the files the file sink wrote (src/layout.rs), one
//! record at a time. time.rs reads TIME arguments, scan.rs finds and reads the records (db.rs asks
//! the database instead, rows.rs gives either one row at a time), filter.rs says which records a
//! question is about, rebuild.rs rebuilds a record's state, answer.rs and log.rs answer, output.rs
//! prints, searched.rs says what was read when nothing matched.

mod answer;
mod both;
mod chunk;
mod db;
pub mod filter;
mod log;
pub mod output;
mod progress;
pub mod rebuild;
mod rows;
pub mod scan;
mod searched;
pub mod stats;
mod text;
pub mod time;

use std::path::PathBuf;

use chrono::{NaiveDateTime, Utc};

pub use answer::history;
pub use log::log;
pub use output::Format;
pub use time::Zone;

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    BadTime(String),
    #[error("{0}")]
    BadKey(String),
    #[error("{0}")]
    BadTable(String),
    #[error(
        "{table} is not tracked and the database's audit.log holds no row of it: check the name (audit-tail tracked lists the tracked tables)"
    )]
    UnknownTable { table: String },
    #[error("{0} is not a directory: give the stream's --out-dir")]
    NoOutDir(PathBuf),
    #[error("{file}, line {line}: {reason}: the file is not as the stream writes it")]
    Malformed {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<HistoryError> for crate::Error {
    /// Output errors become the program's own, so that a closed stdout (`| head`) ends quietly.
    fn from(e: HistoryError) -> crate::Error {
        match e {
            HistoryError::Output(e) => crate::Error::Output(e),
            other => crate::Error::History(other),
        }
    }
}

/// Where the answers come from.
pub enum Source {
    /// The stream's files in `Common::out_dir`.
    Files,
    /// The database's audit.log and users_audit.
    Database(tokio_postgres::Client),
    /// Both: the answer from the files, and every row on which the copies disagree flagged.
    Both(tokio_postgres::Client),
}

/// What `history` and `log` share.
#[derive(Debug, Clone)]
pub struct Common {
    pub out_dir: PathBuf,
    pub format: Format,
    /// The zone of the trail's wall-clock times.
    pub zone: Zone,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `history TABLE KEY`.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub table: String,
    pub key: String,
    pub at: Option<String>,
    pub field: Option<String>,
    pub common: Common,
}

/// `log` and its filters.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub table: Option<String>,
    pub actor: Option<String>,
    pub op: Option<String>,
    pub field: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// `--stats`: count the matching changes by these instead of printing them.
    pub stats: Option<Vec<stats::By>>,
    /// `--min`: only the groups of at least this many changes.
    pub min: u64,
}

/// Reads a TIME argument; a time without a zone is said to be read in the trail's zone.
pub fn parse_time(text: &str, zone: Zone) -> Result<NaiveDateTime, HistoryError> {
    let moment = time::parse(text, Utc::now(), zone).map_err(HistoryError::BadTime)?;
    if moment.zoneless {
        tracing::info!(
            "{text:?} has no zone: read as the trail's own wall-clock time (changed_at, in the server's TimeZone); times with a zone are converted to {} (--tz)",
            zone.name()
        );
    }
    Ok(moment.wall)
}

fn window(common: &Common) -> Result<(Option<NaiveDateTime>, Option<NaiveDateTime>), HistoryError> {
    let since = common
        .since
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    let until = common
        .until
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    Ok((since, until))
}
