//! The stream's signed digests, copied into the archive's out-dir (`stream --signing-key K
//! --nats` publishes each digest to `<stream>_DIGESTS`, subject `<prefix>-digests.<database>`;
//! src/integrity/nats.rs), so that `verify --integrity --out-dir ARCHIVE` walks the same chain
//! over the archive's own files.
//!
//! - `Reader` (digest_reader.rs): a task of its own reads the digests' subject through a
//!   durable consumer (`<--nats-consumer>-digests`) and hands each message over a channel: the
//!   row path never waits for a digest. Until the digests' stream exists (an unsigned stream), it looks again
//!   every few seconds and the archive behaves as before.
//! - `Digests`: at the archive's durable point, after the fsync and the checkpoint, the digest
//!   that follows the newest one on disk is written once every file it names is durable in the
//!   archive past the length it covers: `audit-tail.digests/NNNNNNNN.digest`, the text as the
//!   stream wrote it, atomically and fsynced, then its message is acknowledged. The chain on disk
//!   is what the archive remembers: a digest redelivered after a kill -9 (written, not yet
//!   acknowledged) is at or below the newest on disk and skipped, so none is lost or written
//!   twice.
//! - What is refused (docs/security.md, "The archive's copy"): a digest that does not chain onto
//!   the newest on disk (another number, another `prev`), or, with `--public-key`, one whose
//!   signature does not hold or whose key is not given: never written, an error on stderr and
//!   `audit_tail_archive_digests_refused_total`; the archive waits for the real one (whoever can
//!   publish on the subject can add messages, not take the stream's away) and goes on archiving
//!   rows. A digest that chains and verifies but names bytes the archive's files do not have is
//!   the stream's signed word against the archive's copy: it is written, so that `verify
//!   --integrity` on the archive names the file and line that differ, with an error on stderr
//!   and `audit_tail_archive_digest_mismatches_total`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::NaiveDate;
use ed25519_dalek::VerifyingKey;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest as _, Sha256};

use crate::checkpoint::Checkpoint;
use crate::integrity::digest::{self, Signed};
use crate::integrity::hasher::PrefixHasher;
use crate::integrity::keys::key_id;
use crate::integrity::nats::SEQ_HEADER;
use crate::integrity::{IntegrityError, chain, hex};
use crate::sink::seal::{self, DAYS_DIR, Manifest};

pub use super::digest_reader::{Reader, subject_for};

/// How long a digest may wait for the archive's files before a warning says what it waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// The newest digest on disk: the next one must chain onto it.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    signature: [u8; 64],
    key: String,
}

/// One message claiming to be digest `signed.digest.seq`.
struct Candidate {
    signed: Signed,
    text: String,
    message: jetstream::Message,
}

/// The digests waiting to be written, and what was written.
pub struct Digests {
    out_dir: PathBuf,
    dir_handle: File,
    keys: HashMap<String, VerifyingKey>,
    head: Option<Head>,
    /// By digest number, in the order they came.
    candidates: BTreeMap<u64, Vec<Candidate>>,
    /// The database whose digests are taken (the subject of the first one seen).
    subject: Option<String>,
    /// Each file's hash at the length the newest digest naming it checked.
    hashers: HashMap<String, PrefixHasher>,
    /// The message of the newest digest written, to acknowledge.
    to_ack: Option<jetstream::Message>,
    /// The digest waited for, since when, and whether a warning said so.
    waiting: Option<(u64, Instant, bool)>,
    refused: Option<Counter>,
    mismatches: Option<Counter>,
    written: Option<Counter>,
}

