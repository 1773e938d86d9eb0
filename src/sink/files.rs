//! Rolling CSV files: one file per table per day in out-dir, `[schema.]<table>_stream_YYYYMMDD.csv`
//! (named by src/layout.rs).
//!
//! Sits after `capture` and before `checkpoint` in the flow. Rows are encoded by the one encoder
//! (`copy_csv`) and written as they arrive, so memory stays flat whatever a transaction's size;
//! the checkpoint records each file's length at the last durable commit, and on start every file
//! is cut back to that length, which removes a half-written transaction and any partial line.
//!
//! The day of a row is the date of its `changed_at` value when the table has that column (so the
//! file for day D holds the rows of the nightly export of D, even for a transaction that began
//! before midnight and committed after), otherwise the UTC date of the commit.
//!
//! A file's first line is the header of column names. When a table's columns change (a Relation
//! message with other columns), its rows go on in a new file for the same day,
//! `<table>_stream_YYYYMMDD-2.csv` (then -3, ...), whose header names the new columns: no file
//! ever holds lines that disagree with its header. A late row of a sealed day (`seal.rs`) also
//! goes on in a new part: a sealed file is never written again.
//!
//! Every file is the stream's own: its name is in the checkpoint (`created`) before the file
//! exists, so on start a file of the stream that holds nothing durable is removed, while a
//! `*_stream_*.csv` that neither the checkpoint nor a day's manifest names is someone else's and
//! is moved into `unknown/`, never deleted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use nix::fcntl::{Flock, FlockArg};

use super::copy_csv::{self, Cells};
use super::seal::{self, Manifest, ManifestError};
use crate::capture::{Row, Table};
use crate::checkpoint::{Checkpoint, CheckpointError, Identity, STATE_FILE, disk_hint};
use crate::layout;
use crate::lsn::{Lsn, PgTimestamp};

const LOCK_FILE: &str = "audit-tail.lock";
/// Where files in out-dir that the stream did not write are moved.
pub const UNKNOWN_DIR: &str = "unknown";
/// Rows are written to the file once this much is buffered (and at every durable point).
const WRITE_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("could not {action} {path}: {source}{}", disk_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another audit-tail is already writing to {0}: run one consumer per out-dir (each with its own slot and out-dir)"
    )]
    Locked(PathBuf),
    #[error("refusing to start: {0}")]
    Refuse(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("could not write a signed digest: {0}")]
    Integrity(#[from] crate::integrity::IntegrityError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SinkError {
    let path = path.to_path_buf();
    move |source| SinkError::Io {
        action,
        path,
        source,
    }
}

struct OpenFile {
    /// The file's name in the out-dir.
    name: String,
    file: File,
    path: PathBuf,
    /// Encoded rows not yet written to the file.
    buffer: Vec<u8>,
    /// The file's length including `buffer`.
    len: u64,
    /// Whether bytes were written since the last fsync.
    unsynced: bool,
    /// Whether a row went here since the last durable point; idle files are closed then.
    touched: bool,
    /// Whether the transaction in progress wrote here (its length goes to the checkpoint at
    /// commit).
    in_txn: bool,
    /// Whether this process created the file and no transaction committed into it yet: the
    /// first commit then starts its LSN range.
    fresh: bool,
    /// With signing on: the hash of the bytes written and committed here, fed from `buffer` as
    /// it is committed or written out (src/integrity/hasher.rs `feed`), never read back.
    hash: Option<crate::integrity::hasher::PrefixHasher>,
}

/// Which file rows of one table and day currently go to, and the header it has.
struct Route {
    file: String,
    header: Vec<u8>,
    /// The table description the route was made for: the same Arc means the same columns, so the
    /// header need not be encoded and compared again for every row.
    table: Arc<Table>,
}

/// The route of the last row: most rows go where the previous one went, and this answers that
/// without building a file name or looking one up.
struct LastRoute {
    table: Arc<Table>,
    day: NaiveDate,
    /// Index into `StreamFiles::open`.
    open: usize,
}

/// The stream files of one out-dir, held under an exclusive lock.
pub struct StreamFiles {
    dir: PathBuf,
    dir_handle: File,
    _lock: Flock<File>,
    /// The files open for appending: a handful (today's per table, yesterday's until the next
    /// durable point), so a Vec searched by name beats a map.
    open: Vec<OpenFile>,
    routes: HashMap<String, Route>,
    last: Option<LastRoute>,
    /// Lengths and end LSN as of the last commit; durable once `make_durable` stored them.
    committed: Checkpoint,
    durable: Checkpoint,
    cells: Cells,
    /// Signs and chains digests of the files at durable points (`--signing-key`).
    signer: Option<crate::integrity::DigestWriter>,
}

