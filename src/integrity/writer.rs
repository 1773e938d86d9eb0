//! The stream's side: a digest at the durable point, when one is due.
//!
//! Called by the file sink right after a durable point (`StreamFiles::make_durable`: files
//! fsynced, checkpoint stored, days sealed), and before the acknowledgement, with the checkpoint
//! just stored: a digest covers the lengths that checkpoint names, so it never runs ahead of the
//! data on disk. A digest is due when a file became complete (a later part of its table and day
//! began, or its day was sealed: then the day's manifest joins the digest), or when a file has
//! durable bytes no digest covers yet and the last digest is `interval` old (an hour by default).
//! The SHA-256 of each file grows with it (`hasher`), fed by the file sink with the bytes it
//! writes as it commits them (`committed`): a digest signs what the stream wrote, not what is on
//! disk when the digest is due, so an edit in between is not signed but found by verify. Only on
//! start are the files read back, and checked against the digests already signed (`resume`).
//!
//! On start the newest digest in the out-dir is the chain's head: its signature is the next
//! digest's `prev`, whichever key signed it (a new key starts a new chain that names the old
//! one). A crash between the checkpoint and the digest loses only that digest: the next one
//! covers the same bytes and more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, FileEntry};
use super::hasher::PrefixHasher;
use super::keys::key_id;
use super::{IntegrityError, chain, io_err};
use crate::checkpoint::Checkpoint;
use crate::layout;
use crate::sink::seal;

/// The default for `--digest-interval`: at least one digest per file per hour while rows arrive.
pub const DIGEST_INTERVAL: Duration = Duration::from_secs(3600);

/// Somewhere else a digest goes once it is on disk, out of reach of whoever can write the
/// out-dir (the seam for the NATS sink: each digest to its own subject). A failure is logged,
/// never fatal: the digest on disk is the record.
pub trait DigestPublisher: Send {
    fn publish(&mut self, seq: u64, text: &str) -> Result<(), String>;
}

/// The chain's head: the newest digest.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    signature: [u8; 64],
    key: String,
}

pub struct DigestWriter {
    key: SigningKey,
    key_id: String,
    interval: Duration,
    head: Option<Head>,
    last_at: Instant,
    /// Each file's hash state at its durable length.
    hashers: HashMap<String, PrefixHasher>,
    /// Each file's hash state at its committed length, until the next durable point makes it
    /// durable (or a rewind forgets it).
    pending: HashMap<String, PrefixHasher>,
    /// What the last digests said of each open file: length and whether complete.
    covered: HashMap<String, (u64, bool)>,
    /// The files of the last checkpoint seen.
    known: BTreeSet<String>,
    /// Sealed days whose manifest, as it is now, no digest names yet (a crash between the seal
    /// and its digest): the next digest covers them.
    unchained: Vec<chrono::NaiveDate>,
    publishers: Vec<Box<dyn DigestPublisher>>,
}

impl std::fmt::Debug for DigestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestWriter")
            .field("key_id", &self.key_id)
            .field("head", &self.head.as_ref().map(|h| h.seq))
            .finish()
    }
}

impl DigestWriter {
    /// Takes up the chain of `out_dir`, whose durable checkpoint is `durable`.
    pub fn open(
        out_dir: &Path,
        key: SigningKey,
        interval: Duration,
        durable: &Checkpoint,
    ) -> Result<DigestWriter, IntegrityError> {
        let key_id = key_id(&key.verifying_key());
        let head = chain::newest(out_dir)?.map(|signed| {
            if signed.digest.key != key_id {
                tracing::info!(old_key = %signed.digest.key, new_key = %key_id, seq = signed.digest.seq,
                    "a new signing key: its chain begins by naming the old key's last digest");
            } else if !signed.verifies(&key.verifying_key()) {
                tracing::warn!(seq = signed.digest.seq,
                    "the newest digest does not verify with this key: it was altered; the chain goes on from it, and verify --integrity reports it");
            }
            Head {
                seq: signed.digest.seq,
                signature: signed.signature,
                key: signed.digest.key,
            }
        });
        let unchained = unchained_days(out_dir)?;
        let mut targets: BTreeMap<String, u64> = durable.files.clone().into_iter().collect();
        for &day in &unchained {
            if let Ok(Some(m)) = seal::load(out_dir, day) {
                for (name, entry) in m.files {
                    if out_dir.join(&name).is_file() {
                        targets.entry(name).or_insert(entry.len);
                    }
                }
            }
        }
        let hashers = super::resume::rehash(out_dir, &targets)?;
        Ok(DigestWriter {
            unchained,
            key,
            key_id,
            interval,
            head,
            last_at: Instant::now(),
            hashers,
            pending: HashMap::new(),
            covered: HashMap::new(),
            known: durable.files.keys().cloned().collect(),
            publishers: Vec::new(),
        })
    }

