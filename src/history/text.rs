//! `--format text` of `history` and `log`: one line per change in aligned columns (when, table,
//! operation, key, who, what changed), both trails alike, coloured only when stdout is a
//! terminal and NO_COLOR is not set.
//!
//! Rows are streamed, so the widths cannot come from the whole answer: the first rows (up to
//! PENDING, or those of the first quarter second) are held to measure them, then every line is
//! padded to the widest value seen so far. A longer value later widens its column from that line
//! on; memory stays bounded.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::scan::{Row, Trail};

/// Rows held to measure the columns before the first line is printed.
const PENDING: usize = 100;
/// How long the first rows may be held.
const HOLD: Duration = Duration::from_millis(250);

/// Whether to colour: stdout is a terminal and NO_COLOR (https://no-color.org) is not set.
pub fn colour_wanted() -> bool {
    colour_for(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// One change, as the text columns show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cells {
    time: String,
    /// Table, operation, key and `by ACTOR`: the padded columns.
    columns: [String; 4],
    /// What changed, last and not padded.
    detail: String,
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn quoted(value: Option<&str>) -> String {
    value.map_or("NULL".to_string(), |v| format!("{v:?}"))
}

/// `2026-11-25 16:07:31.123456` → `2026-11-25 16:07:31`.
fn seconds(timestamp: &str) -> &str {
    timestamp.get(..19).unwrap_or(timestamp)
}

fn cells(row: &Row) -> Cells {
    let time = row.get("changed_at").map_or("NULL", seconds).to_string();
    let by = |name: &str| format!("by {}", row.get(name).unwrap_or("NULL"));
    let (columns, detail) = match row.trail {
        Trail::Users => (
            [
                "public.users".to_string(),
                "UPDATE".to_string(),
                format!("{{\"id\": {}}}", row.get("user_id").unwrap_or("NULL")),
                by("changed_by"),
            ],
            format!(
                "{}: {} → {}",
                row.get("field_changed").unwrap_or("NULL"),
                quoted(row.get("old_value")),
                quoted(row.get("new_value"))
            ),
        ),
        Trail::Log => {
            let table = match (row.get("schema_name"), row.get("table_name")) {
                (Some(schema), Some(table)) => format!("{schema}.{table}"),
                _ => String::new(),
            };
            // changed_columns is a text[] in PostgreSQL's text form: {status,total}.
            let mut detail = row
                .get("changed_columns")
                .map(|c| {
                    c.trim_start_matches('{')
                        .trim_end_matches('}')
                        .replace(',', ", ")
                })
                .unwrap_or_default();
            if let Some(reason) = row.get("reason") {
                if !detail.is_empty() {
                    detail.push(' ');
                }
                detail.push_str(&format!("(reason: {})", quoted(Some(reason))));
            }
            (
                [
                    table,
                    row.get("op").unwrap_or("NULL").to_string(),
                    row.get("key").unwrap_or_default().to_string(),
                    by("actor"),
                ],
                detail,
            )
        }
    };
    Cells {
        time: one_line(&time),
        columns: columns.map(|c| one_line(&c)),
        detail: one_line(&detail),
    }
}

/// SGR codes: the time dimmed, the operation by kind.
fn op_colour(op: &str) -> &'static str {
    match op {
        "INSERT" => "32",
        "UPDATE" => "33",
        "DELETE" | "TRUNCATE" => "31",
        _ => "35",
    }
}

/// Lays rows out in columns as they come.
#[derive(Debug)]
pub struct Columns {
    colour: bool,
    widths: [usize; 4],
    pending: Vec<Cells>,
    since: Option<Instant>,
    /// The first rows have been printed: every row now goes out at once.
    released: bool,
}

impl Columns {
    pub fn new(colour: bool) -> Columns {
        Columns {
            colour,
            widths: [0; 4],
            pending: Vec::new(),
            since: None,
            released: false,
        }
    }

    pub fn row(&mut self, row: &Row, out: &mut impl Write) -> std::io::Result<()> {
        let cells = cells(row);
        if self.released {
            self.widen(&cells);
            return self.write(&cells, out);
        }
        self.pending.push(cells);
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.pending.len() >= PENDING || since.elapsed() >= HOLD {
            self.release(out)?;
        }
        Ok(())
    }

    /// Prints the rows held (before another line, and at the end).
    pub fn release(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for cells in &pending {
            self.widen(cells);
        }
        for cells in &pending {
            self.write(cells, out)?;
        }
        self.released = self.released || !pending.is_empty();
        Ok(())
    }

    fn widen(&mut self, cells: &Cells) {
        for (width, column) in self.widths.iter_mut().zip(&cells.columns) {
            *width = (*width).max(column.chars().count());
        }
    }

    fn write(&self, cells: &Cells, out: &mut impl Write) -> std::io::Result<()> {
        let mut line = String::new();
        let paint = |text: &str, code: &str, line: &mut String| {
            if self.colour && !text.is_empty() {
                line.push_str(&format!("\x1b[{code}m{text}\x1b[0m"));
            } else {
                line.push_str(text);
            }
        };
        paint(&cells.time, "2", &mut line);
        for (i, (column, width)) in cells.columns.iter().zip(self.widths).enumerate() {
            line.push_str("  ");
            let pad = width.saturating_sub(column.chars().count());
            match i {
                1 => paint(column, op_colour(column), &mut line),
                _ => line.push_str(column),
            }
            line.push_str(&" ".repeat(pad));
        }
        if !cells.detail.is_empty() {
            line.push_str("  ");
            line.push_str(&cells.detail);
        }
        writeln!(out, "{}", line.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::rc::Rc;

    use super::*;

    fn row(trail: Trail, pairs: &[(&str, Option<&str>)]) -> Row {
        Row {
            trail,
            columns: pairs.iter().map(|(c, _)| c.to_string()).collect(),
            fields: pairs.iter().map(|(_, v)| v.map(str::to_string)).collect(),
            file: Rc::from(Path::new("f")),
            line: 1,
            offset: None,
        }
    }

    fn rows() -> Vec<Row> {
        vec![
            row(
                Trail::Log,
                &[
                    ("changed_at", Some("2026-11-25 16:07:29.97")),
                    ("op", Some("INSERT")),
                    ("schema_name", Some("public")),
                    ("table_name", Some("orders")),
                    ("key", Some("{\"id\": 42}")),
                    ("changed_columns", None),
                    ("actor", Some("alice@example.com")),
                    ("reason", None),
                ],
            ),
            row(
                Trail::Users,
                &[
                    ("user_id", Some("3")),
                    ("changed_at", Some("2026-11-25 16:07:31.5")),
                    ("changed_by", Some("bob")),
                    ("field_changed", Some("role")),
                    ("old_value", Some("staff")),
                    ("new_value", Some("admin")),
                ],
            ),
            row(
                Trail::Log,
                &[
                    ("changed_at", Some("2026-11-25 16:07:31.5")),
                    ("op", Some("UPDATE")),
                    ("schema_name", Some("public")),
                    ("table_name", Some("orders")),
                    ("key", Some("{\"id\": 142}")),
                    ("changed_columns", Some("{status,total}")),
                    ("actor", Some("bob")),
                    ("reason", Some("refund,\nticket 4711")),
                ],
            ),
        ]
    }

    fn printed(colour: bool, rows: &[Row]) -> String {
        let mut columns = Columns::new(colour);
        let mut out = Vec::new();
        for r in rows {
            columns.row(r, &mut out).unwrap();
        }
        columns.release(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn both_trails_in_aligned_columns() {
        assert_eq!(
            printed(false, &rows()),
            "2026-11-25 16:07:29  public.orders  INSERT  {\"id\": 42}   by alice@example.com\n\
             2026-11-25 16:07:31  public.users   UPDATE  {\"id\": 3}    by bob                role: \"staff\" → \"admin\"\n\
             2026-11-25 16:07:31  public.orders  UPDATE  {\"id\": 142}  by bob                status, total (reason: \"refund,\\nticket 4711\")\n"
        );
    }

    #[test]
    fn a_wider_value_after_the_first_rows_widens_its_column_from_there() {
        let mut columns = Columns::new(false);
        let mut out = Vec::new();
        let all = rows();
        columns.row(&all[1], &mut out).unwrap();
        columns.release(&mut out).unwrap();
        columns.row(&all[0], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "2026-11-25 16:07:31  public.users  UPDATE  {\"id\": 3}  by bob  role: \"staff\" → \"admin\"",
                "2026-11-25 16:07:29  public.orders  INSERT  {\"id\": 42}  by alice@example.com",
            ]
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some("".as_ref())));
        assert!(!colour_for(true, Some("1".as_ref())));
        assert!(!colour_for(false, None));
        let text = printed(true, &rows()[..1]);
        assert_eq!(
            text,
            "\x1b[2m2026-11-25 16:07:29\x1b[0m  public.orders  \x1b[32mINSERT\x1b[0m  {\"id\": 42}  by alice@example.com\n"
        );
    }
}