impl StreamFiles {
    /// Opens (creating it if needed) and locks `dir`, then cuts every file back to the length of
    /// the last durable checkpoint. Returns the files; `durable_lsn()` says where to resume.
    /// Rows are written as `cells` says; an out-dir whose files were written the other way is
    /// refused, so no file mixes exact and `--safe-csv` cells.
    pub fn open(dir: &Path, cells: Cells) -> Result<StreamFiles, SinkError> {
        fs::create_dir_all(dir).map_err(io_err("create the out-dir", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("create the lock file", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SinkError::Locked(dir.to_path_buf()))?;
        let dir_handle = File::open(dir).map_err(io_err("open the out-dir", dir))?;
        let mut checkpoint = reconcile(dir)?;
        let safe_csv = cells == Cells::Safe;
        let has_files = !checkpoint.files.is_empty() || seal::any(dir);
        if checkpoint.safe_csv != safe_csv && has_files {
            let (was, flag) = if checkpoint.safe_csv {
                ("with --safe-csv", "add --safe-csv")
            } else {
                ("without --safe-csv", "leave out --safe-csv")
            };
            return Err(SinkError::Refuse(format!(
                "the files in {} were written {was}: {flag} to go on with them, or give another \
                 --out-dir",
                dir.display()
            )));
        }
        checkpoint.safe_csv = safe_csv;
        let files = StreamFiles {
            cells,
            dir: dir.to_path_buf(),
            dir_handle,
            _lock: lock,
            open: Vec::new(),
            routes: HashMap::new(),
            last: None,
            committed: checkpoint.clone(),
            durable: checkpoint,
            signer: None,
        };
        // Prove the directory writable now rather than at the first row.
        files.durable.store(&files.dir, &files.dir_handle)?;
        Ok(files)
    }

    /// The end LSN of the last transaction whose rows are all on disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable.lsn
    }

    /// The last durable checkpoint.
    pub fn durable(&self) -> &Checkpoint {
        &self.durable
    }

    /// Records which server, database and slot the stream comes from; durable at the next
    /// `make_durable`.
    pub fn set_identity(&mut self, identity: Identity) {
        self.committed.identity = Some(identity);
    }

    /// Writes signed digests of the files from now on, each right after a durable point
    /// (src/integrity/writer.rs).
    pub fn set_signer(&mut self, signer: crate::integrity::DigestWriter) {
        self.signer = Some(signer);
    }

    /// Whether everything committed is durable.
    pub fn is_durable(&self) -> bool {
        self.committed == self.durable
    }

    /// Appends a row of a transaction committing at `commit_time`.
    pub fn append(&mut self, row: &Row, commit_time: PgTimestamp) -> Result<(), SinkError> {
        let day = row_day(row, commit_time);
        let index = match &self.last {
            Some(last) if last.day == day && Arc::ptr_eq(&last.table, &row.table) => last.open,
            _ => {
                let file = self.find_route(row, day)?;
                let index = self.open_file(&file)?;
                self.last = Some(LastRoute {
                    table: row.table.clone(),
                    day,
                    open: index,
                });
                index
            }
        };
        let open = &mut self.open[index];
        copy_csv::encode_row_as(
            &mut open.buffer,
            row.values.iter().map(|v| v.as_deref()),
            self.cells,
        );
        open.touched = true;
        open.in_txn = true;
        if open.buffer.len() >= WRITE_CHUNK {
            write_out(open)?;
        }
        Ok(())
    }

    /// The file for rows of `row`'s table and `day`: the newest variant whose header names the
    /// table's current columns.
    fn find_route(&mut self, row: &Row, day: NaiveDate) -> Result<String, SinkError> {
        let base = base_name(&row.table, day);
        if let Some(route) = self
            .routes
            .get(&base)
            .filter(|r| Arc::ptr_eq(&r.table, &row.table))
        {
            return Ok(route.file.clone());
        }
        let mut header = Vec::new();
        copy_csv::encode_header(&mut header, &row.table.columns);
        let file = match self.routes.get(&base).filter(|r| r.header == header) {
            Some(route) => route.file.clone(),
            None => self.route(&base, day, &header)?,
        };
        self.routes.insert(
            base,
            Route {
                file: file.clone(),
                header,
                table: row.table.clone(),
            },
        );
        Ok(file)
    }

    /// The transaction whose rows were appended since the last commit is complete.
    pub fn commit(&mut self, end_lsn: Lsn) {
        let committed = &mut self.committed;
        for open in self.open.iter_mut().filter(|o| o.in_txn) {
            open.in_txn = false;
            let len = open.len + open.buffer.len() as u64;
            if let (Some(hash), Some(signer)) = (&mut open.hash, &mut self.signer) {
                hash.feed(open.len, &open.buffer);
                signer.committed(&open.name, hash);
            }
            match committed.files.get_mut(&open.name) {
                Some(committed) => *committed = len,
                None => {
                    committed.files.insert(open.name.clone(), len);
                    committed.created.remove(&open.name);
                }
            }
            // A file without a range yet but with rows from before (a state file from before
            // ranges were recorded) keeps none: its first transaction is unknown.
            match committed.lsns.get_mut(&open.name) {
                Some((_, last)) => *last = (*last).max(end_lsn),
                None if open.fresh => {
                    committed.lsns.insert(open.name.clone(), (end_lsn, end_lsn));
                }
                None => {}
            }
            open.fresh = false;
        }
        self.committed.lsn = self.committed.lsn.max(end_lsn);
    }

    /// Everything before `lsn` is known to hold no row for us (an idle keepalive position while no
    /// transaction is open): it may be acknowledged once durable.
    pub fn advance_idle(&mut self, lsn: Lsn) {
        self.committed.lsn = self.committed.lsn.max(lsn);
    }

    /// Moves past a gap accepted with `--accept-gap`: nothing before `lsn` will come, and the
    /// files are no longer complete for any stretch of time reaching across it, so the covered
    /// stretch starts afresh with the next sample.
    pub fn skip_gap(&mut self, lsn: Lsn) {
        self.advance_idle(lsn);
        self.committed.covered = None;
    }

    /// Grows the stretch of server time the files are complete for by `sample` (see
    /// src/coverage.rs); it is stored with the next checkpoint. Returns whether it grew.
    pub fn cover(&mut self, sample: &crate::coverage::Sample) -> bool {
        let committed = &mut self.committed;
        match crate::coverage::extend(committed.covered.as_ref(), committed.lsn, sample) {
            Some(grown) => {
                committed.covered = Some(grown);
                true
            }
            None => false,
        }
    }

    /// Writes and fsyncs every file, then stores the checkpoint. Returns the durable LSN.
    pub fn make_durable(&mut self) -> Result<Lsn, SinkError> {
        for open in self.open.iter_mut() {
            write_out(open)?;
            if open.unsynced {
                open.file.sync_data().map_err(io_err("fsync", &open.path))?;
                open.unsynced = false;
            }
        }
        if self.committed != self.durable {
            self.committed.store(&self.dir, &self.dir_handle)?;
            self.durable = self.committed.clone();
        }
        // Close files nobody wrote to since the last durable point: yesterday's, mostly. A file
        // of the transaction in progress stays open, since its length is needed at commit.
        self.open
            .retain_mut(|open| std::mem::take(&mut open.touched) || open.in_txn);
        self.last = None;
        let sealed = self.seal_days()?;
        // Part of the durable point, after the checkpoint and before the acknowledgement: a digest
        // covers only what the stored checkpoint names.
        if let Some(signer) = &mut self.signer {
            signer.after_durable(&self.dir, &self.dir_handle, &self.durable, &sealed)?;
        }
        Ok(self.durable.lsn)
    }

    /// Seals every day the covered stretch has passed by `seal::grace()`: its manifest is written
    /// and fsynced, then the checkpoint drops its files. Runs right after a durable point, so the
    /// files' recorded lengths are on disk; a day that the transaction in progress wrote to waits
    /// for the next one. Returns the names of the files sealed.
    fn seal_days(&mut self) -> Result<Vec<String>, SinkError> {
        let Some(covered) = self.durable.covered.clone() else {
            return Ok(Vec::new());
        };
        let busy: Vec<&str> = self
            .open
            .iter()
            .filter(|o| o.in_txn)
            .map(|o| o.name.as_str())
            .chain(self.durable.created.iter().map(String::as_str))
            .collect();
        let mut days: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
        for name in self.durable.files.keys() {
            if let Some(day) = crate::layout::day_of(name) {
                days.entry(day).or_default().push(name.clone());
            }
        }
        days.retain(|day, _| {
            seal::sealable(*day, &covered)
                && !busy.iter().any(|b| crate::layout::day_of(b) == Some(*day))
        });
        if days.is_empty() {
            return Ok(Vec::new());
        }
        for (day, names) in &days {
            let mut manifest = seal::load(&self.dir, *day)?
                .unwrap_or_else(|| Manifest::new(*day, self.durable.safe_csv));
            for name in names {
                let len = self.durable.files[name];
                let (rows, sha256) = seal::digest(&self.dir.join(name), len)?;
                let lsns = self.durable.lsns.get(name).copied();
                manifest.files.insert(
                    name.clone(),
                    seal::Entry {
                        len,
                        rows,
                        sha256,
                        lsns,
                    },
                );
            }
            manifest.store(&self.dir, &self.dir_handle)?;
            tracing::info!(day = %day, files = names.len(), manifest = %seal::path(&self.dir, *day).display(),
                "sealed a day: its files are named in its manifest and leave the state file");
        }
        let sealed: Vec<&String> = days.values().flatten().collect();
        for name in &sealed {
            self.committed.files.remove(*name);
            self.committed.lsns.remove(*name);
        }
        self.open.retain(|o| !sealed.contains(&&o.name));
        self.routes.retain(|_, r| !sealed.contains(&&r.file));
        self.committed.store(&self.dir, &self.dir_handle)?;
        self.durable = self.committed.clone();
        Ok(sealed.into_iter().cloned().collect())
    }

    /// Forgets everything after the durable checkpoint: closes the files and cuts them back to
    /// its lengths, as a restart would. Used before re-streaming after a lost connection, since
    /// the server then sends again every transaction that was not acknowledged.
    pub fn rewind(&mut self) -> Result<(), SinkError> {
        self.open.clear();
        self.routes.clear();
        self.last = None;
        self.durable = reconcile(&self.dir)?;
        self.committed = self.durable.clone();
        if let Some(signer) = &mut self.signer {
            signer.rewind(&self.durable);
        }
        Ok(())
    }

    /// Picks the file for rows of `base` (of `day`) with `header`: the newest variant when it is
    /// not sealed and its header matches, else a new variant.
    fn route(&mut self, base: &str, day: NaiveDate, header: &[u8]) -> Result<String, SinkError> {
        let manifest = seal::load(&self.dir, day)?;
        let sealed = |name: &str| {
            manifest
                .as_ref()
                .is_some_and(|m| m.files.contains_key(name))
        };
        let mut newest = None;
        for n in 1.. {
            let name = variant(base, n);
            if self.committed.files.contains_key(&name)
                || self.open.iter().any(|o| o.name == name)
                || self.dir.join(&name).exists()
                || sealed(&name)
            {
                newest = Some((n, name));
            } else {
                break;
            }
        }
        let Some((n, name)) = newest else {
            let name = variant(base, 1);
            self.create(&name, header)?;
            return Ok(name);
        };
        let next = variant(base, n + 1);
        if sealed(&name) {
            tracing::info!(file = %next, %day,
                "a row of a day already sealed: it goes on in a new part, added to the day's manifest");
        } else if self.file_starts_with(&name, header)? {
            return Ok(name);
        } else {
            tracing::info!(file = %next, "the table's columns changed: its rows go on in a new file");
        }
        self.create(&next, header)?;
        Ok(next)
    }

    fn file_starts_with(&mut self, name: &str, header: &[u8]) -> Result<bool, SinkError> {
        if let Some(open) = self.open.iter_mut().find(|o| o.name == name) {
            write_out(open)?;
        }
        let path = self.dir.join(name);
        let mut start = vec![0u8; header.len()];
        let mut file = File::open(&path).map_err(io_err("open", &path))?;
        match file.read_exact(&mut start) {
            Ok(()) => Ok(start == header),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn create(&mut self, name: &str, header: &[u8]) -> Result<(), SinkError> {
        // Name the file in the durable checkpoint before it exists: a restart then knows it as
        // the stream's own. The durable state is stored as it is plus this name, so no length in
        // it runs ahead of what is fsynced.
        self.durable.created.insert(name.to_string());
        self.committed.created.insert(name.to_string());
        self.durable.store(&self.dir, &self.dir_handle)?;
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        self.open.push(OpenFile {
            name: name.to_string(),
            file,
            path,
            buffer: header.to_vec(),
            len: 0,
            unsynced: true,
            touched: true,
            in_txn: false,
            fresh: true,
            hash: self.signer.as_ref().map(|_| Default::default()),
        });
        Ok(())
    }

    /// The index in `open` of the file `name`, opened for appending if it is not yet.
    fn open_file(&mut self, name: &str) -> Result<usize, SinkError> {
        if let Some(index) = self.open.iter().position(|o| o.name == name) {
            return Ok(index);
        }
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let hash = match &self.signer {
            Some(signer) => Some(signer.state_of(name, &path, len)?),
            None => None,
        };
        self.open.push(OpenFile {
            name: name.to_string(),
            file,
            path,
            buffer: Vec::new(),
            len,
            unsynced: false,
            touched: false,
            in_txn: false,
            fresh: !self.committed.files.contains_key(name),
            hash,
        });
        Ok(self.open.len() - 1)
    }
}

fn write_out(open: &mut OpenFile) -> Result<(), SinkError> {
    if open.buffer.is_empty() {
        return Ok(());
    }
    if let Some(hash) = &mut open.hash {
        hash.feed(open.len, &open.buffer);
    }
    open.file
        .write_all(&open.buffer)
        .map_err(io_err("write", &open.path))?;
    open.len += open.buffer.len() as u64;
    open.buffer.clear();
    open.unsynced = true;
    Ok(())
}

/// The day whose file a row goes to: the date of its `changed_at` value, or the UTC date of its
/// commit when the table has no such column or the value has no ordinary date.
fn row_day(row: &Row, commit_time: PgTimestamp) -> NaiveDate {
    row.table
        .changed_at
        .and_then(|i| row.values.get(i))
        .and_then(|v| v.as_deref())
        .and_then(date_prefix)
        .or_else(|| commit_time.to_datetime().map(|t| t.date_naive()))
        .unwrap_or_default()
}

/// The name of `table`'s files of `day`, without part and extension (src/layout.rs).
fn base_name(table: &Table, day: NaiveDate) -> String {
    layout::base_name(&table.schema, &table.name, day)
}

fn variant(base: &str, n: u32) -> String {
    layout::part_name(base, n)
}

/// The date of a timestamp's text output in ISO DateStyle (`2025-10-21 11:55:51...`); None for
/// anything else (`infinity`, BC dates, years past 9999), which then falls back to the commit day.
fn date_prefix(value: &[u8]) -> Option<NaiveDate> {
    if (value.len() > 10 && value[10] != b' ') || value.ends_with(b" BC") {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        value.get(range)?.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    if value.get(4) != Some(&b'-') || value.get(7) != Some(&b'-') {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)
}

fn is_stream_file(name: &str) -> bool {
    layout::is_stream_file(name)
}

/// Brings the files back to the last checkpoint, or refuses when they cannot be explained by it:
/// files it lists are cut back to their recorded lengths, files it names as created are removed,
/// files a day's manifest names are left alone (sealed), and any other stream file is moved into
/// `unknown/`.
fn reconcile(dir: &Path) -> Result<Checkpoint, SinkError> {
    let checkpoint = Checkpoint::load(dir)?;
    let mut on_disk = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stream_file(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let len = entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
            on_disk.insert(name, len);
        }
    }
    let Some(mut checkpoint) = checkpoint else {
        if let Some(name) = on_disk.keys().next() {
            return Err(SinkError::Refuse(format!(
                "{} holds stream files ({name}, ...) but no {STATE_FILE}, so what in them is complete is unknown: \
                 restore {STATE_FILE}, or move the files aside to start the stream afresh",
                dir.display()
            )));
        }
        return Ok(Checkpoint::default());
    };
    for (name, &len) in &checkpoint.files {
        let path = dir.join(name);
        match on_disk.get(name) {
            None => {
                return Err(SinkError::Refuse(format!(
                    "{} is in {STATE_FILE} but missing: it is a file of a day not sealed yet, so \
                     the stream still writes to it; restore it, or move the out-dir aside to start afresh",
                    path.display()
                )));
            }
            Some(&actual) if actual < len => {
                return Err(SinkError::Refuse(format!(
                    "{} is {actual} bytes, shorter than the {len} bytes recorded in {STATE_FILE}: \
                     it was cut or edited outside audit-tail; restore it, or move the out-dir aside to start afresh",
                    path.display()
                )));
            }
            Some(&actual) if actual > len => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                file.set_len(len).map_err(io_err("truncate", &path))?;
                file.sync_all().map_err(io_err("fsync", &path))?;
                tracing::info!(file = %name, bytes = actual - len,
                    "cut back the rows of a transaction that was not durable; the server sends it again");
            }
            Some(_) => {}
        }
    }
    let mut manifests: BTreeMap<NaiveDate, Option<Manifest>> = BTreeMap::new();
    for name in on_disk
        .keys()
        .filter(|n| !checkpoint.files.contains_key(*n))
    {
        let path = dir.join(name);
        if checkpoint.created.contains(name) {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            tracing::info!(file = %name,
                "removed a file created after the last durable point; the server sends its rows again");
            continue;
        }
        let sealed = match crate::layout::day_of(name) {
            Some(day) => {
                let manifest = match manifests.entry(day) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(seal::load(dir, day)?)
                    }
                };
                manifest
                    .as_ref()
                    .is_some_and(|m| m.files.contains_key(name))
            }
            None => false,
        };
        if !sealed {
            let aside = move_aside(dir, name)?;
            tracing::warn!(file = %name, moved_to = %aside.display(),
                "moved aside a stream file that audit-tail did not write (neither {STATE_FILE} nor a \
                 day's manifest names it): it is kept there, untouched; look at it, and delete it \
                 or put it back where it belongs");
        }
    }
    checkpoint.created.clear();
    Ok(checkpoint)
}

