//! Reaching JetStream: the options of `--nats*` (credentials as the nats CLI takes them, never
//! printed), the connection with backoff while the server is unreachable, and the stream,
//! created with file storage when missing or used as it is. Shared by the sink and the archiver.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ConnectOptions};

use super::NatsError;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The reconnect delay of a client of one connection once it has connected: longer than any
/// run, so the client's connection handler never makes a second connection.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A client that makes one connection only (the sink's publishing, see
/// src/sink/nats/publisher.rs): once connected, a lost connection is reported through `lost`
/// and never made again by the client itself.
///
/// async-nats 0.51 has no option for that: `max_reconnects(Some(0))` means no limit, and its
/// connector resets its attempt count after each connection, then calls the reconnect delay
/// callback before every attempt (connector.rs, `try_connect`). So the callback returns
/// `NEVER` once `connected` is set (right after `connect` returns, before the connection
/// handler first runs): a disconnected handler sleeps in that delay and writes nothing it
/// buffered. Its runtime is then dropped, which ends it.
#[derive(Clone, Default)]
pub struct OneConnection {
    pub connected: Arc<std::sync::atomic::AtomicBool>,
    pub lost: Arc<tokio::sync::Notify>,
}

/// `--nats` and its options.
#[derive(Clone, Default)]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated).
    pub url: String,
    /// The first token of every subject (`audit`).
    pub subject_prefix: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// The max age of a stream created by us (zero: keep for ever).
    pub max_age: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Credentials never show, not even with `{:?}`.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |o: bool| if o { "<set>" } else { "<none>" };
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("max_age", &self.max_age)
            .field("user", &self.user)
            .field("password", &set(self.password.is_some()))
            .field("token", &set(self.token.is_some()))
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// Server errors the client reports beside the calls (a publish the account may not make):
/// the sink turns the first into a fatal failure.
pub type ServerErrors = Arc<Mutex<Option<String>>>;

impl NatsConfig {
    /// The subjects of the stream we create: everything under the prefix.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    async fn options(
        &self,
        errors: ServerErrors,
        once: Option<&OneConnection>,
    ) -> Result<ConnectOptions, NatsError> {
        let lost = once.map(|o| o.lost.clone());
        let mut options = ConnectOptions::new()
            .name("audit-tail")
            .connection_timeout(Duration::from_secs(5))
            // Keep reconnecting for ever while running: the slot waits meanwhile.
            .max_reconnects(None)
            .event_callback(move |event| {
                let errors = errors.clone();
                let lost = lost.clone();
                async move {
                    if let (async_nats::Event::Disconnected, Some(lost)) = (&event, &lost) {
                        tracing::warn!("the connection to NATS was lost");
                        lost.notify_one();
                        return;
                    }
                    match event {
                        async_nats::Event::ServerError(e) => {
                            tracing::warn!(error = %e, "the NATS server reported an error");
                            errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e.to_string());
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            });
        if let Some(once) = once {
            let connected = once.connected.clone();
            options = options.reconnect_delay_callback(move |_| {
                if connected.load(std::sync::atomic::Ordering::Acquire) {
                    NEVER
                } else {
                    Duration::ZERO
                }
            });
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|source| NatsError::Creds {
                    path: creds.clone(),
                    source,
                })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }

    /// Connects, retrying with backoff while the server is unreachable (and saying so on
    /// stderr) until `stopped` says to give up; refused credentials or TLS end at once.
    pub async fn connect(
        &self,
        errors: ServerErrors,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Option<async_nats::Client>, NatsError> {
        self.connect_with(errors, stopped, None).await
    }

    /// As `connect`, for a client of one connection (see [`OneConnection`]).
    pub async fn connect_once(
        &self,
        errors: ServerErrors,
        stopped: &dyn Fn() -> bool,
        once: &OneConnection,
    ) -> Result<Option<async_nats::Client>, NatsError> {
        self.connect_with(errors, stopped, Some(once)).await
    }

    async fn connect_with(
        &self,
        errors: ServerErrors,
        stopped: &dyn Fn() -> bool,
        once: Option<&OneConnection>,
    ) -> Result<Option<async_nats::Client>, NatsError> {
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 0u32;
        loop {
            let options = self.options(errors.clone(), once).await?;
            match options.connect(self.url.as_str()).await {
                Ok(client) => {
                    // No await since the handler was spawned: it has not run yet.
                    if let Some(once) = once {
                        once.connected
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    return Ok(Some(client));
                }
                Err(e) => {
                    let fatal = matches!(
                        e.kind(),
                        ConnectErrorKind::Authentication
                            | ConnectErrorKind::AuthorizationViolation
                            | ConnectErrorKind::Tls
                            | ConnectErrorKind::ServerParse
                    );
                    if fatal {
                        return Err(NatsError::Refused {
                            url: self.url.clone(),
                            reason: e.to_string(),
                        });
                    }
                    attempt += 1;
                    tracing::warn!(url = %self.url, attempt, retry_in = ?backoff, error = %e,
                        "NATS is unreachable; nothing is acknowledged until it is back, retrying");
                }
            }
            let mut waited = Duration::ZERO;
            while waited < backoff {
                if stopped() {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Why the stream cannot be made when its subjects overlap an existing stream's: names
    /// that stream (looked up by our subjects) and what to do.
    async fn overlap(&self, js: &jetstream::Context, e: &dyn std::fmt::Display) -> String {
        let subjects = self.stream_subjects();
        // The stream whose subjects collide with ours.
        let owner = match js.stream_by_subject(subjects.as_str()).await {
            Ok(owner) => format!("stream \"{owner}\""),
            Err(_) => "an existing stream".to_string(),
        };
        format!(
            "could not create it: its subjects {subjects} overlap those of {owner} ({e}); \
             publish to that stream with --nats-stream, or give this cluster its own \
             --nats-subject-prefix"
        )
    }

    /// The stream: created with file storage and the max age when missing, used as it is
    /// otherwise (with a warning if it keeps messages only in memory).
    pub async fn stream(&self, js: &jetstream::Context) -> Result<stream::Stream, NatsError> {
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.stream_subjects()],
            storage: stream::StorageType::File,
            max_age: self.max_age,
            ..Default::default()
        };
        let mut stream = match js.get_or_create_stream(config).await {
            Ok(stream) => stream,
            Err(e) => {
                let overlap = matches!(e.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP);
                let reason = if overlap {
                    self.overlap(js, &e).await
                } else {
                    e.to_string()
                };
                return Err(NatsError::Stream {
                    stream: self.stream.clone(),
                    reason,
                });
            }
        };
        let info = stream.info().await.map_err(|e| NatsError::Stream {
            stream: self.stream.clone(),
            reason: e.to_string(),
        })?;
        if info.config.storage == stream::StorageType::Memory {
            tracing::warn!(stream = %self.stream,
                "this JetStream stream keeps its messages in memory: they do not survive a restart \
                 of the NATS server; recreate it with file storage to keep the copy");
        }
        Ok(stream)
    }
}
