//! The log's nightly export (audit.log_rows, audit.export_log) and `audit-tail verify` of the
//! log beside users_audit, against a real throwaway PostgreSQL and a real stream.

mod common;

use common::install::audit_log_sql_alone;
use common::{TestDb, catch_up, copy_out, install_audit_log, streamed_log, verify};

/// A tracked table whose rows carry awkward values into the log's jsonb: NULL and '', quotes,
/// commas, CR/LF, `\.`, Cyrillic.
async fn awkward_log_rows(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text, tag text); \
             SELECT audit.track('public.notes'); \
             INSERT INTO notes VALUES (1, NULL, ''), (2, 'say \"hi\", ok', E'line1\\nline2\\r\\n'), \
                                      (3, '\\.', 'Иван Сидоров'); \
             UPDATE notes SET body = '', tag = NULL WHERE id = 1; \
             BEGIN; SET LOCAL audit.reason = E'why, \"quoted\"\\nnext'; \
             SET LOCAL audit.context = '{\"k\": \"Ж\\\"\"}'; \
             UPDATE notes SET body = NULL WHERE id = 2; COMMIT; \
             DELETE FROM notes WHERE id = 3;",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn log_export_is_byte_identical_to_copy_for_awkward_values() {
    let db = TestDb::new("log_export");
    let dir = install_audit_log(&db);
    let client = db.client().await;
    awkward_log_rows(&client).await;
    // A row of yesterday must stay out of today's file.
    client
        .batch_execute(
            "INSERT INTO audit.log (changed_at, op, schema_name, table_name, actor) \
             VALUES (current_date - interval '1 second', 'TRUNCATE', 'public', 'notes', 'x')",
        )
        .await
        .unwrap();

    let caller = db.client().await;
    caller
        .batch_execute(
            "SET datestyle = 'SQL, DMY'; SET intervalstyle = 'sql_standard'; \
             SET extra_float_digits = 0",
        )
        .await
        .unwrap();
    let path: String = caller
        .query_one("SELECT audit.export_log(current_date)", &[])
        .await
        .unwrap()
        .get(0);
    let today = db.psql("SELECT to_char(current_date, 'YYYYMMDD')");
    assert_eq!(
        path,
        dir.join(format!("audit_log_export_{}.csv", today.trim()))
            .display()
            .to_string()
    );
    let file = std::fs::read(&path).unwrap();
    let reference = copy_out(
        &client,
        "SELECT * FROM audit.log WHERE changed_at >= current_date \
         AND changed_at < current_date + 1 ORDER BY id",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&file),
        String::from_utf8_lossy(&reference)
    );
    assert_eq!(file, reference);
    let text = String::from_utf8(file).unwrap();
    assert!(
        text.contains("\"\"body\"\": \"\"\"\""),
        "'' in jsonb: {text}"
    );
    assert!(text.contains("\"\"body\"\": null"), "NULL in jsonb: {text}");
    assert!(text.contains("Иван Сидоров"), "{text}");
    assert!(text.contains("why, \"\"quoted\"\"\nnext"), "{text}");
    assert!(
        !text.contains(",x,"),
        "yesterday's row leaked into today's export"
    );
    // 4 inserts/updates + 1 update + 1 delete + the 3 inserts: header and 7 rows, 1 yesterday.
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM audit.log WHERE changed_at >= current_date",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(common::csv_records(text.as_bytes()).len() as i64, rows + 1);

    let path: String = caller
        .query_one("SELECT audit.export_log(current_date - 1)", &[])
        .await
        .unwrap()
        .get(0);
    let yesterday = std::fs::read(&path).unwrap();
    assert_eq!(common::csv_records(&yesterday).len(), 2);

    let err = caller
        .query_one("SELECT audit.export_log(NULL)", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("must not be NULL")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_role_reads_the_days_rows_but_cannot_export() {
    let db = TestDb::new("log_rows_grant");
    install_audit_log(&db);
    let row = db.psql(
        "SELECT has_schema_privilege('audit_tail', 'audit', 'USAGE'), \
                has_table_privilege('audit_tail', 'audit.log', 'SELECT'), \
                has_table_privilege('audit_tail', 'audit.log', 'INSERT'), \
                has_function_privilege('audit_tail', 'audit.log_rows(date)', 'EXECUTE'), \
                has_function_privilege('audit_tail', 'audit.export_log(date)', 'EXECUTE'), \
                has_function_privilege('public', 'audit.log_rows(date)', 'EXECUTE')",
    );
    assert_eq!(row.trim(), "t|t|f|t|f|f");
    // Inlined: the day is a range scan on the changed_at index, not a function scan.
    let plan = db.psql(
        "SET enable_seqscan = off; \
         EXPLAIN SELECT * FROM audit.log_rows(current_date) ORDER BY id",
    );
    assert!(plan.contains("log_changed_at_idx"), "{plan}");
    assert!(!plan.contains("Function Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nightly_job_of_the_log_is_explained_outside_the_cron_database() {
    let db = TestDb::new("log_cron");
    db.install();
    let out = audit_log_sql_alone(&db, &db.name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let marker = "audit.log, run in \"postgres\": ";
    let statement = stderr
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| panic!("no NOTICE with the statement in: {stderr}"));
    common::ensure_pg_cron(&db.cluster);
    db.cluster.psql("postgres", &statement).unwrap();
    // The one job of the database, install.sql's, now exports the log too.
    let job_name = format!("export-daily-audit-data-{}", db.name);
    let job = db
        .cluster
        .psql(
            "postgres",
            &format!(
                "SELECT schedule, command, database FROM cron.job WHERE jobname = '{job_name}'"
            ),
        )
        .unwrap();
    db.cluster
        .psql("postgres", &format!("SELECT cron.unschedule('{job_name}')"))
        .unwrap();
    assert_eq!(
        job.trim(),
        format!(
            "0 3 * * *|SELECT public.export_audit_data(current_date - 1), audit.nightly_log(audit.log_today() - 1)|{}",
            db.name
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_compares_users_audit_and_the_log_and_names_the_table_of_a_difference() {
    let (db, out, client) = streamed_log("verify_log").await;
    awkward_log_rows(&client).await;
    db.psql(&std::fs::read_to_string(common::repo_path("sql/demo_data.sql")).unwrap());
    catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let log_rows: i64 = client
        .query_one("SELECT count(*) FROM audit.log", &[])
        .await
        .unwrap()
        .get(0);

    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "verify {today}, table public.users_audit: the nightly export and the live stream agree (6 rows)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "verify {today}, table audit.log: the nightly export and the live stream agree ({log_rows} rows)"
        )),
        "{stdout}"
    );
    // --nightly FILE: one table, as before.
    let export = db.psql("SELECT export_audit_data(current_date)");
    let (code, stdout, _) = verify(
        &db,
        out.path(),
        &["--date", &today, "--nightly", export.trim()],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "verify {today}: the nightly export and the live stream agree (6 rows)"
        )),
        "{stdout}"
    );

    // A superuser edits a log row: a difference in audit.log, and only there.
    db.psql("UPDATE audit.log SET actor = 'mallory' WHERE id = 2");
    let (code, stdout, stderr) = verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "verify {today}, table public.users_audit: the nightly export and the live stream agree"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "verify {today}, table audit.log: the nightly export and the live stream DIFFER"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("id 2: actor nightly \"mallory\" / stream \"postgres\""),
        "{stdout}"
    );
    let (code, json, _) = verify(&db, out.path(), &["--date", &today, "--format", "json"]);
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["agree"], false);
    assert_eq!(json["tables"][0]["table"], "public.users_audit");
    assert_eq!(json["tables"][0]["agree"], true);
    assert_eq!(json["tables"][1]["table"], "audit.log");
    assert_eq!(json["tables"][1]["differing"]["count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_the_tracked_tables_or_says_the_log_is_not_installed() {
    let db = TestDb::new("status_tracked");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let conninfo = db.cluster.conninfo(&db.name);
    let status = |format: &str| {
        common::run_audit_tail(&[
            "status",
            "--dsn",
            &conninfo,
            "--out-dir",
            out.path().to_str().unwrap(),
            "--format",
            format,
        ])
    };
    let (code, text, stderr) = status("text");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.contains("tracked:     the generic log is not installed in this database"),
        "{text}"
    );
    let (_, json, _) = status("json");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["tracked"]["installed"], false);

    install_audit_log(&db);
    let (_, text, _) = status("text");
    assert!(
        text.contains("tracked:     none (audit-tail track"),
        "{text}"
    );
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, updated_at timestamp, card text); \
         CREATE TABLE accounts (a int, b int, PRIMARY KEY (a, b)); \
         SELECT audit.track('public.orders', \"ignore\" => ARRAY['updated_at'], redact => ARRAY['card']); \
         SELECT audit.track('public.accounts');",
    );
    let (code, text, stderr) = status("text");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.contains(
            "tracked:     public.accounts (key a,b), public.orders (key id; ignore updated_at; redact card)"
        ),
        "{text}"
    );
    let (_, json, _) = status("json");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["tracked"]["installed"], true);
    assert_eq!(json["tracked"]["tables"][1]["table"], "public.orders");
    assert_eq!(
        json["tracked"]["tables"][1]["ignore"],
        serde_json::json!(["updated_at"])
    );
    assert_eq!(
        json["tracked"]["tables"][0]["key"],
        serde_json::json!(["a", "b"])
    );
    // The consumer's role sees them too.
    let row = db.psql("SELECT has_table_privilege('audit_tail', 'audit.tracked', 'SELECT')");
    assert_eq!(row.trim(), "t");
}