/// Moves `name` from `dir` into `dir/unknown/` (as `name`, or `name.N` when that is taken), and
/// makes the move durable. Returns where it went.
fn move_aside(dir: &Path, name: &str) -> Result<PathBuf, SinkError> {
    let unknown = dir.join(UNKNOWN_DIR);
    fs::create_dir_all(&unknown).map_err(io_err("create", &unknown))?;
    let mut target = unknown.join(name);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = unknown.join(format!("{name}.{n}"));
    }
    let from = dir.join(name);
    fs::rename(&from, &target).map_err(io_err("move aside", &from))?;
    for d in [&unknown, &dir.to_path_buf()] {
        File::open(d)
            .and_then(|h| h.sync_all())
            .map_err(io_err("fsync the directory", d))?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn table(columns: &[&str]) -> Arc<Table> {
        Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "users_audit".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            changed_at: columns.iter().position(|c| *c == "changed_at"),
        })
    }

    fn row(table: &Arc<Table>, values: &[Option<&str>]) -> Row {
        Row {
            table: table.clone(),
            values: values
                .iter()
                .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn rows_go_to_the_day_of_changed_at_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        files
            .append(
                &row(&t, &[Some("1"), Some("2025-10-21 23:59:59.9")]),
                PgTimestamp(0),
            )
            .unwrap();
        files
            .append(
                &row(&t, &[Some("2"), Some("2025-10-22 00:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.commit(Lsn(100));
        assert!(!files.is_durable());
        assert_eq!(files.make_durable().unwrap(), Lsn(100));
        assert!(files.is_durable());
        // A transaction in progress when the process dies...
        files
            .append(
                &row(&t, &[Some("3"), Some("2025-10-22 01:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files
            .append(
                &row(&t, &[Some("4"), Some("2025-10-23 01:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.make_durable().unwrap();
        drop(files);
        assert!(read(dir.path(), "users_audit_stream_20251022.csv").contains("\n3,"));
        // ...is cut back on the next start, and files it created are removed.
        let files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        assert_eq!(files.durable_lsn(), Lsn(100));
        assert_eq!(
            read(dir.path(), "users_audit_stream_20251021.csv"),
            "id,changed_at\n1,2025-10-21 23:59:59.9\n"
        );
        assert_eq!(
            read(dir.path(), "users_audit_stream_20251022.csv"),
            "id,changed_at\n2,2025-10-22 00:00:00\n"
        );
        assert!(!dir.path().join("users_audit_stream_20251023.csv").exists());
    }

    #[test]
    fn an_accepted_gap_ends_the_covered_stretch() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let sample = |lsn, t| crate::coverage::Sample {
            lsn: Lsn(lsn),
            at: at(t),
            zone: Some("UTC".into()),
        };
        files.advance_idle(Lsn(100));
        assert!(files.cover(&sample(100, "2025-10-21T00:00:00Z")));
        files.skip_gap(Lsn(500));
        files.make_durable().unwrap();
        assert_eq!(files.durable().covered, None);
        // The next stretch begins after the gap, not at the first one's start.
        assert!(files.cover(&sample(500, "2025-10-22T00:00:00Z")));
        files.make_durable().unwrap();
        let covered = files.durable().covered.clone().unwrap();
        assert_eq!(covered.from, at("2025-10-22T00:00:00Z"));
    }

    #[test]
    fn without_changed_at_the_commit_day_counts_and_names_are_made_safe() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(Table {
            oid: 2,
            schema: "sales".into(),
            name: "Orders/2".into(),
            columns: vec!["x".into()],
            changed_at: None,
        });
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        // 2000-01-02 12:00 UTC in the protocol's clock.
        let noon = PgTimestamp((36 * 3600) * 1_000_000);
        files.append(&row(&t, &[Some("")]), noon).unwrap();
        files.commit(Lsn(5));
        files.make_durable().unwrap();
        assert_eq!(
            read(dir.path(), "sales.Orders%2F2_stream_20000102.csv"),
            "x\n\"\"\n"
        );
    }

    #[test]
    fn a_schema_change_starts_a_new_file_with_the_new_header() {
        let dir = tempfile::tempdir().unwrap();
        let old = table(&["id", "changed_at"]);
        let new = table(&["id", "changed_at", "ip"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        let day = Some("2025-10-21 10:00:00");
        files
            .append(&row(&old, &[Some("1"), day]), PgTimestamp(0))
            .unwrap();
        files.commit(Lsn(1));
        files.make_durable().unwrap();
        drop(files);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        files
            .append(&row(&old, &[Some("2"), day]), PgTimestamp(0))
            .unwrap();
        files
            .append(
                &row(&new, &[Some("3"), day, Some("10.0.0.1")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.commit(Lsn(2));
        files.make_durable().unwrap();
        assert_eq!(
            read(dir.path(), "users_audit_stream_20251021.csv"),
            "id,changed_at\n1,2025-10-21 10:00:00\n2,2025-10-21 10:00:00\n"
        );
        assert_eq!(
            read(dir.path(), "users_audit_stream_20251021-2.csv"),
            "id,changed_at,ip\n3,2025-10-21 10:00:00,10.0.0.1\n"
        );
    }

    #[test]
    fn hand_edits_and_a_second_consumer_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        assert!(matches!(
            StreamFiles::open(dir.path(), Cells::Exact),
            Err(SinkError::Locked(_))
        ));
        files
            .append(
                &row(&t, &[Some("1"), Some("2025-10-21 10:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.commit(Lsn(1));
        files.make_durable().unwrap();
        drop(files);
        let path = dir.path().join("users_audit_stream_20251021.csv");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(5).unwrap();
        let err = StreamFiles::open(dir.path(), Cells::Exact).err().unwrap();
        assert!(err.to_string().contains("shorter than"), "{err}");
        fs::remove_file(&path).unwrap();
        let err = StreamFiles::open(dir.path(), Cells::Exact).err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
        fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        fs::write(&path, "x\n").unwrap();
        let err = StreamFiles::open(dir.path(), Cells::Exact).err().unwrap();
        assert!(err.to_string().contains("no audit-tail.state"), "{err}");
    }

    fn covered_until(files: &mut StreamFiles, lsn: u64, at: &str) {
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&chrono::Utc);
        files.cover(&crate::coverage::Sample {
            lsn: Lsn(lsn),
            at,
            zone: Some("UTC".into()),
        });
    }

    #[test]
    fn a_covered_day_is_sealed_and_a_late_row_goes_to_a_new_part() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        let day = |id: &str, at: &str| row(&t, &[Some(id), Some(at)]);
        files
            .append(&day("1", "2025-10-21 10:00:00"), PgTimestamp(0))
            .unwrap();
        files.commit(Lsn(100));
        files
            .append(&day("2", "2025-10-21 23:30:00"), PgTimestamp(0))
            .unwrap();
        files
            .append(&day("3", "2025-10-22 00:10:00"), PgTimestamp(0))
            .unwrap();
        files.commit(Lsn(200));
        // Covered to 00:59 the next day: within the grace, nothing sealed.
        covered_until(&mut files, 200, "2025-10-22T00:59:00Z");
        files.make_durable().unwrap();
        assert!(!dir.path().join("audit-tail.days").exists());
        // A transaction in progress wrote to the 21st: its day waits.
        files
            .append(&day("4", "2025-10-21 23:59:00"), PgTimestamp(0))
            .unwrap();
        covered_until(&mut files, 200, "2025-10-22T01:00:00Z");
        files.make_durable().unwrap();
        assert!(!dir.path().join("audit-tail.days").exists());
        files.commit(Lsn(300));
        files.make_durable().unwrap();
        let manifest = seal::load(dir.path(), "2025-10-21".parse().unwrap())
            .unwrap()
            .expect("the 21st is sealed");
        let name = "users_audit_stream_20251021.csv";
        let entry = &manifest.files[name];
        assert_eq!(entry.rows, 3);
        assert_eq!(entry.lsns, Some((Lsn(100), Lsn(300))));
        assert_eq!(
            entry.len,
            fs::metadata(dir.path().join(name)).unwrap().len()
        );
        let state = Checkpoint::load(dir.path()).unwrap().unwrap();
        assert!(!state.files.contains_key(name), "{state:?}");
        assert!(state.files.contains_key("users_audit_stream_20251022.csv"));
        // A late row of the 21st: a new part, sealed in turn and added to the same manifest.
        let before = read(dir.path(), name);
        files
            .append(&day("5", "2025-10-21 12:00:00"), PgTimestamp(0))
            .unwrap();
        files.commit(Lsn(400));
        files.make_durable().unwrap();
        assert_eq!(read(dir.path(), name), before);
        assert_eq!(
            read(dir.path(), "users_audit_stream_20251021-2.csv"),
            "id,changed_at\n5,2025-10-21 12:00:00\n"
        );
        let manifest = seal::load(dir.path(), "2025-10-21".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(
            manifest.files["users_audit_stream_20251021-2.csv"].lsns,
            Some((Lsn(400), Lsn(400)))
        );
        drop(files);
        // Archived: the sealed files go away, and the next start does not mind.
        for n in [name, "users_audit_stream_20251021-2.csv"] {
            fs::remove_file(dir.path().join(n)).unwrap();
        }
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        assert_eq!(files.durable_lsn(), Lsn(400));
        // A later late row is numbered after the archived parts.
        files
            .append(&day("6", "2025-10-21 12:00:00"), PgTimestamp(0))
            .unwrap();
        files.commit(Lsn(500));
        files.make_durable().unwrap();
        assert!(
            dir.path()
                .join("users_audit_stream_20251021-3.csv")
                .exists()
        );
    }

    #[test]
    fn foreign_files_are_moved_aside_and_own_unfinished_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        files
            .append(
                &row(&t, &[Some("1"), Some("2025-10-21 10:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.commit(Lsn(100));
        files.make_durable().unwrap();
        // A file of a transaction that is not committed when the process dies.
        files
            .append(
                &row(&t, &[Some("2"), Some("2025-10-23 10:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.make_durable().unwrap();
        drop(files);
        let own = dir.path().join("users_audit_stream_20251023.csv");
        assert!(own.exists());
        let foreign = "users_audit_stream_20251022.csv";
        fs::write(dir.path().join(foreign), "id,changed_at\n").unwrap();
        fs::write(dir.path().join(UNKNOWN_DIR).with_extension("x"), "").unwrap();
        drop(StreamFiles::open(dir.path(), Cells::Exact).unwrap());
        assert!(!own.exists(), "the stream's own unfinished file is removed");
        assert!(!dir.path().join(foreign).exists());
        assert_eq!(
            read(&dir.path().join(UNKNOWN_DIR), foreign),
            "id,changed_at\n"
        );
        // A second copy of the same name does not overwrite the first.
        fs::write(dir.path().join(foreign), "other\n").unwrap();
        drop(StreamFiles::open(dir.path(), Cells::Exact).unwrap());
        assert_eq!(
            read(&dir.path().join(UNKNOWN_DIR), &format!("{foreign}.2")),
            "other\n"
        );
        let state = Checkpoint::load(dir.path()).unwrap().unwrap();
        assert!(state.created.is_empty(), "{state:?}");
    }

    #[test]
    fn dates_come_only_from_iso_timestamps() {
        assert_eq!(
            date_prefix(b"2025-10-21 11:55:51"),
            NaiveDate::from_ymd_opt(2025, 10, 21)
        );
        assert_eq!(
            date_prefix(b"2025-10-21"),
            NaiveDate::from_ymd_opt(2025, 10, 21)
        );
        assert_eq!(date_prefix(b"infinity"), None);
        assert_eq!(date_prefix(b"12025-10-21 00:00:00"), None);
        assert_eq!(date_prefix(b"2025-13-21 00:00:00"), None);
        assert_eq!(date_prefix(b"2025-02-30 00:00:00"), None);
        assert_eq!(date_prefix(b"0044-03-15 12:00:00+00 BC"), None);
        assert_eq!(date_prefix(b"2025-1x-21 00:00:00"), None);
        assert_eq!(date_prefix(b"2025/10/21 00:00:00"), None);
        assert_eq!(date_prefix(b"2025-10-2"), None);
    }

    #[test]
    fn safe_cells_are_recorded_and_an_out_dir_keeps_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at", "new_value"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Safe).unwrap();
        files
            .append(
                &row(&t, &[Some("1"), Some("2025-10-21 10:00:00"), Some("=1+1")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.commit(Lsn(100));
        files.make_durable().unwrap();
        drop(files);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("users_audit_stream_20251021.csv")).unwrap(),
            "id,changed_at,new_value\n1,2025-10-21 10:00:00,'=1+1\n"
        );
        assert!(Checkpoint::load(dir.path()).unwrap().unwrap().safe_csv);
        let err = StreamFiles::open(dir.path(), Cells::Exact).err().unwrap();
        assert!(err.to_string().contains("add --safe-csv"), "{err}");
        StreamFiles::open(dir.path(), Cells::Safe).unwrap();
        // An out-dir without files yet takes either kind.
        let fresh = tempfile::tempdir().unwrap();
        drop(StreamFiles::open(fresh.path(), Cells::Safe).unwrap());
        StreamFiles::open(fresh.path(), Cells::Exact).unwrap();
    }

    #[test]
    fn a_file_of_the_open_transaction_stays_open_across_durable_points() {
        // make_durable may run in the middle of a transaction (the flush delay); a file that
        // transaction wrote must keep its length for the commit even if untouched since.
        let dir = tempfile::tempdir().unwrap();
        let t = table(&["id", "changed_at"]);
        let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        files
            .append(
                &row(&t, &[Some("1"), Some("2025-10-21 10:00:00")]),
                PgTimestamp(0),
            )
            .unwrap();
        files.make_durable().unwrap();
        files.make_durable().unwrap();
        files.make_durable().unwrap();
        files.commit(Lsn(100));
        files.make_durable().unwrap();
        drop(files);
        let files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
        assert_eq!(files.durable_lsn(), Lsn(100));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("users_audit_stream_20251021.csv")).unwrap(),
            "id,changed_at\n1,2025-10-21 10:00:00\n"
        );
    }
}
