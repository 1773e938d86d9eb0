//! `log --stats`: how many changes, grouped by actor, table, operation and/or hour, with `--min`
//! keeping the groups of at least N changes. `--by actor,hour --min 100` finds the bursts: an actor
//! with many changes in a short time.

use std::collections::BTreeMap;
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

/// Counts per group.
#[derive(Debug)]
pub struct Stats {
    by: Vec<By>,
    min: u64,
    counts: BTreeMap<Vec<String>, u64>,
}

impl Stats {
    pub fn new(by: Vec<By>, min: u64) -> Stats {
        Stats {
            by,
            min,
            counts: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, row: &Row) {
        let key = self.by.iter().map(|b| b.of(row)).collect();
        *self.counts.entry(key).or_default() += 1;
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
                    .unwrap_or(5)
                    .max(5);
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
                let mut header = format!("{:>width$}", "count");
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
                    object.insert("count".into(), Value::from(*n));
                    writeln!(out, "{}", Value::Object(object))?;
                }
            }
            Format::Csv => {
                let mut bytes = Vec::new();
                let header = names
                    .iter()
                    .map(|n| Some(n.as_bytes()))
                    .chain([Some(&b"count"[..])]);
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