impl Digests {
    /// The chain of `out_dir` as the archive left it; `keys` check signatures (none: unchecked).
    pub fn open(out_dir: &Path, keys: &[VerifyingKey]) -> Result<Digests, IntegrityError> {
        let head = chain::newest(out_dir)?.map(|signed| Head {
            seq: signed.digest.seq,
            signature: signed.signature,
            key: signed.digest.key,
        });
        let dir_handle = File::open(out_dir).map_err(crate::integrity::io_err("open", out_dir))?;
        let metrics = crate::metrics::get();
        let counter = |name: &str, help: &str| metrics.map(|m| m.counter(name, help));
        Ok(Digests {
            out_dir: out_dir.to_path_buf(),
            dir_handle,
            keys: keys.iter().map(|k| (key_id(k), *k)).collect(),
            head,
            candidates: BTreeMap::new(),
            subject: None,
            hashers: HashMap::new(),
            to_ack: None,
            waiting: None,
            refused: counter(
                "archive_digests_refused",
                "digests from JetStream not written: they do not chain onto the archive's newest, or their signature does not hold",
            ),
            mismatches: counter(
                "archive_digest_mismatches",
                "digests written whose bytes the archive's files do not have (verify --integrity names them)",
            ),
            written: counter(
                "archive_digests_written",
                "the stream's digests written into the archive's out-dir",
            ),
        })
    }

