//! Hands a socket that `conn::open_socket` opened (TLS already negotiated) to tokio-postgres for
//! the ordinary SQL connection, so that both connections reach the server, check its certificate
//! and fail through the same code.
//!
//! tokio-postgres insists on setting up TLS itself. With `sslnegotiation=direct` and
//! `sslmode=require` it sends no SSLRequest and only asks its `TlsConnect` to wrap the stream:
//! `Established` answers with the stream as it is, already encrypted, plus the server
//! certificate's tls-server-end-point data so that SCRAM-SHA-256-PLUS (channel binding) works on
//! this connection as on the replication one. A plain socket goes through with `sslmode=disable`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{SslMode, SslNegotiation};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::conn::{Opened, Socket};

/// Sets `config` up for the socket `opened` describes and returns the connector to pass to
/// `Config::connect_raw` with `opened.socket`.
pub(crate) fn prepare(opened: &Opened, config: &mut tokio_postgres::Config) -> Established {
    if opened.tls {
        config
            .ssl_mode(SslMode::Require)
            .ssl_negotiation(SslNegotiation::Direct);
    } else {
        config.ssl_mode(SslMode::Disable);
    }
    Established {
        end_point: opened.end_point.clone(),
    }
}

/// A `TlsConnect` for a socket whose TLS session is already up.
pub(crate) struct Established {
    end_point: Option<Vec<u8>>,
}

/// The socket as tokio-postgres sees it.
pub(crate) struct EstablishedStream<S> {
    socket: S,
    end_point: Option<Vec<u8>>,
}

// Generic over the socket type, not written for Box<dyn Socket>: tokio-postgres asks for the
// impl at every lifetime of the trait object, which a concrete impl cannot give.
impl<S: Socket> TlsConnect<S> for Established {
    type Stream = EstablishedStream<S>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<EstablishedStream<S>>>;

    fn connect(self, socket: S) -> Self::Future {
        std::future::ready(Ok(EstablishedStream {
            socket,
            end_point: self.end_point,
        }))
    }
}

impl<S: Socket> TlsStream for EstablishedStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(end_point) => ChannelBinding::tls_server_end_point(end_point.clone()),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: Socket> AsyncRead for EstablishedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: Socket> AsyncWrite for EstablishedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}
