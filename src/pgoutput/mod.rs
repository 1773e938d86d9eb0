//! pgoutput protocol version 1: the bytes of one XLogData payload → one typed message. No I/O.
//!
//! Sits between `replication` (which unwraps CopyData and XLogData) and `capture` (which assembles
//! transactions). Layouts follow PostgreSQL's "Logical Replication Message Formats"; integers are
//! big-endian, strings NUL-terminated, LSNs and timestamps Int64. Every length and count is
//! checked against the bytes left before anything is allocated, and trailing bytes are an error,
//! so no input can panic the decoder (see the property test below and `fuzz/`).

mod reader;

use bytes::Bytes;

use crate::lsn::{Lsn, PgTimestamp};
use reader::Reader;

const TAG_BEGIN: u8 = b'B';
const TAG_COMMIT: u8 = b'C';
const TAG_ORIGIN: u8 = b'O';
const TAG_RELATION: u8 = b'R';
const TAG_TYPE: u8 = b'Y';
const TAG_INSERT: u8 = b'I';
const TAG_UPDATE: u8 = b'U';
const TAG_DELETE: u8 = b'D';
const TAG_TRUNCATE: u8 = b'T';
const TAG_MESSAGE: u8 = b'M';

const TUPLE_NEW: u8 = b'N';
const TUPLE_KEY: u8 = b'K';
const TUPLE_OLD: u8 = b'O';

const VALUE_NULL: u8 = b'n';
const VALUE_UNCHANGED: u8 = b'u';
const VALUE_TEXT: u8 = b't';
const VALUE_BINARY: u8 = b'b';

/// Why a pgoutput message could not be decoded. The stream cannot go on past such a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("pgoutput message cut short reading {what}: needs {needed} bytes, {left} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("pgoutput {what} is not NUL-terminated")]
    Unterminated { what: &'static str },
    #[error("pgoutput {what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("pgoutput {what} count {count} does not fit the message")]
    BadCount { what: &'static str, count: i64 },
    #[error("pgoutput {what}: unexpected marker {marker:#04x}")]
    BadMarker { what: &'static str, marker: u8 },
    #[error("pgoutput {what} has {left} trailing bytes")]
    TrailingBytes { what: &'static str, left: usize },
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
}

/// `B`: Int64 final (commit) LSN · Int64 commit time · Int32 xid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// `C`: Int8 flags · Int64 commit LSN · Int64 end LSN · Int64 commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// `O`: Int64 LSN · String name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub lsn: Lsn,
    pub name: String,
}

/// `R`: Int32 oid · String schema · String name · Int8 replica identity · Int16 ncols · columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// A column of a Relation: Int8 flags (1 = part of the key) · String name · Int32 type oid ·
/// Int32 type modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// `Y`: Int32 oid · String schema · String name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

/// `I`: Int32 relation oid · `N` · TupleData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation: u32,
    pub new: Tuple,
}

/// `U`: Int32 relation oid · optional (`K` or `O` · TupleData) · `N` · TupleData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation: u32,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// `D`: Int32 relation oid · (`K` or `O`) · TupleData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation: u32,
    pub old: OldTuple,
}

/// The old row of an update or delete: the key columns only (`K`) or the whole row (`O`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

/// `T`: Int32 nrels · Int8 options · Int32 oid × nrels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub options: u8,
    pub relations: Vec<u32>,
}

