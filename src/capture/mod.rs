//! Capture: pgoutput messages → transactions of rows, in each relation's column order.
//!
//! Sits between `pgoutput` (typed messages, no state) and the sinks. It owns the relation cache
//! (keyed by oid, replaced on every Relation message, so a schema change takes effect at once),
//! the Begin..Commit state machine, and the exactly-once skip rule: a transaction whose commit LSN
//! is below the durable resume position was written before and is dropped whole. No I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::{Lsn, PgTimestamp};
use crate::pgoutput::{self, Message, Value};

/// A published table as its latest Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
    /// Where the `changed_at` column is, if the table has one: it picks the row's day.
    pub changed_at: Option<usize>,
}

/// One inserted row: its table and a text value (None for NULL) per column.
#[derive(Debug, Clone)]
pub struct Row {
    pub table: Arc<Table>,
    pub values: Vec<Option<Bytes>>,
}

/// What a message means for the sinks.
#[derive(Debug, Clone)]
pub enum Event {
    /// A transaction starts whose rows are new to us.
    Begin {
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
    },
    Row(Row),
    /// The transaction is complete; `end_lsn` is the position to acknowledge once it is durable.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
    },
}

/// The server sent something that cannot be a valid stream; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("pgoutput stream out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("row of {table} has {got} values for {expected} columns")]
    ColumnCount {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("row of {table} has a {kind} value in an insert, where only text and NULL are sent")]
    UnexpectedValue { table: String, kind: &'static str },
}

struct Open {
    final_lsn: Lsn,
    skip: bool,
}

