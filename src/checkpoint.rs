//! The durable position: the state file in out-dir that makes the stream exactly once.
//!
//! Sits after the sinks and before the acknowledgement: the sinks fsync their data files, then
//! this file is replaced atomically (write a temporary file, fsync it, rename it over the old one,
//! fsync the directory) with the end LSN of the last transaction whose rows are all on disk and
//! the length of every stream file at that point. Only then is that LSN sent to the server as
//! flushed. On start the files are cut back to these lengths and streaming resumes from this LSN.
//!
//! Format (text, one fact per line, so an operator can read it):
//! ```text
//! audit-tail state 1
//! lsn 0/1A2B3C8
//! file users_audit_stream_20251021.csv 1234
//! ```
//! plus a line `csv safe` when the files are written with `--safe-csv`, and the identity of the
//! stream, written on its first start and checked on every later one:
//! ```text
//! server 7301234567890123456
//! database app
//! slot audit_tail
//! ```
//! (the server's system identifier, the database and the replication slot; in the database name
//! `%`, spaces, control and non-ASCII bytes are written as `%XX`). State files from before these
//! lines have none of them; all three or none.
//! and, once the stream has established it, a line saying which stretch of server time it covered:
//! ```text
//! covered 2025-10-20T21:58:03.120000Z 2025-10-22T03:00:12.500000Z Europe/Paris
//! ```
//! every transaction that committed between the two instants (UTC, server clock) is in the files
//! or had no row for them; the last field is the server's TimeZone as the stream's session saw it
//! (`-` when unknown), in which `changed_at` and so the files' days are read.
//!
//! Only open files are listed: once a day is sealed (src/sink/seal.rs) its files are named by the
//! day's manifest in `audit-tail.days/` and leave this file, so it stays small. A `file` line may
//! carry the end LSNs of the first and last transaction with rows in the file
//! (`file users_audit_stream_20251021.csv 1234 0/1A2B000 0/1A2B3C8`), which the manifest records.
//! A file the stream is about to create is named first, before it exists, by a line
//! ```text
//! created users_audit_stream_20251022.csv
//! ```
//! so that on start a file of this stream that holds nothing durable yet is told apart from a
//! file someone else put in the out-dir: the first is removed (the server sends its rows again),
//! the second moved aside into `unknown/`. The line goes once a transaction's rows in the file
//! are durable (then the file has a `file` line).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::lsn::Lsn;

/// The state file's name inside out-dir.
pub const STATE_FILE: &str = "audit-tail.state";
const TEMP_FILE: &str = "audit-tail.state.tmp";
const MAGIC: &str = "audit-tail state 1";

/// What is durable: every transaction ending at or before `lsn` is in the files, whose lengths
/// at that point are `files`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub lsn: Lsn,
    pub files: BTreeMap<String, u64>,
    /// The files were written with `--safe-csv` (a line `csv safe`; absent for exact CSV).
    pub safe_csv: bool,
    /// The server, database and slot the stream comes from; None in a new out-dir and in state
    /// files written before it was recorded.
    pub identity: Option<Identity>,
    /// The stretch of server time the files are complete for (a line `covered`).
    pub covered: Option<Covered>,
    /// The end LSNs of the first and last transaction with rows in a file of `files`, when known
    /// (state files from before they were recorded have none).
    pub lsns: BTreeMap<String, (Lsn, Lsn)>,
    /// Files this stream created or is about to create, none of whose rows is durable yet.
    pub created: BTreeSet<String>,
}

/// Which stream an out-dir holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The server's system identifier (`pg_control_system()`, `IDENTIFY_SYSTEM`): initdb picks
    /// it, so another cluster has another one.
    pub system_id: u64,
    pub database: String,
    pub slot: String,
}

/// Every transaction that committed between `from` and `to` (server clock) is in the files, or
/// had no row for them. Recorded by the stream (src/coverage.rs), read by verify for quiet days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The server's TimeZone, in which `changed_at` is written; None when unknown.
    pub zone: Option<String>,
}

impl Covered {
    fn encode(&self) -> String {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let zone = self
            .zone
            .as_deref()
            .filter(|z| is_zone_name(z))
            .unwrap_or("-");
        format!("covered {} {} {zone}\n", time(&self.from), time(&self.to))
    }

    fn decode(from: &str, to: &str, zone: &str) -> Option<Covered> {
        let time = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        let (from, to) = (time(from)?, time(to)?);
        let zone = match zone {
            "-" => None,
            z if is_zone_name(z) => Some(z.to_string()),
            _ => return None,
        };
        (from <= to).then_some(Covered { from, to, zone })
    }
}

