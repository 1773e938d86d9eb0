//! Tamper evidence: signed, chained digests of the stream's files (issue 16, docs/security.md).
//!
//! Beside the file sink, at its durable point. After the files are fsynced and the checkpoint is
//! stored (src/sink/files.rs `make_durable`), `writer` writes a digest into
//! `audit-tail.digests/NNNNNNNN.digest`: for every file with new durable bytes, the length
//! covered, the rows, the SHA-256 of those bytes, the LSN range, and whether the file is complete
//! (its day sealed, or a later part begun); the previous digest's signature; the signer's key id;
//! an Ed25519 signature over all of it. So the digests form one chain across files, days and
//! restarts, and no digest ever covers bytes that are not durable. `walker` (`verify
//! --integrity`) walks that chain with the public keys and reports every break with its file and
//! line.
//!
//! - `keys`: key files (`keygen`), key ids.
//! - `digest`: the digest's text format, signing and checking one digest.
//! - `chain`: the digests directory: names, listing, the newest digest.
//! - `hasher`: SHA-256, records and the row sum of a file's prefix, grown as the file grows: fed
//!   by the stream with the bytes it writes, so a digest signs what was written, not what is on
//!   disk by then.
//! - `resume`: on start, each open file re-hashed from disk and checked against its last digest.
//! - `writer`: when a digest is due and writing it (the stream's side).
//! - `walker`, `diagnose`, `report`: `verify --integrity`.
//! - `nats`: the off-machine copy in JetStream (`--nats`): publishing, and comparing with it.

pub mod chain;
mod diagnose;
pub mod digest;
pub mod hasher;
pub mod keys;
pub mod nats;
pub mod report;
mod resume;
pub mod walker;
pub mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use keys::{keygen, load_public_key, load_signing_key};
pub use report::IntegrityReport;
pub use walker::{Scope, walk};
pub use writer::DigestWriter;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(
        "could not {action} {path}: {source}{}",
        crate::checkpoint::disk_hint(source)
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} already exists: refusing to overwrite a key; give another --out, or move it aside first"
    )]
    KeyExists { path: PathBuf },
    #[error(
        "{path} is not an audit-tail {what} key ({reason}): give the file `audit-tail keygen` wrote ({hint})"
    )]
    BadKey {
        path: PathBuf,
        what: &'static str,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "{path} can be read by other users (mode {mode:o}): a signing key must be private; run chmod 600 on it"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error(
        "{path} line {line} is not a valid audit-tail digest ({reason}): the stream will not chain onto it; restore it, or run verify --integrity to see what happened"
    )]
    CorruptDigest {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{path} is not what the stream wrote ({reason}): it was changed behind the stream's back, and the stream will not sign over it; run `audit-tail verify --integrity --out-dir DIR --public-key KEY.pub` to see what changed, restore the file from a copy, then start the stream again"
    )]
    Rewritten { path: PathBuf, reason: String },
    #[error("{0} does not exist: give the out-dir of a stream that ran with --signing-key")]
    NoOutDir(PathBuf),
    #[error(
        "could not read the digests in JetStream at {url}: {reason}: check that NATS is up and the --nats* options are those the stream used"
    )]
    NatsRead { url: String, reason: String },
    #[error(transparent)]
    Nats(#[from] crate::sink::nats::NatsError),
    #[error(
        "{0} names no database (its state file has no stream identity): verify --nats needs the out-dir of a stream that has run; give that out-dir"
    )]
    NoDatabase(PathBuf),
    #[error("--since {since} is after --until {until}: give a range that is not empty")]
    Range {
        since: chrono::NaiveDate,
        until: chrono::NaiveDate,
    },
}

pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> IntegrityError {
    let path = path.to_path_buf();
    move |source| IntegrityError::Io {
        action,
        path,
        source,
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The bytes of lowercase hex `text` of exactly `N` bytes.
pub(crate) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}
