//! `audit-tail verify`: the nightly export of a day against the live stream's files of that day.
//!
//! Beside the flow, at its end. It describes the audited table (src/verify/table.rs: from the
//! catalog, or from the nightly file's header), reads every stream file of the table and day from
//! the out-dir (src/layout.rs: `users_audit_stream_YYYYMMDD.csv`, then `-2.csv`... after the
//! table's columns changed) and the nightly export: either a file (`--nightly`) or, since that
//! file sits on the database server's disk, the rows of the same read-only function the export
//! writes, `users_audit_rows(D)`, over COPY TO STDOUT. Rows are keyed by the table's key. To verify
//! a day of millions of rows in bounded memory, both sides are first split by key into bucket
//! files of at most `BUCKET_BYTES`, then each bucket pair is compared in memory.
//!
//! The export has the table's columns as they are now; a stream file has the columns the table
//! had when it was written. A row is compared on the columns its file shares with the export, by
//! name: a file written before `ADD COLUMN` has its rows compared without the new column, one
//! written before `DROP COLUMN` has the dropped column ignored; the report names both.
//!
//! A day without changes leaves no stream file: it counts as no rows when the stream's record
//! shows it covered the whole day (src/verify/quiet.rs). Ids of the neighbouring days' rows within
//! the day's span of ids (transactions across midnight interleave them) are looked up in those
//! days' stream files, so that only ids found nowhere are reported as in neither copy.

pub mod csv_read;
mod quiet;
mod report;
pub mod table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use futures_util::TryStreamExt;

use crate::checkpoint::Checkpoint;
use crate::layout;
use crate::sink::copy_csv::{Cells, encode_row_as};
use crate::sql::{self, SqlError};
use crate::wire::ConnParams;
use csv_read::{CsvError, Field, Reader, Record};
pub use report::{Diff, FieldDiff, PartialFile, Report, ReportFormat};
pub use table::TableDesc;
use table::{DAY_COLUMN, REFERENCE_KEY};

