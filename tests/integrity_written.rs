//! Digests sign what the stream wrote, not what is on disk when a digest is due (issue 16,
//! docs/security.md): a row edited in an open file before its digest is reported by
//! `verify --integrity`, and a file edited between a kill -9 and the restart is refused by the
//! stream rather than signed over.

mod common;

use std::path::Path;
use std::time::Duration;

use audit_tail::integrity::chain;
use common::signing::{keygen, verify_integrity};
use common::{Consumer, TestDb, stream_command, wait};

/// A users_audit row of today whose new value is `value`.
fn audit_row(value: &str) -> String {
    format!(
        "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
         VALUES (1, now(), 'archivist', 'name', 'a', '{value}');"
    )
}

/// Replaces `from` by `to` (same length) in `path`, as someone with the out-dir would.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// What the newest digest naming `file` covers of it: length, and whether complete.
fn covered(out: &Path, file: &str) -> Option<(u64, bool)> {
    let (digests, _) = chain::list(out).unwrap();
    digests.iter().rev().find_map(|(_, p)| {
        let signed = chain::read(p).unwrap();
        signed
            .digest
            .files
            .iter()
            .find(|f| f.name == file)
            .map(|f| (f.len, f.complete))
    })
}

fn today(db: &TestDb) -> String {
    db.psql("SELECT to_char(current_date, 'YYYYMMDD')")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_edited_before_its_digest_is_reported_not_signed() {
    let db = TestDb::new("integrity_written_edit");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    // A long interval: no digest falls due on time while the test runs, only when a file
    // becomes complete.
    let consumer = Consumer::spawn(
        &db,
        out.path(),
        &[
            "--format",
            "none",
            "--signing-key",
            &key,
            "--digest-interval",
            "3600",
        ],
    );
    wait::streaming(&db, &db.name);
    db.psql(&audit_row("genuine"));
    db.psql(&audit_row("second"));
    wait::caught_up(&db, &db.name);
    let name = format!("users_audit_stream_{}.csv", today(&db));
    let file = out.path().join(&name);
    assert_eq!(
        chain::list(out.path()).unwrap().0.len(),
        0,
        "no digest yet: the rows are written, not signed"
    );
    // Someone with the out-dir changes a row the stream wrote and no digest covers yet.
    edit(&file, "genuine", "forged!");
    // A schema change begins part 2: the first part is complete and its digest is due now.
    db.psql("ALTER TABLE users_audit ADD COLUMN note text");
    db.psql(&audit_row("third"));
    wait::until(
        &format!("{name} marked complete"),
        Duration::from_secs(60),
        || covered(out.path(), &name).is_some_and(|(_, complete)| complete),
    );
    drop(consumer);
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("BROKEN {name} line 1: edited: a row in lines 1-")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_edited_between_a_kill_9_and_the_restart_is_not_signed_over() {
    let db = TestDb::new("integrity_written_restart");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    let signing = ["--signing-key", key.as_str(), "--digest-interval", "0"];
    let mut args = vec!["--format", "none"];
    args.extend(signing);
    let consumer = Consumer::spawn(&db, out.path(), &args);
    wait::streaming(&db, &db.name);
    db.psql(&audit_row("genuine"));
    db.psql(&audit_row("second"));
    wait::caught_up(&db, &db.name);
    let name = format!("users_audit_stream_{}.csv", today(&db));
    let file = out.path().join(&name);
    wait::until(
        &format!("a digest covering all of {name}"),
        Duration::from_secs(60),
        || {
            let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            covered(out.path(), &name).is_some_and(|(covered, _)| covered == len)
        },
    );
    drop(consumer); // kill -9
    let genuine = std::fs::read(&file).unwrap();
    edit(&file, "genuine", "forged!");
    let digests = chain::list(out.path()).unwrap().0.len();
    db.psql(&audit_row("third"));
    let mut args = vec!["--until", "now", "--format", "none"];
    args.extend(signing);
    let output = stream_command(&db, out.path(), &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{name} is not what the stream wrote"))
            && stderr.contains("verify --integrity"),
        "{stderr}"
    );
    assert_eq!(
        chain::list(out.path()).unwrap().0.len(),
        digests,
        "no digest signed over the edit"
    );
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("BROKEN {name} line 1: edited: a row in lines 1-")),
        "{report}"
    );
    // The file restored, the stream goes on and the chain is intact.
    std::fs::write(&file, genuine).unwrap();
    let output = stream_command(&db, out.path(), &args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
    common::assert_files_equal(&db, out.path(), "public", "users_audit").await;
}
