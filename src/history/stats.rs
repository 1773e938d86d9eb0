//! `log --stats`: how many changes, grouped by actor, table, operation and/or hour, with `--min`
//! keeping the groups of at least N changes. `--by actor,hour --min 100` finds the bursts: an actor
//! with many changes in a short time.
//!
//! A change is one record changed by one transaction, in both trails: "12 changes by alice" means
//! twelve (transaction, record) pairs, however many fields each touched (users_audit writes one
//! row per changed field) and however many statements of the transaction touched the record
//! (audit.log writes one row per statement). It is the only unit both trails can count alike:
//! users_audit keeps no statement, only the transaction's start (changed_at). In audit.log a record
//! is its key after the change (a key change starts a new record); a row without a key (TRUNCATE,
//! PAUSE, RESUME) is a change of its own.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use serde_json::{Map, Value};

use super::output::Format;
use super::scan::{Row, Trail};

/// A grouping of `--by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Actor,
    Table,
    Op,
    /// changed_at to the hour: `2026-11-23 14:00`.
    Hour,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Actor => "actor",
            By::Table => "table",
            By::Op => "op",
            By::Hour => "hour",
        }
    }

    fn of(self, row: &Row) -> String {
        let users = row.trail == Trail::Users;
        match self {
            By::Actor if users => row.get("changed_by"),
            By::Actor => row.get("actor"),
            By::Table if users => return "public.users".to_string(),
            By::Table => {
                return match (row.get("schema_name"), row.get("table_name")) {
                    (Some(s), Some(t)) => format!("{s}.{t}"),
                    _ => String::new(),
                };
            }
            By::Op if users => Some("UPDATE"),
            By::Op => row.get("op"),
            By::Hour => {
                return row
                    .get("changed_at")
                    .and_then(|t| t.get(..13))
                    .map_or(String::new(), |h| format!("{h}:00"));
            }
        }
        .unwrap_or_default()
        .to_string()
    }
}

/// The change a row is part of: its transaction and record (module doc).
fn change(row: &Row) -> [Option<String>; 4] {
    let text = |name: &str| row.get(name).map(str::to_string);
    match row.trail {
        // changed_at is the transaction's start (CURRENT_TIMESTAMP), the same for all its rows.
        Trail::Users => [text("changed_at"), text("user_id"), None, None],
        Trail::Log => match row.get("key") {
            Some(_) => [
                text("txid"),
                text("schema_name"),
                text("table_name"),
                text("key"),
            ],
            None => [text("id"), None, None, None],
        },
    }
}

/// A group's values and a change in it.
type Counted = (Vec<String>, [Option<String>; 4]);

/// Counts of changes per group.
#[derive(Debug)]
pub struct Stats {
    by: Vec<By>,
    min: u64,
    counts: BTreeMap<Vec<String>, u64>,
    /// Per trail, the day being read and the (group, change) pairs counted in it. A transaction's
    /// rows all have its start as changed_at, so they are in one day: what is kept is one day's.
    seen: [(String, HashSet<Counted>); 2],
}

impl Stats {
    pub fn new(by: Vec<By>, min: u64) -> Stats {
        Stats {
            by,
            min,
            counts: BTreeMap::new(),
            seen: Default::default(),
        }
    }

    /// Counts the row's change in its group, unless a row of the same change was counted there.
    pub fn add(&mut self, row: &Row) {
        let group: Vec<String> = self.by.iter().map(|b| b.of(row)).collect();
        let day = row
            .get("changed_at")
            .and_then(|t| t.get(..10))
            .unwrap_or_default();
        let (seen_day, seen) = &mut self.seen[usize::from(row.trail == Trail::Log)];
        if seen_day != day {
            *seen_day = day.to_string();
            seen.clear();
        }
        if seen.insert((group.clone(), change(row))) {
            *self.counts.entry(group).or_default() += 1;
        }
    }

