//! Recorded gaps: stretches of the slot that an out-dir knowingly does not hold.
//!
//! Beside the checkpoint in the flow. When the slot's confirmed position is ahead of the
//! out-dir's checkpoint (another out-dir consumed from the same slot, or the state file was
//! restored from an old backup), the server would skip every transaction in between. `stream`
//! refuses to start then, unless `--accept-gap` is given: then the gap is appended here, made
//! durable, and only after that does the checkpoint move to the slot's position. `verify` reads
//! this file to say that a day's stream file may lack rows, and why.
//!
//! Format (text, `audit-tail.gaps` in the out-dir, one gap per line, appended, never rewritten):
//! ```text
//! audit-tail gaps 1
//! gap from 0/1A2B3C8 to 0/1B00000 since 2025-10-21T10:00:00Z recorded 2025-10-22T09:00:05Z days 2025-10-21 2025-10-22
//! ```
//! Transactions that ended after `from` and up to `to` (WAL positions) are not in the files.
//! `since` is when the out-dir's checkpoint was last stored before the gap was found (its
//! consumer's last run), `recorded` when the gap was accepted; `days` is the first and last day
//! (the server's `current_date` at those two times, the day convention of `changed_at`) whose
//! stream files may lack rows. A transaction that began before `since` and committed after it
//! can fall on an earlier day; `from` and `to` are exact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use crate::checkpoint::disk_hint;
use crate::lsn::Lsn;

/// The gap file's name inside out-dir.
pub const GAPS_FILE: &str = "audit-tail.gaps";
const MAGIC: &str = "audit-tail gaps 1";

/// One accepted gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The out-dir's checkpoint when the gap was found: everything up to here is in the files.
    pub from: Lsn,
    /// The slot's confirmed position then: streaming resumed from here.
    pub to: Lsn,
    /// When the checkpoint at `from` was stored.
    pub since: DateTime<Utc>,
    /// When the gap was accepted.
    pub recorded: DateTime<Utc>,
    /// The first and last day whose stream files may lack rows.
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
}

impl Gap {
    /// Whether the stream file of `day` may lack rows because of this gap.
    pub fn affects(&self, day: NaiveDate) -> bool {
        self.first_day <= day && day <= self.last_day
    }

    /// The line of the gap file, without its newline.
    fn encode(&self) -> String {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        format!(
            "gap from {} to {} since {} recorded {} days {} {}",
            self.from,
            self.to,
            time(&self.since),
            time(&self.recorded),
            self.first_day,
            self.last_day
        )
    }

    fn decode(line: &str) -> Option<Gap> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [
            "gap",
            "from",
            from,
            "to",
            to,
            "since",
            since,
            "recorded",
            recorded,
            "days",
            first,
            last,
        ] = fields.as_slice()
        else {
            return None;
        };
        let time = |t: &str| DateTime::parse_from_rfc3339(t).ok().map(|t| t.to_utc());
        let gap = Gap {
            from: from.parse().ok()?,
            to: to.parse().ok()?,
            since: time(since)?,
            recorded: time(recorded)?,
            first_day: first.parse().ok()?,
            last_day: last.parse().ok()?,
        };
        (gap.from < gap.to && gap.first_day <= gap.last_day).then_some(gap)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GapError {
    #[error("could not {action} {path}: {source}{}", disk_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} line {line} is not a valid audit-tail gap record: it was edited or damaged; \
         restore it from a backup (each line is one accepted gap)"
    )]
    Corrupt { path: PathBuf, line: usize },
}

