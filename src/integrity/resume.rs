//! The stream's start with signing on: the hash state of every file it goes on with, taken
//! from disk once, and checked against the digests already signed.
//!
//! While it runs, the stream hashes the bytes it writes as it writes them (`hasher::feed` from
//! src/sink/files.rs), so an edit on disk between a row and its digest is not signed. Across a
//! restart (or kill -9) that state is gone: each file of the checkpoint, and of a day sealed but
//! not yet chained, is read again from its first byte. Up to the length the newest digest naming
//! it covers, its SHA-256 must be the one that digest signed, else the file was changed while the
//! stream was down and the stream refuses to sign over it. The bytes past that length (durable
//! before the crash, not yet digested) are taken as they are on disk: the one window left
//! (docs/security.md).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::hasher::PrefixHasher;
use super::{IntegrityError, chain, io_err};

/// What a digest said of a file: its sequence number, the length covered and its SHA-256.
struct Covered {
    seq: u64,
    len: u64,
    sha256: [u8; 32],
}

/// The hash state of each of `targets` (file name → durable length) at that length, re-read
/// from `out_dir`; fails if a file's prefix a digest covers is not the one it signed.
pub(crate) fn rehash(
    out_dir: &Path,
    targets: &BTreeMap<String, u64>,
) -> Result<HashMap<String, PrefixHasher>, IntegrityError> {
    let covered = newest_covers(out_dir, targets)?;
    let mut hashers = HashMap::new();
    for (name, &len) in targets {
        let path = out_dir.join(name);
        let mut hasher = PrefixHasher::default();
        if let Some(c) = covered.get(name) {
            let whole = hasher.extend_from(&path, c.len)?;
            if !whole || hasher.sha256() != c.sha256 {
                let how = if whole {
                    "its SHA-256 differs"
                } else {
                    "it is shorter now"
                };
                return Err(IntegrityError::Rewritten {
                    path,
                    reason: format!(
                        "its first {} bytes are not those digest {} signed: {how}",
                        c.len, c.seq
                    ),
                });
            }
        }
        if !hasher.extend_from(&path, len)? {
            return Err(io_err("read", &path)(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "it holds {} bytes, not the {len} the checkpoint recorded",
                    hasher.len
                ),
            )));
        }
        hashers.insert(name.clone(), hasher);
    }
    Ok(hashers)
}

/// For each of `targets`, what the newest digest naming it covered, newest digest first until
/// every target is found. A digest that cannot be read is verify's to report, and skipped here.
fn newest_covers(
    out_dir: &Path,
    targets: &BTreeMap<String, u64>,
) -> Result<HashMap<String, Covered>, IntegrityError> {
    let mut found = HashMap::new();
    if targets.is_empty() {
        return Ok(found);
    }
    let (digests, _) = chain::list(out_dir)?;
    for (seq, path) in digests.iter().rev() {
        let Ok(signed) = chain::read(path) else {
            continue;
        };
        for entry in signed.digest.files {
            if targets.contains_key(&entry.name) && !found.contains_key(&entry.name) {
                let covered = Covered {
                    seq: *seq,
                    len: entry.len,
                    sha256: entry.sha256,
                };
                found.insert(entry.name, covered);
            }
        }
        if found.len() == targets.len() {
            break;
        }
    }
    Ok(found)
}
