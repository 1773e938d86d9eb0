//! Both sides of a comparison in bounded memory: the nightly export and the stream files of a
//! day, each split by key into bucket files of at most `BUCKET_BYTES`, then compared bucket by
//! bucket (rows of files with other columns on the columns they share). Split out of
//! src/verify/mod.rs, which reads the files and the database and makes the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::VerifyError;
use super::csv_read::{Field, Reader, Record};
use super::report::{Diff, FieldDiff};
use super::table::DAY_COLUMN;
use crate::sink::copy_csv::{Cells, encode_row_as};

#[cfg(test)]
mod tests;

pub(super) fn bucket_count(nightly: &Path, stream: &[PathBuf], bucket_bytes: u64) -> u64 {
    let largest = std::iter::once(nightly)
        .chain(stream.iter().map(PathBuf::as_path))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    largest.div_ceil(bucket_bytes).max(1)
}

/// The bucket entries of rows whose file has the reference's columns: compared byte for byte.
const SAME_COLUMNS: u32 = u32::MAX;

/// How the columns of a file whose header is not the reference's (the export's) map onto them.
pub(super) struct Layout {
    /// The file's name (not its path).
    pub(super) file: String,
    /// For each reference column, its position in the file's records, if the file has it.
    pub(super) map: Vec<Option<usize>>,
    /// Reference columns the file lacks, and its columns the reference lacks.
    pub(super) missing: Vec<String>,
    pub(super) extra: Vec<String>,
}

impl Layout {
    fn new(path: &Path, header: &[String], reference: &[String]) -> Layout {
        Layout {
            file: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            map: reference
                .iter()
                .map(|c| header.iter().position(|h| h == c))
                .collect(),
            missing: reference
                .iter()
                .filter(|c| !header.contains(c))
                .cloned()
                .collect(),
            extra: header
                .iter()
                .filter(|h| !reference.contains(h))
                .cloned()
                .collect(),
        }
    }
}

/// One side of the comparison, spread over bucket files by key.
pub(super) struct Side {
    pub(super) rows: u64,
    /// The smallest and largest id, if any row.
    pub(super) ids: Option<(i64, i64)>,
    /// Rows per date of their changed_at.
    pub(super) days: BTreeMap<NaiveDate, u64>,
    pub(super) buckets: Vec<tempfile::NamedTempFile>,
    pub(super) writers: Vec<BufWriter<File>>,
    /// The header of the last file read.
    pub(super) header: Vec<String>,
    /// The column maps of files whose header is not the reference's, by their number in the
    /// bucket entries.
    pub(super) layouts: Vec<Layout>,
}

impl Side {
    /// No rows yet, in `n` empty buckets.
    pub(super) fn new(n: u64) -> Result<Side, VerifyError> {
        let mut buckets = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..n {
            let temp = tempfile::NamedTempFile::new().map_err(VerifyError::Temp)?;
            writers.push(BufWriter::new(temp.reopen().map_err(VerifyError::Temp)?));
            buckets.push(temp);
        }
        Ok(Side {
            rows: 0,
            ids: None,
            days: BTreeMap::new(),
            buckets,
            writers,
            header: Vec::new(),
            layouts: Vec::new(),
        })
    }

    /// One file, the reference of the comparison (the nightly export), in `n` buckets.
    pub(super) fn read(
        path: &Path,
        name: &str,
        check: &dyn Fn(&[String]) -> Result<(), String>,
        key: &str,
        n: u64,
        cells: Cells,
    ) -> Result<Side, VerifyError> {
        let mut side = Side::new(n)?;
        side.add(path, name, None, check, key, cells)?;
        side.finish()
    }

    /// Checks every record of `path` and spreads them over the buckets by key; with
    /// `Cells::Safe` each record is written as `--safe-csv` would have written it. A file whose
    /// header is not `reference` gets a column map.
    pub(super) fn add(
        &mut self,
        path: &Path,
        name: &str,
        reference: Option<&[String]>,
        check: &dyn Fn(&[String]) -> Result<(), String>,
        key: &str,
        cells: Cells,
    ) -> Result<(), VerifyError> {
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
        let columns = names(&header);
        let wrong = |why: String| {
            let raw = String::from_utf8_lossy(header.raw.trim_ascii_end()).into_owned();
            content(1, format!("wrong header {raw:?}: {why}"))
        };
        check(&columns).map_err(wrong)?;
        let key_at = columns
            .iter()
            .position(|c| c == key)
            .ok_or_else(|| wrong(format!("it has no column {key}")))?;
        let day_at = columns.iter().position(|c| c == DAY_COLUMN);
        let layout = match reference {
            Some(reference) if reference != columns.as_slice() => {
                self.layouts.push(Layout::new(path, &columns, reference));
                (self.layouts.len() - 1) as u32
            }
            _ => SAME_COLUMNS,
        };
        let n = self.writers.len() as i64;
        while let Some(record) = reader.next_record().map_err(csv)? {
            if record.fields.len() != columns.len() {
                return Err(content(
                    record.line,
                    format!(
                        "{} fields where the header has {}",
                        record.fields.len(),
                        columns.len()
                    ),
                ));
            }
            let id = id_of(&record, key_at)
                .ok_or_else(|| content(record.line, format!("the {key} is not an integer")))?;
            self.ids = Some(
                self.ids
                    .map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))),
            );
            if let Some(day) = day_at.and_then(|at| day_of(&record, at)) {
                *self.days.entry(day).or_insert(0) += 1;
            }
            let raw = match cells {
                Cells::Exact => record.raw,
                Cells::Safe => {
                    let mut raw = Vec::with_capacity(record.raw.len() + 2);
                    encode_row_as(&mut raw, record.fields.iter().map(|f| f.as_deref()), cells);
                    raw
                }
            };
            let w = &mut self.writers[id.rem_euclid(n) as usize];
            w.write_all(&id.to_le_bytes())
                .and_then(|()| w.write_all(&layout.to_le_bytes()))
                .and_then(|()| w.write_all(&(raw.len() as u64).to_le_bytes()))
                .and_then(|()| w.write_all(&raw))
                .map_err(VerifyError::Temp)?;
            self.rows += 1;
        }
        self.header = columns;
        Ok(())
    }

    /// Flushes the buckets: the side is ready to compare.
    pub(super) fn finish(mut self) -> Result<Side, VerifyError> {
        for mut w in std::mem::take(&mut self.writers) {
            w.flush().map_err(VerifyError::Temp)?;
        }
        Ok(self)
    }
}

