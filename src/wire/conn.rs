//! The replication connection's socket: connect (TCP or Unix), startup with
//! `replication=database`, authentication (trust, password, MD5, SCRAM-SHA-256), simple queries,
//! and CopyBoth. Reads go into a buffer the connection owns, so `recv` is cancel-safe under
//! `select!`; writes happen outside `select!`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    self, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::frame::{self, Backend};
use super::tls;
use super::{ChannelBinding, ConnParams, Host, SslMode, WireError};

/// Session settings pinned at startup so text values equal COPY's output byte for byte.
pub const PINNED_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8";

/// How much the read buffer asks the socket for at a time.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// What arrived in CopyBoth mode.
pub enum CopyMessage {
    Data(Bytes),
    /// The server ended the stream (CopyDone, or CommandComplete from a walsender shutting down).
    Done,
}

/// An open socket to the server, TLS negotiated, before startup.
pub(crate) struct Opened {
    pub socket: Box<dyn Socket>,
    /// Whether the socket is a TLS session.
    pub tls: bool,
    /// The server certificate's tls-server-end-point data, for SCRAM channel binding.
    pub end_point: Option<Vec<u8>>,
}

impl Opened {
    fn plain(stream: impl Socket + 'static) -> Opened {
        Opened {
            socket: Box::new(stream),
            tls: false,
            end_point: None,
        }
    }
}

/// A connection in replication mode.
pub struct WalConnection {
    socket: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
    server_version: Option<String>,
}

impl WalConnection {
    /// Connects, starts up in `replication=database` mode and authenticates.
    pub async fn connect(params: &ConnParams) -> Result<WalConnection, WireError> {
        let opened = open_socket(params).await?;
        let mut conn = WalConnection {
            socket: opened.socket,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::new(),
            server_version: None,
        };
        frontend::startup_message(
            [
                ("user", params.user.as_str()),
                ("database", params.dbname.as_str()),
                ("replication", "database"),
                ("application_name", params.application_name.as_str()),
                ("client_encoding", "UTF8"),
                ("options", PINNED_OPTIONS),
            ],
            &mut conn.write,
        )?;
        conn.flush().await?;
        let binding = Binding {
            wanted: params.tls.channel_binding,
            tls: opened.tls,
            end_point: opened.end_point,
        };
        conn.authenticate(params, binding).await?;
        Ok(conn)
    }

