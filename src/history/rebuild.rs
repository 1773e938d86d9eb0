//! A record's changes and its state at a moment, rebuilt from the trail's images.
//!
//! audit.log: INSERT and UPDATE carry the full new row (`new_row`), so the state after any of
//! them is that image; an UPDATE that moved the record to another key (its `old_key` is ours), a
//! DELETE and a TRUNCATE of the table end it. users_audit has one row per changed field: the
//! value of a field at T is the new value of its last change at or before T, or else the old
//! value of its first change after T; a field never changed is unknown, and so is whether the
//! user existed (the trail records updates only).

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

use super::filter::Target;
use super::scan::{Row, Trail};

/// The fields sql/install.sql's trigger audits on users.
pub const USERS_FIELDS: [&str; 3] = ["name", "email", "role"];

/// A key object's names in jsonb's order (shorter names first, then bytewise), the order in which
/// the log prints them and in which `a,b` is read.
pub fn key_names(sample: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = sample.keys().cloned().collect();
    names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    names
}

/// KEY as given (`3`, `a,b` or a JSON object) against a key of the table seen in the trail.
pub fn key_value(text: &str, sample: &Map<String, Value>) -> Result<Value, String> {
    let names = key_names(sample);
    let shape = format!("{{{}}}", names.join(", "));
    if text.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("KEY {text:?} is not valid JSON ({e})"))?;
        let same = value
            .as_object()
            .is_some_and(|o| o.len() == names.len() && names.iter().all(|n| o.contains_key(n)));
        if !same {
            return Err(format!(
                "KEY {text:?} does not name the key's columns {shape}"
            ));
        }
        return Ok(value);
    }
    let parts: Vec<&str> = if names.len() == 1 {
        vec![text]
    } else {
        text.split(',').collect()
    };
    if parts.len() != names.len() {
        return Err(format!(
            "KEY {text:?} has {} values but the key has {} columns {shape}: give them as a,b in that order, or as JSON",
            parts.len(),
            names.len()
        ));
    }
    let mut key = Map::new();
    for (name, part) in names.iter().zip(parts) {
        let value =
            match &sample[name] {
                Value::Number(_) => serde_json::from_str::<serde_json::Number>(part.trim())
                    .map(Value::Number)
                    .map_err(|_| format!("the key column {name} is a number, not {part:?}"))?,
                Value::Bool(_) => Value::Bool(part.trim().parse().map_err(|_| {
                    format!("the key column {name} is true or false, not {part:?}")
                })?),
                _ => Value::String(part.to_string()),
            };
        key.insert(name.clone(), value);
    }
    Ok(Value::Object(key))
}

/// The key as jsonb prints it (`{"id": 3}`), quotes doubled as in the CSV file: a needle; None when
/// jsonb's text of a value cannot be known (a fractional number keeps its written digits).
pub fn key_needle(key: &Value) -> Option<Vec<u8>> {
    let object = key.as_object()?;
    let mut parts = Vec::new();
    for name in key_names(object) {
        let value = &object[&name];
        if value.as_f64().is_some() && !(value.is_i64() || value.is_u64()) {
            return None;
        }
        parts.push(format!("{}: {}", Value::String(name.clone()), value));
    }
    Some(super::filter::csv_bytes(&format!(
        "{{{}}}",
        parts.join(", ")
    )))
}

fn json(row: &Row, column: &str) -> Option<Value> {
    row.get(column).and_then(|t| serde_json::from_str(t).ok())
}

/// Whether an audit.log row of `target` concerns the record `key`: it names it as key or old
/// key, or truncates the table.
pub fn touches(row: &Row, target: &Target, key: &Value) -> bool {
    target.holds(row)
        && (row.get("op") == Some("TRUNCATE")
            || json(row, "key").as_ref() == Some(key)
            || json(row, "old_key").as_ref() == Some(key))
}

