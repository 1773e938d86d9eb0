//! Reading the stream's files for `history` and `log`: only the days in range, candidate records
//! found by a byte search (memchr's memmem) before any CSV or JSON is parsed, one record in memory
//! at a time.
//!
//! Beside the flow: reads what the file sink wrote (src/layout.rs names the files). A record is a
//! line, or several when a quoted value holds a newline: a newline ends the record only when the
//! quotes before it are balanced, as COPY's CSV quotes every value with a newline or a quote.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chrono::NaiveDate;

use super::HistoryError;
use super::chunk::{ChunkError, Chunks, Searcher, quotes};
use super::progress::Progress;
use crate::verify::csv_read::{CsvError, Reader};

/// The two trails audit-tail streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trail {
    /// public.users_audit: one row per changed field of `users`.
    Users,
    /// audit.log: one row image per changed row of every tracked table.
    Log,
}

impl Trail {
    pub fn schema_table(self) -> (&'static str, &'static str) {
        match self {
            Trail::Users => ("public", "users_audit"),
            Trail::Log => ("audit", "log"),
        }
    }

    /// The columns a file of this trail must have.
    fn required(self) -> &'static [&'static str] {
        match self {
            Trail::Users => &[
                "user_id",
                "changed_at",
                "changed_by",
                "field_changed",
                "old_value",
                "new_value",
            ],
            Trail::Log => &[
                "id",
                "changed_at",
                "op",
                "schema_name",
                "table_name",
                "key",
                "old_key",
                "new_row",
                "old_values",
                "changed_columns",
                "actor",
            ],
        }
    }
}

/// One record of a trail, with its file's column names.
#[derive(Debug, Clone)]
pub struct Row {
    pub trail: Trail,
    pub columns: Rc<[String]>,
    pub fields: Vec<Option<String>>,
    pub file: Rc<Path>,
    /// The record's first line; 0 when only `offset` is known (the line is counted on error).
    pub line: usize,
    /// The record's byte offset in its file, when found by a needle.
    pub offset: Option<u64>,
}

impl Row {
    /// The value of column `name`; None for NULL and for a column the row does not have.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.fields.get(i)?.as_deref()
    }

    /// The day's wall-clock time of the change.
    pub fn changed_at(&self) -> Option<chrono::NaiveDateTime> {
        self.get("changed_at").and_then(super::time::changed_at)
    }

    pub fn malformed(&self, reason: impl Into<String>) -> HistoryError {
        HistoryError::Malformed {
            file: self.file.to_path_buf(),
            line: match self.offset {
                Some(offset) => line_of(&self.file, offset),
                None => self.line,
            },
            reason: reason.into(),
        }
    }
}

