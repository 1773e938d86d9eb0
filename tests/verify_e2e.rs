//! `audit-tail verify` against a real stream and a real nightly export.

mod common;

use common::{TestDb, catch_up, repo_path, verify};

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

/// What a superuser can still do to the audit trail, and what verify shows of it: rows changed or
/// deleted in users_audit after they were streamed are differences; a change made with the
/// trigger disabled leaves no row anywhere and verify cannot see it; a row removed from both
/// copies shows only as a gap in the ids, beside the gaps rolled-back transactions leave.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_superuser_can_still_do_and_how_verify_shows_it() {
    let db = TestDb::new("superuser");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let ids = db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM users_audit");
    assert_eq!(ids.trim(), "1,2,3,4,5,6");
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("neither copy"), "{stdout}");

    // After streaming, a superuser rewrites one audit row and deletes another: both show.
    db.psql("UPDATE users_audit SET new_value = 'forged' WHERE id = 2");
    db.psql("DELETE FROM users_audit WHERE id = 4");
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("id 2: new_value nightly \"forged\""),
        "{stdout}"
    );
    assert!(stdout.contains("only in the stream: 1 (ids 4)"), "{stdout}");

    // With the trigger disabled a change leaves no audit row: neither copy has it, verify
    // cannot tell. (Detect it in the server log: log_statement = 'ddl' records the ALTER.)
    db.psql(
        "ALTER TABLE users DISABLE TRIGGER users_audit_trigger; \
         UPDATE users SET role = 'unaudited' WHERE id = 1; \
         ALTER TABLE users ENABLE TRIGGER users_audit_trigger",
    );
    // A rolled-back change consumes id 7; the next audit row is 8.
    db.psql("BEGIN; UPDATE users SET role = 'rolled back' WHERE id = 3; ROLLBACK");
    db.psql("UPDATE users SET role = 'kept' WHERE id = 3");
    catch_up(&db, out.path());
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(!stdout.contains("unaudited"), "{stdout}");
    assert!(stdout.contains("ids in neither copy: 1 (7)"), "{stdout}");

    // A row removed from both copies (the table by a superuser, the stream file by someone on
    // the consumer's machine) is no difference any more: only a gap, which verify lists.
    db.psql("DELETE FROM users_audit WHERE id = 5");
    let stream = common::stream_file(out.path(), &today, 1);
    let text = std::fs::read_to_string(&stream).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("5,"))
        .collect();
    assert!(kept.len() < text.len(), "row 5 was in the stream file");
    std::fs::write(&stream, kept).unwrap();
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today, "--format", "json"]);
    assert_eq!(code, Some(1), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["gaps"]["count"], 2, "{stdout}");
    assert_eq!(
        report["gaps"]["ranges"],
        serde_json::json!([[5, 5], [7, 7]]),
        "{stdout}"
    );
}

/// `--safe-csv`: formula-like values open as text, verify still agrees with the export (it
/// guards the export's values alike) and still finds a changed row, and the out-dir keeps its
/// kind.
#[tokio::test(flavor = "multi_thread")]
async fn safe_csv_guards_formulas_and_verify_compares_alike() {
    let db = TestDb::new("safe_csv");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let stream = |extra: &[&str]| {
        let mut args = vec!["--until", "now", "--format", "none"];
        args.extend(extra);
        common::stream_command(&db, out.path(), &args)
            .output()
            .unwrap()
    };
    assert!(stream(&["--safe-csv"]).status.success());
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    db.psql(
        "UPDATE users SET name = '=HYPERLINK(\"http://example.com\",\"click\")', \
         email = '@SUM(A1)', role = '-5' WHERE id = 1",
    );
    let done = stream(&["--safe-csv"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let today = db.psql("SELECT current_date").trim().to_string();
    let file = common::stream_file(out.path(), &today, 1);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(",\"'=HYPERLINK(\"\"http://example.com\"\",\"\"click\"\")\"\n"),
        "{text}"
    );
    assert!(
        text.contains(",'@SUM(A1)\n") && text.contains(",'-5\n"),
        "{text}"
    );
    assert!(!text.contains(",=") && !text.contains(",@"), "{text}");

    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("--safe-csv"), "{stdout}");
    db.psql("UPDATE users_audit SET new_value = '=1+1' WHERE new_value = '-5'");
    let (code, stdout, _) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("new_value nightly \"'=1+1\" / stream \"'-5\""),
        "{stdout}"
    );

    // The same out-dir without --safe-csv is refused: no file mixes both kinds.
    let refused = stream(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("add --safe-csv"), "{stderr}");
}