    /// The number of the newest digest on disk (0: none).
    pub fn newest(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.seq)
    }

    /// After a NATS failure: what was received and not written is delivered again.
    pub fn forget_received(&mut self) {
        self.candidates.clear();
        self.to_ack = None;
        self.waiting = None;
    }

    /// Takes what the reader has received so far, without waiting.
    pub fn receive_from(&mut self, reader: &mut Reader) {
        while let Ok(message) = reader.messages.try_recv() {
            self.receive(message);
        }
    }

    fn refuse(&self, what: impl std::fmt::Display) {
        tracing::error!("{what}");
        if let Some(c) = &self.refused {
            c.inc();
        }
    }

    fn receive(&mut self, message: jetstream::Message) {
        let subject = message.subject.to_string();
        let stream_seq = message.info().map_or(0, |i| i.stream_sequence);
        match &self.subject {
            Some(s) if *s != subject => {
                self.refuse(format_args!(
                    "a digest on {subject} (JetStream sequence {stream_seq}) is not written: this \
                     archive takes the digests of {s}; archive one database per out-dir \
                     (--nats-filter <prefix>.<database>.>)"
                ));
                return;
            }
            Some(_) => {}
            None => self.subject = Some(subject.clone()),
        }
        let place = PathBuf::from(format!("{subject} (JetStream sequence {stream_seq})"));
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        let signed = match digest::decode(&text, &place) {
            Ok(signed) => signed,
            Err(IntegrityError::CorruptDigest { line, reason, .. }) => {
                self.refuse(format_args!(
                    "{} is not written: it is not a digest (line {line}: {reason})",
                    place.display()
                ));
                return;
            }
            Err(e) => {
                self.refuse(format_args!("{} is not written: {e}", place.display()));
                return;
            }
        };
        let seq = signed.digest.seq;
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SEQ_HEADER))
            .map(|v| v.as_str().to_string());
        if header.as_deref().is_some_and(|h| h != seq.to_string()) {
            self.refuse(format_args!(
                "{} is not written: its {SEQ_HEADER} header says {}, its text digest {seq}",
                place.display(),
                header.unwrap_or_default()
            ));
            return;
        }
        if seq <= self.newest() {
            // Written already (delivered again after a restart), or a later message with a number
            // in use: the archive keeps what it wrote.
            let path = self.out_dir.join(chain::DIGESTS_DIR).join(chain::name(seq));
            if std::fs::read_to_string(&path).is_ok_and(|t| t != text) {
                self.refuse(format_args!(
                    "a second, different digest {seq} in JetStream ({}) is not written: the \
                     archive keeps the one it wrote, the first that chained",
                    place.display()
                ));
            }
            return;
        }
        self.candidates.entry(seq).or_default().push(Candidate {
            signed,
            text,
            message,
        });
    }

    /// At the archive's durable point (`durable` just stored): writes every digest, in order,
    /// that the files now cover.
    pub fn after_durable(&mut self, durable: &Checkpoint) -> Result<(), IntegrityError> {
        loop {
            let next = self.newest() + 1;
            self.candidates.retain(|&seq, _| seq >= next);
            let Some(list) = self.candidates.get_mut(&next) else {
                if let Some((&later, _)) = self.candidates.first_key_value() {
                    self.wait_for(next, || {
                        format!("it is not in JetStream, but digest {later} is")
                    });
                }
                return Ok(());
            };
            // Refuse what does not chain or verify; the first that does is the digest.
            let mut refusals = Vec::new();
            while let Some(c) = list.first() {
                match head_check(self.head.as_ref(), &self.keys, &c.signed) {
                    Ok(()) => break,
                    Err(why) => {
                        refusals.push(why);
                        list.remove(0);
                    }
                }
            }
            for why in refusals {
                self.refuse(format_args!(
                    "digest {next} from JetStream is not written: {why}; the archive waits for the \
                     one that chains and goes on archiving rows"
                ));
            }
            let Some(candidate) = self.candidates.get(&next).and_then(|l| l.first()) else {
                self.candidates.remove(&next);
                return Ok(());
            };
            if let Some(short) = uncovered(&candidate.signed, durable) {
                self.wait_for(next, || short);
                return Ok(());
            }
            let candidate = self
                .candidates
                .remove(&next)
                .and_then(|l| l.into_iter().next())
                .expect("checked above");
            self.write(candidate, durable.safe_csv)?;
        }
    }

    /// Says once, after a while, what digest `seq` waits for.
    fn wait_for(&mut self, seq: u64, why: impl FnOnce() -> String) {
        match &mut self.waiting {
            Some((s, since, warned)) if *s == seq => {
                if !*warned && since.elapsed() >= PATIENCE {
                    *warned = true;
                    tracing::warn!(
                        digest = seq,
                        "digest {seq} waits for {} s: {}",
                        PATIENCE.as_secs(),
                        why()
                    );
                }
            }
            _ => self.waiting = Some((seq, Instant::now(), false)),
        }
    }

    /// Checks the bytes `candidate` names against the archive's files, and writes it.
    fn write(&mut self, candidate: Candidate, safe_csv: bool) -> Result<(), IntegrityError> {
        let d = &candidate.signed.digest;
        for f in &d.files {
            let path = self.out_dir.join(&f.name);
            let mut hasher = self
                .hashers
                .remove(&f.name)
                .filter(|h| h.len <= f.len)
                .unwrap_or_default();
            let whole = hasher.extend_from(&path, f.len)?;
            if whole && hasher.sha256() == f.sha256 && hasher.rowsum == f.rowsum {
                self.hashers.insert(f.name.clone(), hasher);
                continue;
            }
            tracing::error!(
                digest = d.seq, file = %path.display(),
                "digest {} signs {} bytes ({} rows, SHA-256 {}) of {}, which the archive's copy does not hold: it is written all the same, as the stream's word; run `audit-tail verify --integrity --out-dir {} --public-key KEY.pub` to see the line that differs",
                d.seq, f.len, f.rows, hex(&f.sha256), f.name, self.out_dir.display()
            );
            if let Some(c) = &self.mismatches {
                c.inc();
            }
        }
        for (name, sha) in &d.manifests {
            self.manifest(d, name, sha, safe_csv)?;
        }
        chain::store(&self.out_dir, &self.dir_handle, d.seq, &candidate.text)?;
        tracing::debug!(seq = d.seq, "wrote the stream's digest into the archive");
        if let Some(c) = &self.written {
            c.inc();
        }
        self.head = Some(Head {
            seq: d.seq,
            signature: candidate.signed.signature,
            key: d.key.clone(),
        });
        self.waiting = None;
        self.to_ack = Some(candidate.message);
        Ok(())
    }

    /// The sealed day's manifest `name` that `d` signs (SHA-256 `sha`), rebuilt into the out-dir
    /// before the digest: the archive seals no day itself, but a manifest lists, for each file of
    /// its day, what the digests that marked it complete say (length, rows, SHA-256, LSNs), so
    /// it can be written again byte for byte from the chain. Rebuilt only if it hashes to what
    /// `d` signs; else said on stderr, and `verify --integrity` reports the manifest gone.
    fn manifest(
        &self,
        d: &digest::Digest,
        name: &str,
        sha: &[u8; 32],
        safe_csv: bool,
    ) -> Result<(), IntegrityError> {
        let path = self.out_dir.join(DAYS_DIR).join(name);
        if std::fs::read(&path).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == *sha) {
            return Ok(());
        }
        let Some(day) = name
            .strip_suffix(".manifest")
            .and_then(|n| NaiveDate::parse_from_str(n, "%Y%m%d").ok())
        else {
            tracing::error!(
                digest = d.seq,
                "digest {} names {name}, which is not a day's manifest",
                d.seq
            );
            return Ok(());
        };
        let mut manifest = Manifest::new(day, safe_csv);
        let mut take = |files: &[digest::FileEntry]| {
            for f in files.iter().filter(|f| f.complete) {
                if crate::layout::day_of(&f.name) == Some(day) {
                    manifest.files.insert(
                        f.name.clone(),
                        seal::Entry {
                            len: f.len,
                            rows: f.rows,
                            sha256: hex(&f.sha256),
                            lsns: f.lsns,
                        },
                    );
                }
            }
        };
        for (_, digest_path) in chain::list(&self.out_dir)?.0 {
            // A damaged digest is verify's to report; the manifest then does not match.
            if let Ok(signed) = chain::read(&digest_path) {
                take(&signed.digest.files);
            }
        }
        take(&d.files);
        let text = manifest.encode();
        if <[u8; 32]>::from(Sha256::digest(text.as_bytes())) != *sha {
            tracing::error!(
                digest = d.seq,
                "digest {} signs the manifest of {day}, which the archive cannot rebuild from the digests: verify --integrity on the archive reports it gone; check the other days with --since/--until",
                d.seq
            );
            if let Some(c) = &self.mismatches {
                c.inc();
            }
            return Ok(());
        }
        manifest
            .store(&self.out_dir, &self.dir_handle)
            .map_err(|e| IntegrityError::Io {
                action: "write the day's manifest",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        tracing::info!(%day, manifest = %path.display(), "wrote the sealed day's manifest the stream's digest signs");
        Ok(())
    }

    /// Acknowledges the newest digest written (and so every one before it). A lost
    /// acknowledgement costs a redelivery, which the chain on disk skips.
    pub async fn acknowledge(&mut self) {
        if let Some(message) = self.to_ack.take()
            && let Err(e) = message.ack().await
        {
            tracing::debug!(error = %e, "could not acknowledge a digest; it comes again and is skipped");
        }
    }
}

