//! Where and as whom to connect: a libpq-style connection string completed as psql would.
//!
//! `--dsn` (or AUDIT_TAIL_DSN) takes a URL (`postgresql://user@host:5432/db?sslmode=require`) or
//! key=value pairs (`host=/var/run/postgresql dbname=app`), parsed by libpq's rules (`conninfo`).
//! What it leaves out comes from a service (`service=`, PGSERVICE; pg_service.conf), then PGHOST,
//! PGHOSTADDR, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGAPPNAME, PGCONNECT_TIMEOUT, PGSSLMODE,
//! PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGCHANNELBINDING, PGOPTIONS and the password file (PGPASSFILE or
//! ~/.pgpass), then libpq's defaults. sslmode=allow is refused rather than taken for prefer. The one result feeds both the replication connection (ours) and the SQL
//! connection (tokio-postgres). Only the first host of a list is used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{conninfo, pgpass, service};

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
    /// Where to connect when given (libpq's hostaddr): `host` then only names the server, for
    /// the certificate check, the password file and messages.
    pub hostaddr: Option<std::net::IpAddr>,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub tls: TlsOptions,
    /// libpq's `options` (PGOPTIONS): command-line options for the server session, such as
    /// `-c audit.export_dir=/srv/exports`. Sent on the SQL connections (setup, verify, status...);
    /// the replication connection pins its own session settings instead.
    pub options: Option<String>,
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
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let last = |pairs: &[(String, String)], key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        // A service's settings fill in what the string leaves out, before the environment.
        let service = match last(&pairs, "service").or_else(|| env("PGSERVICE")) {
            Some(name) => service::settings(&name, &env).map_err(ParamsError::Invalid)?,
            None => Vec::new(),
        };
        // Later pairs win, as in libpq; then the service; then the environment; then defaults.
        let given = |key: &str| last(&pairs, key).or_else(|| last(&service, key));
        let get = |key: &str, var: &str| given(key).or_else(|| env(var));

        let hostaddr = match get("hostaddr", "PGHOSTADDR") {
            Some(a) => Some(parse_value(
                "hostaddr",
                a.split(',').next().unwrap_or_default(),
                "not a numeric IP address (hostaddr takes an address; put names in host)",
            )?),
            None => None,
        };
        let host = match (get("host", "PGHOST"), hostaddr) {
            (Some(h), _) => host_of(h.split(',').next().unwrap_or_default()),
            (None, Some(addr)) => Host::Tcp(std::net::IpAddr::to_string(&addr)),
            (None, None) => Host::Unix(default_socket_dir()),
        };
        // hostaddr is where to connect; a socket directory in host cannot say that.
        let host = match (host, hostaddr) {
            (Host::Unix(_), Some(addr)) => Host::Tcp(addr.to_string()),
            (host, _) => host,
        };
        let port = match get("port", "PGPORT") {
            Some(p) => parse_value("port", &p, "not a port number")?,
            None => 5432,
        };
        let user = get("user", "PGUSER").unwrap_or_else(os_user);
        let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let application_name = get("application_name", "PGAPPNAME")
            .or_else(|| given("fallback_application_name"))
            .unwrap_or_else(|| "audit-tail".into());
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
            None | Some("prefer") => SslMode::Prefer,
            Some("allow") => {
                return Err(ParamsError::Value {
                    name: "sslmode".into(),
                    value: "allow".into(),
                    what: "audit-tail does not try plain first and TLS second: use prefer (TLS \
                           when the server offers it, else plain) or disable",
                });
            }
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
            hostaddr,
            port,
            user,
            password: None,
            dbname,
            application_name,
            connect_timeout,
            tls,
            options: get("options", "PGOPTIONS"),
        };
        params.password = given("password").or_else(|| env("PGPASSWORD")).or_else(|| {
            let file = env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass")))?;
            let text = pgpass::read(&file)?;
            let host = match &params.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(dir) => dir.display().to_string(),
            };
            let default_dir = params.host == Host::Unix(default_socket_dir());
            let host = pgpass::host_key(&host, default_dir);
            pgpass::lookup(&text, host, params.port, &params.dbname, &params.user)
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
        if let Some(options) = &self.options {
            config.options(options);
        }
        config
    }
}

