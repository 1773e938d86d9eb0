//! Replacing a small file atomically and durably: the one sequence the state file
//! (src/checkpoint.rs) and the day manifests (src/sink/seal.rs) are written with, and the framing
//! (format marker, final newline) they and the archive's state file are read with.
//!
//! Write a temporary file beside the target, fsync it, rename it over the target, then fsync the
//! directory that holds it, so that after a crash at any point the target is either the old
//! bytes or the new ones, and once this returns the new ones survive power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What failed, on which path: each caller turns it into its own error type.
#[derive(Debug)]
pub struct Failed {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn failed(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Failed {
    let path = path.to_path_buf();
    move |source| Failed {
        action,
        path,
        source,
    }
}

/// Replaces `path` with `bytes` through `temp` (in the same directory); `dir` is that directory
/// opened for reading, to fsync the rename.
pub fn replace(path: &Path, temp: &Path, bytes: &[u8], dir: &File) -> Result<(), Failed> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(failed("create", temp))?;
    file.write_all(bytes).map_err(failed("write", temp))?;
    file.sync_all().map_err(failed("fsync", temp))?;
    drop(file);
    fs::rename(temp, path).map_err(failed("rename into place", path))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    dir.sync_all()
        .map_err(failed("fsync the directory", parent))
}

/// The lines of a small line-format file (the state file, a day's manifest, the archive's state)
/// after its format marker, numbered from 2; or where and why it is corrupt: it does not end with
/// a newline (cut short), or its first line is not `magic`. Each caller names the file in its own
/// error type.
pub fn framed_lines<'a>(
    text: &'a str,
    magic: &str,
) -> Result<impl Iterator<Item = (usize, &'a str)>, (usize, &'static str)> {
    if !text.ends_with('\n') {
        return Err((text.lines().count(), "it does not end with a newline"));
    }
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    if lines.next().map(|(_, l)| l) != Some(magic) {
        return Err((1, "the first line is not the format marker"));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let handle = File::open(dir.path()).unwrap();
        let (path, temp) = (dir.path().join("f"), dir.path().join("f.tmp"));
        replace(&path, &temp, b"one", &handle).unwrap();
        replace(&path, &temp, b"two", &handle).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp.exists());
        let e = replace(
            &dir.path().join("no/such"),
            &dir.path().join("no/t"),
            b"x",
            &handle,
        )
        .unwrap_err();
        assert_eq!(e.action, "create");
    }
}
