//! audit-tail: a PostgreSQL audit trail with a live second copy.
//!
//! The SQL side (sql/) writes one users_audit row per changed field and exports each day to CSV
//! with pg_cron. The consumer streams the same rows through logical replication into rolling daily
//! CSV files. See docs/architecture.md for the flow, module by module.

pub mod capture;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod coverage;
pub mod demo;
pub mod durable;
pub mod error;
pub mod gaps;
pub mod history;
pub mod integrity;
pub mod latency;
pub mod layout;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
pub mod replication;
pub mod sink;
pub mod sql;
pub mod status;
pub mod stream;
pub mod track;
pub mod verify;
pub mod wire;

/// Every error the program can end with; `main` alone turns these into exit codes, through the
/// policy of src/error.rs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Sql(#[from] sql::SqlError),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    #[error(transparent)]
    Params(#[from] wire::params::ParamsError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error(transparent)]
    Integrity(#[from] integrity::IntegrityError),
    #[error(transparent)]
    History(history::HistoryError),
    #[error(transparent)]
    Track(#[from] track::TrackError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

impl Error {
    /// Whether this is stdout closed by the reader (`| head`): a normal end, not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
