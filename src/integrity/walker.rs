//! `verify --integrity`: walks the chain of digests with the public keys, then checks every
//! stream file against what the digests say of it.
//!
//! The chain: digests numbered 1, 2, ... without a gap, each naming the previous one's signature
//! and signed by a given key (a digest by a new key must also name the old key: a rotation). The
//! files: each is read once, front to back, and its SHA-256 is compared at every length a digest
//! covers, so the walk costs about what `sha256sum` does. Only where a file breaks is it read
//! again, to say how: the bytes before the last length that matched are intact, and comparing the
//! broken stretch's rows, bytes and row sum with the digest's tells an edited row from
//! reordered, inserted or removed rows, and a truncated file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use chrono::NaiveDate;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};

use super::chain::{self, DIGESTS_DIR};
use super::diagnose::{diagnose, first_mismatch, prefix_sha, prefix_state};
use super::digest::Signed;
use super::keys::key_id;
use super::report::{IntegrityReport, Uncovered};
use super::{IntegrityError, io_err};
use crate::checkpoint::Checkpoint;
use crate::layout;
use crate::sink::seal::DAYS_DIR;

/// Which days' files to check (`--since`, `--until`, both inclusive); the chain is always walked
/// whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

impl Scope {
    fn holds(&self, name: &str) -> bool {
        let Some(day) = layout::day_of(name) else {
            return false;
        };
        self.since.is_none_or(|s| day >= s) && self.until.is_none_or(|u| day <= u)
    }
}

/// What one trusted digest says of a file.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) seq: u64,
    pub(super) len: u64,
    pub(super) rows: u64,
    pub(super) sha256: [u8; 32],
    pub(super) rowsum: u64,
    pub(super) complete: bool,
}

/// The previous digest, for the next one to chain onto.
struct Prev {
    seq: u64,
    signature: [u8; 64],
    key: String,
}

/// Walks `out_dir`'s digests and files with `keys`.
pub fn walk(
    out_dir: &Path,
    keys: &[VerifyingKey],
    scope: Scope,
) -> Result<IntegrityReport, IntegrityError> {
    if !out_dir.is_dir() {
        return Err(IntegrityError::NoOutDir(out_dir.to_path_buf()));
    }
    if let (Some(since), Some(until)) = (scope.since, scope.until)
        && since > until
    {
        return Err(IntegrityError::Range { since, until });
    }
    let mut report = IntegrityReport {
        out_dir: out_dir.to_path_buf(),
        ..Default::default()
    };
    let keys: HashMap<String, &VerifyingKey> = keys.iter().map(|k| (key_id(k), k)).collect();
    let mut claims: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
    let mut manifests: BTreeMap<String, ([u8; 32], u64)> = BTreeMap::new();
    walk_chain(out_dir, &keys, &mut report, &mut claims, &mut manifests)?;
    check_manifests(out_dir, &scope, &manifests, &mut report);
    check_files(out_dir, &scope, &claims, &mut report)?;
    Ok(report)
}

