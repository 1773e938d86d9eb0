//! Signed out-dirs in tests: a key pair from `audit-tail keygen`, `verify --integrity`, and what
//! the digest chain says of a file.

use std::path::Path;

use audit_tail::integrity::chain;

use super::{TestDb, run_audit_tail, stream_command};

/// `audit-tail keygen --out DIR/NAME`: the secret and the public key's paths.
pub fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let (code, out, err) = run_audit_tail(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let key = key.to_str().unwrap().to_string();
    (key.clone(), format!("{key}.pub"))
}

/// `verify --integrity` of `out` with `pubs` (plus `extra`): exit code and stdout then stderr.
pub fn verify_integrity(out: &Path, pubs: &[&str], extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["verify", "--integrity", "--out-dir", out.to_str().unwrap()];
    for p in pubs {
        args.extend(["--public-key", p]);
    }
    args.extend(extra);
    let (code, stdout, stderr) = run_audit_tail(&args);
    (code, format!("{stdout}{stderr}"))
}

/// Whether any digest of `out`'s chain marks `file` complete.
pub fn marked_complete(out: &Path, file: &str) -> bool {
    let (digests, _) = chain::list(out).unwrap();
    digests.iter().any(|(_, p)| {
        chain::read(p)
            .unwrap()
            .digest
            .files
            .iter()
            .any(|f| f.name == file && f.complete)
    })
}

/// The stream's options for a signed stream publishing to NATS with a digest at every durable
/// point.
pub fn signed_nats_args<'a>(key: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "--format",
        "none",
        "--signing-key",
        key,
        "--digest-interval",
        "0",
        "--nats",
        url,
    ]
}

/// `stream --until now` with `signed_nats_args`: everything committed so far, signed and
/// published; panics with the stream's stderr when it fails.
pub fn catch_up_signed(db: &TestDb, out: &Path, key: &str, url: &str) {
    let mut args = vec!["--until", "now"];
    args.extend(signed_nats_args(key, url));
    let output = stream_command(db, out, &args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
