//! A throwaway local PostgreSQL cluster, started from the installed server programs.
//!
//! This sits beside the data flow, not in it: `audit-tail demo`, the end-to-end tests and the
//! benchmarks use it to get a real server with `wal_level=logical` (and pg_cron when installed)
//! that nobody else touches. It owns a temporary directory holding the data directory, the Unix
//! socket and the server log; the cluster is stopped and the directory removed on drop, during a
//! panic too.
//!
//! initdb refuses to run as root, so when we are root every server program runs as the `postgres`
//! OS user (the one Debian's postgresql package creates), and the directory is handed to it.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::unistd::{Gid, Uid, User};

/// The superuser every throwaway cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// Where a server program came from and why it failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server programs not found (looked for initdb, pg_ctl and postgres in {searched}): \
         apt-get install postgresql, or set AUDIT_TAIL_PG_BIN to the directory that holds them"
    )]
    ServerNotFound { searched: String },
    #[error(
        "running as root, but there is no `postgres` OS user to run the server as (initdb refuses \
         root): apt-get install postgresql creates it"
    )]
    NoServerUser,
    #[error("could not prepare the cluster directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("could not run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} failed ({status}): {output}")]
    Program {
        program: String,
        status: String,
        output: String,
    },
    #[error("the PostgreSQL server did not start; the end of its log:\n{log}")]
    Start { log: String },
}

/// What to change from the defaults before the server first starts.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` lines as (name, value); the value is written as given, so quote
    /// strings: `("wal_sender_timeout", "'5s'")`.
    pub settings: Vec<(String, String)>,
    /// `pg_hba.conf` lines placed before the default `trust` lines, for authentication tests.
    pub hba: Vec<String>,
    /// Files to put in the data directory (mode 0600), such as `server.crt` and `server.key`
    /// for `ssl = on`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running throwaway cluster. Dropping it stops the server and removes every file.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<User>,
    pg_cron: bool,
}

impl Cluster {
    /// initdb, configure and start a cluster with the default options.
    pub fn start() -> Result<Cluster, ClusterError> {
        Cluster::start_with(ClusterOptions::default())
    }

