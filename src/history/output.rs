//! How answers are printed: `text` for people (one line per change in aligned columns, text.rs),
//! JSON Lines and CSV for programs. A state at a moment is one object (or `null`).

use std::io::Write;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::filter::text_array;
use super::scan::{Row, Trail};
use super::text::Columns;

/// `--format` of `history` and `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// Columns printed as JSON values rather than strings.
const JSON_COLUMNS: [&str; 5] = ["key", "old_key", "new_row", "old_values", "context"];
const NUMBER_COLUMNS: [&str; 3] = ["id", "user_id", "txid"];

/// The log's columns, for CSV of rows from both trails (users_audit rows put in the log's shape).
const LOG_SHAPE: [&str; 11] = [
    "changed_at",
    "op",
    "schema_name",
    "table_name",
    "key",
    "new_row",
    "old_values",
    "changed_columns",
    "actor",
    "reason",
    "request_id",
];

/// Prints rows, one at a time.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    /// Both trails in one answer: CSV uses the log's shape.
    mixed: bool,
    header: Option<Rc<[String]>>,
    /// The text columns (rows held until their widths are known).
    columns: Columns,
    pub printed: usize,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, mixed: bool) -> Printer<W> {
        Printer {
            out,
            format,
            mixed,
            header: None,
            columns: Columns::new(format == Format::Text && super::text::colour_wanted()),
            printed: 0,
        }
    }

    pub fn row(&mut self, row: &Row) -> std::io::Result<()> {
        self.printed += 1;
        match self.format {
            Format::Text => self.columns.row(row, &mut self.out),
            Format::Json => writeln!(self.out, "{}", row_json(row)),
            Format::Csv if self.mixed => {
                if self.header.is_none() {
                    self.header = Some(LOG_SHAPE.iter().map(|s| s.to_string()).collect());
                    writeln!(self.out, "{}", LOG_SHAPE.join(","))?;
                }
                let values = log_shape(row);
                self.csv(values.iter().map(|v| v.as_deref()))
            }
            Format::Csv => {
                if self.header.as_ref() != Some(&row.columns) {
                    self.header = Some(row.columns.clone());
                    let names: Vec<&str> = row.columns.iter().map(String::as_str).collect();
                    self.csv(names.iter().map(|n| Some(*n)))?;
                }
                self.csv(row.fields.iter().map(|f| f.as_deref()))
            }
        }
    }

    fn csv<'a>(
        &mut self,
        values: impl ExactSizeIterator<Item = Option<&'a str>>,
    ) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        crate::sink::copy_csv::encode_row(&mut bytes, values.map(|v| v.map(str::as_bytes)));
        self.out.write_all(&bytes)
    }

    /// A record's state at a moment: one object, or `null` (nothing on stdout in text and CSV).
    pub fn state(&mut self, state: Option<&Value>) -> std::io::Result<()> {
        match (self.format, state) {
            (Format::Json, _) => writeln!(self.out, "{}", state.unwrap_or(&Value::Null)),
            (_, None) => Ok(()),
            (Format::Text, Some(Value::Object(object))) => {
                let width = object.keys().map(|k| k.chars().count()).max().unwrap_or(0);
                for (name, value) in object {
                    writeln!(self.out, "{name:width$}  {}", plain(value))?;
                }
                Ok(())
            }
            (Format::Csv, Some(Value::Object(object))) => {
                self.csv(object.keys().map(|k| Some(k.as_str())))?;
                let values: Vec<Option<String>> = object
                    .values()
                    .map(|v| (!v.is_null()).then(|| plain(v)))
                    .collect();
                self.csv(values.iter().map(|v| v.as_deref()))
            }
            (_, Some(other)) => writeln!(self.out, "{other}"),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// One line as it is, after the rows before it.
    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.columns.release(&mut self.out)?;
        writeln!(self.out, "{text}")
    }

    /// The writer, for answers that are not rows (`--stats`), after the rows before.
    pub fn out(&mut self) -> std::io::Result<&mut W> {
        self.columns.release(&mut self.out)?;
        Ok(&mut self.out)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.columns.release(&mut self.out)?;
        self.out.flush()
    }
}

/// A value as text: a string as itself, anything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A row as a JSON object: jsonb columns as JSON, text arrays as arrays, ids as numbers.
pub fn row_json(row: &Row) -> Value {
    let mut object = Map::new();
    if row.trail == Trail::Users {
        object.insert("table".into(), Value::String("public.users".into()));
    }
    for (name, field) in row.columns.iter().zip(&row.fields) {
        let value = match field {
            None => Value::Null,
            Some(text) if JSON_COLUMNS.contains(&name.as_str()) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            Some(text) if NUMBER_COLUMNS.contains(&name.as_str()) => {
                serde_json::from_str::<serde_json::Number>(text)
                    .map_or_else(|_| Value::String(text.clone()), Value::Number)
            }
            Some(text) if name == "changed_columns" => {
                Value::Array(text_array(text).into_iter().map(Value::String).collect())
            }
            Some(text) => Value::String(text.clone()),
        };
        object.insert(name.clone(), value);
    }
    Value::Object(object)
}

/// A row in the log's shape (LOG_SHAPE): a users_audit row as an UPDATE of public.users.
fn log_shape(row: &Row) -> Vec<Option<String>> {
    match row.trail {
        Trail::Log => LOG_SHAPE
            .iter()
            .map(|c| row.get(c).map(str::to_string))
            .collect(),
        Trail::Users => {
            let field = row.get("field_changed").unwrap_or_default();
            let id = row.get("user_id").unwrap_or("null");
            let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::String(s.into()));
            let one = |v: Option<&str>| {
                let mut m = Map::new();
                m.insert(field.to_string(), text(v));
                Value::Object(m).to_string()
            };
            vec![
                row.get("changed_at").map(str::to_string),
                Some("UPDATE".into()),
                Some("public".into()),
                Some("users".into()),
                Some(format!("{{\"id\": {id}}}")),
                Some(one(row.get("new_value"))),
                Some(one(row.get("old_value"))),
                Some(format!("{{{field}}}")),
                row.get("changed_by").map(str::to_string),
                None,
                None,
            ]
        }
    }
}
