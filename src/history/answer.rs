//! `history`: a record's changes, or its state at a moment, from the source the user chose; with
//! `--both`, the rows each copy gave are kept and compared (both.rs). When nothing matched, it
//! says so on stderr with what was read (searched.rs), the same from either copy.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::Value;

use super::filter::{self, Filter, Target};
use super::output::Printer;
use super::rows::Rows;
use super::scan::{self, Row, RowIter, Trail};
use super::searched::{Searched, nothing_matched};
use super::{HistoryError, HistoryQuery, Source, both, db, parse_time, window};

pub(super) fn day(t: Option<NaiveDateTime>) -> Option<NaiveDate> {
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
    let dir = &common.out_dir;
    let found = match &target {
        Target::Users => {
            let id: i64 = query.key.trim().parse().map_err(|_| {
                HistoryError::BadKey(format!(
                    "KEY {:?} is not a user id: users' key is the integer id",
                    query.key
                ))
            })?;
            let (mut rows, searched) = match source {
                Source::Database(client) => (
                    Rows::Read(db::users_rows(client, id).await?.into_iter()),
                    Searched::Database(Trail::Users),
                ),
                _ => users_files(dir, id, &ask)?,
            };
            let found = users_answer(&mut rows, id, &ask, &mut printer, kept.as_mut()).await?;
            if !found {
                nothing_matched(&ask.what(&format!("user {id}")), &[searched]);
            }
            found
        }
        Target::Log { .. } => {
            let (sample, searched) = match source {
                Source::Files => sample_key(dir, &target)?,
                Source::Database(client) | Source::Both(client) => (
                    db::sample_key(client, &target)
                        .await?
                        .and_then(|k| serde_json::from_str::<Value>(&k).ok())
                        .and_then(|k| k.as_object().cloned()),
                    Searched::Database(Trail::Log),
                ),
            };
            let Some(sample) = sample else {
                no_row_of(source, &target, searched).await?;
                return Ok(false);
            };
            let key =
                super::rebuild::key_value(&query.key, &sample).map_err(HistoryError::BadKey)?;
            let (mut rows, searched) = match source {
                Source::Database(client) => (
                    Rows::Read(
                        db::record_rows(client, &target, &key.to_string())
                            .await?
                            .into_iter(),
                    ),
                    Searched::Database(Trail::Log),
                ),
                _ => record_files(dir, &target, &key, &ask)?,
            };
            let found =
                log_answer(&mut rows, &target, &key, &ask, &mut printer, kept.as_mut()).await?;
            if !found {
                nothing_matched(&ask.what(&format!("{target} {key}")), &[searched]);
            }
            found
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

/// No row of `target` at all in the copy read: nothing matched (exit 1), said the same way from
/// either copy, since the files cannot tell a tracked table that had no change from a wrong
/// name; the database can, and a table it neither tracks nor logged is an error (exit 2).
pub(super) async fn no_row_of(
    source: &Source,
    target: &Target,
    searched: Searched,
) -> Result<(), HistoryError> {
    if let Source::Database(client) | Source::Both(client) = source
        && !db::is_tracked(client, target).await?
    {
        return Err(HistoryError::UnknownTable {
            table: target.to_string(),
        });
    }
    tracing::info!(
        "nothing matched: no row of {target} in {searched}; if the name is right, the table has had no change there (audit-tail tracked lists the tracked tables)"
    );
    Ok(())
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

    /// The question, for "nothing matched": `no change of user 8 to field role from T1`.
    fn what(&self, record: &str) -> String {
        if let Some(at) = self.at {
            return format!("no state of {record} at {at}");
        }
        let mut what = format!("no change of {record}");
        if let Some(field) = self.field {
            what.push_str(&format!(" to field {field}"));
        }
        what.push_str(&super::log::between(self.window.since, self.window.until));
        what
    }
}

/// The first key of `target` in the log's files (the key's columns and their types), and what
/// was read to find it.
pub(super) fn sample_key(
    dir: &Path,
    target: &Target,
) -> Result<(Option<serde_json::Map<String, Value>>, Searched), HistoryError> {
    let Target::Log { schema, table } = target else {
        unreachable!("only audit.log's tables have a sample key")
    };
    let (schema, table) = (schema.clone(), table.clone());
    let files = scan::files(dir, Trail::Log, None, None)?;
    let searched = Searched::files(dir, Trail::Log, &files, None, None);
    let needles: scan::Needles =
        Box::new(move |_, columns| vec![filter::table_needle(&schema, &table, columns)]);
    let mut rows = RowIter::new(Trail::Log, files, needles);
    while let Some(row) = rows.next_row()? {
        if target.holds(&row)
            && let Some(Value::Object(key)) =
                row.get("key").and_then(|k| serde_json::from_str(k).ok())
        {
            return Ok((Some(key), searched));
        }
    }
    Ok((None, searched))
}

/// The files of `trail` in the days asked, and what they are.
fn files_of(
    dir: &Path,
    trail: Trail,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(Vec<(NaiveDate, PathBuf)>, Searched), HistoryError> {
    let files = scan::files(dir, trail, from, to)?;
    let searched = Searched::files(dir, trail, &files, from, to);
    Ok((files, searched))
}

/// The files' records that may be of one audit.log record: those holding its key as the file
/// writes it, and the TRUNCATEs.
fn record_files(
    dir: &Path,
    target: &Target,
    key: &Value,
    ask: &Ask,
) -> Result<(Rows<'static>, Searched), HistoryError> {
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
    let (files, searched) = files_of(dir, Trail::Log, from, to)?;
    Ok((
        Rows::Files(Box::new(RowIter::new(Trail::Log, files, needles))),
        searched,
    ))
}

/// The files' records that may be of one user: `,3,2026-11-23 ` (user_id then the day's
/// changed_at) when those columns are neighbours.
fn users_files(dir: &Path, id: i64, ask: &Ask) -> Result<(Rows<'static>, Searched), HistoryError> {
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
    let (files, searched) = files_of(dir, Trail::Users, from, to)?;
    Ok((
        Rows::Files(Box::new(RowIter::new(Trail::Users, files, needles))),
        searched,
    ))
}

async fn log_answer<W: Write>(
    rows: &mut Rows<'_>,
    target: &Target,
    key: &Value,
    ask: &Ask<'_>,
    printer: &mut Printer<W>,
    mut kept: Option<&mut Vec<Row>>,
) -> Result<bool, HistoryError> {
    let mut state = super::rebuild::LogState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row().await? {
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

async fn users_answer<W: Write>(
    rows: &mut Rows<'_>,
    id: i64,
    ask: &Ask<'_>,
    printer: &mut Printer<W>,
    mut kept: Option<&mut Vec<Row>>,
) -> Result<bool, HistoryError> {
    let id_text = id.to_string();
    let mut state = super::rebuild::UsersState::default();
    let mut printed = false;
    while let Some(row) = rows.next_row().await? {
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
