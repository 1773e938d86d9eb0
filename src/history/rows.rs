//! Rows one at a time, whichever copy they come from: the files (scan.rs), a database cursor
//! (db.rs, fetched in chunks so that a large answer uses bounded memory), or rows already read;
//! and the merge of several trails in the order of their changes.

use super::HistoryError;
use super::db::Cursor;
use super::scan::{Row, RowIter};

/// One source of rows.
pub enum Rows<'a> {
    Files(Box<RowIter>),
    Cursor(Cursor<'a>),
    Read(std::vec::IntoIter<Row>),
}

impl Rows<'_> {
    pub async fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        match self {
            Rows::Files(rows) => rows.next_row(),
            Rows::Cursor(cursor) => cursor.next_row().await,
            Rows::Read(rows) => Ok(rows.next()),
        }
    }
}

/// The rows of several trails in the order of their changes.
pub struct Merge<'a> {
    sources: Vec<(Rows<'a>, Option<Row>)>,
}

impl<'a> Merge<'a> {
    pub fn new(sources: Vec<Rows<'a>>) -> Merge<'a> {
        Merge {
            sources: sources.into_iter().map(|s| (s, None)).collect(),
        }
    }

    pub async fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        for (rows, next) in &mut self.sources {
            if next.is_none() {
                *next = rows.next_row().await?;
            }
        }
        let first = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, (_, next))| next.as_ref().map(|row| (row.changed_at(), i)))
            .min()
            .map(|(_, i)| i);
        Ok(first.and_then(|i| self.sources[i].1.take()))
    }
}
