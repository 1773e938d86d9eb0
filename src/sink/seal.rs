//! Sealed days: the manifest of a day whose files can receive no more rows.
//!
//! Beside the file sink (`files.rs`), between its fsync and the checkpoint. Once the checkpoint's
//! `covered` stretch (src/coverage.rs) ends `grace()` (an hour) after a day ended, in the
//! server's TimeZone and in UTC, the day's files are hashed and named, with their lengths, rows,
//! SHA-256 and LSN range, in `audit-tail.days/YYYYMMDD.manifest`, written atomically and fsynced;
//! only then does the checkpoint drop them, so it lists open files only and a sealed day's files
//! may be moved away. A row that still comes for a sealed day (a transaction that began on it and
//! committed more than `grace()` after it ended, or a row written with an old `changed_at`) goes
//! to a new part of the day (`-N`), which is sealed in turn and added to the same manifest: a
//! sealed file is never written again.
//!
//! Format (text, one fact per line, like the state file):
//! ```text
//! audit-tail day 1
//! day 2025-10-21
//! file users_audit_stream_20251021.csv 1234 17 <sha256 hex> 0/1A2B000 0/1A2B3C8
//! ```
//! plus `csv safe` when the files were written with `--safe-csv`. A `file` line holds the name,
//! the length in bytes, the rows (CSV records after the header), the SHA-256 of those bytes, and
//! the end LSNs of the first and last transaction with rows in the file (`-` `-` when unknown:
//! files written before audit-tail recorded them).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::checkpoint::{Covered, disk_hint, is_plain_file_name};
use crate::lsn::Lsn;

/// The directory of the manifests inside out-dir.
pub const DAYS_DIR: &str = "audit-tail.days";
const MAGIC: &str = "audit-tail day 1";

/// How long after a day ended (in the server's TimeZone) the stream waits before sealing it: a
/// transaction that began on the day and commits later still lands in the day's open file.
pub fn grace() -> Duration {
    Duration::hours(1)
}

/// What a day's manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub day: NaiveDate,
    pub safe_csv: bool,
    pub files: BTreeMap<String, Entry>,
}

/// One sealed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub len: u64,
    pub rows: u64,
    /// Lowercase hex, as sha256sum prints it.
    pub sha256: String,
    /// End LSNs of the first and last transaction with rows in the file, when known.
    pub lsns: Option<(Lsn, Lsn)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("could not {action} {path}: {source}{}", disk_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} line {line} is not a valid audit-tail day manifest ({reason}): it was edited or \
         damaged; restore it from the archive of that day, or move it aside"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ManifestError {
    let path = path.to_path_buf();
    move |source| ManifestError::Io {
        action,
        path,
        source,
    }
}

impl Manifest {
    pub fn new(day: NaiveDate, safe_csv: bool) -> Manifest {
        Manifest {
            day,
            safe_csv,
            files: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> String {
        let mut text = format!("{MAGIC}\nday {}\n", self.day.format("%Y-%m-%d"));
        if self.safe_csv {
            text.push_str("csv safe\n");
        }
        for (name, e) in &self.files {
            let (first, last) = match e.lsns {
                Some((first, last)) => (first.to_string(), last.to_string()),
                None => ("-".into(), "-".into()),
            };
            text.push_str(&format!(
                "file {name} {} {} {} {first} {last}\n",
                e.len, e.rows, e.sha256
            ));
        }
        text
    }

    pub fn decode(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let corrupt = |line: usize, reason: &str| ManifestError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let mut lines = crate::durable::framed_lines(text, MAGIC)
            .map_err(|(line, reason)| corrupt(line, reason))?;
        let day = match lines.next() {
            Some((_, l)) => l
                .strip_prefix("day ")
                .and_then(|d| d.parse::<NaiveDate>().ok())
                .ok_or_else(|| corrupt(2, "bad day line"))?,
            None => return Err(corrupt(2, "no day line")),
        };
        let mut manifest = Manifest::new(day, false);
        for (n, line) in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["csv", "safe"] => manifest.safe_csv = true,
                ["file", name, len, rows, sha, first, last] if is_plain_file_name(name) => {
                    let number = |s: &str| s.parse::<u64>().map_err(|_| corrupt(n, "bad number"));
                    let lsns = match (*first, *last) {
                        ("-", "-") => None,
                        (f, l) => Some((
                            f.parse().map_err(|_| corrupt(n, "bad LSN"))?,
                            l.parse().map_err(|_| corrupt(n, "bad LSN"))?,
                        )),
                    };
                    if sha.len() != 64
                        || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    {
                        return Err(corrupt(n, "bad SHA-256"));
                    }
                    let entry = Entry {
                        len: number(len)?,
                        rows: number(rows)?,
                        sha256: sha.to_string(),
                        lsns,
                    };
                    if manifest.files.insert(name.to_string(), entry).is_some() {
                        return Err(corrupt(n, "a file is listed twice"));
                    }
                }
                _ => return Err(corrupt(n, "unexpected line")),
            }
        }
        Ok(manifest)
    }

