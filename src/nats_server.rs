//! A throwaway local NATS server with JetStream (file storage), started from the installed
//! `nats-server` program (Debian's package `nats-server`).
//!
//! Beside the flow, like src/cluster.rs for PostgreSQL: the tests and benchmarks of the NATS
//! sink and the archiver use it to get a real JetStream server nobody else touches. It owns a
//! temporary directory holding the configuration, the JetStream store and the log; the server
//! is killed (SIGKILL: nothing to save) and the directory removed on drop, during a panic too.
//! `kill` and `restart` let a test crash the server and bring it back on the same port with the
//! same store.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The program run, unless AUDIT_TAIL_NATS_SERVER names another.
const PROGRAM: &str = "nats-server";
/// How long the server may take to accept connections with JetStream ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "could not run {program}: {source}: apt-get install nats-server (scripts/install-deps), or \
         set AUDIT_TAIL_NATS_SERVER to the program"
    )]
    Spawn { program: String, source: io::Error },
    #[error("could not prepare the NATS server directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("the NATS server did not start; the end of its log:\n{log}")]
    Start { log: String },
}

/// What to add to the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct NatsServerOptions {
    /// Configuration text appended as is: `accounts { ... }`, `authorization { ... }`. An
    /// account that uses JetStream needs `jetstream: enabled`.
    pub config: String,
    /// The `jetstream { ... }` block's extra lines (`max_file_store: 1G`).
    pub jetstream: String,
}

/// A running throwaway server; dropping it kills it and removes every file.
#[derive(Debug)]
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication.
    pub fn start() -> Result<NatsServer, NatsServerError> {
        NatsServer::start_with(NatsServerOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: NatsServerOptions) -> Result<NatsServer, NatsServerError> {
        let dir = tempfile::Builder::new()
            .prefix("audit-tail-nats-")
            .tempdir()
            .map_err(|source| NatsServerError::Directory {
                path: std::env::temp_dir(),
                source,
            })?;
        let mut server = NatsServer {
            dir,
            port: 0,
            monitor_port: 0,
            child: Mutex::new(None),
        };
        // A free port is free only until someone takes it: retry a failed bind on others.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            server.monitor_port = free_port()?;
            server.write_config(&options)?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(NatsServerError::Start { log }) if log.contains("address already in use") => {
                    last = Some(NatsServerError::Start { log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(NatsServerError::Start {
            log: "no free port".into(),
        }))
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's files, where a test may put a creds or config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL and waits for it to be gone; its store stays.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after `kill`, on the same port with the same store.
    pub fn restart(&self) -> Result<(), NatsServerError> {
        self.kill();
        // The port was ours a moment ago; a TIME_WAIT socket does not keep a listener off it.
        self.spawn()
    }

    /// GET `path` on the monitoring port (`/jsz?streams=true`), the body as text.
    pub fn monitor(&self, path: &str) -> io::Result<String> {
        http_get(self.monitor_port, path)
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("nats-server.conf")
    }

    fn write_config(&self, options: &NatsServerOptions) -> Result<(), NatsServerError> {
        let store = self.dir.path().join("jetstream");
        let text = format!(
            "listen: 127.0.0.1:{port}\n\
             http: 127.0.0.1:{monitor}\n\
             jetstream {{\n  store_dir: {store:?}\n{jetstream}\n}}\n\
             {config}\n",
            port = self.port,
            monitor = self.monitor_port,
            store = store.display().to_string(),
            jetstream = options.jetstream,
            config = options.config,
        );
        let path = self.config_file();
        fs::write(&path, text).map_err(|source| NatsServerError::Directory { path, source })
    }

    fn spawn(&self) -> Result<(), NatsServerError> {
        let program = std::env::var("AUDIT_TAIL_NATS_SERVER").unwrap_or_else(|_| PROGRAM.into());
        let log_path = self.log_file();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| NatsServerError::Directory {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log
            .try_clone()
            .map_err(|source| NatsServerError::Directory {
                path: log_path,
                source,
            })?;
        let child = Command::new(&program)
            .arg("-c")
            .arg(self.config_file())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| NatsServerError::Spawn {
                program: program.clone(),
                source,
            })?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
    }

    /// Waits until the server answers `/healthz` (JetStream included) or has exited.
    fn wait_ready(&self) -> Result<(), NatsServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            {
                let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = child.as_mut()
                    && let Ok(Some(_)) = c.try_wait()
                {
                    child.take();
                    return Err(NatsServerError::Start {
                        log: self.log_tail(),
                    });
                }
            }
            if let Ok(body) = self.monitor("/healthz")
                && body.contains("\"ok\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(NatsServerError::Start {
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1:`port`, for the monitoring endpoint; the body.
fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP answer",
        )),
    }
}

fn free_port() -> Result<u16, NatsServerError> {
    let spawn = |source| NatsServerError::Spawn {
        program: "bind 127.0.0.1:0 to find a free port".into(),
        source,
    };
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(spawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_jetstream_and_comes_back_after_a_kill() {
        let server = NatsServer::start().expect("start nats-server");
        let jsz = server.monitor("/jsz").unwrap();
        assert!(jsz.contains("\"config\""), "JetStream is on: {jsz}");
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", server.port())).is_err());
        server.restart().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(!dir.exists(), "the directory is removed on drop");
    }
}
