//! `--both`: the rows the files gave and those the database gave for the same question, matched
//! by their trail and id; every row on which they disagree is flagged (only in one copy, or a
//! column with other values), since either copy may have been edited.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::HistoryError;
use super::output::{Format, Printer};
use super::scan::{Row, Trail};

/// One disagreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub table: &'static str,
    pub id: String,
    /// None: the row is in one copy only.
    pub column: Option<String>,
    pub database: Option<String>,
    pub files: Option<String>,
}

fn table(trail: Trail) -> &'static str {
    match trail {
        Trail::Users => "users_audit",
        Trail::Log => "audit.log",
    }
}

/// The disagreements between the files' rows and the database's.
pub fn compare(files: &[Row], database: &[Row]) -> Vec<Flag> {
    let by_id = |rows: &[Row]| -> BTreeMap<(&'static str, i64, String), Row> {
        rows.iter()
            .map(|r| {
                let id = r.get("id").unwrap_or_default().to_string();
                (
                    (table(r.trail), id.parse().unwrap_or(i64::MAX), id),
                    r.clone(),
                )
            })
            .collect()
    };
    let (files, database) = (by_id(files), by_id(database));
    let mut flags = Vec::new();
    let mut ids: Vec<_> = files.keys().chain(database.keys()).cloned().collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let flag = |column: Option<String>, database: Option<String>, files: Option<String>| Flag {
            table: id.0,
            id: id.2.clone(),
            column,
            database,
            files,
        };
        match (files.get(&id), database.get(&id)) {
            (Some(f), Some(d)) => {
                for (i, column) in d.columns.iter().enumerate() {
                    let (dv, fv) = (d.fields[i].as_deref(), f.get(column));
                    if dv != fv {
                        flags.push(flag(
                            Some(column.clone()),
                            dv.map(Into::into),
                            fv.map(Into::into),
                        ));
                    }
                }
            }
            (Some(f), None) => flags.push(flag(None, None, Some(line(f)))),
            (None, Some(d)) => flags.push(flag(None, Some(line(d)), None)),
            (None, None) => {}
        }
    }
    flags
}

fn line(row: &Row) -> String {
    let names: Vec<&str> = row.columns.iter().map(String::as_str).collect();
    let values: Vec<Option<&str>> = row.fields.iter().map(|f| f.as_deref()).collect();
    crate::sink::text::format_row(
        table(row.trail).trim_start_matches("audit."),
        &names,
        &values,
    )
}

/// Prints the disagreements (text and JSON on stdout after the answer; on stderr for CSV, and
/// after a state at a moment in JSON, which is exactly one line); true when there are none.
pub fn flag<W: Write>(
    files: &[Row],
    database: &[Row],
    printer: &mut Printer<W>,
    one_line: bool,
) -> Result<bool, HistoryError> {
    let flags = compare(files, database);
    for f in &flags {
        let text = match &f.column {
            Some(column) => format!(
                "DIFFERS {} id {}: {column}: database {}, files {}",
                f.table,
                f.id,
                shown(&f.database),
                shown(&f.files)
            ),
            None if f.files.is_none() => format!(
                "DIFFERS {} id {}: only in the database (not streamed yet, or removed from the files): {}",
                f.table,
                f.id,
                shown(&f.database)
            ),
            None => format!(
                "DIFFERS {} id {}: only in the files (deleted from the database?): {}",
                f.table,
                f.id,
                shown(&f.files)
            ),
        };
        match printer.format() {
            Format::Json if one_line => eprintln!("audit-tail: {text}"),
            Format::Text => printer.line(&text)?,
            Format::Json => printer.line(
                &json!({"differs": {"table": f.table, "id": f.id, "column": f.column,
                                    "database": f.database, "files": f.files}})
                .to_string(),
            )?,
            Format::Csv => eprintln!("audit-tail: {text}"),
        }
    }
    Ok(flags.is_empty())
}

fn shown(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or("NULL".to_string(), |v| format!("{v:?}"))
}
