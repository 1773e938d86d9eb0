//! The archive's reading of a row message's body: the same row as
//! `sink::nats::message::decode_row`, without a `serde_json::Value` per message (a map and a
//! `String` per key and value, and the column names copied again): that was the largest part of
//! the archive's CPU (`cargo bench --bench nats` under `perf record`). Strings are borrowed from
//! the body unless they hold escapes; the table's column names are compared, not copied, once
//! the table is known. `position` reads the headers in one pass, as `message::position` does
//! with a hashed look-up per name.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::capture::{Row, Table};
use crate::lsn::{Lsn, PgTimestamp};
use crate::sink::nats::message::{COMMIT_LSN, COMMIT_TIME, END_LSN, INDEX, Position};

/// Where a message sits, as `sink::nats::message::position` reads it; `Err` says why not.
pub fn position(headers: Option<&async_nats::HeaderMap>) -> Result<Position, String> {
    let headers = headers.ok_or("it has no headers")?;
    let (mut lsn, mut time, mut index, mut end) = (None, None, None, None);
    for (name, values) in headers.iter() {
        let slot = match AsRef::<str>::as_ref(name) {
            COMMIT_LSN => &mut lsn,
            COMMIT_TIME => &mut time,
            INDEX => &mut index,
            END_LSN => &mut end,
            _ => continue,
        };
        *slot = values.first().map(|v| v.as_str());
    }
    fn need<'a>(name: &str, v: Option<&'a str>) -> Result<&'a str, String> {
        v.ok_or_else(|| format!("no {name} header"))
    }
    let parse_lsn =
        |name: &str, text: &str| text.parse::<Lsn>().map_err(|e| format!("{name}: {e}"));
    let number = |name: &str, text: &str| {
        text.parse::<i64>()
            .map_err(|e| format!("{name} {text:?}: {e}"))
    };
    Ok(Position {
        commit_lsn: parse_lsn(COMMIT_LSN, need(COMMIT_LSN, lsn)?)?,
        commit_time: PgTimestamp(number(COMMIT_TIME, need(COMMIT_TIME, time)?)?),
        index: number(INDEX, need(INDEX, index)?)?
            .try_into()
            .map_err(|_| format!("negative {INDEX}"))?,
        end_lsn: end.map(|t| parse_lsn(END_LSN, t)).transpose()?,
    })
}

