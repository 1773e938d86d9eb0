//! One digest: what it says, its text, its signature.
//!
//! Format (text, one fact per line, like the state file and the day manifests):
//! ```text
//! audit-tail digest 1
//! seq 42
//! time 2025-10-21T10:00:00.000000Z
//! key 3f2a9c0d11e4b7a8
//! prev <128 hex digits: the previous digest's signature, or - for the first>
//! prev-key <the previous digest's key id, or ->
//! file users_audit_stream_20251021.csv 1234 17 <sha256 hex> 8c1f00aa00000001 0/1A2B000 0/1A2B3C8 open
//! manifest 20251021.manifest <sha256 hex>
//! signature <128 hex digits>
//! ```
//! A `file` line: the name, the length covered, the rows (CSV records after the header) in it,
//! the SHA-256 of those bytes, the row sum (the wrapping sum of a 64-bit FNV-1a of every record,
//! which tells reordered rows from edited ones), the end LSNs of its first and last transaction
//! (`-` `-` when unknown), and `complete` once no row will be added (its day sealed, or a later
//! part begun) or `open`. A `manifest` line names a sealed day's manifest and its SHA-256, so the
//! seal joins the chain. The signature is Ed25519 over every byte before the `signature` line,
//! by the key `key` names; a digest whose key differs from `prev-key` begins a new key's chain
//! that names the old one (a key rotation).

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{IntegrityError, hex, unhex};
use crate::checkpoint::is_plain_file_name;
use crate::lsn::Lsn;

const MAGIC: &str = "audit-tail digest 1";

/// What one file's entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub len: u64,
    pub rows: u64,
    pub sha256: [u8; 32],
    pub rowsum: u64,
    pub lsns: Option<(Lsn, Lsn)>,
    pub complete: bool,
}

/// A digest before or after signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub key: String,
    pub prev: Option<[u8; 64]>,
    pub prev_key: Option<String>,
    pub files: Vec<FileEntry>,
    /// Sealed days' manifests: name in `audit-tail.days/` and SHA-256.
    pub manifests: Vec<(String, [u8; 32])>,
}

/// A digest as read back: what it says, the bytes signed, the signature.
#[derive(Debug, Clone)]
pub struct Signed {
    pub digest: Digest,
    pub body: String,
    pub signature: [u8; 64],
}

