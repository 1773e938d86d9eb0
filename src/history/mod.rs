//! `history` and `log`: the questions an audit trail exists to answer (who changed record x, what
//! did person p do between t1 and t2, what did record x look like at time t), answered from the
//! stream's files, with no database.
//!
//! Beside the flow, after the sinks: reads the files the file sink wrote (src/layout.rs), one
//! record at a time. time.rs reads TIME arguments, scan.rs finds and reads the records, filter.rs
//! says which records a question is about, rebuild.rs rebuilds a record's state, output.rs prints.

pub mod filter;
pub mod output;
pub mod rebuild;
pub mod scan;
pub mod time;

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use filter::{Filter, Target};
pub use output::Format;
use output::Printer;
use scan::{Row, RowIter, Trail};
pub use time::Zone;

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    BadTime(String),
    #[error("{0}")]
    BadKey(String),
    #[error("{0}")]
    BadTable(String),
    #[error(
        "no row of {table} in audit.log's files in {dir}: check the name (audit-tail tracked lists the tracked tables) and --out-dir"
    )]
    UnknownTable { table: String, dir: PathBuf },
    #[error("{0} is not a directory: give the stream's --out-dir")]
    NoOutDir(PathBuf),
    #[error("{file}, line {line}: {reason}: the file is not as the stream writes it")]
    Malformed {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<HistoryError> for crate::Error {
    /// Output errors become the program's own, so that a closed stdout (`| head`) ends quietly.
    fn from(e: HistoryError) -> crate::Error {
        match e {
            HistoryError::Output(e) => crate::Error::Output(e),
            other => crate::Error::History(other),
        }
    }
}

/// What `history` and `log` share.
#[derive(Debug, Clone)]
pub struct Common {
    pub out_dir: PathBuf,
    pub format: Format,
    /// The zone of the trail's wall-clock times.
    pub zone: Zone,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `history TABLE KEY`.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub table: String,
    pub key: String,
    pub at: Option<String>,
    pub field: Option<String>,
    pub common: Common,
}

/// `log` and its filters.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub table: Option<String>,
    pub actor: Option<String>,
    pub op: Option<String>,
    pub field: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

/// Reads a TIME argument; a time without a zone is said to be read in the trail's zone.
pub fn parse_time(text: &str, zone: Zone) -> Result<NaiveDateTime, HistoryError> {
    let moment = time::parse(text, Utc::now(), zone).map_err(HistoryError::BadTime)?;
    if moment.zoneless {
        tracing::info!(
            "{text:?} has no zone: read as the trail's own wall-clock time (changed_at, in the server's TimeZone); times with a zone are converted to {} (--tz)",
            zone.name()
        );
    }
    Ok(moment.wall)
}

fn window(common: &Common) -> Result<(Option<NaiveDateTime>, Option<NaiveDateTime>), HistoryError> {
    let since = common
        .since
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    let until = common
        .until
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    Ok((since, until))
}

/// `history`: true when something was found (exit 0), false when nothing matched (exit 1).
pub fn history(query: &HistoryQuery, out: impl Write) -> Result<bool, HistoryError> {
    let common = &query.common;
    let target = Target::parse(&query.table).map_err(HistoryError::BadTable)?;
    let (since, until) = window(common)?;
    let at = query
        .at
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    let mut printer = Printer::new(out, common.format, false);
    let found = match &target {
        Target::Users => users_history(query, since, until, at, &mut printer)?,
        Target::Log { .. } => log_history(query, &target, since, until, at, &mut printer)?,
    };
    printer.flush()?;
    Ok(found)
}

/// The first key of `target` in the log's files: the key's columns and their types.
fn sample_key(dir: &Path, target: &Target) -> Result<serde_json::Map<String, Value>, HistoryError> {
    let Target::Log { schema, table } = target else {
        unreachable!("only audit.log's tables have a sample key")
    };
    let (schema, table) = (schema.clone(), table.clone());
    let files = scan::files(dir, Trail::Log, None, None)?;
    let needles: scan::Needles =
        Box::new(move |_, columns| vec![filter::table_needle(&schema, &table, columns)]);
    let mut rows = RowIter::new(Trail::Log, files, needles);
    while let Some(row) = rows.next_row()? {
        if target.holds(&row)
            && let Some(Value::Object(key)) =
                row.get("key").and_then(|k| serde_json::from_str(k).ok())
        {
            return Ok(key);
        }
    }
    Err(HistoryError::UnknownTable {
        table: target.to_string(),
        dir: dir.to_path_buf(),
    })
}

fn day(t: Option<NaiveDateTime>) -> Option<NaiveDate> {
    t.map(|t| t.date())
}

fn log_history<W: Write>(
    query: &HistoryQuery,
    target: &Target,
    since: Option<NaiveDateTime>,
    until: Option<NaiveDateTime>,
    at: Option<NaiveDateTime>,
    printer: &mut Printer<W>,
) -> Result<bool, HistoryError> {
    let dir = &query.common.out_dir;
    let sample = sample_key(dir, target)?;
    let key = rebuild::key_value(&query.key, &sample).map_err(HistoryError::BadKey)?;
    let needles: scan::Needles = match rebuild::key_needle(&key) {
        Some(needle) => Box::new(move |_, _| vec![needle.clone(), b"TRUNCATE,".to_vec()]),
        None => {
            let Target::Log { schema, table } = target.clone() else {
                unreachable!()
            };
            Box::new(move |_, columns| vec![filter::table_needle(&schema, &table, columns)])
        }
    };
    let last = at.or(until);
    let files = scan::files(
        dir,
        Trail::Log,
        if at.is_some() { None } else { day(since) },
        day(last),
    )?;
    let mut rows = RowIter::new(Trail::Log, files, needles);
    let window = Filter {
        since,
        until,
        ..Filter::default()
    };
    let mut state = rebuild::LogState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row()? {
        if !rebuild::touches(&row, target, &key) {
            continue;
        }
        match at {
            Some(at) => {
                if row
                    .changed_at()
                    .ok_or_else(|| row.malformed("changed_at is not a time"))?
                    <= at
                {
                    state.apply(&row, &key);
                }
            }
            None => {
                if window.in_window(&row)
                    && query
                        .field
                        .as_deref()
                        .is_none_or(|f| rebuild::touches_field(&row, f))
                {
                    printer.row(&row)?;
                    printed = true;
                }
            }
        }
    }
    if at.is_none() {
        return Ok(printed);
    }
    let shown = only_field(state.row, query.field.as_deref());
    printer.state(shown.as_ref())?;
    Ok(shown.is_some())
}

/// The state, or only `field` of it.
fn only_field(state: Option<Value>, field: Option<&str>) -> Option<Value> {
    let (Some(Value::Object(object)), Some(field)) = (&state, field) else {
        return state;
    };
    let mut one = serde_json::Map::new();
    one.insert(
        field.to_string(),
        object.get(field).cloned().unwrap_or(Value::Null),
    );
    Some(Value::Object(one))
}

fn users_history<W: Write>(
    query: &HistoryQuery,
    since: Option<NaiveDateTime>,
    until: Option<NaiveDateTime>,
    at: Option<NaiveDateTime>,
    printer: &mut Printer<W>,
) -> Result<bool, HistoryError> {
    let id: i64 = query.key.trim().parse().map_err(|_| {
        HistoryError::BadKey(format!(
            "KEY {:?} is not a user id: users' key is the integer id",
            query.key
        ))
    })?;
    let id_text = id.to_string();
    let needles: scan::Needles = Box::new(move |day, columns| {
        let at = |name: &str| columns.iter().position(|c| c == name);
        match (at("user_id"), at("changed_at")) {
            (Some(u), Some(c)) if u > 0 && c == u + 1 => {
                vec![format!(",{id},{} ", day.format("%Y-%m-%d")).into_bytes()]
            }
            _ => vec![format!(",{id},").into_bytes()],
        }
    });
    // At T, a field's value may come from its first change after T: read every day.
    let (from, to) = match at {
        Some(_) => (None, None),
        None => (day(since), day(until)),
    };
    let files = scan::files(&query.common.out_dir, Trail::Users, from, to)?;
    let mut rows = RowIter::new(Trail::Users, files, needles);
    let window = Filter {
        since,
        until,
        ..Filter::default()
    };
    let mut state = rebuild::UsersState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row()? {
        if row.get("user_id") != Some(id_text.as_str()) {
            continue;
        }
        match at {
            Some(at) => state.apply(&row, at),
            None => {
                if window.in_window(&row)
                    && query
                        .field
                        .as_deref()
                        .is_none_or(|f| rebuild::touches_field(&row, f))
                {
                    printer.row(&row)?;
                    printed = true;
                }
            }
        }
    }
    if at.is_none() {
        return Ok(printed);
    }
    let (user, unknown) = state.result(&Value::from(id));
    if user.is_some() && !unknown.is_empty() {
        tracing::info!(
            "the trail cannot tell {} of user {id} (never changed in the files), nor whether the user existed then (users_audit records updates only)",
            unknown.join(", ")
        );
    }
    let shown = only_field(user, query.field.as_deref());
    printer.state(shown.as_ref())?;
    Ok(shown.is_some())
}

/// `log`: true when a row matched (exit 0), false when none did (exit 1).
pub fn log(query: &LogQuery, common: &Common, out: impl Write) -> Result<bool, HistoryError> {
    let (since, until) = window(common)?;
    let target = query
        .table
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(HistoryError::BadTable)?;
    let filter = Filter {
        target: target.clone(),
        actor: query.actor.clone(),
        op: query.op.as_ref().map(|op| op.to_ascii_uppercase()),
        field: query.field.clone(),
        since,
        until,
        reason: query.reason.clone(),
        request_id: query.request_id.clone(),
    };
    let trails = filter.trails();
    let mut printer = Printer::new(out, common.format, trails.len() > 1);
    let mut merge = Merge::new(&trails, &filter, &common.out_dir)?;
    while let Some(row) = merge.next_row()? {
        if filter.matches(&row) {
            printer.row(&row)?;
        }
    }
    printer.flush()?;
    if printer.printed == 0
        && let Some(target @ Target::Log { .. }) = &target
    {
        // Nothing matched: say so when the table itself is not in the files (a typo).
        sample_key(&common.out_dir, target)?;
    }
    Ok(printer.printed > 0)
}

/// The rows of several trails in the order of their changes.
struct Merge {
    sources: Vec<(RowIter, Option<Row>)>,
}

impl Merge {
    fn new(trails: &[Trail], filter: &Filter, dir: &Path) -> Result<Merge, HistoryError> {
        let mut sources = Vec::new();
        for &trail in trails {
            let files = scan::files(dir, trail, day(filter.since), day(filter.until))?;
            let f = filter.clone();
            let needles: scan::Needles = Box::new(move |_, columns| f.needles(trail, columns));
            sources.push((RowIter::new(trail, files, needles), None));
        }
        Ok(Merge { sources })
    }

    fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        for (rows, next) in &mut self.sources {
            if next.is_none() {
                *next = rows.next_row()?;
            }
        }
        let first = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, (_, next))| next.as_ref().map(|row| (row.changed_at(), i)))
            .min()
            .map(|(_, i)| i);
        Ok(first.and_then(|i| self.sources[i].1.take()))
    }
}