/// A JSON string, borrowed from the body when it has no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// A JSON array of strings.
struct Texts<'a>(Vec<Text<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Texts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Texts<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts<'a>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(t) = seq.next_element::<Text<'a>>()? {
                    out.push(t);
                }
                Ok(Texts(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A JSON object of strings or nulls, in its order.
struct Fields<'a>(Vec<(Text<'a>, Option<Text<'a>>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings or nulls")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'a>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Text<'a>, Option<Text<'a>>>()? {
                    out.push(entry);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The keys of the body the archive reads; the others (operation, LSN, time, context) are
/// skipped.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    schema: Option<Text<'a>>,
    #[serde(borrow)]
    table: Option<Text<'a>>,
    #[serde(borrow)]
    columns: Option<Texts<'a>>,
    #[serde(borrow)]
    row: Option<Fields<'a>>,
}

/// The table and values of a row body, as `decode_row` reads them; `Err` says why it is not one.
/// `tables` keeps one `Table` per shape, so rows of the same table share it (the file sink
/// routes by the `Arc`).
pub fn decode_row(body: &[u8], tables: &mut Vec<Arc<Table>>) -> Result<Row, String> {
    let body: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (Some(schema), Some(name)) = (body.schema, body.table) else {
        return Err("no schema or table".into());
    };
    let (schema, name) = (schema.0, name.0);
    let columns = body.columns.ok_or("no columns")?.0;
    let row = body.row.ok_or("no row")?.0;
    let mut values = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        // The stream writes the row's keys in the columns' order: look there first.
        let field = match row.get(i) {
            Some((key, value)) if key.0 == column.0 => Some(value),
            _ => row
                .iter()
                .find(|(key, _)| key.0 == column.0)
                .map(|(_, v)| v),
        };
        values.push(match field {
            Some(Some(text)) => Some(Bytes::copy_from_slice(text.0.as_bytes())),
            Some(None) => None,
            None => return Err("a value is missing or not a string".into()),
        });
    }
    let same_columns = |t: &Table| {
        t.columns.len() == columns.len() && t.columns.iter().zip(&columns).all(|(a, b)| *a == b.0)
    };
    let table = match tables
        .iter()
        .find(|t| t.schema == schema && t.name == name && same_columns(t))
    {
        Some(table) => table.clone(),
        None => {
            let columns: Vec<String> = columns.into_iter().map(|c| c.0.into_owned()).collect();
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
    use crate::sink::nats::message;

    /// What `message::decode_row` makes of `body`, or its error's reason.
    fn reference(body: &str, tables: &mut Vec<Arc<Table>>) -> Result<Row, ()> {
        message::decode_row(body.as_bytes(), tables, "m").map_err(|_| ())
    }

    #[test]
    fn rows_decode_as_the_sinks_decoder_reads_them_and_tables_are_shared() {
        let bodies = [
            r#"{"schema":"public","table":"users_audit","operation":"INSERT","columns":["id","changed_at","new_value"],"row":{"id":"1","changed_at":"2025-10-21 10:00:00+00","new_value":null},"context":{"a":[1,2,{"b":null}]}}"#,
            // Escapes, unicode, keys in another order, an empty string.
            r#"{"row":{"new_value":"say \"hi\"\nИван \u00e9\\","changed_at":"","id":"2"},"columns":["id","changed_at","new_value"],"table":"users_audit","schema":"public"}"#,
            // Another shape of the same table (a column added): a new Table.
            r#"{"schema":"public","table":"users_audit","columns":["id","changed_at","new_value","note"],"row":{"id":"3","changed_at":"x","new_value":"y","note":"z"}}"#,
            // A schema and table names with dots and escapes.
            r#"{"schema":"my.schema","table":"t\"1","columns":["a"],"row":{"a":"v"}}"#,
        ];
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for body in bodies {
            let a = decode_row(body.as_bytes(), &mut ours).unwrap();
            let b = reference(body, &mut theirs).unwrap();
            assert_eq!(a.values, b.values, "{body}");
            assert_eq!(a.table.schema, b.table.schema);
            assert_eq!(a.table.name, b.table.name);
            assert_eq!(a.table.columns, b.table.columns);
            assert_eq!(a.table.changed_at, b.table.changed_at);
        }
        assert_eq!(ours.len(), theirs.len());
        let first = decode_row(bodies[2].as_bytes(), &mut ours).unwrap();
        let again = decode_row(bodies[2].as_bytes(), &mut ours).unwrap();
        assert!(
            Arc::ptr_eq(&first.table, &again.table),
            "one Table per shape"
        );
    }

    #[test]
    fn positions_read_as_the_sinks_reader_reads_them() {
        for expected in [
            Position {
                commit_lsn: Lsn(0x1_0000_0020),
                commit_time: PgTimestamp(814_000_000_123_456),
                index: 0,
                end_lsn: None,
            },
            Position {
                commit_lsn: Lsn(0x10),
                commit_time: PgTimestamp(-5),
                index: 41,
                end_lsn: Some(Lsn(0x2_0000_0000)),
            },
        ] {
            let headers = message::headers("db", &expected);
            assert_eq!(position(Some(&headers)), Ok(expected));
            assert_eq!(message::position(Some(&headers), "m").unwrap(), expected);
        }
        assert!(position(None).is_err());
        for (name, value) in [(INDEX, "-1"), (COMMIT_LSN, "x"), (COMMIT_TIME, "1.5")] {
            let mut headers = message::headers(
                "db",
                &Position {
                    commit_lsn: Lsn(1),
                    commit_time: PgTimestamp(1),
                    index: 1,
                    end_lsn: None,
                },
            );
            headers.insert(name, value);
            assert!(position(Some(&headers)).is_err(), "{name} {value}");
            assert!(message::position(Some(&headers), "m").is_err());
        }
        assert_eq!(
            position(Some(&async_nats::HeaderMap::new())),
            Err(format!("no {COMMIT_LSN} header"))
        );
    }

    #[test]
    fn what_the_sinks_decoder_refuses_is_refused() {
        for body in [
            "not json",
            r#"{"table":"t","columns":["a"],"row":{"a":"v"}}"#,
            r#"{"schema":"s","table":"t","row":{"a":"v"}}"#,
            r#"{"schema":"s","table":"t","columns":["a"]}"#,
            r#"{"schema":"s","table":"t","columns":["a"],"row":{"b":"v"}}"#,
            r#"{"schema":"s","table":"t","columns":["a"],"row":{"a":1}}"#,
            r#"{"schema":"s","table":"t","columns":[1],"row":{"a":"v"}}"#,
            r#"{"schema":1,"table":"t","columns":["a"],"row":{"a":"v"}}"#,
        ] {
            assert!(reference(body, &mut Vec::new()).is_err(), "{body}");
            assert!(
                decode_row(body.as_bytes(), &mut Vec::new()).is_err(),
                "{body}"
            );
        }
    }
}
