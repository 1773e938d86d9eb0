//! The result of `verify`: counts, then the ids only in one side and the rows whose fields
//! differ, cut to `SHOWN` of each with a count of the rest; as text for people or JSON for cron
//! and CI.

use std::fmt::Write as _;

use chrono::NaiveDate;
use serde_json::json;

use crate::gaps::Gap;

const SHOWN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
}

/// One differing field: its name and both values (None for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: String,
    pub nightly: Option<String>,
    pub stream: Option<String>,
}

/// What differs; lists hold at most `SHOWN` entries, the counts everything.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub nightly_rows: u64,
    pub stream_rows: u64,
    pub matching: u64,
    pub only_in_nightly: (u64, Vec<i64>),
    pub only_in_stream: (u64, Vec<i64>),
    pub differing: (u64, Vec<(i64, Vec<FieldDiff>)>),
    pub duplicates: (u64, Vec<(i64, &'static str)>),
    /// Ids between the day's smallest and largest that neither copy holds, nor the stream files
    /// of the neighbouring days, and the first of their runs (inclusive ranges). Not a
    /// difference: rolled-back transactions leave gaps too.
    pub gaps: (u64, Vec<(i64, i64)>),
    /// Ids between the day's smallest and largest that are rows of the day before or after (in
    /// their stream files): transactions across midnight interleave ids.
    pub neighbouring: u64,
    /// Neighbouring days whose rows verify could not look up (no stream file, and not known to
    /// be quiet): some "gaps" may be their rows.
    pub neighbours_unknown: Vec<NaiveDate>,
}

fn note<T>(list: &mut (u64, Vec<T>), item: T) {
    list.0 += 1;
    if list.1.len() < SHOWN * 50 {
        list.1.push(item);
    }
}

impl Diff {
    pub(super) fn only_in_nightly(&mut self, id: i64) {
        note(&mut self.only_in_nightly, id);
    }
    pub(super) fn only_in_stream(&mut self, id: i64) {
        note(&mut self.only_in_stream, id);
    }
    pub(super) fn duplicate_in_stream(&mut self, id: i64) {
        note(&mut self.duplicates, (id, "stream"));
    }
    pub(super) fn duplicate_in_nightly(&mut self, id: i64) {
        note(&mut self.duplicates, (id, "nightly export"));
    }
    pub(super) fn differs(&mut self, id: i64, fields: Vec<FieldDiff>) {
        note(&mut self.differing, (id, fields));
    }

    /// Sorts the lists by id and keeps the first `SHOWN`.
    pub(super) fn finish(&mut self) {
        self.only_in_nightly.1.sort_unstable();
        self.only_in_nightly.1.truncate(SHOWN);
        self.only_in_stream.1.sort_unstable();
        self.only_in_stream.1.truncate(SHOWN);
        self.differing.1.sort_by_key(|d| d.0);
        self.differing.1.truncate(SHOWN);
        self.duplicates.1.sort_unstable();
        self.duplicates.1.truncate(SHOWN);
    }

    /// Whether the two copies agree row for row.
    pub fn agrees(&self) -> bool {
        self.only_in_nightly.0 == 0
            && self.only_in_stream.0 == 0
            && self.differing.0 == 0
            && self.duplicates.0 == 0
    }
}

/// A stream file whose columns are not the export's: its rows were compared on the columns both
/// have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialFile {
    pub file: String,
    /// Columns of the export the file lacks (added to the table after the file was written).
    pub not_compared: Vec<String>,
    /// Columns of the file the export lacks (dropped from the table since).
    pub ignored: Vec<String>,
}

/// A verify result for one day.
#[derive(Debug, Clone)]
pub struct Report {
    pub date: NaiveDate,
    /// The table compared, `schema.name`.
    pub table: String,
    /// The name of the table's key column, which the ids are values of.
    pub key: String,
    pub nightly: String,
    pub stream: String,
    /// No stream file, and the stream's record shows it covered the day: how.
    pub covered: Option<String>,
    /// Rows of the nightly export whose changed_at is on another day, per day.
    pub other_days: std::collections::BTreeMap<NaiveDate, u64>,
    /// The stream files were written with `--safe-csv`; the export was compared alike.
    pub safe_csv: bool,
    /// Stream files with other columns than the export's.
    pub partial: Vec<PartialFile>,
    pub diff: Diff,
    /// Ranges the stream skipped with `--accept-gap` that may hold rows of this day.
    pub recorded_gaps: Vec<Gap>,
}