    /// Sends every digest written from now on to `publisher` as well.
    pub fn add_publisher(&mut self, publisher: Box<dyn DigestPublisher>) {
        self.publishers.push(publisher);
    }

    /// The key id digests are signed with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The file sink committed `name` up to `state.len`, `state` being the hash of the bytes it
    /// wrote there.
    pub fn committed(&mut self, name: &str, state: &PrefixHasher) {
        match self.pending.get_mut(name) {
            Some(pending) => pending.clone_from(state),
            None => {
                self.pending.insert(name.to_string(), state.clone());
            }
        }
    }

    /// The hash state to go on from when the file sink opens `name` (at `path`, `len` bytes long)
    /// to append to it. A file the stream knows must still have the length it left it at.
    pub fn state_of(
        &self,
        name: &str,
        path: &Path,
        len: u64,
    ) -> Result<PrefixHasher, IntegrityError> {
        if let Some(known) = self.pending.get(name).or_else(|| self.hashers.get(name)) {
            if known.len == len {
                return Ok(known.clone());
            }
            return Err(IntegrityError::Rewritten {
                path: path.to_path_buf(),
                reason: format!(
                    "it holds {len} bytes, but the stream left it at {}",
                    known.len
                ),
            });
        }
        // A file of the out-dir the stream has not written in this run nor found at its start.
        tracing::debug!(file = %path.display(), "hashing a file from disk to go on appending to it");
        let mut hasher = PrefixHasher::default();
        hasher.extend_from(path, len)?;
        Ok(hasher)
    }

    /// The file sink cut its files back to the lengths of `durable`: what was committed past
    /// them is forgotten, what they name (stored by a durable point that failed before its
    /// digest) is kept.
    pub fn rewind(&mut self, durable: &Checkpoint) {
        for (name, state) in self.pending.drain() {
            if durable.files.get(&name) == Some(&state.len) {
                self.hashers.insert(name, state);
            }
        }
    }

    /// After the durable point that stored `durable` and sealed the files `sealed`: writes a
    /// digest if one is due.
    pub fn after_durable(
        &mut self,
        out_dir: &Path,
        out_dir_handle: &File,
        durable: &Checkpoint,
        sealed: &[String],
    ) -> Result<(), IntegrityError> {
        // What was committed is durable now.
        self.hashers.extend(self.pending.drain());
        let mut files = Vec::new();
        let mut manifests = BTreeMap::new();
        let mut urgent = false;
        // Files that left the checkpoint were sealed: complete, with their day's manifest.
        let gone: BTreeSet<String> = self
            .known
            .iter()
            .filter(|n| !durable.files.contains_key(*n))
            .chain(sealed)
            .cloned()
            .collect();
        let mut gone: Vec<(String, Option<chrono::NaiveDate>)> =
            gone.into_iter().map(|name| (name, None)).collect();
        for day in std::mem::take(&mut self.unchained) {
            if let Ok(Some(m)) = seal::load(out_dir, day) {
                for name in m.files.keys() {
                    if out_dir.join(name).is_file() && !gone.iter().any(|(n, _)| n == name) {
                        gone.push((name.clone(), Some(day)));
                    }
                }
            }
        }
        for (name, _) in gone {
            self.known.remove(&name);
            let Some(day) = layout::day_of(&name) else {
                continue;
            };
            let manifest = seal::load(out_dir, day).map_err(|e| IntegrityError::Io {
                action: "read the manifest for",
                path: out_dir.join(&name),
                source: std::io::Error::other(e.to_string()),
            })?;
            let Some(entry) = manifest.as_ref().and_then(|m| m.files.get(&name)) else {
                continue;
            };
            let path = seal::path(out_dir, day);
            let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
            let manifest_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            manifests.insert(manifest_name, Sha256::digest(&bytes).into());
            files.push(self.entry(out_dir, &name, entry.len, entry.lsns, true)?);
            self.covered.remove(&name);
            self.hashers.remove(&name);
            urgent = true;
        }
        let mut changed = Vec::new();
        for (name, &len) in &durable.files {
            self.known.insert(name.clone());
            let complete = superseded(name, durable);
            match self.covered.get(name) {
                Some(&(covered, was_complete)) if covered == len && was_complete == complete => {}
                _ => {
                    urgent |= complete;
                    changed.push((name.clone(), len, complete));
                }
            }
        }
        let due = urgent || (!changed.is_empty() && self.last_at.elapsed() >= self.interval);
        if !due {
            return Ok(());
        }
        for (name, len, complete) in changed {
            let lsns = durable.lsns.get(&name).copied();
            files.push(self.entry(out_dir, &name, len, lsns, complete)?);
        }
        self.write(
            out_dir,
            out_dir_handle,
            files,
            manifests.into_iter().collect(),
        )
    }

