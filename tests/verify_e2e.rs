//! `audit-tail verify` against a real stream and a real nightly export.

mod common;

use std::path::Path;

use common::{TestDb, catch_up, repo_path};

/// `audit-tail verify` on `db` and `out`, plus `extra`.
fn verify(db: &TestDb, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let conninfo = db.cluster.conninfo(&db.name);
    let out = out.to_str().unwrap();
    let mut args = vec!["verify", "--out-dir", out, "--dsn", &conninfo];
    args.extend(extra);
    common::run_audit_tail(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_nightly_export_agree_and_differences_are_named_by_id() {
    let db = TestDb::new("verify");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    db.psql(
        "UPDATE users SET email = '' WHERE id = 1; UPDATE users SET email = NULL WHERE id = 1;",
    );
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();

    // From the database (the default) and from the export file: both agree.
    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("agree (8 rows)"), "{stdout}");
    let export = db
        .psql("SELECT export_audit_data(current_date)")
        .trim()
        .to_string();
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today, "--nightly", &export]);
    assert_eq!(code, Some(0), "{stdout}");

    // A nightly file with a changed value, a missing row, NULL turned into '' and an extra row.
    let original = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
    lines[1] = lines[1].replace("Иван Сидоров", "Иван Петров");
    lines.remove(3);
    let last = lines.len() - 1;
    assert!(
        lines[last].ends_with(','),
        "the last row's new_value is NULL: {}",
        lines[last]
    );
    lines[last].push_str("\"\"");
    lines.push(lines[2].replacen(&lines[2][..1], "99", 1));
    let tampered = out.path().join("tampered.csv");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let (code, stdout, stderr) = verify(
        &db,
        out.path(),
        &["--date", &today, "--nightly", tampered.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("DIFFER"), "{stdout}");
    assert!(stdout.contains("only in the stream: 1 (ids 3)"), "{stdout}");
    assert!(
        stdout.contains("only in the nightly export: 1 (ids 99)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 1: new_value nightly \"Иван Петров\" / stream \"Иван Сидоров\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 8: new_value nightly \"\" / stream NULL"),
        "{stdout}"
    );
    let (code, json, _) = verify(
        &db,
        out.path(),
        &[
            "--date",
            &today,
            "--nightly",
            tampered.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["agree"], false);
    assert_eq!(v["differing"]["count"], 2);
    assert_eq!(v["only_in_stream"]["ids"][0], 3);

    // Unreadable or malformed inputs: exit 2 naming the file and line.
    for (name, content, expect) in [
        (
            "header.csv",
            "id,who\n1,x\n".to_string(),
            "line 1: wrong header",
        ),
        (
            "ragged.csv",
            format!("{}\n1,2\n", lines[0]),
            "line 2: 2 fields",
        ),
        ("quote.csv", format!("{}\n1,2,\"open\n", lines[0]), "line 2"),
    ] {
        let path = out.path().join(name);
        std::fs::write(&path, content).unwrap();
        let (code, _, stderr) = verify(
            &db,
            out.path(),
            &["--date", &today, "--nightly", path.to_str().unwrap()],
        );
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(expect),
            "{name}: {stderr}"
        );
    }
    let (code, _, stderr) = verify(
        &db,
        out.path(),
        &["--date", &today, "--nightly", "/nonexistent.csv"],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent.csv"), "{stderr}");
    let (code, _, stderr) = verify(&db, out.path(), &["--date", "1999-01-01"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no stream file for 1999-01-01"), "{stderr}");
    let (code, _, stderr) = verify(&db, out.path(), &["--date", "2025-13-01"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a date"), "{stderr}");
}
