//! How a file broke: where the SHA-256 of a stream file stops matching its digests, and what was
//! done there. Read by `walker` only where a file breaks; the fast path is `first_mismatch`, one
//! pass of SHA-256 over the file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::hasher::{PrefixHasher, READ_CHUNK};
use super::walker::Claim;
use super::{IntegrityError, io_err};

/// Reads `path` once, comparing its SHA-256 at every claimed length. Returns the last claim that
/// matched and the first that did not.
pub(super) fn first_mismatch(
    path: &Path,
    claims: &[Claim],
) -> Result<Option<(Option<Claim>, Claim)>, IntegrityError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut sha = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; READ_CHUNK];
    let (mut filled, mut at) = (0usize, 0usize);
    let mut good: Option<Claim> = None;
    for claim in claims {
        while len < claim.len {
            if at == filled {
                filled = file.read(&mut buf).map_err(io_err("read", path))?;
                at = 0;
                if filled == 0 {
                    return Ok(Some((good, claim.clone())));
                }
            }
            let take = ((claim.len - len) as usize).min(filled - at);
            sha.update(&buf[at..at + take]);
            at += take;
            len += take as u64;
        }
        let actual: [u8; 32] = sha.clone().finalize().into();
        if actual != claim.sha256 {
            return Ok(Some((good, claim.clone())));
        }
        good = Some(claim.clone());
    }
    Ok(None)
}

/// The SHA-256 of the first `len` bytes of `path`; None when it is shorter.
pub(super) fn prefix_sha(path: &Path, len: u64) -> Result<Option<[u8; 32]>, IntegrityError> {
    let mut h = PrefixHasher::default();
    Ok(h.extend_from(path, len)?.then(|| h.sha256()))
}

/// Records, lines and row sum of the first `len` bytes of `path` (or all of it, if shorter).
pub(super) fn prefix_state(path: &Path, len: u64) -> Result<PrefixHasher, IntegrityError> {
    let mut h = PrefixHasher::default();
    h.extend_from(path, len)?;
    Ok(h)
}

/// Says how the stretch between the last claim that held (`good`, or the file's start) and the
/// first that did not (`rest[0]`; the later ones follow it) was changed, and from which line.
/// `expected_len` is the length the file should have now.
pub(super) fn diagnose(
    path: &Path,
    good: Option<&Claim>,
    rest: &[Claim],
    disk_len: u64,
    expected_len: u64,
) -> Result<(u64, String), IntegrityError> {
    let bad = &rest[0];
    let (good_len, good_records) = match good {
        Some(g) => (g.len, g.rows + 1),
        None => (0, 0),
    };
    let start = prefix_state(path, good_len)?;
    let line = start.lines + 1;
    let since = match good {
        Some(g) => format!("after digest {} (which still holds)", g.seq),
        None => "from the file's start".to_string(),
    };
    let want_records = bad.rows + 1 - good_records;
    let want_bytes = bad.len - good_len;
    let delta = disk_len as i128 - expected_len as i128;
    // The stretch as it is now: the same bytes shifted by what was added or taken away.
    let end = (bad.len as i128 + delta).clamp(good_len as i128, disk_len as i128) as u64;
    let mut now = start.clone();
    now.extend_from(path, end)?;
    let records = now.records - start.records;
    let last_line = now.lines.max(line);
    let lines = if last_line > line {
        format!("lines {line}-{last_line}")
    } else {
        format!("line {line}")
    };
    let what = if disk_len < bad.len && delta < 0 && !ends_a_record(&now) {
        format!(
            "truncated: the file ends at byte {disk_len}, inside a row, but digest {} covers {} bytes ({} rows)",
            bad.seq, bad.len, bad.rows
        )
    } else if let Some((end_line, seq)) = reordered_until(path, &start, rest, delta)? {
        let lines = if end_line > line {
            format!("lines {line}-{end_line}")
        } else {
            format!("line {line}")
        };
        format!(
            "rows reordered in {lines} ({since}; digest {seq} holds the same rows in another order)"
        )
    } else if delta == 0 {
        format!(
            "edited: a row in {lines} was changed ({since}; digest {} no longer matches)",
            bad.seq
        )
    } else if delta > 0 && records > want_records {
        format!(
            "{} row(s) inserted in {lines} ({since}; digest {} counts {want_records} rows there)",
            records - want_records,
            bad.seq
        )
    } else if delta < 0 && records < want_records && disk_len < bad.len && end == disk_len {
        format!(
            "truncated: the file ends at byte {disk_len}, line {last_line}, but digest {} covers {} bytes ({} rows): {} row(s) cut off the end",
            bad.seq,
            bad.len,
            bad.rows,
            want_records - records
        )
    } else if delta < 0 && records < want_records {
        format!(
            "{} row(s) removed in {lines} ({since}; digest {} counts {want_records} rows there)",
            want_records - records,
            bad.seq
        )
    } else {
        format!(
            "edited: {lines} changed by {delta} bytes ({since}; digest {} covers {want_bytes} bytes, {want_records} records there)",
            bad.seq
        )
    };
    Ok((line, what))
}

/// Whether the bytes read so far end at a record's end.
fn ends_a_record(h: &PrefixHasher) -> bool {
    h.len == 0 || h.last_was_record_end()
}

/// When the file is as long as it should be: the first claim over whose stretch (from `start`,
/// where the file still matched) the file holds as many records with the same row sum, so the
/// same rows in another order; with the line that stretch ends on and the claim's digest.
fn reordered_until(
    path: &Path,
    start: &PrefixHasher,
    rest: &[Claim],
    delta: i128,
) -> Result<Option<(u64, u64)>, IntegrityError> {
    if delta != 0 {
        return Ok(None);
    }
    let mut now = start.clone();
    for claim in rest {
        if !now.extend_from(path, claim.len)? {
            return Ok(None);
        }
        if now.records == claim.rows + 1 && now.rowsum == claim.rowsum {
            return Ok(Some((now.lines, claim.seq)));
        }
    }
    Ok(None)
}