/// `M`: Int8 flags · Int64 LSN · String prefix · Int32 length · content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// TupleData: Int16 ncols · per column a kind byte and, for text and binary, Int32 length + bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value the server did not send (updates only).
    Unchanged,
    /// The type's text output, in the connection's client_encoding.
    Text(Bytes),
    Binary(Bytes),
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data);
    if r.remaining() == 0 {
        return Err(DecodeError::Empty);
    }
    let tag = r.u8("tag")?;
    let message = match tag {
        TAG_BEGIN => Message::Begin(Begin {
            final_lsn: r.lsn("Begin final LSN")?,
            commit_time: r.timestamp("Begin commit time")?,
            xid: r.u32("Begin xid")?,
        }),
        TAG_COMMIT => Message::Commit(Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.lsn("Commit LSN")?,
            end_lsn: r.lsn("Commit end LSN")?,
            commit_time: r.timestamp("Commit time")?,
        }),
        TAG_ORIGIN => Message::Origin(Origin {
            lsn: r.lsn("Origin LSN")?,
            name: r.cstring("Origin name")?,
        }),
        TAG_RELATION => Message::Relation(relation(&mut r)?),
        TAG_TYPE => Message::Type(Type {
            oid: r.u32("Type oid")?,
            schema: r.cstring("Type schema")?,
            name: r.cstring("Type name")?,
        }),
        TAG_INSERT => {
            let relation = r.u32("Insert relation")?;
            expect_marker(&mut r, TUPLE_NEW, "Insert")?;
            Message::Insert(Insert {
                relation,
                new: tuple(&mut r)?,
            })
        }
        TAG_UPDATE => Message::Update(update(&mut r)?),
        TAG_DELETE => {
            let relation = r.u32("Delete relation")?;
            let old = match r.u8("Delete marker")? {
                TUPLE_KEY => OldTuple::Key(tuple(&mut r)?),
                TUPLE_OLD => OldTuple::Full(tuple(&mut r)?),
                marker => {
                    return Err(DecodeError::BadMarker {
                        what: "Delete",
                        marker,
                    });
                }
            };
            Message::Delete(Delete { relation, old })
        }
        TAG_TRUNCATE => {
            let n = r.i32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            let n = r.count(i64::from(n), 4, "Truncate relation")?;
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32("Truncate relation")?);
            }
            Message::Truncate(Truncate { options, relations })
        }
        TAG_MESSAGE => {
            let flags = r.u8("Message flags")?;
            let lsn = r.lsn("Message LSN")?;
            let prefix = r.cstring("Message prefix")?;
            let len = r.i32("Message length")?;
            let len = r.count(i64::from(len), 1, "Message content byte")?;
            let content = r.bytes(len, "Message content")?;
            Message::Message(LogicalMessage {
                flags,
                lsn,
                prefix,
                content,
            })
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    r.finish("message")?;
    Ok(message)
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let oid = r.u32("Relation oid")?;
    let schema = r.cstring("Relation schema")?;
    let name = r.cstring("Relation name")?;
    let replica_identity = r.u8("Relation replica identity")?;
    let n = r.i16("Relation column count")?;
    // A column is at least 10 bytes: flags, an empty name's NUL, type oid, type modifier.
    let n = r.count(i64::from(n), 10, "Relation column")?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.cstring("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn update(r: &mut Reader) -> Result<Update, DecodeError> {
    let relation = r.u32("Update relation")?;
    let (old, marker) = match r.u8("Update marker")? {
        TUPLE_KEY => (Some(OldTuple::Key(tuple(r)?)), r.u8("Update marker")?),
        TUPLE_OLD => (Some(OldTuple::Full(tuple(r)?)), r.u8("Update marker")?),
        marker => (None, marker),
    };
    if marker != TUPLE_NEW {
        return Err(DecodeError::BadMarker {
            what: "Update",
            marker,
        });
    }
    Ok(Update {
        relation,
        old,
        new: tuple(r)?,
    })
}

fn expect_marker(r: &mut Reader, expected: u8, what: &'static str) -> Result<(), DecodeError> {
    match r.u8(what)? {
        m if m == expected => Ok(()),
        marker => Err(DecodeError::BadMarker { what, marker }),
    }
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let n = r.i16("TupleData column count")?;
    let n = r.count(i64::from(n), 1, "TupleData column")?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let value = match r.u8("TupleData column kind")? {
            VALUE_NULL => Value::Null,
            VALUE_UNCHANGED => Value::Unchanged,
            kind @ (VALUE_TEXT | VALUE_BINARY) => {
                let len = r.i32("TupleData value length")?;
                let len = r.count(i64::from(len), 1, "TupleData value byte")?;
                let bytes = r.bytes(len, "TupleData value")?;
                if kind == VALUE_TEXT {
                    Value::Text(bytes)
                } else {
                    Value::Binary(bytes)
                }
            }
            marker => {
                return Err(DecodeError::BadMarker {
                    what: "TupleData column kind",
                    marker,
                });
            }
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

#[cfg(test)]
mod tests;