    /// Writes the manifest of its day into `dir`'s days directory atomically and durably
    /// (temporary file, fsync, rename, fsync of the directory). `dir_handle` is `dir` opened for
    /// reading, to fsync the days directory's creation.
    pub fn store(&self, dir: &Path, dir_handle: &File) -> Result<(), ManifestError> {
        let days = dir.join(DAYS_DIR);
        if !days.is_dir() {
            fs::create_dir_all(&days).map_err(io_err("create", &days))?;
            dir_handle
                .sync_all()
                .map_err(io_err("fsync the directory", dir))?;
        }
        let path = path(dir, self.day);
        let temp = path.with_extension("manifest.tmp");
        let days_handle = File::open(&days).map_err(io_err("open", &days))?;
        crate::durable::replace(&path, &temp, self.encode().as_bytes(), &days_handle).map_err(|f| {
            ManifestError::Io {
                action: f.action,
                path: f.path,
                source: f.source,
            }
        })
    }
}

/// Where the manifest of `day` lives.
pub fn path(dir: &Path, day: NaiveDate) -> PathBuf {
    dir.join(DAYS_DIR)
        .join(format!("{}.manifest", day.format("%Y%m%d")))
}

/// The manifest of `day` in `dir`, if there is one.
pub fn load(dir: &Path, day: NaiveDate) -> Result<Option<Manifest>, ManifestError> {
    let path = path(dir, day);
    match fs::read_to_string(&path) {
        Ok(text) => Manifest::decode(&text, &path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ManifestError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Every manifest in `dir`, oldest day first.
pub fn list(dir: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let days = dir.join(DAYS_DIR);
    let entries = match fs::read_dir(&days) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_err("list", &days)(source)),
    };
    let mut manifests = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", &days))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(day) = name
            .strip_suffix(".manifest")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            && let Some(m) = load(dir, day)?
        {
            manifests.push(m);
        }
    }
    manifests.sort_by_key(|m| m.day);
    Ok(manifests)
}

/// Whether `dir` holds a manifest (so it has sealed files, wherever they are now).
pub fn any(dir: &Path) -> bool {
    fs::read_dir(dir.join(DAYS_DIR)).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".manifest")))
    })
}

/// The rows and the SHA-256 of the first `len` bytes of the file at `path`. Rows are CSV records
/// after the header: line ends outside double quotes (COPY's CSV quotes a field holding a line
/// end, and doubles a quote inside one, which toggles twice).
pub fn digest(path: &Path, len: u64) -> Result<(u64, String), ManifestError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut reader = file.take(len);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let (mut lines, mut quoted, mut read) = (0u64, false, 0u64);
    loop {
        let n = reader.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        context.update(&buf[..n]);
        for &b in &buf[..n] {
            match b {
                b'"' => quoted = !quoted,
                b'\n' if !quoted => lines += 1,
                _ => {}
            }
        }
    }
    if read != len {
        return Err(io_err("read", path)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("it holds {read} bytes, not the {len} recorded"),
        )));
    }
    let sha = context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((lines.saturating_sub(1), sha))
}

/// The last instant of `day` in the server's TimeZone `zone`; when the zone is unknown (or not a
/// tz database name), the latest it can be in any civil zone (UTC-12). Same reading of days as
/// verify's quiet days (src/verify/quiet.rs).
pub fn day_end(day: NaiveDate, zone: Option<&str>) -> DateTime<Utc> {
    let next = day.succ_opt().unwrap_or(day);
    let midnight = next.and_hms_opt(0, 0, 0).unwrap_or_default();
    match zone.and_then(|z| z.parse::<Tz>().ok()) {
        Some(tz) => {
            for hours in 0..48 {
                match tz.from_local_datetime(&(midnight + Duration::hours(hours))) {
                    LocalResult::Single(t) => return t.with_timezone(&Utc),
                    LocalResult::Ambiguous(_, later) => return later.with_timezone(&Utc),
                    LocalResult::None => {}
                }
            }
            midnight.and_utc() + Duration::hours(14)
        }
        None => midnight.and_utc() + Duration::hours(12),
    }
}