/// Whether a row concerns field `field`: a users_audit row of it, or an audit.log row that
/// inserts, deletes or changes it.
pub fn touches_field(row: &Row, field: &str) -> bool {
    match row.trail {
        Trail::Users => row.get("field_changed") == Some(field),
        Trail::Log => match row.get("op") {
            Some("UPDATE") => row
                .get("changed_columns")
                .is_some_and(|c| super::filter::text_array(c).iter().any(|c| c == field)),
            _ => true,
        },
    }
}

/// The state of one audit.log record as its rows go by.
#[derive(Debug, Default)]
pub struct LogState {
    pub row: Option<Value>,
}

impl LogState {
    /// Applies a row for which `touches` holds, in the log's order.
    pub fn apply(&mut self, row: &Row, key: &Value) -> Result<(), super::HistoryError> {
        let image = || {
            json(row, "new_row")
                .filter(Value::is_object)
                .ok_or_else(|| row.malformed("new_row is not a JSON object"))
        };
        self.row = match row.get("op") {
            Some("INSERT") => Some(image()?),
            Some("UPDATE") if json(row, "key").as_ref() == Some(key) => Some(image()?),
            Some("UPDATE" | "DELETE" | "TRUNCATE") => None,
            _ => self.row.take(),
        };
        Ok(())
    }
}

/// The fields of one user as users_audit tells them.
#[derive(Debug, Default)]
pub struct UsersState {
    /// Field → its value at T (None: NULL), once known.
    known: BTreeMap<String, Option<String>>,
    /// Fields already settled by a change at or before T (a later change must not override).
    settled: BTreeMap<String, ()>,
    pub rows: usize,
}

impl UsersState {
    /// Applies a users_audit row of the user, in the trail's order, for the moment `at`.
    pub fn apply(&mut self, row: &Row, at: NaiveDateTime) {
        let (Some(field), Some(when)) = (row.get("field_changed"), row.changed_at()) else {
            return;
        };
        self.rows += 1;
        if when <= at {
            self.known
                .insert(field.to_string(), row.get("new_value").map(str::to_string));
            self.settled.insert(field.to_string(), ());
        } else if !self.known.contains_key(field) {
            self.known
                .insert(field.to_string(), row.get("old_value").map(str::to_string));
        }
    }

    /// The user at T as an object (`id` and the known fields), None when the trail has no row of
    /// the user; and the fields it cannot tell.
    pub fn result(&self, id: &Value) -> (Option<Value>, Vec<String>) {
        let unknown = USERS_FIELDS
            .iter()
            .filter(|f| !self.known.contains_key(**f))
            .map(|f| f.to_string())
            .collect();
        if self.rows == 0 {
            return (None, unknown);
        }
        let mut object = Map::new();
        object.insert("id".to_string(), id.clone());
        for (field, value) in &self.known {
            object.insert(
                field.clone(),
                value.clone().map_or(Value::Null, Value::String),
            );
        }
        (Some(Value::Object(object)), unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_read_in_jsonb_order() {
        let sample = json!({"order_id": 1, "n": "x"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(key_names(&sample), ["n", "order_id"]);
        assert_eq!(
            key_value("a,7", &sample).unwrap(),
            json!({"n": "a", "order_id": 7})
        );
        assert_eq!(
            key_value("{\"order_id\": 7, \"n\": \"a,b\"}", &sample).unwrap(),
            json!({"n": "a,b", "order_id": 7})
        );
        assert!(key_value("7", &sample).unwrap_err().contains("2 columns"));
        assert!(key_value("a,x", &sample).unwrap_err().contains("number"));
        assert!(key_value("{\"id\": 1}", &sample).is_err());
        let single = json!({"id": "k"}).as_object().unwrap().clone();
        assert_eq!(key_value("a,b", &single).unwrap(), json!({"id": "a,b"}));
    }

    #[test]
    fn needles_are_the_key_as_the_file_holds_it() {
        assert_eq!(
            key_needle(&json!({"order_id": 7, "n": "a\"b"})).unwrap(),
            b"{\"\"n\"\": \"\"a\\\"\"b\"\", \"\"order_id\"\": 7}"
        );
        assert_eq!(key_needle(&json!({"x": 1.5})), None);
    }
}