    /// initdb, configure and start a cluster.
    pub fn start_with(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin = find_server_bin()?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("audit-tail-pg-")
            .tempdir()
            .map_err(|source| ClusterError::Directory {
                path: std::env::temp_dir(),
                source,
            })?;
        hand_over(dir.path(), run_as.as_ref())?;
        let pg_cron = pg_cron_installed(&bin);
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            run_as,
            pg_cron,
        };
        cluster.initdb()?;
        cluster.write_hba(&options.hba)?;
        for (name, contents) in &options.files {
            cluster.write_server_file(name, contents)?;
        }
        // A free port is only free until someone takes it: parallel test binaries can race for
        // it, so a failed bind is retried with another port.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_config(&options.settings)?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(ClusterError::Start { log }) if log.contains("could not bind") => {
                    last = Some(ClusterError::Start { log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Start {
            log: "no free port".into(),
        }))
    }

    /// The directory that holds the server's Unix socket (use it as `host`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TCP port on 127.0.0.1, also the socket's port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether pg_cron is installed and preloaded in this cluster.
    pub fn has_pg_cron(&self) -> bool {
        self.pg_cron
    }

    /// The directory of the server programs (initdb, pg_ctl, psql, pg_recvlogical, pgbench).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A libpq key=value connection string to `database` as the superuser over the socket.
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.socket_dir().display(),
            self.port,
            SUPERUSER,
            database
        )
    }

    /// A tokio-postgres configuration for `database` as the superuser over the socket.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database);
        config
    }

    /// A directory inside the cluster's own that the server may write to (for COPY TO a file).
    /// Removed with the cluster.
    pub fn server_writable_dir(&self, name: &str) -> Result<PathBuf, ClusterError> {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).map_err(|source| ClusterError::Directory {
            path: path.clone(),
            source,
        })?;
        hand_over(&path, self.run_as.as_ref())?;
        Ok(path)
    }

    /// Runs SQL through psql in `database`, stopping at the first error; returns the unaligned,
    /// tuples-only output. For set-up and tear-down: the product's own code uses tokio-postgres.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.client_command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo(database))
            .arg("-c")
            .arg(sql);
        let output = run(&mut cmd, "psql")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A command for a client program of the same installation (psql, pg_recvlogical, pgbench),
    /// run as the current user: clients may run as root.
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env("PGHOST", self.socket_dir())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env_remove("PGPASSWORD")
            .env_remove("PGDATABASE")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        cmd
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`): no shutdown checkpoint, so
    /// on restart the server runs crash recovery and slots go back to their last checkpointed
    /// position.
    pub fn crash(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"])
    }

    /// Starts the server again after `stop` or `crash`, on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl_start()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // A directory the server user can enter: the caller's may be /root.
        cmd.current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .env("HOME", &user.dir)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]);
        run(&mut cmd, "initdb").map(drop)
    }

    fn write_hba(&self, extra: &[String]) -> Result<(), ClusterError> {
        let mut hba = String::new();
        for line in extra {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        self.write_server_file("pg_hba.conf", &hba)
    }

    fn write_config(&self, extra: &[(String, String)]) -> Result<(), ClusterError> {
        let mut conf = format!(
            "# written by audit-tail's throwaway cluster\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             wal_level = logical\n\
             max_wal_senders = 40\n\
             max_replication_slots = 40\n\
             max_connections = 200\n\
             max_worker_processes = 32\n\
             fsync = off\n\
             full_page_writes = off\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             logging_collector = off\n",
            port = self.port,
            socket = self.socket_dir().display(),
        );
        if self.pg_cron {
            conf.push_str(
                "shared_preload_libraries = 'pg_cron'\n\
                 cron.database_name = 'postgres'\n\
                 cron.use_background_workers = on\n",
            );
        }
        for (name, value) in extra {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        // postgresql.auto.conf is read last and is ours alone: rewriting it on a port retry is safe.
        self.write_server_file("postgresql.auto.conf", &conf)
    }

    fn write_server_file(
        &self,
        name: &str,
        contents: impl AsRef<[u8]>,
    ) -> Result<(), ClusterError> {
        let path = self.data_dir().join(name);
        let err = |source| ClusterError::Directory {
            path: path.clone(),
            source,
        };
        fs::write(&path, contents).map_err(err)?;
        // The server refuses a key file others can read.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(err)?;
        hand_over(&path, self.run_as.as_ref())
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "start"]);
        match run(&mut cmd, "pg_ctl start") {
            Ok(_) => Ok(()),
            Err(ClusterError::Program { .. }) => Err(ClusterError::Start {
                log: self.log_tail(),
            }),
            Err(e) => Err(e),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args);
        run(&mut cmd, "pg_ctl").map(drop)
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate: a throwaway cluster needs no shutdown checkpoint. Errors are ignored since
        // the server may already be stopped; the directory goes with the TempDir.
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}

fn run(cmd: &mut Command, program: &str) -> Result<Output, ClusterError> {
    let output = cmd.output().map_err(|source| ClusterError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(ClusterError::Program {
        program: program.to_string(),
        status: output.status.to_string(),
        output: text.trim().to_string(),
    })
}

/// The first directory holding initdb, pg_ctl and postgres: $AUDIT_TAIL_PG_BIN, then
/// `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin.
fn find_server_bin() -> Result<PathBuf, ClusterError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("AUDIT_TAIL_PG_BIN") {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    candidates.extend(versioned.into_iter().map(|(_, path)| path));

    let is_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    candidates
        .iter()
        .find(|dir| is_server(dir))
        .cloned()
        .ok_or_else(|| {
            let searched: Vec<String> =
                candidates.iter().map(|p| p.display().to_string()).collect();
            ClusterError::ServerNotFound {
                searched: if searched.is_empty() {
                    "pg_config and /usr/lib/postgresql".into()
                } else {
                    searched.join(", ")
                },
            }
        })
}

fn pg_cron_installed(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin.join("pg_config"))
        .arg("--pkglibdir")
        .output()
    else {
        return false;
    };
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && libdir.join("pg_cron.so").is_file()
}

fn server_user() -> Result<Option<User>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(user)),
        _ => Err(ClusterError::NoServerUser),
    }
}

/// Gives `path` to the server's OS user when that is not us, and lets only it in.
fn hand_over(path: &Path, user: Option<&User>) -> Result<(), ClusterError> {
    let err = |source| ClusterError::Directory {
        path: path.to_path_buf(),
        source,
    };
    if let Some(user) = user {
        nix::unistd::chown(path, Some(user.uid), Some(Gid::from_raw(user.gid.as_raw())))
            .map_err(|e| err(io::Error::from(e)))?;
    }
    if path.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| ClusterError::Spawn {
        program: "bind 127.0.0.1:0 to find a free port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| ClusterError::Spawn {
            program: "bind 127.0.0.1:0 to find a free port".into(),
            source,
        })
}