    /// The server's version string (`15.18 (Debian ...)`), as reported at startup.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    async fn authenticate(
        &mut self,
        params: &ConnParams,
        binding: Binding,
    ) -> Result<(), WireError> {
        let password = || {
            params.password.as_deref().ok_or_else(|| {
                WireError::Auth(format!(
                    "the server asks for a password for user \"{}\": put it in --dsn, PGPASSWORD or ~/.pgpass",
                    params.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                Message::AuthenticationOk => binding.check_used(scram.is_some())?,
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(params.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next()? {
                        offered.push(m.to_string());
                    }
                    let (mechanism, channel) = binding.choose(&offered)?;
                    let s = ScramSha256::new(password()?.as_bytes(), channel);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.write)?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL continue without a start"))?;
                    s.update(body.data())
                        .map_err(|e| WireError::Auth(format!("SCRAM failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL final without a start"))?;
                    s.finish(body.data()).map_err(|e| {
                        WireError::Auth(format!("the server's SCRAM proof did not verify: {e}"))
                    })?;
                }
                Message::ParameterStatus(body) => {
                    if body.name()? == "server_version" {
                        self.server_version = Some(body.value()?.to_string());
                    }
                }
                Message::BackendKeyData(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(WireError::Auth(
                        "the server asks for Kerberos/GSSAPI/SSPI authentication, which audit-tail does not support: use scram-sha-256 in pg_hba.conf".into(),
                    ));
                }
                other => return Err(protocol(&format!("{} during startup", name(&other)))),
            }
        }
    }

    /// Runs a simple query; returns the rows of its last result as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Message::RowDescription(_) => rows.clear(),
                Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(range) = ranges.next()? {
                        row.push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => error = Some(frame::server_error(body.fields())?),
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(WireError::Server(e)),
                        None => Ok(rows),
                    };
                }
                other => return Err(protocol(&format!("{} after a query", name(&other)))),
            }
        }
    }

    /// Sends a command that enters CopyBoth mode (START_REPLICATION) and waits until it has.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Backend::CopyBothResponse => return Ok(()),
                Backend::Other(Message::ErrorResponse(body)) => {
                    let error = frame::server_error(body.fields())?;
                    return Err(WireError::Server(error));
                }
                Backend::Other(Message::NoticeResponse(_)) => {}
                Backend::Other(other) => {
                    return Err(protocol(&format!(
                        "{} instead of CopyBothResponse",
                        name(&other)
                    )));
                }
                Backend::CopyData(_) => return Err(protocol("CopyData before CopyBothResponse")),
            }
        }
    }

    /// The next CopyData payload in CopyBoth mode. Cancel-safe.
    pub async fn recv(&mut self) -> Result<CopyMessage, WireError> {
        loop {
            if let Some(message) = self.try_recv()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// The next CopyData payload in CopyBoth mode if one is already buffered; no I/O. Lets the
    /// caller work through a read's worth of messages without a trip through the scheduler.
    pub fn try_recv(&mut self) -> Result<Option<CopyMessage>, WireError> {
        while let Some(frame) = frame::parse(&mut self.read)? {
            match frame {
                Backend::CopyData(data) => return Ok(Some(CopyMessage::Data(data))),
                // A walsender that is shutting down ends with CommandComplete, without CopyDone
                // (walsender.c, WalSndDone); a clean end of COPY with CopyDone.
                Backend::Other(Message::CopyDone | Message::CommandComplete(_)) => {
                    return Ok(Some(CopyMessage::Done));
                }
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(WireError::Server(frame::server_error(body.fields())?));
                }
                Backend::Other(Message::NoticeResponse(body)) => {
                    let notice = frame::server_error(body.fields())?;
                    tracing::info!("server notice: {notice}");
                }
                Backend::Other(Message::ParameterStatus(_)) => {}
                Backend::Other(other) => {
                    return Err(protocol(&format!("{} in CopyBoth mode", name(&other))));
                }
                Backend::CopyBothResponse => return Err(protocol("a second CopyBothResponse")),
            }
        }
        Ok(None)
    }

    /// Whether a whole message is already buffered (more work is waiting without a read).
    pub fn has_buffered_message(&self) -> bool {
        if self.read.len() < 5 {
            return false;
        }
        let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
        self.read.len() > len as usize
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), WireError> {
        frontend::CopyData::new(payload)?.write(&mut self.write);
        self.flush().await
    }

    /// Ends CopyBoth mode from our side and closes the connection politely.
    pub async fn finish(mut self) -> Result<(), WireError> {
        frontend::copy_done(&mut self.write);
        frontend::terminate(&mut self.write);
        self.flush().await?;
        self.socket.shutdown().await.ok();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.socket.write_all(&self.write).await?;
        self.write.clear();
        self.socket.flush().await?;
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Backend, WireError> {
        loop {
            if let Some(frame) = frame::parse(&mut self.read)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Reads what the socket has (at least one byte) into the read buffer. Cancel-safe.
    async fn fill(&mut self) -> Result<(), WireError> {
        self.read.reserve(READ_CHUNK);
        if self.socket.read_buf(&mut self.read).await? == 0 {
            return Err(WireError::Closed);
        }
        Ok(())
    }

    async fn next_message(&mut self) -> Result<Message, WireError> {
        loop {
            match self.next_frame().await? {
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(WireError::Server(frame::server_error(body.fields())?));
                }
                Backend::Other(Message::NoticeResponse(body)) => {
                    let notice = frame::server_error(body.fields())?;
                    tracing::info!("server notice: {notice}");
                }
                Backend::Other(message) => return Ok(message),
                Backend::CopyBothResponse => return Err(protocol("unexpected CopyBothResponse")),
                Backend::CopyData(_) => return Err(protocol("unexpected CopyData")),
            }
        }
    }
}

/// The socket to the server `params` names, TLS negotiated as sslmode asks: shared by the
/// replication connection and the ordinary SQL connection (`sql::connect_params`), so that both
/// reach the server, and fail, the same way.
pub(crate) async fn open_socket(params: &ConnParams) -> Result<Opened, WireError> {
    let target = params.target();
    match &params.host {
        Host::Tcp(host) => {
            let address = params.hostaddr.map(|a| a.to_string());
            let address = address.as_deref().unwrap_or(host);
            let connect = TcpStream::connect((address, params.port));
            let mut stream = connect_with_timeout(connect, &target, params.connect_timeout).await?;
            stream.set_nodelay(true)?;
            set_keepalive(&stream)?;
            let Some(config) = tls::client_config(&params.tls)? else {
                return Ok(Opened::plain(stream));
            };
            if !negotiate_tls(&mut stream, params.tls.mode, &target).await? {
                return Ok(Opened::plain(stream));
            }
            let name = tls::server_name(host)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls_stream =
                connector
                    .connect(name, stream)
                    .await
                    .map_err(|source| WireError::Handshake {
                        host: host.clone(),
                        source,
                    })?;
            let end_point = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|certificate| tls::server_end_point(certificate));
            Ok(Opened {
                socket: Box::new(tls_stream),
                tls: true,
                end_point,
            })
        }
        // As in libpq, no TLS over a Unix socket.
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", params.port));
            let connect = UnixStream::connect(&path);
            let stream = connect_with_timeout(connect, &target, params.connect_timeout).await?;
            Ok(Opened::plain(stream))
        }
    }
}

