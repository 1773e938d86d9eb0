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
mod export_name;
mod quiet;
mod report;
mod side;
pub mod table;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use futures_util::TryStreamExt;

use crate::checkpoint::Checkpoint;
use crate::layout;
use crate::sink::copy_csv::Cells;
use crate::sql::{self, SqlError};
use crate::wire::ConnParams;
use csv_read::{CsvError, Reader};
pub use report::{Diff, FieldDiff, PartialFile, Report, ReportFormat};
use side::{Side, bucket_count, compare, id_of, id_span, names};
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
        "{file} is the export of database \"{named}\" (its name says so), but the stream in \
         the out-dir is of database \"{database}\": give that database's export (its name has \
         \"{database}\" after users_audit_export_, or none when it was the first to export to \
         the directory), or the out-dir of {named}'s stream; without --nightly verify reads the \
         export of the --dsn database itself"
    )]
    OtherDatabase {
        file: String,
        named: String,
        database: String,
    },
    /// Several tables, and the stream's file of the day of some is missing.
    #[error(
        "no stream file for {date} of {missing}; {compared}if the stream was down or behind, \
         verify again once it has caught up (audit-tail status), else check --date and --out-dir"
    )]
    NoStreamOf {
        date: NaiveDate,
        missing: String,
        compared: String,
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
            // users_audit's report alone reads as it always has; any other names its table.
            [one] if one.table.ends_with(&format!(".{}", table::REFERENCE_TABLE)) => {
                one.render(format)
            }
            [one] if format == ReportFormat::Text => one.render_named(format),
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
/// that file against the stream files of its table (users_audit, or audit.log for a file of
/// audit.export_log, told by its header); from the database, users_audit and, when the
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
            // Its header says whose export it is: users_audit's or audit.log's.
            let name = path.display().to_string();
            if let Some(id) = state.as_ref().and_then(|c| c.identity.as_ref()) {
                export_name::check_database(path, &id.database)?;
            }
            let mut table = TableDesc::of_nightly_file(path, &name, out_dir)?;
            let files = stream_files(out_dir, &table, date)?;
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
            let mut missing = Vec::new();
            for table in &tables {
                let db = (&client, params.dbname.as_str());
                match verify_table(db, table, date, out_dir, state.as_ref(), cells).await {
                    Ok(report) => reports.push(report),
                    // One table's copy missing does not stop the others' comparison.
                    Err(VerifyError::NoStream { path, why, .. }) => {
                        missing.push((format!("{}.{}", table.schema, table.name), path, why));
                    }
                    Err(e) => return Err(e),
                }
            }
            if missing.is_empty() {
                return Ok(Verification { reports });
            }
            Err(no_stream_of_tables(date, missing, &reports))
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

/// The day's copy of one or more tables is missing from the stream: the error names each table
/// and its file. A single table (users_audit, the only one of most databases) keeps the error it
/// always had; with several, the error also says how the others compared.
fn no_stream_of_tables(
    date: NaiveDate,
    mut missing: Vec<(String, PathBuf, String)>,
    compared: &[Report],
) -> VerifyError {
    if missing.len() == 1 && compared.is_empty() {
        let (_, path, why) = missing.remove(0);
        return VerifyError::NoStream { date, path, why };
    }
    let missing = missing
        .iter()
        .map(|(table, path, why)| format!("{table} ({} does not exist, and {why})", path.display()))
        .collect::<Vec<_>>()
        .join("; ");
    let compared = compared
        .iter()
        .map(|r| {
            if r.diff.agrees() {
                format!(
                    "{} was compared: its nightly export and live stream agree ({} rows); ",
                    r.table, r.diff.matching
                )
            } else {
                format!(
                    "{} was compared: its nightly export and live stream DIFFER (verify again once \
                     the stream has caught up to see how); ",
                    r.table
                )
            }
        })
        .collect();
    VerifyError::NoStreamOf {
        date,
        missing,
        compared,
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
pub(super) fn has_key(header: &[String], key: &str) -> Result<(), String> {
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
