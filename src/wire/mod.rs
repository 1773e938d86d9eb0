//! The connection to a walsender: socket, startup, authentication and message framing.
//!
//! First stage of the flow. tokio-postgres cannot run START_REPLICATION (no CopyBoth mode, no
//! `replication` startup parameter), so this connection is ours, built on postgres-protocol's
//! frontend encoders, backend parser and SCRAM/MD5 helpers, with our own handling of the
//! CopyBothResponse `W` that its parser does not know. `frame` does no I/O; `conn` owns the socket.

pub mod conn;
pub mod conninfo;
pub mod frame;
pub(crate) mod handoff;
pub mod params;
mod pgpass;
mod service;
pub mod tls;

use std::fmt;
use std::io;

pub use conn::WalConnection;
pub use params::{ChannelBinding, ConnParams, Host, SslMode, TlsOptions};

/// An ErrorResponse from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection to {target} failed: {source}{}", connect_hint(.target, .source))]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("replication connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the replication connection")]
    Closed,
    #[error(
        "the server ended the replication stream (it is shutting down or restarting, or the \
         walsender was stopped)"
    )]
    Ended,
    #[error("server error: {0}")]
    Server(ServerError),
    #[error("{0}")]
    Auth(String),
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("TLS handshake with {host} failed: {source}")]
    Handshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the {target} does not accept TLS, and sslmode={mode} requires it: turn on ssl in \
         postgresql.conf, or use sslmode=prefer"
    )]
    TlsRefused { target: String, mode: &'static str },
}

/// libpq's question after a failed connect, for the causes where it helps.
fn connect_hint(target: &str, error: &io::Error) -> &'static str {
    let socket = target.starts_with("server on socket");
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound if socket => {
            "; is the server running locally and accepting connections on that socket? (check \
             host= and port=)"
        }
        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut => {
            "; is the server running on that host and accepting TCP/IP connections? (check \
             host=, port= and listen_addresses)"
        }
        _ => "",
    }
}

impl WireError {
    /// The SQLSTATE when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            WireError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}