/// A TimeZone setting that fits in one field of the state file.
fn is_zone_name(zone: &str) -> bool {
    !zone.is_empty() && zone != "-" && zone.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("could not {action} {path}: {source}{}", disk_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} line {line} is not a valid audit-tail state ({reason}): it was edited or damaged; \
         restore it from a backup, or move the out-dir aside to start a new stream"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// What to do about a failed write, sync or rename in the out-dir, after the OS's own words.
/// Whatever the cause, nothing past the checkpoint was acknowledged, so a restart resumes there.
pub(crate) fn disk_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; free space on the out-dir's filesystem (or move the out-dir to a larger one), then \
             start audit-tail again: it resumes from its last checkpoint and loses nothing"
        }
        io::ErrorKind::FileTooLarge => {
            "; raise the file-size limit (ulimit -f, LimitFSIZE= in a systemd unit), then start \
             audit-tail again: it resumes from its last checkpoint and loses nothing"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; make the out-dir writable by the user audit-tail runs as, then start it again"
        }
        _ if error.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => {
            "; the disk reported an I/O error: check it (dmesg), then start audit-tail again: \
             the rows after its last checkpoint are fetched again from the slot"
        }
        _ => "",
    }
}

impl Checkpoint {
    /// The text of the state file.
    pub fn encode(&self) -> String {
        let mut text = format!("{MAGIC}\nlsn {}\n", self.lsn);
        if self.safe_csv {
            text.push_str("csv safe\n");
        }
        if let Some(id) = &self.identity {
            text.push_str(&format!(
                "server {}\ndatabase {}\nslot {}\n",
                id.system_id,
                escape(&id.database),
                escape(&id.slot)
            ));
        }
        if let Some(covered) = &self.covered {
            text.push_str(&covered.encode());
        }
        for (name, len) in &self.files {
            match self.lsns.get(name) {
                Some((first, last)) => {
                    text.push_str(&format!("file {name} {len} {first} {last}\n"));
                }
                None => text.push_str(&format!("file {name} {len}\n")),
            }
        }
        for name in &self.created {
            text.push_str(&format!("created {name}\n"));
        }
        text
    }

    /// Parses the text of a state file; `path` is for the error message.
    pub fn decode(text: &str, path: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |line: usize, reason: &str| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let lines = crate::durable::framed_lines(text, MAGIC)
            .map_err(|(line, reason)| corrupt(line, reason))?;
        let mut checkpoint = Checkpoint::default();
        let mut seen_lsn = false;
        let (mut server, mut database, mut slot) = (None, None, None);
        for (n, line) in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["lsn", lsn] if !seen_lsn => {
                    checkpoint.lsn = lsn.parse().map_err(|_| corrupt(n, "bad LSN"))?;
                    seen_lsn = true;
                }
                ["csv", "safe"] => checkpoint.safe_csv = true,
                ["server", id] if server.is_none() => {
                    server = Some(
                        id.parse()
                            .map_err(|_| corrupt(n, "bad system identifier"))?,
                    );
                }
                ["database", name] if database.is_none() => {
                    database = Some(unescape(name).ok_or_else(|| corrupt(n, "bad database name"))?);
                }
                ["slot", name] if slot.is_none() => {
                    slot = Some(unescape(name).ok_or_else(|| corrupt(n, "bad slot name"))?);
                }
                ["covered", from, to, zone] if checkpoint.covered.is_none() => {
                    checkpoint.covered = Some(
                        Covered::decode(from, to, zone)
                            .ok_or_else(|| corrupt(n, "bad covered line"))?,
                    );
                }
                ["file", name, len, lsns @ ..] if is_plain_file_name(name) => {
                    let len = len.parse().map_err(|_| corrupt(n, "bad file length"))?;
                    if checkpoint.files.insert(name.to_string(), len).is_some() {
                        return Err(corrupt(n, "a file is listed twice"));
                    }
                    match lsns {
                        [] => {}
                        [first, last] => {
                            let lsn = |l: &str| l.parse().map_err(|_| corrupt(n, "bad LSN"));
                            let range = (lsn(first)?, lsn(last)?);
                            checkpoint.lsns.insert(name.to_string(), range);
                        }
                        _ => return Err(corrupt(n, "unexpected line")),
                    }
                }
                ["created", name] if is_plain_file_name(name) => {
                    if !checkpoint.created.insert(name.to_string()) {
                        return Err(corrupt(n, "a file is listed twice"));
                    }
                }
                _ => return Err(corrupt(n, "unexpected line")),
            }
        }
        if !seen_lsn {
            return Err(corrupt(2, "no lsn line"));
        }
        checkpoint.identity = match (server, database, slot) {
            (Some(system_id), Some(database), Some(slot)) => Some(Identity {
                system_id,
                database,
                slot,
            }),
            (None, None, None) => None,
            _ => {
                return Err(corrupt(
                    text.lines().count(),
                    "server, database and slot go together",
                ));
            }
        };
        Ok(checkpoint)
    }

    /// Reads the state file of `dir`; None when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = dir.join(STATE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Checkpoint::decode(&text, &path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces the state file of `dir` atomically and durably. `dir_handle` is `dir` opened for
    /// reading, to fsync the rename.
    pub fn store(&self, dir: &Path, dir_handle: &File) -> Result<(), CheckpointError> {
        let (path, temp) = (dir.join(STATE_FILE), dir.join(TEMP_FILE));
        crate::durable::replace(&path, &temp, self.encode().as_bytes(), dir_handle).map_err(|f| {
            CheckpointError::Io {
                action: f.action,
                path: f.path,
                source: f.source,
            }
        })
    }
}

