//! `audit-tail verify`: the nightly export of a day against the live stream's file of that day.
//!
//! Beside the flow, at its end: it reads `users_audit_stream_YYYYMMDD.csv` from the out-dir and
//! the nightly export, either a file (`--nightly`) or, since that file sits on the database
//! server's disk, the same query as `export_audit_data(D)` over COPY TO STDOUT. Rows are keyed by
//! id. To verify a day of millions of rows in bounded memory, both sides are first split by id
//! into bucket files of at most `BUCKET_BYTES`, then each bucket pair is compared in memory.
//!
//! A day without changes leaves no stream file: it counts as no rows when the stream's record
//! shows it covered the whole day (src/verify/quiet.rs). Ids of the neighbouring days' rows within
//! the day's span of ids (transactions across midnight interleave them) are looked up in those
//! days' stream files, so that only ids found nowhere are reported as in neither copy.

pub mod csv_read;
mod quiet;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use futures_util::TryStreamExt;

use crate::checkpoint::Checkpoint;
use crate::sink::copy_csv::{Cells, encode_row_as};
use crate::sql::{self, SqlError};
use crate::wire::ConnParams;
use csv_read::{CsvError, Reader, Record};
pub use report::{Diff, Report, ReportFormat};

/// The CSV contract of users_audit.
pub const HEADER: [&str; 7] = [
    "id",
    "user_id",
    "changed_at",
    "changed_by",
    "field_changed",
    "old_value",
    "new_value",
];
const BUCKET_BYTES: u64 = 16 * 1024 * 1024;