impl Signed {
    /// Whether `key` signed exactly this digest.
    pub fn verifies(&self, key: &VerifyingKey) -> bool {
        key.verify(
            self.body.as_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

impl Digest {
    /// The text that is signed: every line but the signature.
    pub fn body(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nseq {}\ntime {}\nkey {}\nprev {}\nprev-key {}\n",
            self.seq,
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.key,
            self.prev.map_or("-".to_string(), |p| hex(&p)),
            self.prev_key.as_deref().unwrap_or("-"),
        );
        for f in &self.files {
            let (first, last) = match f.lsns {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => ("-".into(), "-".into()),
            };
            text.push_str(&format!(
                "file {} {} {} {} {:016x} {first} {last} {}\n",
                f.name,
                f.len,
                f.rows,
                hex(&f.sha256),
                f.rowsum,
                if f.complete { "complete" } else { "open" }
            ));
        }
        for (name, sha) in &self.manifests {
            text.push_str(&format!("manifest {name} {}\n", hex(sha)));
        }
        text
    }

    /// Signs the digest with `key`: the whole text of the digest file and its signature.
    pub fn sign(&self, key: &SigningKey) -> (String, [u8; 64]) {
        let body = self.body();
        let signature = key.sign(body.as_bytes()).to_bytes();
        let text = format!("{body}signature {}\n", hex(&signature));
        (text, signature)
    }
}

/// Reads a digest file's text; `path` is for the error.
pub fn decode(text: &str, path: &Path) -> Result<Signed, IntegrityError> {
    let corrupt = |line: usize, reason: &str| IntegrityError::CorruptDigest {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    };
    if !text.ends_with('\n') {
        return Err(corrupt(
            text.lines().count(),
            "it does not end with a newline",
        ));
    }
    let Some(at) = text.rfind("\nsignature ") else {
        return Err(corrupt(text.lines().count(), "no signature line"));
    };
    let (body, sig_line) = text.split_at(at + 1);
    let signature = sig_line
        .strip_prefix("signature ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(unhex::<64>)
        .ok_or_else(|| corrupt(text.lines().count(), "bad signature line"))?;
    let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
    if lines.next().map(|(_, l)| l) != Some(MAGIC) {
        return Err(corrupt(1, "the first line is not the format marker"));
    }
    let mut field = |name: &str, n: usize| -> Result<String, IntegrityError> {
        match lines.next() {
            Some((_, l)) => l
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| corrupt(n, &format!("expected the {name} line"))),
            None => Err(corrupt(n, &format!("no {name} line"))),
        }
    };
    let seq = field("seq", 2)?
        .parse::<u64>()
        .map_err(|_| corrupt(2, "bad seq"))?;
    let time = DateTime::parse_from_rfc3339(&field("time", 3)?)
        .map_err(|_| corrupt(3, "bad time"))?
        .with_timezone(&Utc);
    let key = field("key", 4)?;
    if unhex::<8>(&key).is_none() {
        return Err(corrupt(4, "bad key id"));
    }
    let prev = match field("prev", 5)?.as_str() {
        "-" => None,
        p => Some(unhex::<64>(p).ok_or_else(|| corrupt(5, "bad prev"))?),
    };
    let prev_key = match field("prev-key", 6)?.as_str() {
        "-" => None,
        k if unhex::<8>(k).is_some() => Some(k.to_string()),
        _ => return Err(corrupt(6, "bad prev-key")),
    };
    let mut digest = Digest {
        seq,
        time,
        key,
        prev,
        prev_key,
        files: Vec::new(),
        manifests: Vec::new(),
    };
    for (n, line) in body.lines().enumerate().skip(6).map(|(i, l)| (i + 1, l)) {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["file", name, len, rows, sha, rowsum, first, last, state]
                if is_plain_file_name(name) =>
            {
                let number = |s: &str| s.parse::<u64>().map_err(|_| corrupt(n, "bad number"));
                let lsns = match (*first, *last) {
                    ("-", "-") => None,
                    (f, l) => Some((
                        f.parse().map_err(|_| corrupt(n, "bad LSN"))?,
                        l.parse().map_err(|_| corrupt(n, "bad LSN"))?,
                    )),
                };
                let complete = match *state {
                    "complete" => true,
                    "open" => false,
                    _ => return Err(corrupt(n, "bad file state")),
                };
                digest.files.push(FileEntry {
                    name: name.to_string(),
                    len: number(len)?,
                    rows: number(rows)?,
                    sha256: unhex::<32>(sha).ok_or_else(|| corrupt(n, "bad SHA-256"))?,
                    rowsum: u64::from_str_radix(rowsum, 16)
                        .ok()
                        .filter(|_| rowsum.len() == 16)
                        .ok_or_else(|| corrupt(n, "bad row sum"))?,
                    lsns,
                    complete,
                });
            }
            ["manifest", name, sha] if is_plain_file_name(name) => {
                let sha = unhex::<32>(sha).ok_or_else(|| corrupt(n, "bad SHA-256"))?;
                digest.manifests.push((name.to_string(), sha));
            }
            _ => return Err(corrupt(n, "unexpected line")),
        }
    }
    Ok(Signed {
        digest,
        body: body.to_string(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Digest {
        Digest {
            seq: 2,
            time: DateTime::parse_from_rfc3339("2025-10-21T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            key: "0123456789abcdef".into(),
            prev: Some([7u8; 64]),
            prev_key: Some("0123456789abcdef".into()),
            files: vec![FileEntry {
                name: "users_audit_stream_20251021.csv".into(),
                len: 1234,
                rows: 17,
                sha256: [0xab; 32],
                rowsum: 0x8c1f00aa00000001,
                lsns: Some((Lsn(0x10), Lsn(0x1_0000_0020))),
                complete: false,
            }],
            manifests: vec![("20251021.manifest".into(), [1; 32])],
        }
    }

    #[test]
    fn a_digest_round_trips_and_its_signature_covers_every_byte() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let d = sample();
        let (text, sig) = d.sign(&key);
        assert!(
            text.contains(" 8c1f00aa00000001 0/10 1/20 open\n"),
            "{text}"
        );
        let back = decode(&text, Path::new("d")).unwrap();
        assert_eq!(back.digest, d);
        assert_eq!(back.signature, sig);
        assert!(back.verifies(&key.verifying_key()));
        assert!(!back.verifies(&SigningKey::from_bytes(&[8u8; 32]).verifying_key()));
        // One byte changed anywhere in the body: the signature no longer holds.
        let edited = text.replacen("1234", "1235", 1);
        assert!(
            !decode(&edited, Path::new("d"))
                .unwrap()
                .verifies(&key.verifying_key())
        );
        for (bad, line) in [
            (text.replacen("seq 2", "seq x", 1), 2),
            (text.replacen(" open\n", " ajar\n", 1), 7),
            (text.replacen("manifest", "other", 1), 8),
            (text.trim_end().to_string(), 9),
        ] {
            match decode(&bad, Path::new("d")) {
                Err(IntegrityError::CorruptDigest { line: l, .. }) => assert_eq!(l, line, "{bad}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
