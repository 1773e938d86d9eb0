//! The answers: a record's changes, its state at a moment, the rows of `log`, from the source the
//! user chose; with `--both`, the rows each copy gave are kept and compared (both.rs).

use std::io::Write;
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::Value;

use super::filter::{self, Filter, Target};
use super::output::Printer;
use super::scan::{self, Row, RowIter, Trail};
use super::{Common, HistoryError, HistoryQuery, LogQuery, Source, both, db, parse_time, window};

/// Rows one at a time, from the files or from the database.
pub trait Rows {
    fn next_row(&mut self) -> Result<Option<Row>, HistoryError>;
}

impl Rows for RowIter {
    fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        RowIter::next_row(self)
    }
}

impl Rows for std::vec::IntoIter<Row> {
    fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        Ok(self.next())
    }
}

fn day(t: Option<NaiveDateTime>) -> Option<NaiveDate> {
    t.map(|t| t.date())
}

/// `history`: true when something was found (exit 0), false when nothing matched or, with
/// `--both`, the copies disagree (exit 1).
pub async fn history(
    query: &HistoryQuery,
    source: &Source,
    out: impl Write,
) -> Result<bool, HistoryError> {
    let common = &query.common;
    let target = Target::parse(&query.table).map_err(HistoryError::BadTable)?;
    let (since, until) = window(common)?;
    let at = query
        .at
        .as_deref()
        .map(|t| parse_time(t, common.zone))
        .transpose()?;
    let ask = Ask {
        field: query.field.as_deref(),
        window: Filter {
            since,
            until,
            ..Filter::default()
        },
        at,
    };
    let mut printer = Printer::new(out, common.format, false);
    let mut kept = matches!(source, Source::Both(_)).then(Vec::new);
    let found = match &target {
        Target::Users => {
            let id: i64 = query.key.trim().parse().map_err(|_| {
                HistoryError::BadKey(format!(
                    "KEY {:?} is not a user id: users' key is the integer id",
                    query.key
                ))
            })?;
            let mut rows: Box<dyn Rows> = match source {
                Source::Database(client) => Box::new(db::users_rows(client, id).await?.into_iter()),
                _ => Box::new(users_files(&common.out_dir, id, &ask)?),
            };
            users_answer(&mut *rows, id, &ask, &mut printer, kept.as_mut())?
        }
        Target::Log { .. } => {
            let sample = match source {
                Source::Files => sample_key(&common.out_dir, &target)?,
                Source::Database(client) | Source::Both(client) => db::sample_key(client, &target)
                    .await?
                    .and_then(|k| serde_json::from_str::<Value>(&k).ok())
                    .and_then(|k| k.as_object().cloned())
                    .ok_or_else(|| HistoryError::UnknownTable {
                        table: target.to_string(),
                        dir: "the database's audit.log".into(),
                    })?,
            };
            let key =
                super::rebuild::key_value(&query.key, &sample).map_err(HistoryError::BadKey)?;
            let mut rows: Box<dyn Rows> = match source {
                Source::Database(client) => Box::new(
                    db::record_rows(client, &target, &key.to_string())
                        .await?
                        .into_iter(),
                ),
                _ => Box::new(record_files(&common.out_dir, &target, &key, &ask)?),
            };
            log_answer(&mut *rows, &target, &key, &ask, &mut printer, kept.as_mut())?
        }
    };
    let agree = match (source, kept) {
        (Source::Both(client), Some(files)) => {
            let mut database = match &target {
                Target::Users => {
                    db::users_rows(client, query.key.trim().parse().unwrap_or_default()).await?
                }
                Target::Log { .. } => {
                    let sample = serde_json::from_str::<Value>(
                        &db::sample_key(client, &target).await?.unwrap_or_default(),
                    )
                    .ok()
                    .and_then(|k| k.as_object().cloned())
                    .unwrap_or_default();
                    let key = super::rebuild::key_value(&query.key, &sample)
                        .map_err(HistoryError::BadKey)?;
                    db::record_rows(client, &target, &key.to_string()).await?
                }
            };
            database.retain(|row| ask.relevant(row));
            both::flag(&files, &database, &mut printer, ask.at.is_some())?
        }
        _ => true,
    };
    printer.flush()?;
    Ok(found && agree)
}

/// What a history question asks beyond the record.
struct Ask<'a> {
    field: Option<&'a str>,
    window: Filter,
    at: Option<NaiveDateTime>,
}

impl Ask<'_> {
    /// Whether a row of the record counts for the answer (and so for `--both`).
    fn relevant(&self, row: &Row) -> bool {
        match self.at {
            Some(at) => row.trail == Trail::Users || row.changed_at().is_some_and(|c| c <= at),
            None => {
                self.window.in_window(row)
                    && self
                        .field
                        .is_none_or(|f| super::rebuild::touches_field(row, f))
            }
        }
    }
}