/// The files of `trail` in `dir` whose day is within `from..=to`, in day and part order.
pub fn files(
    dir: &Path,
    trail: Trail,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Vec<(NaiveDate, PathBuf)>, HistoryError> {
    let (schema, table) = trail.schema_table();
    if !dir.is_dir() {
        return Err(HistoryError::NoOutDir(dir.to_path_buf()));
    }
    let mut found: Vec<_> = crate::layout::list(dir)
        .map_err(|source| HistoryError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .into_iter()
        .filter(|f| f.schema == schema && f.table == table)
        .filter(|f| from.is_none_or(|d| f.day >= d) && to.is_none_or(|d| f.day <= d))
        .collect();
    found.sort_by_key(|f| (f.day, f.part));
    Ok(found
        .into_iter()
        .map(|f| (f.day, dir.join(f.name())))
        .collect())
}

/// What a scan looks for in each day's bytes: a record is parsed only when it holds one of the
/// needles (none: every record).
pub type Needles = Box<dyn Fn(NaiveDate, &[String]) -> Vec<Vec<u8>>>;

/// The records of a trail's files, in order, that hold one of the needles.
pub struct RowIter {
    trail: Trail,
    files: VecDeque<(NaiveDate, PathBuf)>,
    needles: Needles,
    current: Option<FileReader>,
    /// Bytes of the files done so far, for the progress bar.
    bytes_done: u64,
    progress: Progress,
}

struct FileReader {
    path: Rc<Path>,
    input: BufReader<File>,
    line: usize,
    columns: Rc<[String]>,
    buf: Vec<u8>,
    /// With needles: the chunked search, past the header.
    chunks: Option<Chunks>,
    size: u64,
    /// Bytes read by the record-by-record path.
    read: u64,
}

/// The line of byte `offset` of `path` (1 for the first), counted when an error needs it.
pub fn line_of(path: &Path, offset: u64) -> usize {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    let mut input = std::io::Read::take(BufReader::new(file), offset);
    let mut buf = [0; 64 * 1024];
    let mut lines = 1;
    while let Ok(n) = std::io::Read::read(&mut input, &mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    lines
}

impl RowIter {
    pub fn new(trail: Trail, files: Vec<(NaiveDate, PathBuf)>, needles: Needles) -> RowIter {
        let total = files
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
            .sum();
        RowIter {
            trail,
            files: files.into(),
            needles,
            current: None,
            bytes_done: 0,
            progress: Progress::new(total),
        }
    }

    /// The next matching record, or None after the last file.
    pub fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        loop {
            if self.current.is_none() {
                let Some((day, path)) = self.files.pop_front() else {
                    return Ok(None);
                };
                self.current = Some(FileReader::open(self.trail, day, path, &self.needles)?);
            }
            let reader = self.current.as_mut().expect("opened above");
            let found = reader.next_candidate()?;
            self.progress.at(self.bytes_done + reader.done());
            match found {
                Some(row) => {
                    return Ok(Some(Row {
                        trail: self.trail,
                        ..row
                    }));
                }
                None => {
                    self.bytes_done += reader.size;
                    self.current = None;
                }
            }
        }
    }
}

impl FileReader {
    fn open(
        trail: Trail,
        day: NaiveDate,
        path: PathBuf,
        needles: &Needles,
    ) -> Result<FileReader, HistoryError> {
        let file = File::open(&path).map_err(|source| HistoryError::Io {
            path: path.clone(),
            source,
        })?;
        let mut reader = FileReader {
            path: path.into(),
            input: BufReader::with_capacity(256 * 1024, file),
            line: 1,
            columns: Rc::from(Vec::new()),
            buf: Vec::new(),
            chunks: None,
            size: 0,
            read: 0,
        };
        let header = match reader.next_raw()? {
            Some(_) => reader.parse()?,
            None => {
                return Err(
                    reader.malformed(1, "the file is empty: a stream file starts with its header")
                );
            }
        };
        let columns: Vec<String> = header.into_iter().map(Option::unwrap_or_default).collect();
        if let Some(missing) = trail
            .required()
            .iter()
            .find(|c| !columns.iter().any(|h| h == *c))
        {
            let (schema, table) = trail.schema_table();
            return Err(reader.malformed(
                1,
                &format!("the header has no column {missing}: this is not a stream file of {schema}.{table}"),
            ));
        }
        let needles = needles(day, &columns);
        reader.columns = columns.into();
        reader.size = reader.input.get_ref().metadata().map_or(0, |m| m.len());
        if let Some(searcher) = Searcher::new(&needles) {
            let leftover = reader.input.buffer().to_vec();
            let header = reader.buf.len() as u64;
            let file = reader
                .input
                .get_ref()
                .try_clone()
                .map_err(|source| HistoryError::Io {
                    path: reader.path.to_path_buf(),
                    source,
                })?;
            reader.chunks = Some(Chunks::new(file, &leftover, header, searcher));
        }
        Ok(reader)
    }

    fn malformed(&self, line: usize, reason: &str) -> HistoryError {
        HistoryError::Malformed {
            file: self.path.to_path_buf(),
            line,
            reason: reason.to_string(),
        }
    }

    /// Reads the next record's bytes into `buf`; its first line, or None at the end.
    fn next_raw(&mut self) -> Result<Option<usize>, HistoryError> {
        self.buf.clear();
        let start = self.line;
        loop {
            let n = self
                .input
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| HistoryError::Io {
                    path: self.path.to_path_buf(),
                    source,
                })?;
            self.read += n as u64;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.malformed(
                    start,
                    "the file ends in the middle of a record (a partial last line or an unclosed quote)",
                ));
            }
            if self.buf.ends_with(b"\n") {
                self.line += 1;
                if quotes(&self.buf) == 0 {
                    return Ok(Some(start));
                }
            }
        }
    }

    /// The fields of the record in `buf`.
    fn parse(&self) -> Result<Vec<Option<String>>, HistoryError> {
        let line = self.line - self.buf.iter().filter(|&&b| b == b'\n').count();
        let record = match Reader::new(&self.buf[..]).next_record() {
            Ok(Some(record)) => record,
            Ok(None) => return Err(self.malformed(line, "an empty record")),
            Err(CsvError::Malformed { reason, .. }) => return Err(self.malformed(line, &reason)),
            Err(CsvError::Io(source)) => {
                return Err(HistoryError::Io {
                    path: self.path.to_path_buf(),
                    source,
                });
            }
        };
        record
            .fields
            .into_iter()
            .map(|f| {
                f.map(String::from_utf8)
                    .transpose()
                    .map_err(|_| self.malformed(line, "a value is not UTF-8"))
            })
            .collect()
    }

    /// The file offset read so far, for the progress bar.
    fn done(&self) -> u64 {
        match &self.chunks {
            Some(chunks) => chunks.done(),
            None => self.read,
        }
    }

    /// The next record holding a needle, found by the chunked search, parsed.
    fn next_hit(&mut self) -> Result<Option<Row>, HistoryError> {
        let chunks = self.chunks.as_mut().expect("a search has chunks");
        let (offset, record) = match chunks.next_hit() {
            Ok(Some(hit)) => hit,
            Ok(None) => return Ok(None),
            Err(ChunkError::Io(source)) => {
                return Err(HistoryError::Io {
                    path: self.path.to_path_buf(),
                    source,
                });
            }
            Err(ChunkError::Truncated { offset }) => {
                return Err(self.malformed(
                    line_of(&self.path, offset),
                    "the file ends in the middle of a record (a partial last line or an unclosed quote)",
                ));
            }
        };
        self.buf.clear();
        self.buf.extend_from_slice(record);
        let fields = self
            .parse_fields()
            .map_err(|reason| self.malformed(line_of(&self.path, offset), &reason))?;
        Ok(Some(Row {
            trail: Trail::Log,
            columns: self.columns.clone(),
            fields,
            file: self.path.clone(),
            line: 0,
            offset: Some(offset),
        }))
    }

    /// The fields of the record in `buf`, as many as the header's columns.
    fn parse_fields(&self) -> Result<Vec<Option<String>>, String> {
        let record = match Reader::new(&self.buf[..]).next_record() {
            Ok(Some(record)) => record,
            Ok(None) => return Err("an empty record".into()),
            Err(CsvError::Malformed { reason, .. }) => return Err(reason),
            Err(CsvError::Io(e)) => return Err(e.to_string()),
        };
        if record.fields.len() != self.columns.len() {
            return Err(format!(
                "{} fields where the header has {} columns",
                record.fields.len(),
                self.columns.len()
            ));
        }
        record
            .fields
            .into_iter()
            .map(|f| {
                f.map(String::from_utf8)
                    .transpose()
                    .map_err(|_| "a value is not UTF-8".to_string())
            })
            .collect()
    }

    /// The next record holding a needle (every record when there are none), parsed.
    fn next_candidate(&mut self) -> Result<Option<Row>, HistoryError> {
        if self.chunks.is_some() {
            return self.next_hit();
        }
        let Some(line) = self.next_raw()? else {
            return Ok(None);
        };
        let fields = self.parse()?;
        if fields.len() != self.columns.len() {
            return Err(self.malformed(
                line,
                &format!(
                    "{} fields where the header has {} columns",
                    fields.len(),
                    self.columns.len()
                ),
            ));
        }
        Ok(Some(Row {
            trail: Trail::Log,
            columns: self.columns.clone(),
            fields,
            file: self.path.clone(),
            line,
            offset: None,
        }))
    }
}