/// What of `signed` the archive's durable files do not cover yet, if anything.
fn uncovered(signed: &Signed, durable: &Checkpoint) -> Option<String> {
    signed.digest.files.iter().find_map(|f| {
        let have = durable.files.get(&f.name).copied();
        match have {
            Some(len) if len >= f.len => None,
            Some(len) => Some(format!(
                "it covers {} bytes of {}, the archive holds {len} durable",
                f.len, f.name
            )),
            None => Some(format!(
                "it covers {} bytes of {}, a file the archive has not written (are its rows \
                 still in JetStream, and within --nats-filter?)",
                f.len, f.name
            )),
        }
    })
}

/// Whether `signed` may follow the newest digest on disk.
fn head_check(
    head: Option<&Head>,
    keys: &HashMap<String, VerifyingKey>,
    signed: &Signed,
) -> Result<(), String> {
    let d = &signed.digest;
    match head {
        None if d.prev.is_some() => {
            return Err(
                "it names a previous digest, and the archive has none (its out-dir holds no \
                 digest 1 to chain onto)"
                    .into(),
            );
        }
        None => {}
        Some(h) if d.prev != Some(h.signature) || d.prev_key.as_deref() != Some(h.key.as_str()) => {
            return Err(format!(
                "it does not chain onto digest {} (its prev is not that digest's signature): a \
                 digest not from the stream, or the stream's out-dir started a new chain",
                h.seq
            ));
        }
        Some(_) => {}
    }
    if keys.is_empty() {
        return Ok(());
    }
    match keys.get(&d.key) {
        None => Err(format!(
            "it is signed by key {}, which is none of the --public-key given",
            d.key
        )),
        Some(key) if !signed.verifies(key) => {
            Err("its signature does not hold: it was not signed by the stream".into())
        }
        Some(_) => Ok(()),
    }
}
