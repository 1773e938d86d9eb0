//! The digests directory, `audit-tail.digests/` in out-dir: one file per digest,
//! `NNNNNNNN.digest` by its sequence number, written atomically and durably.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::digest::{self, Signed};
use super::{IntegrityError, io_err};

/// The directory of the digests inside out-dir.
pub const DIGESTS_DIR: &str = "audit-tail.digests";

/// The file name of digest `seq`.
pub fn name(seq: u64) -> String {
    format!("{seq:08}.digest")
}

/// The sequence number a digest file's name says; None for any other name.
pub fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".digest")?;
    (digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|&seq| self::name(seq) == name)
}

/// The digests directory's entries: digest files by sequence number, and other names.
pub type Listing = (Vec<(u64, PathBuf)>, Vec<String>);

/// Every entry of the digests directory: digest files by sequence number, and the names of
/// anything else in it (not counting the temporary file of a digest being written).
pub fn list(out_dir: &Path) -> Result<Listing, IntegrityError> {
    let dir = out_dir.join(DIGESTS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let (mut digests, mut others) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        match seq_of(&file_name) {
            Some(seq) => digests.push((seq, entry.path())),
            None if file_name.ends_with(".digest.tmp") => {}
            None => others.push(file_name),
        }
    }
    digests.sort();
    others.sort();
    Ok((digests, others))
}

/// Reads the digest at `path`.
pub fn read(path: &Path) -> Result<Signed, IntegrityError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    digest::decode(&text, path)
}

/// The newest digest of `out_dir`, if any.
pub fn newest(out_dir: &Path) -> Result<Option<Signed>, IntegrityError> {
    let (digests, _) = list(out_dir)?;
    digests.last().map(|(_, path)| read(path)).transpose()
}

/// Writes digest `seq`'s `text` atomically and durably; `out_dir_handle` is out-dir opened for
/// reading, to fsync the directory's creation.
pub fn store(
    out_dir: &Path,
    out_dir_handle: &File,
    seq: u64,
    text: &str,
) -> Result<PathBuf, IntegrityError> {
    let dir = out_dir.join(DIGESTS_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        out_dir_handle
            .sync_all()
            .map_err(io_err("fsync the directory", out_dir))?;
    }
    let path = dir.join(name(seq));
    let temp = dir.join(format!("{}.tmp", name(seq)));
    let handle = File::open(&dir).map_err(io_err("open", &dir))?;
    crate::durable::replace(&path, &temp, text.as_bytes(), &handle).map_err(|f| {
        IntegrityError::Io {
            action: f.action,
            path: f.path,
            source: f.source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_names_are_not_digests() {
        assert_eq!(name(42), "00000042.digest");
        assert_eq!(seq_of("00000042.digest"), Some(42));
        assert_eq!(seq_of("123456789.digest"), Some(123_456_789));
        for other in [
            "42.digest",
            "0000004x.digest",
            "00000042.digest.tmp",
            "000000042.digest",
        ] {
            assert_eq!(seq_of(other), None, "{other}");
        }
    }
}
