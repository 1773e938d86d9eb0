//! One row as one JetStream message, both ways: the NATS sink encodes, the archiver decodes.
//! No I/O.
//!
//! The body is the object `stream --format json` prints (schema, table, commit LSN and time,
//! the row's columns by name) plus `columns`, the column names in the table's order, so the
//! archiver can write the same CSV files. The headers carry the position, which the archiver
//! and the sink's restart read without parsing the body:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | `<database>:<commit LSN>:<index>`: the server drops a re-sent row |
//! | `Audit-Tail-Commit-Lsn` | the transaction's commit LSN, `X/Y` |
//! | `Audit-Tail-Commit-Time` | its commit time, µs since 2000-01-01 (PostgreSQL's epoch) |
//! | `Audit-Tail-Index` | the row's index in the transaction, from 0 |
//! | `Audit-Tail-End-Lsn` | only on the transaction's last row: its end LSN |
//! | `Audit-Tail-System-Id` | the PostgreSQL server's system identifier (`pg_control_system()`): two clusters whose databases share a name are told apart |

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::capture::{Row, Table};
use crate::lsn::{Lsn, PgTimestamp};

pub const COMMIT_LSN: &str = "Audit-Tail-Commit-Lsn";
pub const COMMIT_TIME: &str = "Audit-Tail-Commit-Time";
pub const INDEX: &str = "Audit-Tail-Index";
pub const END_LSN: &str = "Audit-Tail-End-Lsn";
pub const SYSTEM_ID: &str = "Audit-Tail-System-Id";

/// Where a message sits in the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub index: u64,
    /// The transaction's end LSN, on its last row only.
    pub end_lsn: Option<Lsn>,
}

/// A message that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("message {what} is not an audit-tail row: {why}")]
pub struct ForeignMessage {
    pub what: String,
    pub why: String,
}

/// A subject token for a name: NATS tokens may not hold `.`, `*`, `>` or white space, so those
/// become `_` (the body keeps the exact name).
pub fn token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// `<prefix>.<database>.<schema>.<table>`.
pub fn subject(prefix: &str, database: &str, table: &Table) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        token(database),
        token(&table.schema),
        token(&table.name)
    )
}

/// The message id of a row: unique per database and row position.
pub fn message_id(database: &str, commit_lsn: Lsn, index: u64) -> String {
    format!("{database}:{commit_lsn}:{index}")
}

/// The headers of a row at `position`.
pub fn headers(database: &str, position: &Position) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        message_id(database, position.commit_lsn, position.index).as_str(),
    );
    headers.insert(COMMIT_LSN, position.commit_lsn.to_string().as_str());
    headers.insert(COMMIT_TIME, position.commit_time.0.to_string().as_str());
    headers.insert(INDEX, position.index.to_string().as_str());
    if let Some(end) = position.end_lsn {
        headers.insert(END_LSN, end.to_string().as_str());
    }
    headers
}

/// The body of a row: the json format's object plus `columns`.
pub fn body(row: &Row, commit_lsn: Lsn, commit_time: PgTimestamp) -> Bytes {
    let mut object = crate::sink::stdout::json_object(row, commit_lsn, commit_time);
    let columns = row.table.columns.iter().cloned().map(Value::String);
    object.insert("columns".into(), Value::Array(columns.collect()));
    Bytes::from(serde_json::to_vec(&Value::Object(object)).unwrap_or_default())
}

