//! The writer and the walker together over the file sink, without a server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;

use super::{DigestWriter, Scope, walk};
use crate::capture::{Row, Table};
use crate::lsn::{Lsn, PgTimestamp};
use crate::sink::copy_csv::Cells;
use crate::sink::files::StreamFiles;

fn row(table: &Arc<Table>, id: &str, at: &str) -> Row {
    Row {
        table: table.clone(),
        values: [id, at]
            .iter()
            .map(|v| Some(Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    }
}

/// public.users_audit with the two columns the tests write.
fn users_audit() -> Arc<Table> {
    Arc::new(Table {
        oid: 1,
        schema: "public".into(),
        name: "users_audit".into(),
        columns: vec!["id".into(), "changed_at".into()],
        changed_at: Some(1),
    })
}

/// The file sink over `dir`, signing with `key` at every durable point.
fn signed(dir: &Path, key: &SigningKey) -> Result<StreamFiles, super::IntegrityError> {
    let mut files = StreamFiles::open(dir, Cells::Exact).unwrap();
    let writer = DigestWriter::open(dir, key.clone(), Duration::ZERO, files.durable())?;
    files.set_signer(writer);
    Ok(files)
}

/// Appends the row (`id`, `at`) of `table` and commits it at `lsn`.
fn commit_row(files: &mut StreamFiles, table: &Arc<Table>, id: &str, at: &str, lsn: u64) {
    files.append(&row(table, id, at), PgTimestamp(0)).unwrap();
    files.commit(Lsn(lsn));
}

/// Walks the chain of `dir` with `key`; asserts it is intact and covers every file.
fn assert_intact(dir: &Path, key: &SigningKey) -> super::IntegrityReport {
    let report = walk(dir, &[key.verifying_key()], Scope::default()).unwrap();
    assert!(
        report.intact() && report.uncovered.is_empty(),
        "{}",
        report.render()
    );
    report
}

#[test]
fn a_day_sealed_before_its_digest_was_written_joins_the_chain_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    // Sealed by a stream that died before its digest (here: one that did not sign).
    let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
    commit_row(&mut files, &table, "1", "2025-10-21 10:00:00", 100);
    files.cover(&crate::coverage::Sample {
        lsn: Lsn(100),
        at: chrono::DateTime::parse_from_rfc3339("2025-10-22T02:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
        zone: Some("UTC".into()),
    });
    files.make_durable().unwrap();
    assert!(crate::sink::seal::any(dir.path()));
    drop(files);

    let key = SigningKey::from_bytes(&[3u8; 32]);
    let mut files = StreamFiles::open(dir.path(), Cells::Exact).unwrap();
    let writer = DigestWriter::open(
        dir.path(),
        key.clone(),
        Duration::from_secs(3600),
        files.durable(),
    )
    .unwrap();
    files.set_signer(writer);
    commit_row(&mut files, &table, "2", "2025-10-23 10:00:00", 200);
    files.make_durable().unwrap();
    let report = assert_intact(dir.path(), &key);
    assert_eq!(report.files, 2, "{}", report.render());
    let newest = super::chain::newest(dir.path()).unwrap().unwrap().digest;
    assert_eq!(newest.manifests[0].0, "20251021.manifest");
    assert!(
        newest
            .files
            .iter()
            .any(|f| f.name == "users_audit_stream_20251021.csv" && f.complete)
    );
}

#[test]
fn a_digest_covers_what_the_checkpoint_names_never_a_transaction_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    let key = SigningKey::from_bytes(&[4u8; 32]);
    let mut files = signed(dir.path(), &key).unwrap();
    let at = "2025-10-21 10:00:00";
    commit_row(&mut files, &table, "1", at, 100);
    // A durable point in the middle of the next transaction (the flush delay): its row is on
    // disk, but neither the checkpoint nor the digest may cover it.
    files.append(&row(&table, "2", at), PgTimestamp(0)).unwrap();
    files.make_durable().unwrap();
    let name = "users_audit_stream_20251021.csv";
    let on_disk = std::fs::metadata(dir.path().join(name)).unwrap().len();
    let stored = crate::checkpoint::Checkpoint::load(dir.path())
        .unwrap()
        .unwrap();
    let digest = super::chain::newest(dir.path()).unwrap().unwrap().digest;
    let entry = digest.files.iter().find(|f| f.name == name).unwrap();
    assert_eq!(entry.len, stored.files[name]);
    assert_eq!(entry.rows, 1);
    assert!(
        entry.len < on_disk,
        "the second row is written but not committed"
    );
    files.commit(Lsn(200));
    files.make_durable().unwrap();
    let digest = super::chain::newest(dir.path()).unwrap().unwrap().digest;
    assert_eq!(digest.seq, 2);
    assert_eq!(digest.files[0].len, on_disk);
    assert_intact(dir.path(), &key);
}

/// Replaces `from` by `to` (same length) in `path`, as someone with the out-dir would.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_row_edited_on_disk_before_its_digest_is_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let mut files = signed(dir.path(), &key).unwrap();
    let at = "2025-10-21 10:00:00";
    commit_row(&mut files, &table, "1", at, 100);
    files.make_durable().unwrap();
    // Row 2 is on disk (a durable point in the middle of its transaction) but in no digest yet:
    // it is edited there before its transaction commits and a digest covers it.
    files.append(&row(&table, "2", at), PgTimestamp(0)).unwrap();
    files.make_durable().unwrap();
    let name = "users_audit_stream_20251021.csv";
    edit(&dir.path().join(name), "2,2025", "9,2025");
    files.commit(Lsn(200));
    files.make_durable().unwrap();
    let digest = super::chain::newest(dir.path()).unwrap().unwrap().digest;
    assert_eq!((digest.seq, digest.files[0].rows), (2, 2));
    let report = walk(dir.path(), &[key.verifying_key()], Scope::default()).unwrap();
    assert!(!report.intact(), "{}", report.render());
    assert!(
        report
            .render()
            .contains(&format!("BROKEN {name} line 3: edited")),
        "{}",
        report.render()
    );
}

