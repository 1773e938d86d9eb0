//! `log`: the changes matching the filters, from both trails in the order of the changes, or
//! (`--stats`) their counts. From the database the rows come through cursors, a chunk at a time,
//! so that an answer of millions of rows uses bounded memory, as from the files; `--both` keeps
//! the rows of both copies to compare them.

use std::io::Write;

use chrono::NaiveDateTime;

use super::answer::{day, no_row_of, sample_key};
use super::filter::{Filter, Target};
use super::output::Printer;
use super::rows::{Merge, Rows};
use super::scan::{self, RowIter};
use super::searched::{Searched, nothing_matched};
use super::{Common, HistoryError, LogQuery, Source, both, db, window};

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
    let mut sources = Vec::new();
    let mut searched = Vec::new();
    let mut database = Vec::new();
    if let Source::Database(client) = source {
        db::begin(client).await?;
    }
    for &trail in &trails {
        match source {
            Source::Files | Source::Both(_) => {
                let (from, to) = (day(since), day(until));
                let files = scan::files(&common.out_dir, trail, from, to)?;
                searched.push(Searched::files(&common.out_dir, trail, &files, from, to));
                let f = filter.clone();
                let needles: scan::Needles = Box::new(move |_, columns| f.needles(trail, columns));
                sources.push(Rows::Files(Box::new(RowIter::new(trail, files, needles))));
            }
            Source::Database(client) => {
                searched.push(Searched::Database(trail));
                sources.push(Rows::Cursor(
                    db::filtered_cursor(client, trail, &filter).await?,
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
    while let Some(row) = merge.next_row().await? {
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
    drop(merge);
    if let Source::Database(client) = source {
        db::end(client).await?;
    }
    let agree = match source {
        Source::Both(_) => {
            database.retain(|row| filter.matches(row));
            both::flag(&kept, &database, &mut printer, false)?
        }
        _ => true,
    };
    let printed = match &stats {
        Some(stats) => stats.print(printer.out()?, common.format)?,
        None => printer.printed,
    };
    printer.flush()?;
    if matched == 0
        && let Some(target @ Target::Log { .. }) = &target
    {
        // Nothing matched: is the table in this copy at all?
        let table_searched = match source {
            Source::Database(client) | Source::Both(client) => db::sample_key(client, target)
                .await?
                .is_none()
                .then_some(Searched::Database(super::scan::Trail::Log)),
            Source::Files => match sample_key(&common.out_dir, target)? {
                (None, searched) => Some(searched),
                (Some(_), _) => None,
            },
        };
        if let Some(table_searched) = table_searched {
            no_row_of(source, target, table_searched).await?;
            return Ok(false);
        }
    }
    if printed == 0 {
        let what = match &stats {
            Some(_) if matched > 0 => format!(
                "no group of at least {} changes{} ({matched} rows matched)",
                query.min,
                describe(query, &filter)
            ),
            _ => format!("no change{}", describe(query, &filter)),
        };
        nothing_matched(&what, &searched);
    }
    Ok(printed > 0 && agree)
}

/// The filters of a question, for "nothing matched": ` of public.orders by bob, op UPDATE`.
fn describe(query: &LogQuery, filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(target) = &filter.target {
        parts.push(format!("of {target}"));
    }
    if let Some(actor) = &query.actor {
        parts.push(format!("by {actor}"));
    }
    if let Some(op) = &filter.op {
        parts.push(format!("op {op}"));
    }
    if let Some(field) = &query.field {
        parts.push(format!("to field {field}"));
    }
    if let Some(reason) = &query.reason {
        parts.push(format!("with a reason containing {reason:?}"));
    }
    if let Some(id) = &query.request_id {
        parts.push(format!("with request id {id:?}"));
    }
    let mut text = String::new();
    if !parts.is_empty() {
        text = format!(" {}", parts.join(", "));
    }
    text.push_str(&between(filter.since, filter.until));
    text
}

/// ` from T1 to T2`, ` from T1`, ` up to T2` or nothing.
pub(super) fn between(since: Option<NaiveDateTime>, until: Option<NaiveDateTime>) -> String {
    match (since, until) {
        (Some(a), Some(b)) => format!(" from {a} to {b}"),
        (Some(a), None) => format!(" from {a}"),
        (None, Some(b)) => format!(" up to {b}"),
        (None, None) => String::new(),
    }
}