fn shown<T>(list: &(u64, Vec<T>)) -> String {
    let rest = list.0 - list.1.len() as u64;
    if rest > 0 {
        format!(" … and {rest} more")
    } else {
        String::new()
    }
}

fn value(v: &Option<String>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => format!("{s:?}"),
    }
}

impl Report {
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Text => self.text(false),
            ReportFormat::Json => self.json(),
        }
    }

    /// As `render`, the text's first line naming the table: for a verify of several tables.
    pub fn render_named(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Text => self.text(true),
            ReportFormat::Json => self.json(),
        }
    }

    fn text(&self, named: bool) -> String {
        let d = &self.diff;
        let mut t = String::new();
        let verdict = if d.agrees() && self.covered.is_some() && d.matching == 0 {
            format!(
                "the nightly export is empty, and the stream covered {} and saw no rows",
                self.date
            )
        } else if d.agrees() {
            format!(
                "the nightly export and the live stream agree ({} rows)",
                d.matching
            )
        } else {
            "the nightly export and the live stream DIFFER".to_string()
        };
        if named {
            let _ = writeln!(t, "verify {}, table {}: {verdict}", self.date, self.table);
        } else {
            let _ = writeln!(t, "verify {}: {verdict}", self.date);
        }
        let _ = writeln!(
            t,
            "  nightly export: {} rows  ({})",
            d.nightly_rows, self.nightly
        );
        let _ = writeln!(
            t,
            "  live stream:    {} rows  ({})",
            d.stream_rows, self.stream
        );
        if let Some(how) = &self.covered {
            let _ = writeln!(t, "  (no stream file: {how})");
        }
        if !self.other_days.is_empty() {
            let list: Vec<String> = self
                .other_days
                .iter()
                .map(|(day, n)| format!("{n} of {day}"))
                .collect();
            let _ = writeln!(
                t,
                "  rows of other days in the nightly export: {}: an export of {} holds only its \
                 own day's rows; check the file",
                list.join(", "),
                self.date
            );
        }
        if self.safe_csv {
            let _ = writeln!(
                t,
                "  (the stream was written with --safe-csv: the export's formula-like values got \
                 the same leading ' before comparing)"
            );
        }
        for p in &self.partial {
            if !p.not_compared.is_empty() {
                let _ = writeln!(
                    t,
                    "  not compared for the rows of {}: {} (the file was written before the table \
                     had these columns; its rows were compared on the others)",
                    p.file,
                    p.not_compared.join(", ")
                );
            }
            if !p.ignored.is_empty() {
                let _ = writeln!(
                    t,
                    "  ignored in the rows of {}: {} (no longer columns of the table)",
                    p.file,
                    p.ignored.join(", ")
                );
            }
        }
        let _ = writeln!(t, "  matching:       {}", d.matching);
        for g in &self.recorded_gaps {
            let _ = writeln!(
                t,
                "  recorded gap: {}..{} skipped by the stream (accepted with --accept-gap at {}; \
                 the out-dir's stream last moved at {}): rows committed in it are only in the \
                 nightly export",
                g.from, g.to, g.recorded, g.since
            );
        }
        let ids = |l: &(u64, Vec<i64>)| {
            l.1.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
                + &shown(l)
        };
        if d.only_in_nightly.0 > 0 {
            let _ = writeln!(
                t,
                "  only in the nightly export: {} (ids {})",
                d.only_in_nightly.0,
                ids(&d.only_in_nightly)
            );
        }
        if d.only_in_stream.0 > 0 {
            let _ = writeln!(
                t,
                "  only in the stream: {} (ids {})",
                d.only_in_stream.0,
                ids(&d.only_in_stream)
            );
        }
        if d.duplicates.0 > 0 {
            let list: Vec<String> = d
                .duplicates
                .1
                .iter()
                .map(|(id, side)| format!("{id} in the {side}"))
                .collect();
            let _ = writeln!(
                t,
                "  duplicate ids: {} ({}{})",
                d.duplicates.0,
                list.join(", "),
                shown(&d.duplicates)
            );
        }
        if d.gaps.0 > 0 {
            let runs: Vec<String> = d
                .gaps
                .1
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let listed: u64 = d.gaps.1.iter().map(|&(a, b)| (b - a + 1) as u64).sum();
            let more = if listed < d.gaps.0 { " …" } else { "" };
            let why = if d.neighbours_unknown.is_empty() {
                "rolled-back transactions leave such gaps; rows deleted before both copies were \
                 made do too"
                    .to_string()
            } else {
                let days: Vec<String> =
                    d.neighbours_unknown.iter().map(|d| d.to_string()).collect();
                format!(
                    "without a stream file of {} verify cannot tell them from rows of the \
                     neighbouring days (ids interleave across midnight); else rolled-back \
                     transactions leave such gaps, and rows deleted before both copies were made \
                     do too",
                    days.join(" or ")
                )
            };
            let _ = writeln!(
                t,
                "  ids in neither copy: {} ({}{more}): {why}",
                d.gaps.0,
                runs.join(", ")
            );
        }
        if d.neighbouring > 0 {
            let _ = writeln!(
                t,
                "  ids of neighbouring days within the day's span: {} (in the stream files of the \
                 days before and after: a transaction that began before midnight takes its ids \
                 among the next day's; no gap, no difference)",
                d.neighbouring
            );
        }
        if d.differing.0 > 0 {
            let _ = writeln!(t, "  rows that differ: {}", d.differing.0);
            for (id, fields) in &d.differing.1 {
                for f in fields {
                    let _ = writeln!(
                        t,
                        "    {} {id}: {} nightly {} / stream {}",
                        self.key,
                        f.field,
                        value(&f.nightly),
                        value(&f.stream)
                    );
                }
            }
            let rest = shown(&d.differing);
            if !rest.is_empty() {
                let _ = writeln!(t, "    {}", rest.trim());
            }
        }
        t
    }

    fn json(&self) -> String {
        let d = &self.diff;
        let differing: Vec<_> = d
            .differing
            .1
            .iter()
            .map(|(id, fields)| {
                json!({"id": id, "fields": fields.iter().map(|f| json!({
                    "field": f.field, "nightly": f.nightly, "stream": f.stream
                })).collect::<Vec<_>>()})
            })
            .collect();
        let value = json!({
            "date": self.date.to_string(),
            "table": self.table,
            "agree": d.agrees(),
            "nightly": {"source": self.nightly, "rows": d.nightly_rows},
            "stream": {"source": self.stream, "rows": d.stream_rows, "covered": self.covered.is_some()},
            "other_days": self.other_days.iter().map(|(day, n)| json!({"date": day.to_string(), "rows": n})).collect::<Vec<_>>(),
            "matching": d.matching,
            "safe_csv": self.safe_csv,
            "key": self.key,
            "partial_files": self.partial.iter().map(|p| json!({
                "file": p.file, "not_compared": p.not_compared, "ignored": p.ignored,
            })).collect::<Vec<_>>(),
            "only_in_nightly": {"count": d.only_in_nightly.0, "ids": d.only_in_nightly.1},
            "only_in_stream": {"count": d.only_in_stream.0, "ids": d.only_in_stream.1},
            "duplicates": {"count": d.duplicates.0, "ids": d.duplicates.1.iter().map(|(id, side)| json!({"id": id, "in": side})).collect::<Vec<_>>()},
            "differing": {"count": d.differing.0, "rows": differing},
            "gaps": {"count": d.gaps.0, "ranges": d.gaps.1},
            "recorded_gaps": self.recorded_gaps.iter().map(|g| json!({
                "from": g.from.to_string(), "to": g.to.to_string(),
                "since": g.since.to_rfc3339(), "recorded": g.recorded.to_rfc3339(),
                "first_day": g.first_day.to_string(), "last_day": g.last_day.to_string(),
            })).collect::<Vec<_>>(),
            "neighbouring_days": {"count": d.neighbouring, "unknown": d.neighbours_unknown.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        });
        let mut text = value.to_string();
        text.push('\n');
        text
    }
}