/// Where the nightly export comes from.
#[derive(Debug, Clone)]
pub enum Nightly {
    File(PathBuf),
    Database(Box<ConnParams>),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}: {source}")]
    Csv {
        file: String,
        #[source]
        source: CsvError,
    },
    #[error("{file} line {line}: {reason}")]
    Content {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("could not read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no stream file for {date}: {path} does not exist, and {why}; if the stream was down or \
         behind, verify again once it has caught up (audit-tail status), else check --date and \
         --out-dir"
    )]
    NoStream {
        date: NaiveDate,
        path: PathBuf,
        why: String,
    },
    #[error(
        "the nightly file holds rows of {found}, not {date}: check --date or the file ({file})"
    )]
    WrongDay {
        file: String,
        date: NaiveDate,
        found: String,
    },
    #[error("could not read the nightly export from the database: {0}")]
    Sql(#[from] SqlError),
    #[error("could not use a temporary file: {0}")]
    Temp(std::io::Error),
    #[error(transparent)]
    State(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Gaps(#[from] crate::gaps::GapError),
}

/// Compares the day's stream file in `out_dir` with the nightly export.
pub async fn verify(
    date: NaiveDate,
    nightly: &Nightly,
    out_dir: &Path,
) -> Result<Report, VerifyError> {
    let stream_path = stream_file(out_dir, date);
    let state = Checkpoint::load(out_dir)?;
    // No stream file: no rows if the stream covered the day, else nothing to compare with.
    let quiet = (!stream_path.is_file()).then(|| quiet::covered(state.as_ref(), date));
    let no_stream = |why: &String| VerifyError::NoStream {
        date,
        path: stream_path.clone(),
        why: why.clone(),
    };
    // A nightly file is read first: one of another day is the likelier mistake to name.
    if let (Nightly::Database(_), Some(Err(why))) = (nightly, &quiet) {
        return Err(no_stream(why));
    }
    let (nightly_path, nightly_name, _temp) = match nightly {
        Nightly::File(path) => (path.clone(), path.display().to_string(), None),
        Nightly::Database(params) => {
            let temp = export_from_database(params, date).await?;
            let name = format!("the export of {date} from database {}", params.dbname);
            (temp.path().to_path_buf(), name, Some(temp))
        }
    };
    // Files written with --safe-csv guard formula-like values; the export's get the same guard,
    // so that only real differences remain.
    let safe_csv = state.as_ref().is_some_and(|c| c.safe_csv);
    let cells = if safe_csv { Cells::Safe } else { Cells::Exact };
    let buckets = bucket_count(&[&nightly_path, &stream_path], BUCKET_BYTES);
    let nightly_side = split(&nightly_path, &nightly_name, buckets, cells)?;
    let on_the_day = nightly_side.days.get(&date).copied().unwrap_or(0);
    if on_the_day == 0 && !nightly_side.days.is_empty() {
        return Err(VerifyError::WrongDay {
            file: nightly_name,
            date,
            found: list_days(&nightly_side.days),
        });
    }
    let other_days: BTreeMap<NaiveDate, u64> = nightly_side
        .days
        .iter()
        .filter(|&(&d, _)| d != date)
        .map(|(&d, &n)| (d, n))
        .collect();
    let (stream_side, stream_name, covered) = match quiet {
        None => {
            let name = stream_path.display().to_string();
            (
                split(&stream_path, &name, buckets, Cells::Exact)?,
                name,
                None,
            )
        }
        Some(Ok(how)) => (Side::empty(buckets)?, "no file".to_string(), Some(how)),
        Some(Err(why)) => return Err(no_stream(&why)),
    };
    let span = id_span(&nightly_side, &stream_side);
    let neighbours = span.map(|(lo, hi)| neighbour_ids(out_dir, state.as_ref(), date, lo, hi));
    let (neighbour_ids, unknown) = neighbours.unwrap_or_default();
    let mut diff = compare(nightly_side, stream_side, &neighbour_ids)?;
    diff.neighbours_unknown = unknown;
    Ok(Report {
        date,
        nightly: nightly_name,
        stream: stream_name,
        covered,
        other_days,
        safe_csv,
        diff,
        recorded_gaps: crate::gaps::for_day(out_dir, date)?,
    })
}

fn stream_file(out_dir: &Path, date: NaiveDate) -> PathBuf {
    out_dir.join(format!("users_audit_stream_{}.csv", date.format("%Y%m%d")))
}

/// "2025-10-20" or "2025-10-19, 2025-10-20".
fn list_days(days: &BTreeMap<NaiveDate, u64>) -> String {
    let list: Vec<String> = days.keys().take(5).map(|d| d.to_string()).collect();
    let more = if days.len() > 5 { ", …" } else { "" };
    format!("{}{more}", list.join(", "))
}

/// The ids in `lo..=hi` of the rows of the days before and after `date`, from their stream files;
/// and the neighbouring days verify cannot tell about (no file, and not known to be quiet).
fn neighbour_ids(
    out_dir: &Path,
    state: Option<&Checkpoint>,
    date: NaiveDate,
    lo: i64,
    hi: i64,
) -> (Vec<i64>, Vec<NaiveDate>) {
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for day in [date.pred_opt(), date.succ_opt()].into_iter().flatten() {
        let path = stream_file(out_dir, day);
        let read = File::open(&path).ok().and_then(|file| {
            let mut reader = Reader::new(BufReader::new(file));
            reader.next_record().ok()??;
            let mut found = Vec::new();
            while let Some(record) = reader.next_record().ok()? {
                let id = id_of(&record)?;
                if (lo..=hi).contains(&id) {
                    found.push(id);
                }
            }
            Some(found)
        });
        match read {
            Some(found) => ids.extend(found),
            None if !path.exists() && quiet::covered(state, day).is_ok() => {}
            None => unknown.push(day),
        }
    }
    (ids, unknown)
}

fn id_span(nightly: &Side, stream: &Side) -> Option<(i64, i64)> {
    match (nightly.ids, stream.ids) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, other) => one.or(other),
    }
}

/// The same rows and bytes as export_audit_data(date), into a temporary file.
async fn export_from_database(
    params: &ConnParams,
    date: NaiveDate,
) -> Result<tempfile::NamedTempFile, VerifyError> {
    let client = sql::connect_params(params).await?;
    client
        .batch_execute("SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3")
        .await
        .map_err(|e| SqlError::new("could not pin the session settings", e))?;
    let day = date.format("%Y-%m-%d");
    let query = format!(
        "COPY (SELECT * FROM users_audit WHERE changed_at >= '{day}'::date \
         AND changed_at < '{day}'::date + 1 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER, ENCODING 'UTF8')"
    );
    let stream = client
        .copy_out(&query)
        .await
        .map_err(|e| SqlError::new("could not export users_audit (is sql/install.sql installed, and may this role SELECT it?)", e))?;
    let mut temp = tempfile::NamedTempFile::new().map_err(VerifyError::Temp)?;
    futures_util::pin_mut!(stream);
    {
        let mut out = BufWriter::new(temp.as_file_mut());
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| SqlError::new("the export was cut off", e))?
        {
            out.write_all(&chunk).map_err(VerifyError::Temp)?;
        }
        out.flush().map_err(VerifyError::Temp)?;
    }
    Ok(temp)
}

fn bucket_count(paths: &[&Path], bucket_bytes: u64) -> u64 {
    let largest = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    largest.div_ceil(bucket_bytes).max(1)
}

