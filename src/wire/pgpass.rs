//! The password file (`~/.pgpass`, `PGPASSFILE`), read by libpq's rules: used only when nobody
//! else can read it, `hostname:port:database:username:password` lines, `*` wildcards, `\:` and
//! `\\` escapes, the first matching line wins.

use std::path::Path;

/// The host a password-file line must name for a connection: libpq matches a connection over
/// the default socket directory (or with no host at all) as `localhost`, any other socket
/// directory by its path, and a TCP connection by its host, else its hostaddr.
pub(crate) fn host_key(host: &str, is_default_socket_dir: bool) -> &str {
    if host.is_empty() || is_default_socket_dir {
        "localhost"
    } else {
        host
    }
}

/// The password file's text, or None where libpq would not use it: missing, not a plain file, or
/// readable or writable by group or others (libpq ignores such a file with this same warning,
/// since anyone else on the machine could read the passwords in it).
pub(crate) fn read(path: &Path) -> Option<String> {
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

/// The password of the first line matching `host` (see `host_key`), `port`, `dbname`, `user`.
pub(crate) fn lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split(line);
        let [h, p, db, u, password] = fields.as_slice() else {
            continue;
        };
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(h, host) && matches(p, &port) && matches(db, dbname) && matches(u, user) {
            return Some(password.clone());
        }
    }
    None
}

fn split(line: &str) -> Vec<String> {
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
