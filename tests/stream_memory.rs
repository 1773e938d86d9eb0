//! A 1,000,000-row transaction streams in bounded memory: rows go to the files as they arrive.

mod common;

use common::memory::run_and_watch_peak;
use common::{TestDb, assert_files_equal_table, catch_up, stream_command};

#[tokio::test(flavor = "multi_thread")]
async fn a_million_row_transaction_stays_within_tens_of_megabytes() {
    let db = TestDb::new("million");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         SELECT g, 'bulk', 'name', 'old name ' || g, 'new name ' || g FROM generate_series(1, 1000000) g",
    );
    let child = stream_command(&db, out.path(), &["--until", "now", "--format", "none"])
        .env("RUST_LOG", "audit_tail=info")
        .spawn()
        .unwrap();
    let (status, peak_kib) = run_and_watch_peak(child);
    assert!(status.success());
    let peak_mib = peak_kib / 1024;
    eprintln!("peak RSS of the consumer: {peak_mib} MiB");
    assert!(
        peak_mib < 32,
        "the consumer peaked at {peak_mib} MiB for a 1,000,000-row transaction"
    );
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 1_000_000);
}