/// A header record's column names.
pub(super) fn names(header: &Record) -> Vec<String> {
    header
        .fields
        .iter()
        .map(|f| String::from_utf8_lossy(f.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// The date of a record's changed_at (`2025-10-21 11:55:51.123`), if it has one.
fn day_of(record: &Record, at: usize) -> Option<NaiveDate> {
    let at = record.fields.get(at)?.as_ref()?;
    let text = std::str::from_utf8(at.get(..10)?).ok()?;
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

pub(super) fn id_of(record: &Record, at: usize) -> Option<i64> {
    let id = record.fields.get(at)?.as_ref()?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// One row in a bucket: its id, the number of its file's column map (or `SAME_COLUMNS`), and
/// its record as read.
struct Entry {
    id: i64,
    layout: u32,
    raw: Vec<u8>,
}

/// Reads back a bucket, written by `Side::add` as Int64 id · UInt32 layout · Int64 length ·
/// record, little-endian.
fn read_bucket(file: &tempfile::NamedTempFile) -> Result<Vec<Entry>, VerifyError> {
    let mut bytes = Vec::new();
    file.reopen()
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(VerifyError::Temp)?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 20 {
        let id = i64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let layout = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(rest[12..20].try_into().expect("8 bytes")) as usize;
        out.push(Entry {
            id,
            layout,
            raw: rest[20..20 + len].to_vec(),
        });
        rest = &rest[20 + len..];
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
/// gap in the day's span. `reference` is the nightly side's columns.
pub(super) fn compare(
    nightly: Side,
    stream: Side,
    neighbours: &[i64],
    reference: &[String],
) -> Result<Diff, VerifyError> {
    let mut diff = Diff {
        nightly_rows: nightly.rows,
        stream_rows: stream.rows,
        ..Diff::default()
    };
    let span = id_span(&nightly, &stream);
    let mut seen = span.and_then(|(lo, hi)| IdSet::new(lo, hi));
    let columns = Columns {
        reference,
        layouts: &stream.layouts,
    };
    for (n, s) in nightly.buckets.into_iter().zip(stream.buckets) {
        compare_bucket(n, s, &mut diff, seen.as_mut(), &columns)?;
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

/// The columns compared: the reference's, and the maps of stream files with other columns.
struct Columns<'a> {
    reference: &'a [String],
    layouts: &'a [Layout],
}

impl Columns<'_> {
    /// Compares a nightly row with a stream row on the columns the stream row's file has: None
    /// when they agree, else the fields that differ.
    fn differences(&self, nightly: &[u8], stream: &Entry) -> Option<Vec<FieldDiff>> {
        if stream.layout == SAME_COLUMNS && nightly == stream.raw {
            return None;
        }
        let (ours, theirs) = (parse_raw(nightly), parse_raw(&stream.raw));
        let map = self.layouts.get(stream.layout as usize).map(|l| &l.map);
        let text = |f: &Field| f.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
        let fields: Vec<FieldDiff> = self
            .reference
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let j = map.map_or(Some(i), |m| m[i])?;
                let (a, b) = (ours.fields.get(i)?, theirs.fields.get(j)?);
                (a != b).then(|| FieldDiff {
                    field: name.clone(),
                    nightly: text(a),
                    stream: text(b),
                })
            })
            .collect();
        // Rows of the same columns are compared byte for byte, as COPY writes them: the same
        // values written otherwise (quoted where COPY would not) differ too.
        (!fields.is_empty() || stream.layout == SAME_COLUMNS).then_some(fields)
    }
}

fn compare_bucket(
    nightly: tempfile::NamedTempFile,
    stream: tempfile::NamedTempFile,
    diff: &mut Diff,
    mut seen_ids: Option<&mut IdSet>,
    columns: &Columns,
) -> Result<(), VerifyError> {
    let mut by_id: HashMap<i64, Vec<u8>> = HashMap::new();
    for entry in read_bucket(&nightly)? {
        if let Some(ids) = seen_ids.as_deref_mut() {
            ids.insert(entry.id);
        }
        if by_id.insert(entry.id, entry.raw).is_some() {
            diff.duplicate_in_nightly(entry.id);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for entry in read_bucket(&stream)? {
        let id = entry.id;
        if let Some(ids) = seen_ids.as_deref_mut() {
            ids.insert(id);
        }
        if !seen.insert(id) {
            diff.duplicate_in_stream(id);
            continue;
        }
        match by_id.remove(&id) {
            None => diff.only_in_stream(id),
            Some(theirs) => match columns.differences(&theirs, &entry) {
                None => diff.matching += 1,
                Some(fields) => diff.differs(id, fields),
            },
        }
    }
    for id in by_id.into_keys() {
        diff.only_in_nightly(id);
    }
    Ok(())
}

pub(super) fn id_span(nightly: &Side, stream: &Side) -> Option<(i64, i64)> {
    match (nightly.ids, stream.ids) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, other) => one.or(other),
    }
}
