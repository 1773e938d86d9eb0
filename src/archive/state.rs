//! The archive's own state, `audit-tail.archive` in its out-dir: which out-dir this is, what it
//! archives and where in the JetStream stream its files end. The out-dir is the truth: the
//! archive resumes from the stream sequence after the last one its files hold, whatever the NATS
//! consumer's acknowledgements say (the consumer is only a cursor).
//!
//! Format (text, one fact per line):
//! ```text
//! audit-tail archive 1
//! id 6f1c0a9e2b7d4c3f8e5a1b2c3d4e5f60
//! filter audit.app.>
//! database app
//! sequence 4896 0/1A2B3C8
//! ```
//! - `id`: random, made when the out-dir is first used; the consumer carries it in its
//!   description, so an archive refuses a consumer another out-dir uses.
//! - `filter`: the subjects this out-dir archives, fixed on first use (`--nats-filter`, or the
//!   first message's database); `database`: the database its rows come from, recorded before the
//!   first row is written. A row of another database is refused.
//! - `sequence N L`: every message up to stream sequence N is in the files, whose checkpoint
//!   (audit-tail.state) was at LSN L then. Written after the checkpoint at each durable point, so
//!   it never claims more than the files hold: a crash between the two leaves it behind, and the
//!   messages after it are delivered again and skipped by their LSN. A checkpoint below L (the
//!   state file restored from an older backup) is not trusted: the archive reads from the start.
//!
//! Names are escaped as in audit-tail.state (`%XX` for `%`, spaces, control and non-ASCII bytes).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::checkpoint::{escape, unescape};
use crate::lsn::Lsn;

/// The file's name inside out-dir.
pub const FILE: &str = "audit-tail.archive";
const TEMP: &str = "audit-tail.archive.tmp";
const MAGIC: &str = "audit-tail archive 1";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} line {line} is not a valid archive state ({reason}): it was edited or damaged; \
         restore it from a backup, or start a new out-dir"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// What `audit-tail.archive` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub filter: Option<String>,
    pub database: Option<String>,
    /// The last stream sequence in the files, and the checkpoint's LSN when it was recorded.
    pub sequence: Option<(u64, Lsn)>,
}