/// The recorded gaps of out-dir `dir`, oldest first; none when there is no gap file.
pub fn load(dir: &Path) -> Result<Vec<Gap>, GapError> {
    let path = dir.join(GAPS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GapError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    decode(&text, &path)
}

/// The recorded gaps of out-dir `dir` that may have left rows of `day` out of its files.
pub fn for_day(dir: &Path, day: NaiveDate) -> Result<Vec<Gap>, GapError> {
    Ok(load(dir)?.into_iter().filter(|g| g.affects(day)).collect())
}

fn decode(text: &str, path: &Path) -> Result<Vec<Gap>, GapError> {
    let corrupt = |line| GapError::Corrupt {
        path: path.to_path_buf(),
        line,
    };
    let mut lines = text.split_inclusive('\n').enumerate();
    match lines.next() {
        Some((_, first)) if first == format!("{MAGIC}\n") => {}
        _ => return Err(corrupt(1)),
    }
    lines
        .map(|(i, line)| {
            line.strip_suffix('\n')
                .and_then(Gap::decode)
                .ok_or(corrupt(i + 1))
        })
        .collect()
}

/// Appends `gap` to the gap file of `dir` and makes it durable (the file, and the directory
/// when the file is new) before returning: only then may the checkpoint move past it.
pub fn record(dir: &Path, gap: &Gap) -> Result<(), GapError> {
    let path = dir.join(GAPS_FILE);
    let io = |action| {
        let path = path.clone();
        move |source| GapError::Io {
            action,
            path,
            source,
        }
    };
    let existing = load(dir)?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io("open"))?;
    let mut text = String::new();
    if existing.is_empty() && file.metadata().map_err(io("stat"))?.len() == 0 {
        text.push_str(MAGIC);
        text.push('\n');
    }
    text.push_str(&gap.encode());
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| GapError::Io {
            action: "fsync the directory",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(from: u64, to: u64) -> Gap {
        Gap {
            from: Lsn(from),
            to: Lsn(to),
            since: "2025-10-21T23:10:00Z".parse().unwrap(),
            recorded: "2025-10-22T09:00:05Z".parse().unwrap(),
            first_day: "2025-10-21".parse().unwrap(),
            last_day: "2025-10-22".parse().unwrap(),
        }
    }

    #[test]
    fn records_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![]);
        record(dir.path(), &gap(0x1_0000_0010, 0x1_0000_0020)).unwrap();
        record(dir.path(), &gap(0x1_0000_0030, 0x2_0000_0000)).unwrap();
        let text = fs::read_to_string(dir.path().join(GAPS_FILE)).unwrap();
        assert_eq!(
            text,
            "audit-tail gaps 1\n\
             gap from 1/10 to 1/20 since 2025-10-21T23:10:00Z recorded 2025-10-22T09:00:05Z days 2025-10-21 2025-10-22\n\
             gap from 1/30 to 2/0 since 2025-10-21T23:10:00Z recorded 2025-10-22T09:00:05Z days 2025-10-21 2025-10-22\n"
        );
        let gaps = load(dir.path()).unwrap();
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[1], gap(0x1_0000_0030, 0x2_0000_0000));
        let day = |d: &str| d.parse::<NaiveDate>().unwrap();
        assert_eq!(for_day(dir.path(), day("2025-10-22")).unwrap().len(), 2);
        assert!(for_day(dir.path(), day("2025-10-20")).unwrap().is_empty());
        assert!(for_day(dir.path(), day("2025-10-23")).unwrap().is_empty());
    }

    #[test]
    fn damaged_records_are_refused_with_the_line() {
        let p = Path::new("g");
        let good = gap(1, 2).encode();
        for (text, line) in [
            ("something\n".to_string(), 1),
            (format!("{MAGIC}\n{good}"), 2),
            (format!("{MAGIC}\n{good}\ngap from 0/2 to 0/1\n"), 3),
            (
                format!("{MAGIC}\n{}\n", good.replace("from 0/1", "from 0/3")),
                2,
            ),
            (
                format!(
                    "{MAGIC}\n{}\n",
                    good.replace("days 2025-10-21", "days 2025-13-01")
                ),
                2,
            ),
        ] {
            match decode(&text, p) {
                Err(GapError::Corrupt { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