/// The columns of the reference table, users_audit as sql/install.sql creates it: the CSV
/// contract of a fresh install. verify itself follows the table's description (table.rs).
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
    #[error("could not list the stream files in {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot verify database {database}: {why}")]
    NoTable { database: String, why: String },
    #[error(
        "function {function} does not exist in database {database}: the install predates it; run \
         `audit-tail setup` or sql/install.sql again (as the owner of users_audit; for audit.log, \
         sql/install.sql then sql/audit_log.sql), which adds it and grants it to audit_tail"
    )]
    NoExportFunction { function: String, database: String },
    #[error("could not read the nightly export from the database: {0}")]
    Sql(#[from] SqlError),
    #[error("could not use a temporary file: {0}")]
    Temp(std::io::Error),
    #[error(transparent)]
    State(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Gaps(#[from] crate::gaps::GapError),
}

/// verify's result: one report per table compared, the reference table (users_audit) first.
#[derive(Debug, Clone)]
pub struct Verification {
    pub reports: Vec<Report>,
}

impl Verification {
    /// Whether every table's copies agree.
    pub fn agrees(&self) -> bool {
        self.reports.iter().all(|r| r.diff.agrees())
    }

    /// One table: its report as before. Several: each report under its table's name (text), or
    /// `{"date", "agree", "tables": [...]}` (JSON).
    pub fn render(&self, format: ReportFormat) -> String {
        match self.reports.as_slice() {
            [one] => one.render(format),
            many => match format {
                ReportFormat::Text => many.iter().map(|r| r.render_named(format)).collect(),
                ReportFormat::Json => {
                    let tables: Vec<serde_json::Value> = many
                        .iter()
                        .map(|r| serde_json::from_str(&r.render(format)).unwrap_or_default())
                        .collect();
                    let date = many.first().map(|r| r.date.to_string());
                    let mut text = serde_json::json!({
                        "date": date, "agree": self.agrees(), "tables": tables,
                    })
                    .to_string();
                    text.push('\n');
                    text
                }
            },
        }
    }
}

/// Compares the day's stream files in `out_dir` with the nightly export: with `--nightly FILE`
/// that file against users_audit's stream files; from the database, users_audit and, when the
/// database has it, audit.log (sql/audit_log.sql), each table against its own stream files.
pub async fn verify(
    date: NaiveDate,
    nightly: &Nightly,
    out_dir: &Path,
) -> Result<Verification, VerifyError> {
    let state = Checkpoint::load(out_dir)?;
    // Files written with --safe-csv guard formula-like values; the export's get the same guard,
    // so that only real differences remain.
    let cells = if state.as_ref().is_some_and(|c| c.safe_csv) {
        Cells::Safe
    } else {
        Cells::Exact
    };
    match nightly {
        Nightly::File(path) => {
            // A nightly file is read first: one of another day is the likelier mistake to name.
            let mut table = TableDesc::from_header(Vec::new(), out_dir);
            let files = stream_files(out_dir, &table, date)?;
            let name = path.display().to_string();
            let buckets = bucket_count(path, &files, BUCKET_BYTES);
            let key = table.key_column().to_string();
            let side = Side::read(path, &name, &check_nightly_file, &key, buckets, cells)?;
            table.columns = side.header.clone();
            let quiet = files
                .is_empty()
                .then(|| quiet::covered(state.as_ref(), date));
            let report = compare_day(
                date,
                out_dir,
                state.as_ref(),
                &table,
                (side, name),
                files,
                quiet,
            )?;
            Ok(Verification {
                reports: vec![report],
            })
        }
        Nightly::Database(params) => {
            let client = sql::connect_params(params).await?;
            let mut tables = vec![TableDesc::from_catalog(&client, &params.dbname).await?];
            tables.extend(TableDesc::log_from_catalog(&client, &params.dbname).await?);
            let mut reports = Vec::with_capacity(tables.len());
            for table in &tables {
                let db = (&client, params.dbname.as_str());
                reports.push(verify_table(db, table, date, out_dir, state.as_ref(), cells).await?);
            }
            Ok(Verification { reports })
        }
    }
}

/// One table of the database: its export of `date` against its stream files.
async fn verify_table(
    (client, database): (&tokio_postgres::Client, &str),
    table: &TableDesc,
    date: NaiveDate,
    out_dir: &Path,
    state: Option<&Checkpoint>,
    cells: Cells,
) -> Result<Report, VerifyError> {
    let files = stream_files(out_dir, table, date)?;
    let mut quiet = files.is_empty().then(|| quiet::covered(state, date));
    let reference = table.name == table::REFERENCE_TABLE;
    if let (Some(Err(why)), true) = (&quiet, reference) {
        return Err(no_stream(out_dir, table, date, why));
    }
    let temp = export_from_database(client, table, date).await?;
    let name = if reference {
        format!("the export of {date} from database {database}")
    } else {
        format!(
            "the export of {date} of {}.{} from database {database}",
            table.schema, table.name
        )
    };
    let buckets = bucket_count(temp.path(), &files, BUCKET_BYTES);
    let check = |header: &[String]| check_export(header, &table.columns);
    let side = Side::read(
        temp.path(),
        &name,
        &check,
        table.key_column(),
        buckets,
        cells,
    )?;
    // The log of a database that tracks nothing (or nothing that changed) has no rows and no
    // file on most days: with an empty export that is agreement, however long the stream ran.
    if let Some(Err(why)) = &quiet {
        if side.rows > 0 {
            return Err(no_stream(out_dir, table, date, why));
        }
        quiet = Some(Ok(format!(
            "{}.{} has no rows of {date} and the stream wrote no file of it",
            table.schema, table.name
        )));
    }
    compare_day(date, out_dir, state, table, (side, name), files, quiet)
}

/// The second half of `verify`: the stream's side against the nightly side, already read.
fn compare_day(
    date: NaiveDate,
    out_dir: &Path,
    state: Option<&Checkpoint>,
    table: &TableDesc,
    (nightly_side, nightly_name): (Side, String),
    files: Vec<PathBuf>,
    quiet: Option<Result<String, String>>,
) -> Result<Report, VerifyError> {
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
    let safe_csv = state.is_some_and(|c| c.safe_csv);
    let buckets = nightly_side.buckets.len() as u64;
    let (stream_side, stream_name, covered) = match quiet {
        None => {
            let reference = nightly_side.header.clone();
            let key = table.key_column();
            let check = |header: &[String]| has_key(header, key);
            let mut side = Side::new(buckets)?;
            for path in &files {
                let name = path.display().to_string();
                side.add(path, &name, Some(&reference), &check, key, Cells::Exact)?;
            }
            (side.finish()?, files_name(&files), None)
        }
        Some(Ok(how)) => (
            Side::new(buckets)?.finish()?,
            "no file".to_string(),
            Some(how),
        ),
        Some(Err(why)) => return Err(no_stream(out_dir, table, date, &why)),
    };
    let span = id_span(&nightly_side, &stream_side);
    let neighbours = span.map(|(lo, hi)| neighbour_ids(out_dir, state, table, date, lo, hi));
    let (neighbour_ids, unknown) = neighbours.unwrap_or_default();
    let partial = stream_side
        .layouts
        .iter()
        .map(|l| PartialFile {
            file: l.file.clone(),
            not_compared: l.missing.clone(),
            ignored: l.extra.clone(),
        })
        .collect();
    let reference = nightly_side.header.clone();
    let mut diff = compare(nightly_side, stream_side, &neighbour_ids, &reference)?;
    diff.neighbours_unknown = unknown;
    Ok(Report {
        date,
        table: format!("{}.{}", table.schema, table.name),
        key: table.key_column().to_string(),
        nightly: nightly_name,
        stream: stream_name,
        covered,
        other_days,
        safe_csv,
        partial,
        diff,
        recorded_gaps: crate::gaps::for_day(out_dir, date)?,
    })
}

/// The day's files of `table`, in part order.
fn stream_files(
    out_dir: &Path,
    table: &TableDesc,
    date: NaiveDate,
) -> Result<Vec<PathBuf>, VerifyError> {
    layout::day_files(out_dir, &table.schema, &table.name, date).map_err(|source| {
        VerifyError::List {
            dir: out_dir.to_path_buf(),
            source,
        }
    })
}

fn no_stream(out_dir: &Path, table: &TableDesc, date: NaiveDate, why: &str) -> VerifyError {
    VerifyError::NoStream {
        date,
        path: out_dir.join(layout::file_name(&table.schema, &table.name, date, 1)),
        why: why.to_string(),
    }
}

/// `/out/users_audit_stream_20251021.csv`, or with more parts
/// `/out/users_audit_stream_20251021.csv + users_audit_stream_20251021-2.csv`.
fn files_name(files: &[PathBuf]) -> String {
    let mut names = files.iter().enumerate().map(|(i, path)| match i {
        0 => path.display().to_string(),
        _ => path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
    });
    let first = names.next().unwrap_or_default();
    names.fold(first, |all, name| format!("{all} + {name}"))
}

/// A nightly file without a database: any columns, as long as the key and the day are there.
fn check_nightly_file(header: &[String]) -> Result<(), String> {
    if [REFERENCE_KEY, DAY_COLUMN]
        .iter()
        .all(|c| header.iter().any(|h| h == c))
    {
        return Ok(());
    }
    Err(format!(
        "expected the columns of users_audit ({}), at least {REFERENCE_KEY} and {DAY_COLUMN}",
        HEADER.join(",")
    ))
}

/// The export from the database has the table's columns as the catalog described them.
fn check_export(header: &[String], columns: &[String]) -> Result<(), String> {
    if header == columns {
        return Ok(());
    }
    Err(format!(
        "expected {}, the table's columns (did they change while verify ran? run it again)",
        columns.join(",")
    ))
}

/// A stream file: any columns (it may predate a change of the table's), with the key.
fn has_key(header: &[String], key: &str) -> Result<(), String> {
    if header.iter().any(|h| h == key) {
        return Ok(());
    }
    Err(format!("it has no column {key}, the table's key"))
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
    table: &TableDesc,
    date: NaiveDate,
    lo: i64,
    hi: i64,
) -> (Vec<i64>, Vec<NaiveDate>) {
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for day in [date.pred_opt(), date.succ_opt()].into_iter().flatten() {
        let files = layout::day_files(out_dir, &table.schema, &table.name, day).ok();
        let read = files.as_ref().and_then(|files| {
            let mut found = Vec::new();
            for path in files {
                found.extend(ids_in(path, table.key_column(), lo, hi)?);
            }
            Some(found)
        });
        match (read, files) {
            (Some(found), Some(files)) if !files.is_empty() => ids.extend(found),
            (_, Some(files)) if files.is_empty() && quiet::covered(state, day).is_ok() => {}
            _ => unknown.push(day),
        }
    }
    (ids, unknown)
}

/// The ids in `lo..=hi` of a stream file, None if it cannot be read.
fn ids_in(path: &Path, key: &str, lo: i64, hi: i64) -> Option<Vec<i64>> {
    let mut reader = Reader::new(BufReader::new(File::open(path).ok()?));
    let header = reader.next_record().ok()??;
    let key = names(&header).iter().position(|h| h == key)?;
    let mut found = Vec::new();
    while let Some(record) = reader.next_record().ok()? {
        let id = id_of(&record, key)?;
        if (lo..=hi).contains(&id) {
            found.push(id);
        }
    }
    Some(found)
}

fn id_span(nightly: &Side, stream: &Side) -> Option<(i64, i64)> {
    match (nightly.ids, stream.ids) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, other) => one.or(other),
    }
}