    /// The groups of at least `min` changes, most first; how many were printed.
    pub fn print(&self, out: &mut impl Write, format: Format) -> std::io::Result<usize> {
        let mut groups: Vec<(&Vec<String>, u64)> = self
            .counts
            .iter()
            .filter(|(_, n)| **n >= self.min)
            .map(|(k, n)| (k, *n))
            .collect();
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let names: Vec<&str> = self.by.iter().map(|b| b.name()).collect();
        match format {
            Format::Text => {
                let width = groups
                    .iter()
                    .map(|g| g.1.to_string().len())
                    .max()
                    .unwrap_or(7)
                    .max(7);
                let widths: Vec<usize> = (0..names.len())
                    .map(|i| {
                        groups
                            .iter()
                            .map(|g| g.0[i].chars().count())
                            .chain([names[i].len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let mut header = format!("{:>width$}", "changes");
                for (name, w) in names.iter().zip(&widths) {
                    header.push_str(&format!("  {name:w$}"));
                }
                writeln!(out, "{}", header.trim_end())?;
                for (key, n) in &groups {
                    let mut line = format!("{n:>width$}");
                    for (value, w) in key.iter().zip(&widths) {
                        line.push_str(&format!("  {value:w$}"));
                    }
                    writeln!(out, "{}", line.trim_end())?;
                }
            }
            Format::Json => {
                for (key, n) in &groups {
                    let mut object = Map::new();
                    for (name, value) in names.iter().zip(key.iter()) {
                        object.insert(name.to_string(), Value::String(value.clone()));
                    }
                    object.insert("changes".into(), Value::from(*n));
                    writeln!(out, "{}", Value::Object(object))?;
                }
            }
            Format::Csv => {
                let mut bytes = Vec::new();
                let header = names
                    .iter()
                    .map(|n| Some(n.as_bytes()))
                    .chain([Some(&b"changes"[..])]);
                crate::sink::copy_csv::encode_row(
                    &mut bytes,
                    header.collect::<Vec<_>>().into_iter(),
                );
                for (key, n) in &groups {
                    let n = n.to_string();
                    let values: Vec<Option<&[u8]>> = key
                        .iter()
                        .map(|v| Some(v.as_bytes()))
                        .chain([Some(n.as_bytes())])
                        .collect();
                    crate::sink::copy_csv::encode_row(&mut bytes, values.into_iter());
                }
                out.write_all(&bytes)?;
            }
        }
        Ok(groups.len())
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

    fn log(id: &str, txid: &str, op: &str, key: Option<&str>, at: &str) -> Row {
        row(
            Trail::Log,
            &[
                ("id", Some(id)),
                ("changed_at", Some(at)),
                ("op", Some(op)),
                ("schema_name", Some("public")),
                ("table_name", Some("orders")),
                ("key", key),
                ("txid", Some(txid)),
                ("actor", Some("alice")),
            ],
        )
    }

    fn user(id: &str, field: &str, at: &str) -> Row {
        row(
            Trail::Users,
            &[
                ("user_id", Some(id)),
                ("changed_at", Some(at)),
                ("changed_by", Some("alice")),
                ("field_changed", Some(field)),
            ],
        )
    }

    fn counted(rows: &[Row], by: Vec<By>) -> String {
        let mut stats = Stats::new(by, 1);
        for r in rows {
            stats.add(r);
        }
        let mut out = Vec::new();
        stats.print(&mut out, Format::Csv).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_change_is_one_record_in_one_transaction_in_both_trails() {
        let t1 = "2026-11-25 10:00:00.1";
        let t2 = "2026-11-25 10:00:05.2";
        let rows = [
            // One UPDATE of user 3 that changed two fields, then another transaction.
            user("3", "role", t1),
            user("3", "email", t1),
            user("3", "role", t2),
            // Order 1 updated by two statements of transaction 700, order 2 once.
            log("1", "700", "UPDATE", Some("{\"id\": 1}"), t1),
            log("2", "700", "UPDATE", Some("{\"id\": 1}"), t1),
            log("3", "700", "UPDATE", Some("{\"id\": 2}"), t1),
            // Two TRUNCATEs: two changes.
            log("4", "701", "TRUNCATE", None, t2),
            log("5", "701", "TRUNCATE", None, t2),
        ];
        assert_eq!(counted(&rows, vec![By::Actor]), "actor,changes\nalice,6\n");
        assert_eq!(
            counted(&rows, vec![By::Table, By::Op]),
            "table,op,changes\npublic.orders,TRUNCATE,2\npublic.orders,UPDATE,2\npublic.users,UPDATE,2\n"
        );
        // What is remembered of a day is dropped when the next day begins; counting goes on.
        let next = [
            user("3", "role", t1),
            user("3", "role", "2026-11-26 00:00:01"),
            user("3", "name", "2026-11-26 00:00:01"),
        ];
        assert_eq!(counted(&next, vec![By::Actor]), "actor,changes\nalice,2\n");
    }
}