/// Whether `day` can receive no more rows but late ones: the files are complete up to a server
/// time `grace()` past the day's end. The end is the later of the day's end in the server's zone
/// (the day of `changed_at`) and in UTC (the day of a table without it is its commit's UTC date),
/// so neither kind of file is sealed while its day still runs.
pub fn sealable(day: NaiveDate, covered: &Covered) -> bool {
    let end = day_end(day, covered.zone.as_deref()).max(day_end(day, Some("UTC")));
    covered.to >= end + grace()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn manifests_round_trip_and_damage_is_refused_with_the_line() {
        let mut m = Manifest::new(day("2025-10-21"), true);
        m.files.insert(
            "users_audit_stream_20251021.csv".into(),
            Entry {
                len: 10,
                rows: 1,
                sha256: "ab".repeat(32),
                lsns: Some((Lsn(1), Lsn(0x1_0000_0002))),
            },
        );
        m.files.insert(
            "users_audit_stream_20251021-2.csv".into(),
            Entry {
                len: 3,
                rows: 0,
                sha256: "0".repeat(64),
                lsns: None,
            },
        );
        let text = m.encode();
        assert!(
            text.starts_with("audit-tail day 1\nday 2025-10-21\ncsv safe\n"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "\nfile users_audit_stream_20251021.csv 10 1 {} 0/1 1/2\n",
            "ab".repeat(32)
        )));
        assert!(text.contains(" - -\n"));
        assert_eq!(Manifest::decode(&text, Path::new("m")).unwrap(), m);
        let base = "audit-tail day 1\nday 2025-10-21\n";
        for (text, line) in [
            ("audit-tail day 1\n".to_string(), 2),
            ("audit-tail day 1\nday 2025-13-01\n".to_string(), 2),
            (format!("{base}file x.csv 1 1 {} - -", "0".repeat(64)), 3),
            (format!("{base}file x.csv 1 1 {} - -\n", "0".repeat(63)), 3),
            (format!("{base}file x.csv 1 1 {} - -\n", "A".repeat(64)), 3),
            (
                format!("{base}file ../x.csv 1 1 {} - -\n", "0".repeat(64)),
                3,
            ),
            (format!("{base}file x.csv x 1 {} - -\n", "0".repeat(64)), 3),
            (format!("{base}file x.csv 1 1 {} 0/1\n", "0".repeat(64)), 3),
            (format!("{base}other\n"), 3),
        ] {
            match Manifest::decode(&text, Path::new("m")) {
                Err(ManifestError::Corrupt { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_digest_counts_records_not_line_ends_and_matches_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        fs::write(&path, "a,b\n1,\"x\ny\"\n2,\"\"\"\"\nextra").unwrap();
        let len = "a,b\n1,\"x\ny\"\n2,\"\"\"\"\n".len() as u64;
        let (rows, sha) = digest(&path, len).unwrap();
        assert_eq!(rows, 2);
        // sha256 of the first `len` bytes, computed independently.
        let want = ring::digest::digest(
            &ring::digest::SHA256,
            &fs::read(&path).unwrap()[..len as usize],
        );
        let want: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha, want);
        assert_eq!(
            digest(&path.with_extension("x"), 0)
                .err()
                .map(|e| e.to_string().contains("could not open")),
            Some(true)
        );
        assert!(digest(&path, 1000).is_err(), "a file shorter than recorded");
    }

    #[test]
    fn a_day_is_sealable_an_hour_after_it_ended_in_the_server_zone() {
        let covered = |to: &str, zone: Option<&str>| Covered {
            from: at("2025-10-01T00:00:00Z"),
            to: at(to),
            zone: zone.map(str::to_string),
        };
        let d = day("2025-10-21");
        assert!(!sealable(d, &covered("2025-10-22T00:59:59Z", Some("UTC"))));
        assert!(sealable(d, &covered("2025-10-22T01:00:00Z", Some("UTC"))));
        // America/New_York is UTC-4 in October: the day ends at 04:00 UTC.
        let ny = |to| covered(to, Some("America/New_York"));
        assert!(sealable(d, &ny("2025-10-22T05:00:00Z")));
        assert!(!sealable(d, &ny("2025-10-22T04:59:00Z")));
        // Europe/Paris is UTC+2 in October: its day ends at 22:00 UTC, but a table without
        // changed_at has UTC days, so the UTC end counts.
        let paris = |to| covered(to, Some("Europe/Paris"));
        assert!(!sealable(d, &paris("2025-10-21T23:00:00Z")));
        assert!(sealable(d, &paris("2025-10-22T01:00:00Z")));
        // Unknown zone: as late as UTC-12.
        assert!(!sealable(d, &covered("2025-10-22T12:59:00Z", None)));
        assert!(sealable(
            d,
            &covered("2025-10-22T13:00:00Z", Some("Not/AZone"))
        ));
        // America/Sao_Paulo skipped midnight in some years: the day ends at the first hour that
        // exists.
        let end = day_end(day("2018-11-03"), Some("America/Sao_Paulo"));
        assert_eq!(end, at("2018-11-04T03:00:00Z"));
    }
}
