//! Rows on stdout, as they arrive: `text` for people, `json` (one object per line) for programs,
//! or `none`. Data only: logs go to stderr. Lines are flushed at each commit. After a crash, rows
//! of the transaction that was not durable are printed again when the server re-sends it: stdout
//! is a live view, the files are the exactly-once copy. As a `Sink` it therefore resumes
//! nowhere and never holds the acknowledgement back; a closed stdout ends the stream normally.

use std::io::{self, Write};

use serde_json::{Map, Value};

use super::{FailureKind, Sink, SinkFailure, Txn, text};
use crate::capture::Row;
use crate::lsn::{Lsn, PgTimestamp};

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    None,
}

/// Prints rows to a writer (stdout in the program, a buffer in tests).
pub struct Printer<W: Write> {
    format: Format,
    out: io::BufWriter<W>,
}

impl<W: Write> Printer<W> {
    pub fn new(format: Format, out: W) -> Printer<W> {
        Printer {
            format,
            out: io::BufWriter::new(out),
        }
    }

    /// Prints one row of the transaction committing at `commit_lsn` / `commit_time`.
    pub fn row(&mut self, row: &Row, commit_lsn: Lsn, commit_time: PgTimestamp) -> io::Result<()> {
        match self.format {
            Format::None => Ok(()),
            Format::Text => {
                let values: Vec<Option<String>> = row
                    .values
                    .iter()
                    .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect();
                let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
                let names: Vec<&str> = row.table.columns.iter().map(String::as_str).collect();
                writeln!(
                    self.out,
                    "{}",
                    text::format_row(&row.table.name, &names, &values)
                )
            }
            Format::Json => {
                let object = json_object(row, commit_lsn, commit_time);
                serde_json::to_writer(&mut self.out, &Value::Object(object))?;
                self.out.write_all(b"\n")
            }
        }
    }

    /// Pushes printed lines out (at each commit).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The `json` format's object for a row (also the body of a NATS message, src/sink/nats/).
pub fn json_object(row: &Row, commit_lsn: Lsn, commit_time: PgTimestamp) -> Map<String, Value> {
    let mut columns = Map::new();
    for (name, value) in row.table.columns.iter().zip(&row.values) {
        let value = match value {
            Some(v) => Value::String(String::from_utf8_lossy(v).into_owned()),
            None => Value::Null,
        };
        columns.insert(name.clone(), value);
    }
    let mut object = Map::new();
    object.insert("schema".into(), row.table.schema.clone().into());
    object.insert("table".into(), row.table.name.clone().into());
    object.insert("commit_lsn".into(), commit_lsn.to_string().into());
    let time = commit_time
        .to_datetime()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    object.insert("commit_time".into(), time.into());
    object.insert("row".into(), Value::Object(columns));
    object
}

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("could not write to stdout: {0}")]
pub struct StdoutError(#[source] pub io::Error);

fn failure(e: io::Error) -> SinkFailure {
    let kind = if e.kind() == io::ErrorKind::BrokenPipe {
        FailureKind::Closed
    } else {
        FailureKind::Fatal
    };
    SinkFailure::new(kind, StdoutError(e))
}

impl<W: Write> Sink for Printer<W> {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn resume_point(&self) -> Option<Lsn> {
        None
    }

    fn row(&mut self, row: &Row, txn: Txn) -> Result<(), SinkFailure> {
        Printer::row(self, row, txn.commit_lsn, txn.commit_time).map_err(failure)
    }

    /// Lines go out at each commit: stdout is a live view.
    fn commit(&mut self, _txn: Txn, _end_lsn: Lsn) -> Result<(), SinkFailure> {
        Printer::flush(self).map_err(failure)
    }

    /// Nothing to do: lines went out at their commit, and stdout keeps nothing durably.
    fn flush(&mut self) -> Result<(), SinkFailure> {
        Ok(())
    }

    fn durable(&self) -> Option<Lsn> {
        None
    }

    fn rewind(&mut self) -> Result<(), SinkFailure> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::capture::Table;

    #[test]
    fn json_has_columns_table_lsn_and_time() {
        let row = Row {
            table: Arc::new(Table {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                columns: vec!["a".into(), "b".into()],
                changed_at: None,
            }),
            values: vec![Some(Bytes::from("x\"y")), None],
        };
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Json, &mut out);
        p.row(&row, Lsn(0x10), PgTimestamp(0)).unwrap();
        p.flush().unwrap();
        drop(p);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["table"], "t");
        assert_eq!(v["commit_lsn"], "0/10");
        assert_eq!(v["commit_time"], "2000-01-01T00:00:00.000000Z");
        assert_eq!(v["row"]["a"], "x\"y");
        assert!(v["row"]["b"].is_null());
    }
}
