//! Where and as whom to connect: a libpq-style connection string completed as psql would.
//!
//! `--dsn` (or AUDIT_TAIL_DSN) takes a URL (`postgresql://user@host:5432/db?sslmode=require`) or
//! key=value pairs (`host=/var/run/postgresql dbname=app`), parsed by libpq's rules (`conninfo`).
//! What it leaves out comes from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE,
//! PGSSLROOTCERT, PGSSLCERT, PGSSLKEY and the password file (PGPASSFILE or ~/.pgpass), then
//! libpq's defaults. The one result feeds both the replication connection (ours) and the SQL
//! connection (tokio-postgres). Only the first host of a list is used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conninfo;

/// A server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// The directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS or nothing; the certificate is checked against sslrootcert only when one is given.
    Require,
    /// TLS with a certificate signed by sslrootcert, whatever its host name.
    VerifyCa,
    /// TLS with a certificate signed by sslrootcert and naming the host.
    VerifyFull,
}

/// libpq's channel_binding: whether SCRAM authentication binds itself to the TLS channel
/// (SCRAM-SHA-256-PLUS with tls-server-end-point), so that a man in the middle holding a
/// certificate the client accepts still cannot relay the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    /// Bind when TLS is on and the server offers it (the default).
    Prefer,
    /// Refuse to authenticate without it.
    Require,
}

/// TLS settings as libpq users know them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
}

/// Everything needed to open a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub tls: TlsOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error(
        "invalid connection string ({0}): give a URL like postgresql://user@host:5432/dbname or \
         key=value pairs like \"host=localhost port=5432 dbname=app user=audit_tail\""
    )]
    Invalid(String),
    #[error("invalid {name} {value:?}: {what}")]
    Value {
        name: String,
        value: String,
        what: &'static str,
    },
}

impl ConnParams {
    /// Completes `dsn` from the environment (`env` looks a variable up) and the password file.
    pub fn resolve(
        dsn: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnParams, ParamsError> {
        let pairs = match dsn.map(str::trim).filter(|d| !d.is_empty()) {
            Some(dsn) => conninfo::parse(dsn).map_err(ParamsError::Invalid)?,
            None => Vec::new(),
        };
        // Later pairs win, as in libpq; then the environment; then the defaults.
        let given = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let get = |key: &str, var: &str| given(key).or_else(|| env(var));

        let host = match get("host", "PGHOST").or_else(|| given("hostaddr")) {
            Some(h) => host_of(h.split(',').next().unwrap_or_default()),
            None => Host::Unix(default_socket_dir()),
        };
        let port = match get("port", "PGPORT") {
            Some(p) => parse_value("port", &p, "not a port number")?,
            None => 5432,
        };
        let user = get("user", "PGUSER").unwrap_or_else(os_user);
        let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let application_name = given("application_name").unwrap_or_else(|| "audit-tail".into());
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => Duration::from_secs(parse_value(
                "connect_timeout",
                &t,
                "not a number of seconds",
            )?),
            None => Duration::from_secs(30),
        };
        let home = env("HOME").map(PathBuf::from);
        let default_file = |name: &str| {
            home.as_ref()
                .map(|h| h.join(".postgresql").join(name))
                .filter(|p| p.is_file())
        };
        let mode = match get("sslmode", "PGSSLMODE").as_deref() {
            None | Some("prefer") | Some("allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(ParamsError::Value {
                    name: "sslmode".into(),
                    value: other.into(),
                    what: "use disable, prefer, require, verify-ca or verify-full",
                });
            }
        };
        let channel_binding = match get("channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(other) => {
                return Err(ParamsError::Value {
                    name: "channel_binding".into(),
                    value: other.into(),
                    what: "use disable, prefer or require",
                });
            }
        };
        let no_tls = mode == SslMode::Disable || matches!(host, Host::Unix(_));
        if channel_binding == ChannelBinding::Require && no_tls {
            return Err(ParamsError::Value {
                name: "channel_binding".into(),
                value: "require".into(),
                what: "channel binding needs TLS, and this connection has none (sslmode=disable, \
                       or a Unix socket): use sslmode=require or stricter over TCP, or \
                       channel_binding=prefer",
            });
        }
        let tls = TlsOptions {
            mode,
            channel_binding,
            root_cert: get("sslrootcert", "PGSSLROOTCERT")
                .map(PathBuf::from)
                .or_else(|| default_file("root.crt")),
            cert: get("sslcert", "PGSSLCERT")
                .map(PathBuf::from)
                .or_else(|| default_file("postgresql.crt")),
            key: get("sslkey", "PGSSLKEY")
                .map(PathBuf::from)
                .or_else(|| default_file("postgresql.key")),
        };
        let mut params = ConnParams {
            host,
            port,
            user,
            password: None,
            dbname,
            application_name,
            connect_timeout,
            tls,
        };
        params.password = given("password").or_else(|| env("PGPASSWORD")).or_else(|| {
            let file = env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass")))?;
            let text = read_password_file(&file)?;
            pgpass_lookup(&text, &params)
        });
        Ok(params)
    }

    /// The same target as a tokio-postgres configuration, for ordinary SQL.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => config.host(h),
            Host::Unix(p) => config.host_path(p),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .channel_binding(match self.tls.channel_binding {
                ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
                ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
            });
        if let Some(p) = &self.password {
            config.password(p);
        }
        config
    }
}