impl State {
    /// A new out-dir's state: a fresh random id, nothing else.
    pub fn new() -> Result<State, StateError> {
        let mut bytes = [0u8; 16];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|source| StateError::Io {
                action: "read random bytes from",
                path: "/dev/urandom".into(),
                source,
            })?;
        Ok(State {
            id: crate::integrity::hex(&bytes),
            filter: None,
            database: None,
            sequence: None,
        })
    }

    pub fn encode(&self) -> String {
        let mut text = format!("{MAGIC}\nid {}\n", self.id);
        if let Some(filter) = &self.filter {
            text.push_str(&format!("filter {}\n", escape(filter)));
        }
        if let Some(database) = &self.database {
            text.push_str(&format!("database {}\n", escape(database)));
        }
        if let Some((seq, lsn)) = self.sequence {
            text.push_str(&format!("sequence {seq} {lsn}\n"));
        }
        text
    }

    pub fn decode(text: &str, path: &Path) -> Result<State, StateError> {
        let corrupt = |line: usize, reason: &str| StateError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let lines = crate::durable::framed_lines(text, MAGIC)
            .map_err(|(line, reason)| corrupt(line, reason))?;
        let (mut id, mut filter, mut database, mut sequence) = (None, None, None, None);
        for (n, line) in lines {
            match line.split(' ').collect::<Vec<_>>().as_slice() {
                ["id", v]
                    if id.is_none()
                        && !v.is_empty()
                        && v.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    id = Some(v.to_string())
                }
                ["filter", v] if filter.is_none() => {
                    filter = Some(unescape(v).ok_or_else(|| corrupt(n, "bad filter"))?)
                }
                ["database", v] if database.is_none() => {
                    database = Some(unescape(v).ok_or_else(|| corrupt(n, "bad database"))?)
                }
                ["sequence", seq, lsn] if sequence.is_none() => {
                    let seq = seq.parse().map_err(|_| corrupt(n, "bad sequence"))?;
                    let lsn = lsn.parse().map_err(|_| corrupt(n, "bad LSN"))?;
                    sequence = Some((seq, lsn));
                }
                _ => return Err(corrupt(n, "unexpected line")),
            }
        }
        Ok(State {
            id: id.ok_or_else(|| corrupt(2, "no id line"))?,
            filter,
            database,
            sequence,
        })
    }

    /// The state of `dir`; None when it has none yet.
    pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
        let path = dir.join(FILE);
        match fs::read_to_string(&path) {
            Ok(text) => State::decode(&text, &path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces the state of `dir` atomically and durably.
    pub fn store(&self, dir: &Path, dir_handle: &File) -> Result<(), StateError> {
        let (path, temp) = (dir.join(FILE), dir.join(TEMP));
        crate::durable::replace(&path, &temp, self.encode().as_bytes(), dir_handle).map_err(|f| {
            StateError::Io {
                action: f.action,
                path: f.path,
                source: f.source,
            }
        })
    }

    /// The first stream sequence to read, given the checkpoint's LSN: the one after the files'
    /// last, or 1 (the first message of the filter) when unknown or not to be trusted.
    pub fn resume_from(&self, checkpoint: Lsn) -> u64 {
        match self.sequence {
            Some((seq, lsn)) if lsn <= checkpoint => seq + 1,
            _ => 1,
        }
    }
}

/// The database a row message names in its `Nats-Msg-Id` (`<database>:<commit LSN>:<index>`,
/// src/sink/nats/message.rs); None when it has no such id.
pub fn database_of(message_id: &str) -> Option<&str> {
    let mut parts = message_id.rsplitn(3, ':');
    let (_index, _lsn, database) = (parts.next()?, parts.next()?, parts.next()?);
    Some(database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_damage_is_refused() {
        let mut state = State::new().unwrap();
        assert_eq!(state.id.len(), 32);
        assert_ne!(state.id, State::new().unwrap().id);
        let path = Path::new("x");
        assert_eq!(State::decode(&state.encode(), path).unwrap(), state);
        state.filter = Some("audit.my db.>".into());
        state.database = Some("my db%".into());
        state.sequence = Some((4896, "0/1A2B3C8".parse().unwrap()));
        let text = state.encode();
        assert!(text.contains("filter audit.my%20db.>\n"), "{text}");
        assert_eq!(State::decode(&text, path).unwrap(), state);
        for bad in [
            "audit-tail archive 1\nid 00\n".replace("id 00\n", ""),
            "audit-tail archive 2\nid 00\n".into(),
            "audit-tail archive 1\nid 00\nsequence x 0/1\n".into(),
            "audit-tail archive 1\nid 00\nid 01\n".into(),
            "audit-tail archive 1\nid 00".into(),
            "audit-tail archive 1\nid 00\nwhat\n".into(),
        ] {
            assert!(State::decode(&bad, path).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_archive_resumes_after_its_files_last_sequence_unless_the_checkpoint_is_older() {
        let mut state = State::new().unwrap();
        let lsn = |s: &str| s.parse::<Lsn>().unwrap();
        assert_eq!(
            state.resume_from(lsn("0/10")),
            1,
            "a new out-dir reads from the start"
        );
        state.sequence = Some((4896, lsn("0/10")));
        assert_eq!(state.resume_from(lsn("0/10")), 4897);
        assert_eq!(
            state.resume_from(lsn("0/20")),
            4897,
            "a checkpoint stored after it"
        );
        assert_eq!(
            state.resume_from(lsn("0/8")),
            1,
            "a checkpoint older than it"
        );
    }

    #[test]
    fn the_database_is_read_from_the_message_id() {
        assert_eq!(database_of("app:0/1A2B3C8:0"), Some("app"));
        assert_eq!(database_of("a:b:0/1:12"), Some("a:b"));
        assert_eq!(database_of("0/1:2"), None);
    }
}