fn walk_chain(
    out_dir: &Path,
    keys: &HashMap<String, &VerifyingKey>,
    report: &mut IntegrityReport,
    claims: &mut BTreeMap<String, Vec<Claim>>,
    manifests: &mut BTreeMap<String, ([u8; 32], u64)>,
) -> Result<(), IntegrityError> {
    let (digests, others) = chain::list(out_dir)?;
    for other in others {
        report.broken(
            format!("{DIGESTS_DIR}/{other}"),
            None,
            "not a digest the stream wrote (digests are named NNNNNNNN.digest): added, or a digest renamed",
        );
    }
    if digests.is_empty() {
        report.broken(
            DIGESTS_DIR,
            None,
            "no digest at all: the stream did not run with --signing-key, or its digests were removed",
        );
        return Ok(());
    }
    report.digests = digests.len();
    let mut signers = BTreeSet::new();
    let mut prev: Option<Prev> = None;
    let mut expected = 1u64;
    for (seq, path) in &digests {
        let place = format!("{DIGESTS_DIR}/{}", chain::name(*seq));
        if *seq > expected {
            let missing = if *seq == expected + 1 {
                format!("digest {expected} is missing")
            } else {
                format!("digests {expected} to {} are missing", seq - 1)
            };
            report.broken(
                DIGESTS_DIR,
                None,
                format!("{missing}: removed (or renamed)"),
            );
        }
        expected = seq + 1;
        let signed = match chain::read(path) {
            Ok(signed) => signed,
            Err(IntegrityError::CorruptDigest { line, reason, .. }) => {
                report.broken(
                    place,
                    Some(line as u64),
                    format!("damaged ({reason}): the digest was edited"),
                );
                prev = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        let d = &signed.digest;
        if d.seq != *seq {
            report.broken(
                &place,
                Some(2),
                format!(
                    "holds digest {}: a digest was renamed or copied over another",
                    d.seq
                ),
            );
        }
        let trusted = match keys.get(&d.key) {
            None => {
                report.broken(
                    &place,
                    Some(4),
                    format!(
                        "signed by key {}, which is none of the --public-key given: a digest replaced by \
                         someone else's, or give the public key of every key the stream used",
                        d.key
                    ),
                );
                false
            }
            Some(key) if !signed.verifies(key) => {
                report.broken(
                    &place,
                    None,
                    "its signature does not verify: the digest was edited or replaced",
                );
                false
            }
            Some(_) => {
                signers.insert(d.key.clone());
                true
            }
        };
        check_link(&place, &signed, prev.as_ref(), trusted, report);
        if trusted {
            for f in &d.files {
                claims.entry(f.name.clone()).or_default().push(Claim {
                    seq: d.seq,
                    len: f.len,
                    rows: f.rows,
                    sha256: f.sha256,
                    rowsum: f.rowsum,
                    complete: f.complete,
                });
            }
            for (name, sha) in &d.manifests {
                manifests.insert(name.clone(), (*sha, d.seq));
            }
        }
        prev = Some(Prev {
            seq: d.seq,
            signature: signed.signature,
            key: d.key.clone(),
        });
    }
    report.keys = signers.into_iter().collect();
    Ok(())
}

/// Whether `signed` chains onto `prev` (None: the previous digest is unknown or damaged).
fn check_link(
    place: &str,
    signed: &Signed,
    prev: Option<&Prev>,
    trusted: bool,
    report: &mut IntegrityReport,
) {
    let d = &signed.digest;
    match (prev, d.prev) {
        (None, None) if d.seq == 1 => {}
        (None, None) => report.broken(
            place,
            Some(5),
            format!("digest {} starts a new chain: the digests before it were removed or replaced", d.seq),
        ),
        (None, Some(_)) if d.seq == 1 => report.broken(
            place,
            Some(5),
            "the first digest names a predecessor: digests were removed from the start",
        ),
        (None, Some(_)) => {}
        (Some(p), None) => report.broken(
            place,
            Some(5),
            format!("starts a new chain after digest {}: it was replaced", p.seq),
        ),
        (Some(p), Some(sig)) if sig != p.signature => report.broken(
            place,
            Some(5),
            format!(
                "does not chain onto digest {}: one of them was replaced, or digests between them removed",
                p.seq
            ),
        ),
        (Some(p), Some(_)) => {
            if d.prev_key.as_deref() != Some(p.key.as_str()) {
                report.broken(place, Some(6), format!("names key {:?} for digest {}, which key {} signed", d.prev_key, p.seq, p.key));
            } else if trusted && d.key != p.key {
                report.notes.push(format!(
                    "key rotated at digest {}: from {} to {} (the new chain names the old key's last digest)",
                    d.seq, p.key, d.key
                ));
            }
        }
    }
}

fn check_manifests(
    out_dir: &Path,
    scope: &Scope,
    manifests: &BTreeMap<String, ([u8; 32], u64)>,
    report: &mut IntegrityReport,
) {
    for (name, (sha, seq)) in manifests {
        let day = name
            .strip_suffix(".manifest")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok());
        if day.is_some_and(|d| {
            scope.since.is_some_and(|s| d < s) || scope.until.is_some_and(|u| d > u)
        }) {
            continue;
        }
        let place = format!("{DAYS_DIR}/{name}");
        match std::fs::read(out_dir.join(DAYS_DIR).join(name)) {
            Ok(bytes) => {
                let actual: [u8; 32] = Sha256::digest(&bytes).into();
                if actual != *sha {
                    report.broken(
                        place,
                        None,
                        format!(
                            "the sealed day's manifest was edited after digest {seq} signed it"
                        ),
                    );
                }
            }
            Err(_) => report.broken(
                place,
                None,
                format!(
                    "the sealed day's manifest that digest {seq} signed is gone: removed or renamed"
                ),
            ),
        }
    }
}

fn check_files(
    out_dir: &Path,
    scope: &Scope,
    claims: &BTreeMap<String, Vec<Claim>>,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let on_disk: BTreeMap<String, u64> = layout::list(out_dir)
        .map_err(io_err("list", out_dir))?
        .into_iter()
        .map(|f| f.name())
        .filter(|n| scope.holds(n))
        .filter_map(|n| {
            let len = std::fs::metadata(out_dir.join(&n)).ok()?.len();
            Some((n, len))
        })
        .collect();
    // The state file is not signed: it only says which files a running stream has not covered yet.
    let state = Checkpoint::load(out_dir).ok().flatten().unwrap_or_default();
    let mut unclaimed: BTreeSet<&String> = on_disk
        .keys()
        .filter(|n| !claims.contains_key(*n))
        .collect();
    for (name, file_claims) in claims.iter().filter(|(n, _)| scope.holds(n)) {
        let mut file_claims = file_claims.clone();
        file_claims.sort_by_key(|c| (c.len, c.seq));
        let last = file_claims.last().expect("a claim").clone();
        report.files += 1;
        let Some(&disk_len) = on_disk.get(name) else {
            let renamed = unclaimed
                .iter()
                .find(|other| {
                    prefix_sha(&out_dir.join(other), last.len).ok().flatten() == Some(last.sha256)
                })
                .map(|s| (*s).clone());
            let what = match &renamed {
                Some(to) => format!(
                    "renamed to {to}: digest {} covers {} bytes ({} rows) of it under this name",
                    last.seq, last.len, last.rows
                ),
                None => format!(
                    "removed: digest {} covers {} bytes ({} rows) of it",
                    last.seq, last.len, last.rows
                ),
            };
            if let Some(to) = renamed {
                unclaimed.remove(&to);
            }
            report.broken(name, None, what);
            continue;
        };
        report.bytes += disk_len.min(last.len);
        let path = out_dir.join(name);
        match first_mismatch(&path, &file_claims)? {
            Some((good, bad)) => {
                let rest: Vec<Claim> = file_claims
                    .iter()
                    .filter(|c| c.len >= bad.len)
                    .cloned()
                    .collect();
                let expected_len = if last.complete {
                    last.len
                } else {
                    state
                        .files
                        .get(name)
                        .copied()
                        .unwrap_or(last.len)
                        .max(last.len)
                };
                let (line, what) = diagnose(&path, good.as_ref(), &rest, disk_len, expected_len)?;
                report.broken(name, Some(line), what);
            }
            None if disk_len > last.len => {
                let line = prefix_state(&path, last.len)?.lines + 1;
                if last.complete {
                    report.broken(
                        name,
                        Some(line),
                        format!(
                            "extended: {} bytes from this line on were added after digest {} marked the file complete",
                            disk_len - last.len,
                            last.seq
                        ),
                    );
                } else {
                    report.uncovered.push(Uncovered {
                        file: name.clone(),
                        from_line: line,
                        bytes: disk_len - last.len,
                    });
                }
            }
            None => {}
        }
    }
    for name in unclaimed {
        if state.files.contains_key(name) || state.created.contains(name) {
            report.uncovered.push(Uncovered {
                file: name.clone(),
                from_line: 1,
                bytes: on_disk[name],
            });
        } else {
            report.broken(
                name,
                Some(1),
                "added: no digest names this file, nor does the stream's state (it was not written by the stream)",
            );
        }
    }
    Ok(())
}