struct Side {
    rows: u64,
    /// The smallest and largest id, if any row.
    ids: Option<(i64, i64)>,
    /// Rows per date of their changed_at.
    days: BTreeMap<NaiveDate, u64>,
    buckets: Vec<tempfile::NamedTempFile>,
}

impl Side {
    /// No rows, in `n` empty buckets.
    fn empty(n: u64) -> Result<Side, VerifyError> {
        let buckets = (0..n)
            .map(|_| tempfile::NamedTempFile::new().map_err(VerifyError::Temp))
            .collect::<Result<_, _>>()?;
        Ok(Side {
            rows: 0,
            ids: None,
            days: BTreeMap::new(),
            buckets,
        })
    }
}

/// Checks every record of `path` and spreads them over `n` bucket files by id; with
/// `Cells::Safe` each record is written as `--safe-csv` would have written it.
fn split(path: &Path, name: &str, n: u64, cells: Cells) -> Result<Side, VerifyError> {
    let file = File::open(path).map_err(|source| VerifyError::Read {
        file: name.to_string(),
        source,
    })?;
    let mut reader = Reader::new(BufReader::new(file));
    let csv = |source| VerifyError::Csv {
        file: name.to_string(),
        source,
    };
    let content = |line, reason: String| VerifyError::Content {
        file: name.to_string(),
        line,
        reason,
    };
    let header = reader
        .next_record()
        .map_err(csv)?
        .ok_or_else(|| content(1, "empty file: expected the header line".into()))?;
    let expected: Vec<Option<Vec<u8>>> =
        HEADER.iter().map(|h| Some(h.as_bytes().to_vec())).collect();
    if header.fields != expected {
        return Err(content(
            1,
            format!(
                "wrong header {:?}: expected {}",
                String::from_utf8_lossy(header.raw.trim_ascii_end()),
                HEADER.join(",")
            ),
        ));
    }
    let mut buckets = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..n {
        let temp = tempfile::NamedTempFile::new().map_err(VerifyError::Temp)?;
        writers.push(BufWriter::new(temp.reopen().map_err(VerifyError::Temp)?));
        buckets.push(temp);
    }
    let mut rows = 0;
    let mut ids: Option<(i64, i64)> = None;
    let mut days = BTreeMap::new();
    while let Some(record) = reader.next_record().map_err(csv)? {
        if record.fields.len() != HEADER.len() {
            return Err(content(
                record.line,
                format!(
                    "{} fields where the header has {}",
                    record.fields.len(),
                    HEADER.len()
                ),
            ));
        }
        let id = id_of(&record)
            .ok_or_else(|| content(record.line, "the id is not an integer".into()))?;
        ids = Some(ids.map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))));
        if let Some(day) = day_of(&record) {
            *days.entry(day).or_insert(0) += 1;
        }
        let raw = match cells {
            Cells::Exact => record.raw,
            Cells::Safe => {
                let mut raw = Vec::with_capacity(record.raw.len() + 2);
                encode_row_as(&mut raw, record.fields.iter().map(|f| f.as_deref()), cells);
                raw
            }
        };
        let w = &mut writers[(id.rem_euclid(n as i64)) as usize];
        w.write_all(&id.to_le_bytes())
            .and_then(|()| w.write_all(&(raw.len() as u64).to_le_bytes()))
            .and_then(|()| w.write_all(&raw))
            .map_err(VerifyError::Temp)?;
        rows += 1;
    }
    for mut w in writers {
        w.flush().map_err(VerifyError::Temp)?;
    }
    Ok(Side {
        rows,
        ids,
        days,
        buckets,
    })
}

