//! Ordinary SQL connections (tokio-postgres) and the SQL scripts embedded in the binary.
//!
//! This sits beside the replication flow: `setup`, `demo`, pre-flight checks and `verify` use it.
//! Notices the server sends (the installer's hints, for one) are passed on to the log on stderr.

use std::future::poll_fn;

use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::wire::{self, ConnParams, WireError};

/// sql/install.sql: the tables, trigger, export functions, publication, role and cron job.
pub const INSTALL_SQL: &str = include_str!("../sql/install.sql");

/// sql/audit_log.sql: the generic log audit.log and audit.track/untrack/tracked, run after
/// install.sql (it adds the log to install.sql's publication).
pub const AUDIT_LOG_SQL: &str = include_str!("../sql/audit_log.sql");

/// sql/demo_data.sql: the reference scenario that leaves six audit rows.
pub const DEMO_DATA_SQL: &str = include_str!("../sql/demo_data.sql");

/// A server error with what the server said, and what to do about it when known.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The server's words are in the message already (`describe`), so the error is not also
    /// given as a source: it would be printed twice.
    #[error("{context}: {}", describe(.error))]
    Server {
        context: String,
        error: tokio_postgres::Error,
    },
    /// The socket or TLS could not be set up (the same errors as the replication connection's).
    #[error(transparent)]
    Connect(WireError),
}

impl SqlError {
    /// Wraps `source` with what we were doing when it happened.
    pub fn new(context: impl Into<String>, source: tokio_postgres::Error) -> SqlError {
        SqlError::Server {
            context: context.into(),
            error: source,
        }
    }

    /// The SQLSTATE of the server's error, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SqlError::Server { error, .. } => error.as_db_error().map(|e| e.code().code()),
            SqlError::Connect(e) => e.code(),
        }
    }
}

/// The server's message with its detail and hint, or the client-side error's chain.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Connects to `params` over the replication connection's own socket code (`wire`): the same
/// host, port, TLS negotiation and certificate checks, and the same errors and retry policy.
/// tokio-postgres then only runs startup and authentication over the ready stream
/// (`wire::handoff`), with channel binding when the session allows it.
pub async fn connect_params(params: &ConnParams) -> Result<Client, SqlError> {
    let opened = wire::conn::open_socket(params)
        .await
        .map_err(SqlError::Connect)?;
    let mut config = params.sql_config();
    let connector = wire::handoff::prepare(&opened, &mut config);
    let (client, connection) = config
        .connect_raw(opened.socket, connector)
        .await
        .map_err(|e| {
            SqlError::new(
                format!(
                    "could not connect to the {} as \"{}\"",
                    params.target(),
                    params.user
                ),
                e,
            )
        })?;
    drive(connection);
    Ok(client)
}

/// Connects without TLS (local sockets, tests) and drives the connection on its own task,
/// logging the server's notices.
pub async fn connect(config: &Config) -> Result<Client, SqlError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| SqlError::new("could not connect to PostgreSQL", e))?;
    drive(connection);
    Ok(client)
}

fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notice(notice))
                    if is_skipping(notice.code().code(), notice.message()) =>
                {
                    tracing::debug!("{}", notice.message());
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    let text = match notice.hint() {
                        Some(hint) => format!("{} (hint: {hint})", notice.message()),
                        None => notice.message().to_string(),
                    };
                    match notice.severity() {
                        "WARNING" => tracing::warn!("{text}"),
                        _ => tracing::info!("{text}"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "SQL connection closed");
                    break;
                }
            }
        }
    });
}

/// The notices of objects kept or absent: "... already exists, skipping" (by SQLSTATE), which a
/// CREATE ... IF NOT EXISTS of a re-run of the install scripts sends for every object it keeps (a
/// table, a role or other object, a schema, a column), and "... does not exist, skipping", which
/// a DROP ... IF EXISTS sends for an object that is not there (the first install's "function
/// audit.track(...) does not exist, skipping"; PostgreSQL gives these no SQLSTATE of their own,
/// so they are told by their text). They tell the user nothing, so they go to the debug log.
/// Every other notice (the installer's hints among them) stays in the log.
pub fn is_skipping(code: &str, message: &str) -> bool {
    matches!(code, "42P07" | "42710" | "42P06" | "42701")
        || (code == "00000" && message.ends_with(" does not exist, skipping"))
}

/// Applies sql/install.sql, then sql/audit_log.sql, to the database `client` is connected to. `export_dir`, when given,
/// is the server-side directory for the nightly export files (kept from before when None).
pub async fn install(client: &Client, export_dir: Option<&str>) -> Result<(), SqlError> {
    if let Some(dir) = export_dir {
        client
            .execute("SELECT set_config('audit.export_dir', $1, false)", &[&dir])
            .await
            .map_err(|e| SqlError::new("could not set audit.export_dir", e))?;
    }
    client
        .batch_execute(INSTALL_SQL)
        .await
        .map_err(|e| SqlError::new("sql/install.sql failed", e))?;
    client
        .batch_execute(AUDIT_LOG_SQL)
        .await
        .map_err(|e| SqlError::new("sql/audit_log.sql failed", e))
}