#[test]
fn a_file_edited_while_the_stream_was_down_is_not_signed_over() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    let key = SigningKey::from_bytes(&[6u8; 32]);
    let mut files = signed(dir.path(), &key).unwrap();
    let at = "2025-10-21 10:00:00";
    commit_row(&mut files, &table, "1", at, 100);
    files.make_durable().unwrap();
    drop(files);
    let path = dir.path().join("users_audit_stream_20251021.csv");
    let genuine = std::fs::read(&path).unwrap();
    edit(&path, "1,2025", "7,2025");
    let Err(error) = signed(dir.path(), &key) else {
        panic!("the stream signed over an edited file");
    };
    assert!(
        matches!(error, super::IntegrityError::Rewritten { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("users_audit_stream_20251021.csv is not what the stream wrote")
            && message.contains("digest 1 signed")
            && message.contains("verify --integrity"),
        "{message}"
    );
    assert_eq!(super::chain::list(dir.path()).unwrap().0.len(), 1);
    // Restored, the stream goes on.
    std::fs::write(&path, genuine).unwrap();
    let mut files = signed(dir.path(), &key).unwrap();
    commit_row(&mut files, &table, "2", at, 200);
    files.make_durable().unwrap();
    assert_intact(dir.path(), &key);
}

#[test]
fn a_file_the_stream_writes_that_changes_length_behind_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let mut files = signed(dir.path(), &key).unwrap();
    let (yesterday, today) = ("2025-10-20 10:00:00", "2025-10-21 10:00:00");
    commit_row(&mut files, &table, "1", yesterday, 100);
    files.make_durable().unwrap();
    // Yesterday's file is closed after a durable point without rows for it.
    commit_row(&mut files, &table, "2", today, 200);
    files.make_durable().unwrap();
    files.make_durable().unwrap();
    let path = dir.path().join("users_audit_stream_20251020.csv");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("8,2025-10-20 11:00:00\n");
    std::fs::write(&path, text).unwrap();
    let error = files
        .append(&row(&table, "3", yesterday), PgTimestamp(0))
        .unwrap_err();
    assert!(
        error.to_string().contains("is not what the stream wrote"),
        "{error}"
    );
}

#[test]
fn a_rewind_forgets_the_hash_of_rows_committed_but_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let table = users_audit();
    let key = SigningKey::from_bytes(&[8u8; 32]);
    let mut files = signed(dir.path(), &key).unwrap();
    let at = "2025-10-21 10:00:00";
    commit_row(&mut files, &table, "1", at, 100);
    files.make_durable().unwrap();
    // Committed, then the connection is lost before a durable point: the server sends it again.
    commit_row(&mut files, &table, "2", at, 200);
    files.rewind().unwrap();
    commit_row(&mut files, &table, "2", "2025-10-21 10:00:01", 200);
    files.make_durable().unwrap();
    assert_intact(dir.path(), &key);
    let digest = super::chain::newest(dir.path()).unwrap().unwrap().digest;
    assert_eq!((digest.seq, digest.files[0].rows), (2, 2));
}