/// Encodes rows into bodies byte for byte as [`body`] does, without building a JSON tree per
/// row: what depends only on the table (its subject, the `columns` array, the column order of
/// `row`, schema and name) is encoded once per table, and the body is written into a reused
/// buffer.
#[derive(Default)]
pub struct Encoder {
    table: Option<Arc<Table>>,
    subject: String,
    /// `{"columns":[...],"commit_lsn":"`
    head: Vec<u8>,
    /// The indexes of the columns sorted by name (the order of a JSON map's keys).
    order: Vec<usize>,
    /// The column names encoded as JSON strings followed by `:`, in `order`.
    keys: Vec<Vec<u8>>,
    /// `},"schema":...,"table":...}`
    tail: Vec<u8>,
    buf: Vec<u8>,
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl Encoder {
    fn table(&mut self, prefix: &str, database: &str, table: &Arc<Table>) {
        if self.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            return;
        }
        self.subject = subject(prefix, database, table);
        self.head.clear();
        self.head.extend_from_slice(b"{\"columns\":[");
        for (i, name) in table.columns.iter().enumerate() {
            if i > 0 {
                self.head.push(b',');
            }
            json_str(&mut self.head, name);
        }
        self.head.extend_from_slice(b"],\"commit_lsn\":\"");
        self.order = (0..table.columns.len()).collect();
        self.order
            .sort_by(|&a, &b| table.columns[a].cmp(&table.columns[b]));
        self.keys = self
            .order
            .iter()
            .map(|&i| {
                let mut key = Vec::new();
                json_str(&mut key, &table.columns[i]);
                key.push(b':');
                key
            })
            .collect();
        self.tail.clear();
        self.tail.extend_from_slice(b"},\"schema\":");
        json_str(&mut self.tail, &table.schema);
        self.tail.extend_from_slice(b",\"table\":");
        json_str(&mut self.tail, &table.name);
        self.tail.push(b'}');
        self.table = Some(table.clone());
    }

    /// The subject of `row`'s table (see [`subject`]).
    pub fn subject(&mut self, prefix: &str, database: &str, row: &Row) -> &str {
        self.table(prefix, database, &row.table);
        &self.subject
    }

    /// The body of `row` (see [`body`]).
    pub fn body(
        &mut self,
        (prefix, database): (&str, &str),
        row: &Row,
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> Bytes {
        use std::io::Write;
        self.table(prefix, database, &row.table);
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&self.head);
        let _ = write!(buf, "{commit_lsn}\",\"commit_time\":");
        match commit_time.to_datetime() {
            Some(t) => {
                let time = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                json_str(buf, &time);
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"row\":{");
        for (n, (&i, key)) in self.order.iter().zip(&self.keys).enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(key);
            match row.values.get(i).and_then(|v| v.as_ref()) {
                Some(v) => json_str(buf, &String::from_utf8_lossy(v)),
                None => buf.extend_from_slice(b"null"),
            }
        }
        buf.extend_from_slice(&self.tail);
        crate::metrics::get().inspect(|m| m.row_bytes("nats", &row.table, buf.len() as u64));
        Bytes::copy_from_slice(buf)
    }
}

/// The system identifier of the server a message's row comes from; `None` when the message has
/// no such header (published by a version before it) or it is not a number.
pub fn system_id(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(SYSTEM_ID)?.as_str().parse().ok()
}

/// Reads the position from `headers`; `what` names the message in the error.
pub fn position(headers: Option<&HeaderMap>, what: &str) -> Result<Position, ForeignMessage> {
    let foreign = |why: String| ForeignMessage {
        what: what.to_string(),
        why,
    };
    let headers = headers.ok_or_else(|| foreign("it has no headers".into()))?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let need = |name: &str| get(name).ok_or_else(|| foreign(format!("no {name} header")));
    let lsn = |name: &str, text: String| {
        text.parse::<Lsn>()
            .map_err(|e| foreign(format!("{name}: {e}")))
    };
    let number = |name: &str, text: String| {
        text.parse::<i64>()
            .map_err(|e| foreign(format!("{name} {text:?}: {e}")))
    };
    Ok(Position {
        commit_lsn: lsn(COMMIT_LSN, need(COMMIT_LSN)?)?,
        commit_time: PgTimestamp(number(COMMIT_TIME, need(COMMIT_TIME)?)?),
        index: number(INDEX, need(INDEX)?)?
            .try_into()
            .map_err(|_| foreign(format!("negative {INDEX}")))?,
        end_lsn: get(END_LSN).map(|t| lsn(END_LSN, t)).transpose()?,
    })
}

