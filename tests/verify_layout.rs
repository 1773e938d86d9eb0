//! verify follows the stream's file layout: every file of the day (`-2.csv` after the table's
//! columns changed), files of a table outside public, and an install without the read-only export
//! function.

mod common;

use common::{TestDb, catch_up, repo_path, verify};

/// After `ALTER TABLE users_audit ADD COLUMN` the stream goes on in `-2.csv` with the new header;
/// verify reads both files and compares each row on the columns its file has.
#[tokio::test(flavor = "multi_thread")]
async fn verify_reads_every_file_of_the_day_after_add_column() {
    let db = TestDb::new("add_column");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    catch_up(&db, out.path());
    db.psql(
        "ALTER TABLE users_audit ADD COLUMN note text DEFAULT 'n/a'; \
         UPDATE users SET role = 'auditor' WHERE id = 2; \
         UPDATE users SET email = NULL WHERE id = 1",
    );
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let day = today.replace('-', "");
    let second = common::stream_file(out.path(), &today, 2);
    let text = std::fs::read_to_string(&second).unwrap();
    assert!(
        text.starts_with(
            "id,user_id,changed_at,changed_by,field_changed,old_value,new_value,note\n"
        ),
        "{text}"
    );

    // From the database: the export has the new column; the first file's rows lack it.
    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("agree (8 rows)"), "{stdout}");
    assert!(
        stdout.contains(&format!("users_audit_stream_{day}-2.csv")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("users_audit_stream_{day}.csv: note")),
        "the columns not compared are named: {stdout}"
    );

    // From the export file alike, and a changed value in a row of either file still shows.
    let export = db
        .psql("SELECT export_audit_data(current_date)")
        .trim()
        .to_string();
    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today, "--nightly", &export]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    db.psql("UPDATE users_audit SET new_value = 'forged' WHERE id IN (2, 8)");
    db.psql("UPDATE users_audit SET note = 'forged' WHERE id = 7");
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("id 2: new_value nightly \"forged\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 8: new_value nightly \"forged\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 7: note nightly \"forged\" / stream \"n/a\""),
        "{stdout}"
    );
    assert!(stdout.contains("rows that differ: 3"), "{stdout}");
}

/// An install that predates the read-only function verify calls: verify says what to run.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_missing_export_function_of_an_older_install() {
    let db = TestDb::new("old_install");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    db.psql("DROP FUNCTION users_audit_rows(date)");
    // Not the user's input (exit 2) but the database's install: exit 1, like any database
    // problem (docs/operations.md, exit codes).
    let (code, _, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("users_audit_rows(date)") && stderr.contains("sql/install.sql"),
        "{stderr}"
    );
}
