//! `audit-tail verify --nightly FILE` with the log's export file (audit.export_log): compared
//! with audit.log's stream files, and the report names the table, against a real throwaway
//! PostgreSQL.

mod common;

use common::{TestDb, catch_up, install_audit_log, verify};

#[tokio::test(flavor = "multi_thread")]
async fn verify_takes_a_log_export_file_and_names_its_table() {
    let db = TestDb::new("verify_log_file");
    install_audit_log(&db);
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders'); \
         INSERT INTO orders VALUES (1, 'new'), (2, 'new'); UPDATE orders SET status = 'paid'; \
         DELETE FROM orders WHERE id = 2;",
    );
    db.psql(&std::fs::read_to_string(common::repo_path("sql/demo_data.sql")).unwrap());
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let export = db.psql("SELECT audit.export_log(current_date)");
    let export = export.trim();
    assert!(export.contains("audit_log_export_"), "{export}");

    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today, "--nightly", export]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "verify {today}, table audit.log: the nightly export and the live stream agree (5 rows)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("audit.log_stream_"),
        "the log's stream files: {stdout}"
    );

    // A superuser's edit of a log row, in a new export of the day: a difference in audit.log.
    db.psql("UPDATE audit.log SET actor = 'mallory' WHERE id = 3");
    let export = db.psql("SELECT audit.export_log(current_date)");
    let (code, stdout, stderr) = verify(
        &db,
        out.path(),
        &["--date", &today, "--nightly", export.trim()],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "verify {today}, table audit.log: the nightly export and the live stream DIFFER"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 3: actor nightly \"mallory\" / stream \"postgres\""),
        "{stdout}"
    );
    let (code, json, _) = verify(
        &db,
        out.path(),
        &[
            "--date",
            &today,
            "--nightly",
            export.trim(),
            "--format",
            "json",
        ],
    );
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["table"], "audit.log");
    assert_eq!(json["differing"]["count"], 1);

    // users_audit's file is still compared with users_audit's stream, its report as before.
    let users = db.psql("SELECT export_audit_data(current_date)");
    let (code, stdout, _) = verify(
        &db,
        out.path(),
        &["--date", &today, "--nightly", users.trim()],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "verify {today}: the nightly export and the live stream agree (6 rows)"
        )),
        "{stdout}"
    );
}
