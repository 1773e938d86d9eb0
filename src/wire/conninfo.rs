//! libpq connection strings, no I/O: a URL (`postgresql://user:pw@host:5432/db?key=value`) or
//! `key=value` pairs (`host=localhost dbname='my db'`) → (key, value) pairs.
//!
//! Our own, because tokio-postgres' parser rejects the TLS options libpq users pass
//! (`sslmode=verify-full`, `sslrootcert=...`). Keys are checked against the ones audit-tail
//! understands, so a typo is an error rather than silently ignored.

use percent_encoding::percent_decode_str;

/// The keys audit-tail understands.
pub const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "fallback_application_name",
    "service",
    "connect_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
    "options",
];

/// Parses a connection string into (key, value) pairs in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.trim();
    let pairs = if let Some(rest) = text
        .strip_prefix("postgresql://")
        .or_else(|| text.strip_prefix("postgres://"))
    {
        parse_url(rest)?
    } else {
        parse_key_values(text)?
    };
    for (key, _) in &pairs {
        if !KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown connection option {key:?} (audit-tail understands {})",
                KEYS.join(", ")
            ));
        }
    }
    Ok(pairs)
}

fn decode(s: &str, what: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("the {what} is not valid UTF-8 after percent-decoding"))
}

fn parse_url(rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".into(), decode(user, "user")?));
            }
            if let Some(p) = password {
                pairs.push(("password".into(), decode(p, "password")?));
            }
            hostspec
        }
        None => authority,
    };
    // Only the first of several hosts is used.
    let first = hostspec.split(',').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = first.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host is missing its ']'")?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match first.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (first.to_string(), None),
        }
    };
    if !host.is_empty() {
        pairs.push(("host".into(), decode(&host, "host")?));
    }
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        pairs.push(("port".into(), port));
    }
    if !path.is_empty() {
        pairs.push(("dbname".into(), decode(path, "database name")?));
    }
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| format!("URL parameter {param:?} has no '='"))?;
        pairs.push((decode(k, "parameter name")?, decode(v, "parameter value")?));
    }
    Ok(pairs)
}

fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("{key:?} is missing \"=value\""));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("the quoted value of {key:?} is not closed")),
                    Some('\\') => value.push(chars.next().ok_or("a trailing backslash")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or("a trailing backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn urls() {
        assert_eq!(
            p(
                "postgresql://al%40ice:p%3Ass@db.example.com:6432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"
            ),
            kv(&[
                ("user", "al@ice"),
                ("password", "p:ss"),
                ("host", "db.example.com"),
                ("port", "6432"),
                ("dbname", "app"),
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca.pem"),
            ])
        );
        assert_eq!(p("postgres://"), kv(&[]));
        assert_eq!(
            p("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            kv(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(
            p("postgresql://[::1]:5433/x"),
            kv(&[("host", "::1"), ("port", "5433"), ("dbname", "x")])
        );
        assert_eq!(
            p("postgresql://a:1,b:2/x"),
            kv(&[("host", "a"), ("port", "1"), ("dbname", "x")])
        );
        assert_eq!(
            p("postgresql:///db?host=/tmp"),
            kv(&[("dbname", "db"), ("host", "/tmp")])
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(
            p("host=localhost  port = 5432 dbname='my db' password='it\\'s' user=a\\ b"),
            kv(&[
                ("host", "localhost"),
                ("port", "5432"),
                ("dbname", "my db"),
                ("password", "it's"),
                ("user", "a b"),
            ])
        );
        assert_eq!(p(""), kv(&[]));
    }

    #[test]
    fn mistakes_are_errors() {
        for bad in [
            "host=h nonsense",
            "host='open",
            "hots=localhost",
            "postgresql://h/d?sslmode",
            "postgresql://[::1/d",
            "postgresql://h/d?bogus=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