/// The date of a record's changed_at (`2025-10-21 11:55:51.123`), if it has one.
fn day_of(record: &Record) -> Option<NaiveDate> {
    let at = record.fields.get(2)?.as_ref()?;
    let text = std::str::from_utf8(at.get(..10)?).ok()?;
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

fn id_of(record: &Record) -> Option<i64> {
    let id = record.fields.first()?.as_ref()?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Reads back a bucket: (id, raw record) pairs, written by `split` as Int64 id · Int64 length ·
/// record, little-endian.
fn read_bucket(file: &tempfile::NamedTempFile) -> Result<Vec<(i64, Vec<u8>)>, VerifyError> {
    let mut bytes = Vec::new();
    file.reopen()
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(VerifyError::Temp)?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 16 {
        let id = i64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes")) as usize;
        out.push((id, rest[16..16 + len].to_vec()));
        rest = &rest[16 + len..];
    }
    Ok(out)
}

fn parse_raw(raw: &[u8]) -> Record {
    Reader::new(raw)
        .next_record()
        .ok()
        .flatten()
        .expect("records in buckets were parsed once already")
}

/// Compares the two sides; `neighbours` are ids of rows of the neighbouring days, which are no
/// gap in the day's span.
fn compare(nightly: Side, stream: Side, neighbours: &[i64]) -> Result<Diff, VerifyError> {
    let mut diff = Diff {
        nightly_rows: nightly.rows,
        stream_rows: stream.rows,
        ..Diff::default()
    };
    let span = id_span(&nightly, &stream);
    let mut seen = span.and_then(|(lo, hi)| IdSet::new(lo, hi));
    for (n, s) in nightly.buckets.into_iter().zip(stream.buckets) {
        compare_bucket(n, s, &mut diff, seen.as_mut())?;
    }
    if let Some((lo, hi)) = span {
        let present =
            diff.matching + diff.differing.0 + diff.only_in_nightly.0 + diff.only_in_stream.0;
        // In i128: the span of i64::MIN..=i64::MAX holds 2^64 ids, one more than a u64 does.
        let mut missing = (i128::from(hi) - i128::from(lo) + 1 - i128::from(present)).max(0);
        let mut counted = HashSet::new();
        for &id in neighbours {
            let new = match seen.as_mut() {
                Some(set) => set.insert_new(id),
                None => (lo..=hi).contains(&id) && counted.insert(id),
            };
            if new {
                diff.neighbouring += 1;
                missing = (missing - 1).max(0);
            }
        }
        diff.gaps = (
            u64::try_from(missing).unwrap_or(u64::MAX),
            seen.map(|s| s.gaps(GAPS_SHOWN)).unwrap_or_default(),
        );
    }
    diff.finish();
    Ok(diff)
}

/// How many id ranges missing from both copies are listed (all are counted).
const GAPS_SHOWN: usize = 20;
/// Ids in a day's span up to which the missing ranges are listed (a bit each: 8 MB); beyond it
/// only their number is.
const GAP_SPAN_LISTED: u64 = 1 << 26;

/// A bitmap of the ids in `lo..=hi` seen in either copy.
struct IdSet {
    lo: i64,
    len: u64,
    bits: Vec<u64>,
}

impl IdSet {
    fn new(lo: i64, hi: i64) -> Option<IdSet> {
        let len = u64::try_from(hi.checked_sub(lo)?).ok()?.checked_add(1)?;
        (len <= GAP_SPAN_LISTED).then(|| IdSet {
            lo,
            len,
            bits: vec![0; len.div_ceil(64) as usize],
        })
    }

    fn insert(&mut self, id: i64) {
        let i = (id - self.lo) as u64;
        if i < self.len {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// Marks `id`; whether it is in the span and was not marked yet.
    fn insert_new(&mut self, id: i64) -> bool {
        let Some(i) = id.checked_sub(self.lo).and_then(|i| u64::try_from(i).ok()) else {
            return false;
        };
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.insert(id);
        true
    }

    fn contains(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// The first `max` runs of ids seen in neither copy, as inclusive ranges.
    fn gaps(&self, max: usize) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.len && out.len() < max {
            if self.bits[(i / 64) as usize] == u64::MAX {
                i += 64;
                continue;
            }
            if self.contains(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.len && !self.contains(i) {
                i += 1;
            }
            out.push((self.lo + start as i64, self.lo + i as i64 - 1));
        }
        out
    }
}

fn compare_bucket(
    nightly: tempfile::NamedTempFile,
    stream: tempfile::NamedTempFile,
    diff: &mut Diff,
    mut seen_ids: Option<&mut IdSet>,
) -> Result<(), VerifyError> {
    let mut by_id: HashMap<i64, Vec<u8>> = HashMap::new();
    for (id, raw) in read_bucket(&nightly)? {
        if let Some(ids) = seen_ids.as_deref_mut() {
            ids.insert(id);
        }
        if by_id.insert(id, raw).is_some() {
            diff.duplicate_in_nightly(id);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (id, raw) in read_bucket(&stream)? {
        if let Some(ids) = seen_ids.as_deref_mut() {
            ids.insert(id);
        }
        if !seen.insert(id) {
            diff.duplicate_in_stream(id);
            continue;
        }
        match by_id.remove(&id) {
            None => diff.only_in_stream(id),
            Some(theirs) if theirs == raw => diff.matching += 1,
            Some(theirs) => diff.differs(id, &parse_raw(&theirs), &parse_raw(&raw)),
        }
    }
    for id in by_id.into_keys() {
        diff.only_in_nightly(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_buckets_find_the_same_differences() {
        let dir = tempfile::tempdir().unwrap();
        let header = HEADER.join(",");
        let mut nightly = format!("{header}\n");
        let mut stream = format!("{header}\n");
        for id in 1..=500 {
            let row = format!("{id},1,2025-10-21 10:00:00,a,name,old,new{id}\n");
            nightly.push_str(&row);
            if id != 250 {
                // The stream in another order, one row missing, one changed, one doubled.
                let row = if id == 77 {
                    row.replace("new77", "changed")
                } else {
                    row
                };
                stream.insert_str(header.len() + 1, &row);
            }
        }
        stream.push_str("12,1,2025-10-21 10:00:00,a,name,old,new12\n");
        let (n, s) = (dir.path().join("n.csv"), dir.path().join("s.csv"));
        std::fs::write(&n, nightly).unwrap();
        std::fs::write(&s, stream).unwrap();
        let buckets = bucket_count(&[&n, &s], 1000);
        assert!(buckets > 10, "{buckets}");
        let diff = compare(
            split(&n, "n", buckets, Cells::Exact).unwrap(),
            split(&s, "s", buckets, Cells::Exact).unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(
            (diff.nightly_rows, diff.stream_rows, diff.matching),
            (500, 500, 498)
        );
        assert_eq!(diff.only_in_nightly, (1, vec![250]));
        assert_eq!(diff.only_in_stream.0, 0);
        assert_eq!(diff.differing.0, 1);
        assert_eq!(diff.differing.1[0].0, 77);
        assert_eq!(diff.duplicates, (1, vec![(12, "stream")]));
        assert_eq!(diff.gaps, (0, vec![]));
        assert!(!diff.agrees());
    }

    #[test]
    fn ids_in_neither_copy_are_counted_and_listed_but_are_no_difference() {
        let dir = tempfile::tempdir().unwrap();
        let header = HEADER.join(",");
        let mut text = format!("{header}\n");
        for id in [3, 4, 7, 8, 9, 10, 15, 80, 81, 200] {
            text.push_str(&format!("{id},1,2025-10-21 10:00:00,a,name,old,new\n"));
        }
        let (n, s) = (dir.path().join("n.csv"), dir.path().join("s.csv"));
        std::fs::write(&n, &text).unwrap();
        std::fs::write(&s, &text).unwrap();
        for buckets in [1, 7] {
            let diff = compare(
                split(&n, "n", buckets, Cells::Exact).unwrap(),
                split(&s, "s", buckets, Cells::Exact).unwrap(),
                &[],
            )
            .unwrap();
            assert!(diff.agrees());
            assert_eq!(
                diff.gaps,
                (198 - 10, vec![(5, 6), (11, 14), (16, 79), (82, 199)]),
                "{buckets} buckets"
            );
        }
        // A span too wide to list is still counted.
        let wide = format!(
            "{header}\n1,1,2025-10-21 10:00:00,a,name,old,new\n\
             {},1,2025-10-21 10:00:00,a,name,old,new\n",
            1 + GAP_SPAN_LISTED as i64 * 2
        );
        std::fs::write(&n, &wide).unwrap();
        std::fs::write(&s, &wide).unwrap();
        let diff = compare(
            split(&n, "n", 1, Cells::Exact).unwrap(),
            split(&s, "s", 1, Cells::Exact).unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(diff.gaps, (GAP_SPAN_LISTED * 2 - 1, vec![]));
        assert!(
            IdSet::new(i64::MIN, i64::MAX).is_none(),
            "a span of 2^64 ids is not listed"
        );
    }

    /// Ids come from files: the extremes of i64 are counted without overflow.
    #[test]
    fn ids_at_the_ends_of_i64() {
        let dir = tempfile::tempdir().unwrap();
        let row = |id: i64| format!("{id},1,2025-10-21 10:00:00,a,name,old,new\n");
        let text = format!("{}\n{}{}", HEADER.join(","), row(i64::MIN), row(i64::MAX));
        let path = dir.path().join("n.csv");
        std::fs::write(&path, &text).unwrap();
        for buckets in [1, 3] {
            let side = || split(&path, "n", buckets, Cells::Exact).unwrap();
            let diff = compare(side(), side(), &[0]).unwrap();
            assert!(diff.agrees());
            assert_eq!(diff.matching, 2);
            // 2^64 ids in the span (one more than a u64 holds), 2 in the copies, 1 (0) a
            // neighbouring day's.
            assert_eq!(diff.gaps, (u64::MAX - 2, vec![]));
            assert_eq!(diff.neighbouring, 1);
        }
    }
}