/// The state between messages.
pub struct Capture {
    relations: HashMap<u32, Arc<Table>>,
    /// The relation of the last insert: rows come in runs of one table.
    last: Option<Arc<Table>>,
    open: Option<Open>,
    resume_lsn: Lsn,
    warned: HashSet<(u32, &'static str)>,
}

impl Capture {
    /// A capture that drops transactions committed below `resume_lsn`, the durable position.
    pub fn new(resume_lsn: Lsn) -> Capture {
        Capture {
            relations: HashMap::new(),
            last: None,
            open: None,
            resume_lsn,
            warned: HashSet::new(),
        }
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one message; returns what the sinks must do, if anything.
    pub fn handle(&mut self, message: Message) -> Result<Option<Event>, CaptureError> {
        match message {
            Message::Begin(begin) => {
                if self.open.is_some() {
                    return Err(CaptureError::OutOfOrder("Begin inside a transaction"));
                }
                let skip = begin.final_lsn < self.resume_lsn;
                self.open = Some(Open {
                    final_lsn: begin.final_lsn,
                    skip,
                });
                if skip {
                    tracing::debug!(commit_lsn = %begin.final_lsn, resume = %self.resume_lsn,
                        "skipping a transaction that is already on disk");
                    return Ok(None);
                }
                Ok(Some(Event::Begin {
                    commit_lsn: begin.final_lsn,
                    commit_time: begin.commit_time,
                }))
            }
            Message::Commit(commit) => {
                let open = self
                    .open
                    .take()
                    .ok_or(CaptureError::OutOfOrder("Commit outside a transaction"))?;
                if open.final_lsn != commit.commit_lsn {
                    return Err(CaptureError::OutOfOrder("Commit LSN differs from Begin's"));
                }
                if open.skip {
                    return Ok(None);
                }
                self.resume_lsn = self.resume_lsn.max(commit.end_lsn);
                Ok(Some(Event::Commit {
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                }))
            }
            Message::Relation(relation) => {
                let table = table_of(relation);
                self.last = None;
                self.relations.insert(table.oid, Arc::new(table));
                Ok(None)
            }
            Message::Insert(insert) => {
                let open = self
                    .open
                    .as_ref()
                    .ok_or(CaptureError::OutOfOrder("Insert outside a transaction"))?;
                let table = match &self.last {
                    Some(table) if table.oid == insert.relation => table.clone(),
                    _ => {
                        let table = self
                            .relations
                            .get(&insert.relation)
                            .ok_or(CaptureError::UnknownRelation(insert.relation))?
                            .clone();
                        self.last = Some(table.clone());
                        table
                    }
                };
                if open.skip {
                    return Ok(None);
                }
                row(table, insert.new).map(|r| Some(Event::Row(r)))
            }
            Message::Update(u) => self.ignore(u.relation, "UPDATE"),
            Message::Delete(d) => self.ignore(d.relation, "DELETE"),
            Message::Truncate(t) => {
                for oid in t.relations {
                    self.ignore(oid, "TRUNCATE")?;
                }
                Ok(None)
            }
            Message::Type(_) | Message::Origin(_) | Message::Message(_) => Ok(None),
        }
    }

    /// The stream is a log of inserted rows: updates, deletes and truncates of a table published
    /// for them are not rows of it. Say so once per table and kind.
    fn ignore(&mut self, oid: u32, kind: &'static str) -> Result<Option<Event>, CaptureError> {
        if self.open.is_none() {
            return Err(CaptureError::OutOfOrder("change outside a transaction"));
        }
        if self.warned.insert((oid, kind)) {
            let table = self
                .relations
                .get(&oid)
                .map(|t| format!("{}.{}", t.schema, t.name))
                .unwrap_or_else(|| format!("oid {oid}"));
            tracing::warn!(%table, kind,
                "the publication sends {kind} for {table}; the stream records inserted rows only, so these are not written: publish inserts only (WITH (publish = 'insert'))");
        }
        Ok(None)
    }
}

fn table_of(relation: pgoutput::Relation) -> Table {
    let columns: Vec<String> = relation.columns.into_iter().map(|c| c.name).collect();
    Table {
        oid: relation.oid,
        changed_at: columns.iter().position(|c| c == "changed_at"),
        schema: relation.schema,
        name: relation.name,
        columns,
    }
}

fn row(table: Arc<Table>, tuple: pgoutput::Tuple) -> Result<Row, CaptureError> {
    if tuple.0.len() != table.columns.len() {
        return Err(CaptureError::ColumnCount {
            table: table.name.clone(),
            got: tuple.0.len(),
            expected: table.columns.len(),
        });
    }
    let mut values = Vec::with_capacity(tuple.0.len());
    for value in tuple.0 {
        values.push(match value {
            Value::Null => None,
            Value::Text(text) => Some(text),
            Value::Unchanged | Value::Binary(_) => {
                return Err(CaptureError::UnexpectedValue {
                    table: table.name.clone(),
                    kind: if matches!(value, Value::Unchanged) {
                        "unchanged-TOAST"
                    } else {
                        "binary"
                    },
                });
            }
        });
    }
    Ok(Row { table, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Begin, Column, Commit, Insert, Relation, Tuple};

    fn relation(oid: u32, columns: &[&str]) -> Message {
        Message::Relation(Relation {
            oid,
            schema: "public".into(),
            name: "users_audit".into(),
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|c| Column {
                    flags: 0,
                    name: c.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn begin(lsn: u64) -> Message {
        Message::Begin(Begin {
            final_lsn: Lsn(lsn),
            commit_time: PgTimestamp(0),
            xid: 1,
        })
    }

    fn commit(lsn: u64, end: u64) -> Message {
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
        })
    }

    fn insert(oid: u32, values: &[Option<&str>]) -> Message {
        Message::Insert(Insert {
            relation: oid,
            new: Tuple(
                values
                    .iter()
                    .map(|v| match v {
                        Some(s) => Value::Text(Bytes::copy_from_slice(s.as_bytes())),
                        None => Value::Null,
                    })
                    .collect(),
            ),
        })
    }

    #[test]
    fn a_transaction_gives_begin_rows_commit() {
        let mut c = Capture::new(Lsn(0));
        assert!(
            c.handle(relation(1, &["id", "changed_at"]))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            c.handle(begin(100)).unwrap(),
            Some(Event::Begin { .. })
        ));
        assert!(c.in_transaction());
        let Some(Event::Row(r)) = c.handle(insert(1, &[Some("1"), None])).unwrap() else {
            panic!()
        };
        assert_eq!(r.values, vec![Some(Bytes::from("1")), None]);
        assert_eq!(r.table.changed_at, Some(1));
        assert!(matches!(
            c.handle(commit(100, 108)).unwrap(),
            Some(Event::Commit {
                end_lsn: Lsn(108),
                ..
            })
        ));
        assert!(!c.in_transaction());
    }

    #[test]
    fn transactions_below_the_resume_point_are_skipped_and_equal_ones_are_not() {
        let mut c = Capture::new(Lsn(200));
        c.handle(relation(1, &["id"])).unwrap();
        assert!(c.handle(begin(150)).unwrap().is_none());
        assert!(c.handle(insert(1, &[Some("1")])).unwrap().is_none());
        assert!(c.handle(commit(150, 200)).unwrap().is_none());
        // The server re-sends a transaction whose commit LSN equals the point it resumed from:
        // with end LSNs as the resume point, such a transaction was never written.
        assert!(c.handle(begin(200)).unwrap().is_some());
    }

    #[test]
    fn relation_messages_replace_the_cache() {
        let mut c = Capture::new(Lsn(0));
        c.handle(relation(1, &["a"])).unwrap();
        c.handle(relation(1, &["a", "b"])).unwrap();
        c.handle(begin(1)).unwrap();
        let Some(Event::Row(r)) = c.handle(insert(1, &[Some("x"), Some("y")])).unwrap() else {
            panic!()
        };
        assert_eq!(r.table.columns, vec!["a", "b"]);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut c = Capture::new(Lsn(0));
        assert_eq!(
            c.handle(commit(1, 2)).unwrap_err(),
            CaptureError::OutOfOrder("Commit outside a transaction")
        );
        assert!(c.handle(insert(1, &[])).is_err());
        c.handle(begin(5)).unwrap();
        assert_eq!(
            c.handle(insert(9, &[])).unwrap_err(),
            CaptureError::UnknownRelation(9)
        );
        assert!(c.handle(begin(6)).is_err());
        c.handle(relation(1, &["a"])).unwrap();
        assert!(matches!(
            c.handle(insert(1, &[Some("x"), Some("y")])).unwrap_err(),
            CaptureError::ColumnCount { .. }
        ));
        assert!(c.handle(commit(7, 8)).is_err());
    }
}