impl ConnParams {
    /// The server as libpq's messages name it: `server at "db.example.com", port 5432` or
    /// `server on socket "/var/run/postgresql/.s.PGSQL.5432"`.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) => match self.hostaddr {
                Some(addr) if addr.to_string() != *h => {
                    format!("server at \"{h}\" ({addr}), port {}", self.port)
                }
                _ => format!("server at \"{h}\", port {}", self.port),
            },
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
        if let Some(addr) = self.hostaddr {
            write!(f, " hostaddr={addr}")?;
        }
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
            Some("host=db port=1 dbname=app user=erin"),
            &[("PGPASSFILE", file)],
        )
        .unwrap();
        assert_eq!(p.password, None);
    }

    /// libpq's documented behaviour (libpq-connect, libpq-pgpass, libpq-pgservice, libpq-envars),
    /// one row each: the connection string, the environment, and what must come out.
    #[test]
    fn libpq_parity() {
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        let default_dir = default_socket_dir().display().to_string();
        std::fs::write(
            &pgpass,
            "localhost:*:*:*:for-localhost\n/tmp/other:*:*:*:for-other-dir\n\
             db.example.com:*:*:*:for-db-name\n127.0.0.9:*:*:*:for-db-addr\n",
        )
        .unwrap();
        set_mode(&pgpass, 0o600);
        let services = dir.path().join("services.conf");
        std::fs::write(
            &services,
            "[svc]\nhost=svc-host\nport=7000\ndbname=svcdb\napplication_name=from-service\n",
        )
        .unwrap();
        let pgpass = pgpass.to_str().unwrap();
        let services = services.to_str().unwrap();
        let files = [("PGPASSFILE", pgpass), ("PGSERVICEFILE", services)];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = files.to_vec();
            vars.extend_from_slice(extra);
            vars
        };
        type Check = fn(&ConnParams) -> bool;
        type Case<'a> = (String, Vec<(&'a str, &'a str)>, Check);
        let cases: Vec<Case> = vec![
            // hostaddr: connect there, name the server by host (certificate, pgpass, messages).
            (
                "host=db.example.com hostaddr=127.0.0.9".into(),
                with(&[]),
                |p| {
                    p.host == Host::Tcp("db.example.com".into())
                        && p.hostaddr == Some("127.0.0.9".parse().unwrap())
                        && p.password.as_deref() == Some("for-db-name")
                        && p.target() == "server at \"db.example.com\" (127.0.0.9), port 5432"
                },
            ),
            ("hostaddr=127.0.0.9".into(), with(&[]), |p| {
                p.host == Host::Tcp("127.0.0.9".into())
                    && p.password.as_deref() == Some("for-db-addr")
            }),
            ("".into(), with(&[("PGHOSTADDR", "127.0.0.9")]), |p| {
                p.hostaddr == Some("127.0.0.9".parse().unwrap())
            }),
            // A socket in the default directory is "localhost" in the password file; any other
            // directory is matched by its path.
            (format!("host={default_dir}"), with(&[]), |p| {
                p.password.as_deref() == Some("for-localhost")
            }),
            ("host=/tmp/other".into(), with(&[]), |p| {
                p.password.as_deref() == Some("for-other-dir")
            }),
            // application_name: the string, else PGAPPNAME, else fallback_application_name.
            ("".into(), with(&[("PGAPPNAME", "from-env")]), |p| {
                p.application_name == "from-env"
            }),
            (
                "application_name=mine".into(),
                with(&[("PGAPPNAME", "from-env")]),
                |p| p.application_name == "mine",
            ),
            ("fallback_application_name=fb".into(), with(&[]), |p| {
                p.application_name == "fb"
            }),
            // A service fills in what the string leaves out, before the environment.
            (
                "service=svc port=8000".into(),
                with(&[("PGHOST", "env-host")]),
                |p| {
                    p.host == Host::Tcp("svc-host".into())
                        && p.port == 8000
                        && p.dbname == "svcdb"
                        && p.application_name == "from-service"
                },
            ),
            ("".into(), with(&[("PGSERVICE", "svc")]), |p| {
                p.host == Host::Tcp("svc-host".into())
            }),
            // options: the string, else PGOPTIONS (sent as the startup packet's options).
            ("".into(), with(&[("PGOPTIONS", "-c a.b=1")]), |p| {
                p.options.as_deref() == Some("-c a.b=1")
            }),
            (
                "options='-c a.b=2'".into(),
                with(&[("PGOPTIONS", "-c a.b=1")]),
                |p| {
                    p.options.as_deref() == Some("-c a.b=2")
                        && p.sql_config().get_options() == Some("-c a.b=2")
                },
            ),
            ("".into(), with(&[]), |p| p.options.is_none()),
        ];
        for (dsn, vars, check) in cases {
            let p = resolve(Some(&dsn), &vars).unwrap_or_else(|e| panic!("{dsn:?}: {e}"));
            assert!(check(&p), "{dsn:?} {vars:?}: {p:?}");
        }
        // What audit-tail refuses rather than doing something else than libpq.
        for (dsn, vars, says) in [
            ("sslmode=allow", with(&[]), "use prefer"),
            (
                "hostaddr=db.example.com",
                with(&[]),
                "not a numeric IP address",
            ),
            (
                "service=nope",
                with(&[]),
                "definition of service \"nope\" not found",
            ),
            ("", with(&[("PGSERVICE", "nope")]), "not found"),
        ] {
            let e = resolve(Some(dsn), &vars).unwrap_err().to_string();
            assert!(e.contains(says), "{dsn:?}: {e}");
        }
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