/// The first key of `target` in the log's files: the key's columns and their types.
pub(super) fn sample_key(
    dir: &Path,
    target: &Target,
) -> Result<serde_json::Map<String, Value>, HistoryError> {
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

/// The files' records that may be of one audit.log record: those holding its key as the file
/// writes it, and the TRUNCATEs.
fn record_files(
    dir: &Path,
    target: &Target,
    key: &Value,
    ask: &Ask,
) -> Result<RowIter, HistoryError> {
    let needles: scan::Needles = match super::rebuild::key_needle(key) {
        Some(needle) => Box::new(move |_, _| vec![needle.clone(), b"TRUNCATE,".to_vec()]),
        None => {
            let Target::Log { schema, table } = target.clone() else {
                unreachable!()
            };
            Box::new(move |_, columns| vec![filter::table_needle(&schema, &table, columns)])
        }
    };
    let (from, to) = match ask.at {
        Some(at) => (None, Some(at.date())),
        None => (day(ask.window.since), day(ask.window.until)),
    };
    Ok(RowIter::new(
        Trail::Log,
        scan::files(dir, Trail::Log, from, to)?,
        needles,
    ))
}

/// The files' records that may be of one user: `,3,2026-11-23 ` (user_id then the day's
/// changed_at) when those columns are neighbours.
fn users_files(dir: &Path, id: i64, ask: &Ask) -> Result<RowIter, HistoryError> {
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
    let (from, to) = match ask.at {
        Some(_) => (None, None),
        None => (day(ask.window.since), day(ask.window.until)),
    };
    Ok(RowIter::new(
        Trail::Users,
        scan::files(dir, Trail::Users, from, to)?,
        needles,
    ))
}

fn log_answer<W: Write>(
    rows: &mut dyn Rows,
    target: &Target,
    key: &Value,
    ask: &Ask,
    printer: &mut Printer<W>,
    mut kept: Option<&mut Vec<Row>>,
) -> Result<bool, HistoryError> {
    let mut state = super::rebuild::LogState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row()? {
        if !super::rebuild::touches(&row, target, key) || !ask.relevant(&row) {
            continue;
        }
        if ask.at.is_some() {
            state.apply(&row, key)?;
        } else {
            printer.row(&row)?;
            printed = true;
        }
        if let Some(kept) = kept.as_deref_mut() {
            kept.push(row);
        }
    }
    if ask.at.is_none() {
        return Ok(printed);
    }
    let shown = only_field(state.row, ask.field);
    printer.state(shown.as_ref())?;
    Ok(shown.is_some())
}

fn users_answer<W: Write>(
    rows: &mut dyn Rows,
    id: i64,
    ask: &Ask,
    printer: &mut Printer<W>,
    mut kept: Option<&mut Vec<Row>>,
) -> Result<bool, HistoryError> {
    let id_text = id.to_string();
    let mut state = super::rebuild::UsersState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row()? {
        if row.get("user_id") != Some(id_text.as_str()) || !ask.relevant(&row) {
            continue;
        }
        match ask.at {
            Some(at) => state.apply(&row, at),
            None => {
                printer.row(&row)?;
                printed = true;
            }
        }
        if let Some(kept) = kept.as_deref_mut() {
            kept.push(row);
        }
    }
    if ask.at.is_none() {
        return Ok(printed);
    }
    let (user, unknown) = state.result(&Value::from(id));
    if user.is_some() && !unknown.is_empty() {
        tracing::info!(
            "the trail cannot tell {} of user {id} (never changed in the trail), nor whether the user existed then (users_audit records updates only)",
            unknown.join(", ")
        );
    }
    let shown = only_field(user, ask.field);
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

/// `log`: true when a row matched (exit 0), false when none did or, with `--both`, the copies
/// disagree (exit 1).
pub async fn log(
    query: &LogQuery,
    common: &Common,
    source: &Source,
    out: impl Write,
) -> Result<bool, HistoryError> {
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
    let mut sources: Vec<Box<dyn Rows>> = Vec::new();
    let mut database = Vec::new();
    for &trail in &trails {
        match source {
            Source::Files | Source::Both(_) => {
                let files = scan::files(&common.out_dir, trail, day(since), day(until))?;
                let f = filter.clone();
                let needles: scan::Needles = Box::new(move |_, columns| f.needles(trail, columns));
                sources.push(Box::new(RowIter::new(trail, files, needles)));
            }
            Source::Database(client) => {
                sources.push(Box::new(
                    db::filtered_rows(client, trail, &filter).await?.into_iter(),
                ));
            }
        }
        if let Source::Both(client) = source {
            database.extend(db::filtered_rows(client, trail, &filter).await?);
        }
    }
    let mut kept = Vec::new();
    let mut merge = Merge::new(sources);
    let mut stats = query
        .stats
        .clone()
        .map(|by| super::stats::Stats::new(by, query.min));
    let mut matched = 0;
    while let Some(row) = merge.next_row()? {
        if filter.matches(&row) {
            matched += 1;
            match stats.as_mut() {
                Some(stats) => stats.add(&row),
                None => printer.row(&row)?,
            }
            if matches!(source, Source::Both(_)) {
                kept.push(row);
            }
        }
    }
    let agree = match source {
        Source::Both(_) => {
            database.retain(|row| filter.matches(row));
            both::flag(&kept, &database, &mut printer, false)?
        }
        _ => true,
    };
    let printed = match &stats {
        Some(stats) => stats.print(printer.out(), common.format)?,
        None => printer.printed,
    };
    printer.flush()?;
    if matched == 0
        && let Some(target @ Target::Log { .. }) = &target
    {
        // Nothing matched: say so when the table itself is not in the trail (a typo).
        match source {
            Source::Database(client) | Source::Both(client) => {
                if db::sample_key(client, target).await?.is_none() {
                    return Err(HistoryError::UnknownTable {
                        table: target.to_string(),
                        dir: "the database's audit.log".into(),
                    });
                }
            }
            Source::Files => {
                sample_key(&common.out_dir, target)?;
            }
        }
    }
    Ok(printed > 0 && agree)
}

/// The rows of several trails in the order of their changes.
struct Merge {
    sources: Vec<(Box<dyn Rows>, Option<Row>)>,
}

impl Merge {
    fn new(sources: Vec<Box<dyn Rows>>) -> Merge {
        Merge {
            sources: sources.into_iter().map(|s| (s, None)).collect(),
        }
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