/// A name as one field of a line: `%`, space, control and non-ASCII bytes become `%XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of `escape`; None for a malformed or empty field.
pub(crate) fn unescape(field: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// File names we write are plain: no separators, spaces or control characters.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_text() {
        let mut files = BTreeMap::new();
        files.insert("users_audit_stream_20251021.csv".to_string(), 1234);
        files.insert("a%2Fb_stream_20251022-2.csv".to_string(), 0);
        let mut c = Checkpoint {
            lsn: Lsn(0x1_0000_00AB),
            files,
            ..Default::default()
        };
        c.lsns.insert(
            "users_audit_stream_20251021.csv".to_string(),
            (Lsn(0x10), Lsn(0x1_0000_00AB)),
        );
        c.created
            .insert("users_audit_stream_20251023.csv".to_string());
        let text = c.encode();
        assert!(text.contains("lsn 1/AB\n"));
        assert!(text.contains("\nfile users_audit_stream_20251021.csv 1234 0/10 1/AB\n"));
        assert!(text.contains("\nfile a%2Fb_stream_20251022-2.csv 0\n"));
        assert!(text.contains("\ncreated users_audit_stream_20251023.csv\n"));
        assert!(!text.contains("csv safe"));
        assert!(!text.contains("server"));
        assert_eq!(Checkpoint::decode(&text, Path::new("s")).unwrap(), c);
        c.safe_csv = true;
        let text = c.encode();
        assert!(text.contains("\ncsv safe\n"));
        assert_eq!(Checkpoint::decode(&text, Path::new("s")).unwrap(), c);
        c.identity = Some(Identity {
            system_id: u64::MAX,
            database: "my app 100% ä\n".into(),
            slot: "audit_tail".into(),
        });
        let text = c.encode();
        assert!(
            text.contains(
                "\nserver 18446744073709551615\ndatabase my%20app%20100%25%20%C3%A4%0A\nslot audit_tail\n"
            ),
            "{text}"
        );
        assert_eq!(Checkpoint::decode(&text, Path::new("s")).unwrap(), c);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        for zone in [Some("Europe/Paris".to_string()), None] {
            c.covered = Some(Covered {
                from: at("2025-10-20T21:58:03.12Z"),
                to: at("2025-10-22T03:00:12.5+00:00"),
                zone,
            });
            let text = c.encode();
            assert_eq!(Checkpoint::decode(&text, Path::new("s")).unwrap(), c);
        }
        assert!(
            c.encode()
                .contains("\ncovered 2025-10-20T21:58:03.120000Z 2025-10-22T03:00:12.500000Z -\n")
        );
    }

    #[test]
    fn damaged_state_is_refused_with_the_line() {
        let p = Path::new("s");
        for (text, line) in [
            ("", 0),
            ("audit-tail state 1\nlsn 0/1", 2),
            ("something else\nlsn 0/1\n", 1),
            ("audit-tail state 1\n", 2),
            ("audit-tail state 1\nlsn zz\n", 2),
            ("audit-tail state 1\nlsn 0/1\nfile x.csv -3\n", 3),
            ("audit-tail state 1\nlsn 0/1\nfile x.csv 3 0/1\n", 3),
            ("audit-tail state 1\nlsn 0/1\nfile x.csv 3 0/1 zz\n", 3),
            ("audit-tail state 1\nlsn 0/1\ncreated ../x.csv\n", 3),
            (
                "audit-tail state 1\nlsn 0/1\ncreated x.csv\ncreated x.csv\n",
                4,
            ),
            ("audit-tail state 1\nlsn 0/1\nfile ../x.csv 3\n", 3),
            (
                "audit-tail state 1\nlsn 0/1\nfile x.csv 3\nfile x.csv 4\n",
                4,
            ),
            ("audit-tail state 1\nlsn 0/1\nlsn 0/2\n", 3),
            ("audit-tail state 1\nlsn 0/1\nserver x\n", 3),
            ("audit-tail state 1\nlsn 0/1\nserver 1\nserver 1\n", 4),
            ("audit-tail state 1\nlsn 0/1\ndatabase a%2\n", 3),
            ("audit-tail state 1\nlsn 0/1\ndatabase a b\n", 3),
            ("audit-tail state 1\nlsn 0/1\nserver 1\nslot s\n", 4),
            ("audit-tail state 1\nlsn 0/1\ncovered x y -\n", 3),
            (
                "audit-tail state 1\nlsn 0/1\ncovered 2025-10-22T00:00:00Z 2025-10-21T00:00:00Z -\n",
                3,
            ),
            (
                "audit-tail state 1\nlsn 0/1\ncovered 2025-10-22T00:00:00Z\n",
                3,
            ),
        ] {
            match Checkpoint::decode(text, p) {
                Err(CheckpointError::Corrupt { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn store_replaces_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let handle = File::open(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let mut c = Checkpoint {
            lsn: Lsn(5),
            ..Default::default()
        };
        c.store(dir.path(), &handle).unwrap();
        c.lsn = Lsn(9);
        c.files.insert("f.csv".into(), 7);
        c.store(dir.path(), &handle).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c));
        assert!(!dir.path().join(TEMP_FILE).exists());
    }
}