/// What SCRAM may bind to: libpq's channel_binding rules over what the TLS session offers.
struct Binding {
    wanted: ChannelBinding,
    tls: bool,
    end_point: Option<Vec<u8>>,
}

impl Binding {
    /// The SASL mechanism and the channel-binding flag to start SCRAM with.
    fn choose(
        &self,
        offered: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), WireError> {
        let plus = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
        if let (true, Some(end_point), false) = (
            plus,
            &self.end_point,
            self.wanted == ChannelBinding::Disable,
        ) {
            return Ok((
                SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(end_point.clone()),
            ));
        }
        if self.wanted == ChannelBinding::Require {
            return Err(WireError::Auth(self.refusal(if plus {
                "the server certificate's signature algorithm has no tls-server-end-point hash"
            } else {
                "the server does not offer SCRAM-SHA-256-PLUS"
            })));
        }
        if !offered.iter().any(|m| m == SCRAM_SHA_256) {
            return Err(WireError::Auth(format!(
                "the server offers SASL mechanisms {offered:?}; audit-tail supports SCRAM-SHA-256 \
                 and SCRAM-SHA-256-PLUS"
            )));
        }
        // "y": we could bind but the server did not offer to, so a downgrade is detectable.
        let flag = if self.tls && self.wanted != ChannelBinding::Disable {
            sasl::ChannelBinding::unrequested()
        } else {
            sasl::ChannelBinding::unsupported()
        };
        Ok((SCRAM_SHA_256, flag))
    }

    /// channel_binding=require refuses a login that ended without SCRAM (trust, password, MD5).
    fn check_used(&self, scram: bool) -> Result<(), WireError> {
        if self.wanted == ChannelBinding::Require && !scram {
            return Err(WireError::Auth(
                self.refusal("the server authenticated the client without SCRAM"),
            ));
        }
        Ok(())
    }

    fn refusal(&self, why: &str) -> String {
        let tls = if self.tls {
            ""
        } else {
            " (and the connection is not TLS: channel binding needs sslmode=require or stricter)"
        };
        format!(
            "channel_binding=require, but {why}{tls}: use scram-sha-256 in pg_hba.conf with TLS, \
             or set channel_binding=prefer"
        )
    }
}

/// SSLRequest: returns whether the server agreed ('S') to TLS. A refusal ('N') is an error unless
/// sslmode is prefer.
async fn negotiate_tls(
    stream: &mut TcpStream,
    mode: SslMode,
    target: &str,
) -> Result<bool, WireError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    let refused = |mode| {
        Err(WireError::TlsRefused {
            target: target.to_string(),
            mode,
        })
    };
    match (answer[0], mode) {
        (b'S', _) => Ok(true),
        (b'N', SslMode::Prefer) => Ok(false),
        (b'N', SslMode::Require) => refused("require"),
        (b'N', SslMode::VerifyCa) => refused("verify-ca"),
        (b'N', _) => refused("verify-full"),
        (other, _) => Err(protocol(&format!("answer {other:#04x} to SSLRequest"))),
    }
}

async fn connect_with_timeout<T>(
    connect: impl std::future::Future<Output = std::io::Result<T>>,
    target: &str,
    timeout: Duration,
) -> Result<T, WireError> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(WireError::Connect {
            target: target.to_string(),
            source,
        }),
        Err(_) => Err(WireError::Connect {
            target: target.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {} s (connect_timeout)", timeout.as_secs()),
            ),
        }),
    }
}

/// TCP keepalive so a dead peer is noticed even while we wait for data.
fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let fd = stream;
    let err = |e: nix::Error| std::io::Error::from(e);
    setsockopt(fd, sockopt::KeepAlive, &true).map_err(err)?;
    setsockopt(fd, sockopt::TcpKeepIdle, &30).map_err(err)?;
    setsockopt(fd, sockopt::TcpKeepInterval, &10).map_err(err)?;
    setsockopt(fd, sockopt::TcpKeepCount, &3).map_err(err)?;
    Ok(())
}

fn protocol(what: &str) -> WireError {
    WireError::Protocol(what.to_string())
}

fn name(message: &Message) -> &'static str {
    match message {
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::RowDescription(_) => "RowDescription",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::CopyDone => "CopyDone",
        _ => "a message",
    }
}
