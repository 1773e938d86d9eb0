//! Key files: `audit-tail keygen` writes them, the stream signs with the secret one, `verify
//! --integrity` checks with the public one.
//!
//! Format (text, so an operator can tell them apart):
//! ```text
//! audit-tail ed25519 secret key 1          audit-tail ed25519 public key 1
//! <64 hex digits: the 32-byte seed>        <64 hex digits: the 32-byte public key>
//! ```
//! The secret key file is created with mode 0600 and never overwritten; the public key goes to
//! `PATH.pub`. A key's id is the first 8 bytes of the SHA-256 of its public key, in hex: digests
//! name their signer by it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{IntegrityError, hex, io_err, unhex};

const SECRET_MAGIC: &str = "audit-tail ed25519 secret key 1";
const PUBLIC_MAGIC: &str = "audit-tail ed25519 public key 1";

/// The id digests name a key by: 16 hex digits.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Where the public key of the secret key at `path` goes.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Makes a new key pair: the secret key at `path` (0600), the public one at `path.pub`. Refuses
/// to overwrite either. Returns the key id.
pub fn keygen(path: &Path) -> Result<String, IntegrityError> {
    let public = public_path(path);
    for p in [path, public.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(IntegrityError::KeyExists {
                path: p.to_path_buf(),
            });
        }
    }
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(|_| {
        IntegrityError::Io {
            action: "get random bytes for",
            path: path.to_path_buf(),
            source: std::io::Error::other("the system's random source failed"),
        }
    })?;
    let key = SigningKey::from_bytes(&seed);
    write_new(path, &format!("{SECRET_MAGIC}\n{}\n", hex(&seed)), 0o600)?;
    let verifying = key.verifying_key();
    write_new(
        &public,
        &format!("{PUBLIC_MAGIC}\n{}\n", hex(verifying.as_bytes())),
        0o644,
    )?;
    Ok(key_id(&verifying))
}

/// Creates `path` (never replacing a file) with `text` and `mode`, durably.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), IntegrityError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => IntegrityError::KeyExists {
                path: path.to_path_buf(),
            },
            _ => io_err("create", path)(e),
        })?;
    // The umask may have taken bits away, never added them; set exactly what was asked.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("set the mode of", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn read_key(
    path: &Path,
    magic: &str,
    what: &'static str,
    hint: &'static str,
) -> Result<[u8; 32], IntegrityError> {
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => IntegrityError::BadKey {
            path: path.to_path_buf(),
            what,
            reason: e.to_string(),
            hint,
        },
        _ => io_err("read", path)(e),
    })?;
    let bad = |reason: &str| IntegrityError::BadKey {
        path: path.to_path_buf(),
        what,
        reason: reason.to_string(),
        hint,
    };
    let mut lines = text.lines();
    if lines.next() != Some(magic) {
        return Err(bad(&format!("the first line is not \"{magic}\"")));
    }
    let bytes = lines
        .next()
        .and_then(unhex::<32>)
        .ok_or_else(|| bad("the second line is not 64 hex digits"))?;
    if lines.next().is_some() {
        return Err(bad("it has more than two lines"));
    }
    Ok(bytes)
}

/// The secret key at `path`; refused when other users may read it.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, IntegrityError> {
    let seed = read_key(
        path,
        SECRET_MAGIC,
        "secret",
        "the file given to --out, not PATH.pub",
    )?;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IntegrityError::KeyMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key at `path`.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, IntegrityError> {
    let bytes = read_key(
        path,
        PUBLIC_MAGIC,
        "public",
        "the PATH.pub beside the secret key",
    )?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| IntegrityError::BadKey {
        path: path.to_path_buf(),
        what: "public",
        reason: "the bytes are not a point of the curve".into(),
        hint: "the PATH.pub beside the secret key",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_and_its_public_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let id = keygen(&path).unwrap();
        assert_eq!(id.len(), 16);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = load_signing_key(&path).unwrap();
        let public = load_public_key(&public_path(&path)).unwrap();
        assert_eq!(secret.verifying_key(), public);
        assert_eq!(key_id(&public), id);
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            keygen(&path),
            Err(IntegrityError::KeyExists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
        // The public key given where the secret one belongs, and the other way round.
        let e = load_signing_key(&public_path(&path)).unwrap_err();
        assert!(
            e.to_string().contains("not an audit-tail secret key"),
            "{e}"
        );
        assert!(load_public_key(&path).is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_signing_key(&path),
            Err(IntegrityError::KeyMode { .. })
        ));
    }
}