/// The same rows and bytes as export_audit_data(date), into a temporary file: the rows of the
/// table's read-only export function, with the settings export_audit_data pins.
async fn export_from_database(
    client: &tokio_postgres::Client,
    table: &TableDesc,
    date: NaiveDate,
) -> Result<tempfile::NamedTempFile, VerifyError> {
    client
        .batch_execute("SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3")
        .await
        .map_err(|e| SqlError::new("could not pin the session settings", e))?;
    let query = table
        .export_query(date)
        .ok_or_else(|| VerifyError::NoExportFunction {
            function: format!("{}.{}_rows(date)", table.schema, table.name),
            database: "this database".into(),
        })?;
    let stream = client.copy_out(&query).await.map_err(|e| {
        SqlError::new(
            format!(
                "could not export {}.{} (may this role SELECT it and EXECUTE its _rows function? \
                 run sql/install.sql again to grant them to audit_tail)",
                table.schema, table.name
            ),
            e,
        )
    })?;
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

fn bucket_count(nightly: &Path, stream: &[PathBuf], bucket_bytes: u64) -> u64 {
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
struct Layout {
    /// The file's name (not its path).
    file: String,
    /// For each reference column, its position in the file's records, if the file has it.
    map: Vec<Option<usize>>,
    /// Reference columns the file lacks, and its columns the reference lacks.
    missing: Vec<String>,
    extra: Vec<String>,
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
struct Side {
    rows: u64,
    /// The smallest and largest id, if any row.
    ids: Option<(i64, i64)>,
    /// Rows per date of their changed_at.
    days: BTreeMap<NaiveDate, u64>,
    buckets: Vec<tempfile::NamedTempFile>,
    writers: Vec<BufWriter<File>>,
    /// The header of the last file read.
    header: Vec<String>,
    /// The column maps of files whose header is not the reference's, by their number in the
    /// bucket entries.
    layouts: Vec<Layout>,
}

impl Side {
    /// No rows yet, in `n` empty buckets.
    fn new(n: u64) -> Result<Side, VerifyError> {
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
    fn read(
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
    fn add(
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
    fn finish(mut self) -> Result<Side, VerifyError> {
        for mut w in std::mem::take(&mut self.writers) {
            w.flush().map_err(VerifyError::Temp)?;
        }
        Ok(self)
    }
}

/// A header record's column names.
fn names(header: &Record) -> Vec<String> {
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

fn id_of(record: &Record, at: usize) -> Option<i64> {
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
fn compare(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &Path, name: &str, n: u64, cells: Cells) -> Result<Side, VerifyError> {
        Side::read(path, name, &|_| Ok(()), "id", n, cells)
    }

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn rows_of_files_with_other_columns_are_compared_on_the_columns_they_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(
            path("n.csv"),
            "id,changed_at,note\n1,2025-10-21 10:00:00,x\n2,2025-10-21 10:00:00,x\n\
             3,2025-10-21 10:00:00,y\n4,2025-10-21 10:00:00,y\n",
        )
        .unwrap();
        // Before ADD COLUMN note (and with a column dropped since), then after it.
        std::fs::write(
            path("s.csv"),
            "id,gone,changed_at\n1,a,2025-10-21 10:00:00\n2,b,2025-10-21 11:00:00\n",
        )
        .unwrap();
        std::fs::write(
            path("s-2.csv"),
            "id,changed_at,note\n3,2025-10-21 10:00:00,y\n4,2025-10-21 10:00:00,z\n",
        )
        .unwrap();
        let nightly = split(&path("n.csv"), "n", 2, Cells::Exact).unwrap();
        let reference = nightly.header.clone();
        assert_eq!(reference, columns(&["id", "changed_at", "note"]));
        let mut stream = Side::new(2).unwrap();
        for name in ["s.csv", "s-2.csv"] {
            let check = |h: &[String]| has_key(h, "id");
            stream
                .add(
                    &path(name),
                    name,
                    Some(&reference),
                    &check,
                    "id",
                    Cells::Exact,
                )
                .unwrap();
        }
        let stream = stream.finish().unwrap();
        assert_eq!(stream.layouts.len(), 1);
        assert_eq!(stream.layouts[0].missing, columns(&["note"]));
        assert_eq!(stream.layouts[0].extra, columns(&["gone"]));
        let diff = compare(nightly, stream, &[], &reference).unwrap();
        assert_eq!(diff.matching, 2, "{diff:?}");
        let fields = |id: i64| {
            let (_, f) = diff.differing.1.iter().find(|(i, _)| *i == id).unwrap();
            f.iter().map(|f| f.field.clone()).collect::<Vec<_>>()
        };
        assert_eq!(diff.differing.0, 2);
        assert_eq!(fields(2), ["changed_at"]);
        assert_eq!(fields(4), ["note"]);
    }

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
        let buckets = bucket_count(&n, std::slice::from_ref(&s), 1000);
        assert!(buckets > 10, "{buckets}");
        let diff = compare(
            split(&n, "n", buckets, Cells::Exact).unwrap(),
            split(&s, "s", buckets, Cells::Exact).unwrap(),
            &[],
            &columns(&HEADER),
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
                &columns(&HEADER),
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
            &columns(&HEADER),
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
            let diff = compare(side(), side(), &[0], &columns(&HEADER)).unwrap();
            assert!(diff.agrees());
            assert_eq!(diff.matching, 2);
            // 2^64 ids in the span (one more than a u64 holds), 2 in the copies, 1 (0) a
            // neighbouring day's.
            assert_eq!(diff.gaps, (u64::MAX - 2, vec![]));
            assert_eq!(diff.neighbouring, 1);
        }
    }
}