    /// The entry of `name` up to `len`, its hash grown from where the last one stopped.
    fn entry(
        &mut self,
        out_dir: &Path,
        name: &str,
        len: u64,
        lsns: Option<(crate::lsn::Lsn, crate::lsn::Lsn)>,
        complete: bool,
    ) -> Result<FileEntry, IntegrityError> {
        let path = out_dir.join(name);
        let hasher = self.hashers.entry(name.to_string()).or_default();
        if hasher.len != len {
            // Never: every byte the stream writes is fed to its hash as written, and the files
            // it goes on with are hashed on start. Should it happen, hash from disk as before.
            tracing::warn!(file = %name, hashed = hasher.len, len,
                "a file's bytes were not all hashed as they were written; hashing it from disk");
            *hasher = PrefixHasher::default();
        }
        if hasher.len != len && !hasher.extend_from(&path, len)? {
            return Err(io_err("read", &path)(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "it holds {} bytes, not the {len} the checkpoint recorded",
                    hasher.len
                ),
            )));
        }
        self.covered.insert(name.to_string(), (len, complete));
        Ok(FileEntry {
            name: name.to_string(),
            len,
            rows: hasher.rows(),
            sha256: hasher.sha256(),
            rowsum: hasher.rowsum,
            lsns,
            complete,
        })
    }

    fn write(
        &mut self,
        out_dir: &Path,
        out_dir_handle: &File,
        files: Vec<FileEntry>,
        manifests: Vec<(String, [u8; 32])>,
    ) -> Result<(), IntegrityError> {
        let seq = self.head.as_ref().map_or(1, |h| h.seq + 1);
        let digest = Digest {
            seq,
            time: Utc::now(),
            key: self.key_id.clone(),
            prev: self.head.as_ref().map(|h| h.signature),
            prev_key: self.head.as_ref().map(|h| h.key.clone()),
            files,
            manifests,
        };
        let (text, signature) = digest.sign(&self.key);
        let path = chain::store(out_dir, out_dir_handle, seq, &text)?;
        tracing::debug!(seq, files = digest.files.len(), digest = %path.display(), "wrote a signed digest");
        self.head = Some(Head {
            seq,
            signature,
            key: self.key_id.clone(),
        });
        self.last_at = Instant::now();
        for publisher in &mut self.publishers {
            if let Err(e) = publisher.publish(seq, &text) {
                tracing::warn!(seq, error = %e, "could not publish a digest; it is on disk");
            }
        }
        Ok(())
    }
}

/// Whether a later part of `name`'s table and day holds durable rows: then no row goes to `name`
/// again.
fn superseded(name: &str, durable: &Checkpoint) -> bool {
    let Some(file) = layout::parse(name) else {
        return false;
    };
    durable
        .files
        .keys()
        .filter_map(|n| layout::parse(n))
        .any(|other| {
            other.schema == file.schema
                && other.table == file.table
                && other.day == file.day
                && other.part > file.part
        })
}

/// The sealed days of `out_dir` whose manifest, as it is now, no digest names.
fn unchained_days(out_dir: &Path) -> Result<Vec<chrono::NaiveDate>, IntegrityError> {
    let manifests = seal::list(out_dir).map_err(|e| IntegrityError::Io {
        action: "read the manifests in",
        path: out_dir.join(seal::DAYS_DIR),
        source: std::io::Error::other(e.to_string()),
    })?;
    if manifests.is_empty() {
        return Ok(Vec::new());
    }
    let mut chained = BTreeSet::new();
    let (digests, _) = chain::list(out_dir)?;
    for (_, path) in &digests {
        // A damaged digest is verify's to report; the stream chains on regardless.
        if let Ok(signed) = chain::read(path) {
            chained.extend(signed.digest.manifests);
        }
    }
    let mut days = Vec::new();
    for m in manifests {
        let path = seal::path(out_dir, m.day);
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        let name = format!("{}.manifest", m.day.format("%Y%m%d"));
        if !chained.contains(&(name, Sha256::digest(&bytes).into())) {
            days.push(m.day);
        }
    }
    Ok(days)
}