/// The table and values of a row body. `tables` keeps one `Table` per shape, so rows of the same
/// table share it (the file sink routes by the `Arc`).
pub fn decode_row(
    body: &[u8],
    tables: &mut Vec<Arc<Table>>,
    what: &str,
) -> Result<Row, ForeignMessage> {
    let foreign = |why: &str| ForeignMessage {
        what: what.to_string(),
        why: why.to_string(),
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| foreign(&e.to_string()))?;
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    let (Some(schema), Some(name)) = (text("schema"), text("table")) else {
        return Err(foreign("no schema or table"));
    };
    let columns: Vec<String> = value
        .get("columns")
        .and_then(Value::as_array)
        .ok_or_else(|| foreign("no columns"))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| foreign("a column is not a string"))
        })
        .collect::<Result<_, _>>()?;
    let row = value
        .get("row")
        .and_then(Value::as_object)
        .ok_or_else(|| foreign("no row"))?;
    let mut values = Vec::with_capacity(columns.len());
    for column in &columns {
        values.push(match row.get(column) {
            Some(Value::String(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
            Some(Value::Null) => None,
            _ => return Err(foreign("a value is missing or not a string")),
        });
    }
    let table = match tables
        .iter()
        .find(|t| t.schema == schema && t.name == name && t.columns == columns)
    {
        Some(table) => table.clone(),
        None => {
            let table = Arc::new(Table {
                oid: 0,
                schema: schema.to_string(),
                name: name.to_string(),
                changed_at: columns.iter().position(|c| c == "changed_at"),
                columns,
            });
            tables.retain(|t| !(t.schema == schema && t.name == name));
            tables.push(table.clone());
            table
        }
    };
    Ok(Row { table, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            table: Arc::new(Table {
                oid: 7,
                schema: "public".into(),
                name: "users_audit".into(),
                columns: vec!["z".into(), "changed_at".into(), "a".into()],
                changed_at: Some(1),
            }),
            values: vec![
                Some(Bytes::from("x,\"y\"")),
                Some(Bytes::from("2026-01-01 00:00:00+00")),
                None,
            ],
        }
    }

    #[test]
    fn a_row_comes_back_in_its_column_order_with_its_position() {
        let position = Position {
            commit_lsn: Lsn(0x16B3748),
            commit_time: PgTimestamp(123),
            index: 4,
            end_lsn: Some(Lsn(0x16B3790)),
        };
        let mut h = headers("app db", &position);
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "app db:0/16B3748:4");
        assert_eq!(system_id(Some(&h)), None, "an older version's message");
        h.insert(SYSTEM_ID, u64::MAX.to_string().as_str());
        assert_eq!(system_id(Some(&h)), Some(u64::MAX));
        assert_eq!(super::position(Some(&h), "m").unwrap(), position);
        let body = body(&row(), position.commit_lsn, position.commit_time);
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["table"], "users_audit");
        assert_eq!(json["commit_lsn"], "0/16B3748");
        assert_eq!(json["row"]["z"], "x,\"y\"");
        let mut tables = Vec::new();
        let back = decode_row(&body, &mut tables, "m").unwrap();
        assert_eq!(back.table.columns, row().table.columns);
        assert_eq!(back.table.changed_at, Some(1));
        assert_eq!(back.values, row().values);
        let again = decode_row(&body, &mut tables, "m").unwrap();
        assert!(
            Arc::ptr_eq(&back.table, &again.table),
            "one Table per shape"
        );
    }

    #[test]
    fn the_encoder_writes_the_same_bytes_as_the_json_tree() {
        let mut encoder = Encoder::default();
        let mut odd = (*row().table).clone();
        odd.schema = "s\"c\\h\u{1}é".into();
        odd.columns = vec!["b".into(), "a\n".into(), "é".into()];
        let odd = Row {
            table: Arc::new(odd),
            values: vec![
                None,
                Some(Bytes::from(&b"\xff\x00q\"\t"[..])),
                Some(Bytes::from("ü")),
            ],
        };
        for (row, time) in [(row(), 123), (odd, i64::MAX), (row(), -5)] {
            let lsn = Lsn(0x16B3748);
            let subject = encoder.subject("audit", "db", &row).to_owned();
            assert_eq!(subject, super::subject("audit", "db", &row.table));
            let fast = encoder.body(("audit", "db"), &row, lsn, PgTimestamp(time));
            let tree = body(&row, lsn, PgTimestamp(time));
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&tree)
            );
        }
    }

    #[test]
    fn names_become_subject_tokens() {
        let mut table = (*row().table).clone();
        table.schema = "my.schema".into();
        table.name = "a b>*".into();
        assert_eq!(subject("audit", "db", &table), "audit.db.my_schema.a_b__");
    }

    #[test]
    fn foreign_messages_are_refused_with_a_reason() {
        let err = position(None, "seq 3").unwrap_err();
        assert_eq!(
            err.to_string(),
            "message seq 3 is not an audit-tail row: it has no headers"
        );
        assert!(decode_row(b"{}", &mut Vec::new(), "m").is_err());
    }
}