impl ConnParams {
    /// The server as libpq's messages name it: `server at "db.example.com", port 5432` or
    /// `server on socket "/var/run/postgresql/.s.PGSQL.5432"`.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) => format!("server at \"{h}\", port {}", self.port),
            Host::Unix(dir) => format!(
                "server on socket \"{}\"",
                dir.join(format!(".s.PGSQL.{}", self.port)).display()
            ),
        }
    }
}

/// Shown in logs and errors: never the password.
impl fmt::Display for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        write!(
            f,
            "host={host} port={} user={} dbname={}",
            self.port, self.user, self.dbname
        )?;
        if self.password.is_some() {
            write!(f, " password=********")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn parse_value<T: std::str::FromStr>(
    name: &str,
    value: &str,
    what: &'static str,
) -> Result<T, ParamsError> {
    value.parse().map_err(|_| ParamsError::Value {
        name: name.into(),
        value: value.into(),
        what,
    })
}

fn host_of(h: &str) -> Host {
    if h.starts_with('/') {
        Host::Unix(PathBuf::from(h))
    } else {
        Host::Tcp(h.to_string())
    }
}

/// libpq's compiled-in socket directory: /var/run/postgresql on Debian, /tmp upstream.
fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".to_string())
}

/// The password file's text, or None where libpq would not use it: missing, not a plain file, or
/// readable or writable by group or others (libpq ignores such a file with this same warning,
/// since anyone else on the machine could read the passwords in it).
fn read_password_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file \"{}\" is not a plain file: not used",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) \
             or less: not used (chmod 600 it)",
            path.display()
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The password of the first matching `hostname:port:database:username:password` line. `*`
/// matches anything; `\:` and `\\` are escapes. A socket connection matches `localhost` or its
/// directory, as in libpq.
fn pgpass_lookup(text: &str, params: &ConnParams) -> Option<String> {
    let port = params.port.to_string();
    let hosts: Vec<String> = match &params.host {
        Host::Tcp(h) => vec![h.clone()],
        Host::Unix(p) => vec!["localhost".into(), p.display().to_string()],
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        let [host, p, db, user, password] = fields.as_slice() else {
            continue;
        };
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if hosts.iter().any(|h| matches(host, h))
            && matches(p, &port)
            && matches(db, &params.dbname)
            && matches(user, &params.user)
        {
            return Some(password.clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(dsn: Option<&str>, vars: &[(&str, &str)]) -> Result<ConnParams, ParamsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnParams::resolve(dsn, &move |k| vars.get(k).cloned())
    }

    #[test]
    fn urls_and_key_value_strings_both_work() {
        let p = resolve(
            Some("postgresql://alice:s3cret@db.example.com:6432/app"),
            &[],
        )
        .unwrap();
        assert_eq!(p.host, Host::Tcp("db.example.com".into()));
        assert_eq!(
            (p.port, p.user.as_str(), p.dbname.as_str()),
            (6432, "alice", "app")
        );
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        let p = resolve(Some("host=/tmp/sock port=5433 dbname=x user=bob"), &[]).unwrap();
        assert_eq!(p.host, Host::Unix("/tmp/sock".into()));
        assert_eq!(
            (p.port, p.user.as_str(), p.dbname.as_str()),
            (5433, "bob", "x")
        );
    }

    #[test]
    fn missing_parts_come_from_the_environment() {
        let env = [
            ("PGHOST", "pg.internal"),
            ("PGPORT", "5999"),
            ("PGUSER", "carol"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "audit"),
        ];
        let p = resolve(None, &env).unwrap();
        assert_eq!(p.host, Host::Tcp("pg.internal".into()));
        assert_eq!(
            (p.port, p.user.as_str(), p.dbname.as_str()),
            (5999, "carol", "audit")
        );
        assert_eq!(p.password.as_deref(), Some("pw"));
        // What the DSN says wins.
        let p = resolve(Some("dbname=other port=1"), &env).unwrap();
        assert_eq!((p.port, p.dbname.as_str()), (1, "other"));
        // The database defaults to the user's name.
        let p = resolve(Some("user=dave"), &[]).unwrap();
        assert_eq!(p.dbname, "dave");
        assert!(resolve(None, &[("PGPORT", "http")]).is_err());
    }

    #[test]
    fn tls_options_come_from_the_string_or_the_environment() {
        let p = resolve(Some("host=h sslmode=verify-full sslrootcert=/ca.pem"), &[]).unwrap();
        assert_eq!(p.tls.mode, SslMode::VerifyFull);
        assert_eq!(p.tls.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        let p = resolve(
            Some("host=h"),
            &[
                ("PGSSLMODE", "require"),
                ("PGSSLCERT", "/c"),
                ("PGSSLKEY", "/k"),
            ],
        )
        .unwrap();
        assert_eq!(p.tls.mode, SslMode::Require);
        assert_eq!(
            (p.tls.cert.as_deref(), p.tls.key.as_deref()),
            (Some(Path::new("/c")), Some(Path::new("/k")))
        );
        assert_eq!(
            resolve(Some("host=h"), &[]).unwrap().tls.mode,
            SslMode::Prefer
        );
    }

    #[test]
    fn the_password_file_is_read_as_libpq_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:*:erin:wrong\n*:5432:app:erin:pa\\:ss\nlocalhost:*:*:*:sock\n",
        )
        .unwrap();
        set_mode(&file, 0o600);
        let file = file.to_str().unwrap();
        let p = resolve(
            Some("host=db port=5432 dbname=app user=erin"),
            &[("PGPASSFILE", file)],
        )
        .unwrap();
        assert_eq!(p.password.as_deref(), Some("pa:ss"));
        let p = resolve(
            Some("host=/run/pg port=7 dbname=z user=q"),
            &[("PGPASSFILE", file)],
        )
        .unwrap();
        assert_eq!(p.password.as_deref(), Some("sock"));
        let p = resolve(
            Some("host=db port=1 dbname=app user=erin"),
            &[("PGPASSFILE", file)],
        )
        .unwrap();
        assert_eq!(p.password, None);
    }

    #[test]
    fn a_password_file_others_can_read_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        let dsn = Some("host=db port=5432 dbname=app user=erin");
        for (mode, expected) in [
            (0o600, Some("secret")),
            (0o400, Some("secret")),
            (0o640, None),
            (0o604, None),
        ] {
            set_mode(&file, mode);
            let p = resolve(dsn, &[("PGPASSFILE", file.to_str().unwrap())]).unwrap();
            assert_eq!(p.password.as_deref(), expected, "mode {mode:o}");
        }
        // A directory in its place is not a password file either.
        let p = resolve(dsn, &[("PGPASSFILE", dir.path().to_str().unwrap())]).unwrap();
        assert_eq!(p.password, None);
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn passwords_are_masked_and_bad_strings_say_what_to_write() {
        let p = resolve(Some("postgresql://u:topsecret@h/d"), &[]).unwrap();
        assert!(!p.to_string().contains("topsecret"));
        assert!(!format!("{p:?}").contains("topsecret"));
        assert!(p.to_string().contains("password=********"));
        let err = resolve(Some("host=h nonsense"), &[]).unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");
        let err = resolve(Some("postgresql://h:notaport/d"), &[]).unwrap_err();
        assert!(err.to_string().contains("invalid port"), "{err}");
        let err = resolve(Some("sslmode=sometimes"), &[]).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
    }
}
