//! The SQL side (sql/install.sql, sql/demo_data.sql) against a real throwaway PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::sql::strings;
use common::{TestDb, copy_out, repo_path};
use tokio_postgres::Client;

/// (user_id, field_changed, old_value, new_value, changed_by) of every audit row, by id.
async fn audit_rows(client: &Client) -> Vec<(i32, String, Option<String>, Option<String>, String)> {
    client
        .query(
            "SELECT user_id, field_changed, old_value, new_value, changed_by \
             FROM users_audit ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn owned(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test]
async fn reference_scenario_gives_exactly_the_six_rows() {
    let db = TestDb::new("reference");
    db.install();
    let client = db.client().await;
    client
        .batch_execute(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap())
        .await
        .unwrap();
    let rows: Vec<_> = audit_rows(&client)
        .await
        .into_iter()
        .map(|(u, f, o, n, _)| (u, f, o, n))
        .collect();
    let expected = vec![
        (
            1,
            "name".to_string(),
            owned("Иван Иванов"),
            owned("Иван Сидоров"),
        ),
        (1, "role".to_string(), owned("user"), owned("admin")),
        (
            2,
            "email".to_string(),
            owned("petr@example.com"),
            owned("petr_p@example.com"),
        ),
        (
            3,
            "name".to_string(),
            owned("Андрей Сидоров"),
            owned("Сергей Иванов"),
        ),
        (
            3,
            "email".to_string(),
            owned("sidorov@example.com"),
            owned("ivanov_s@example.com"),
        ),
        (3, "role".to_string(), owned("manager"), owned("user")),
    ];
    assert_eq!(rows, expected);
    let ids: Vec<i32> = client
        .query("SELECT id FROM users_audit ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn export_is_byte_identical_to_copy_for_awkward_values() {
    let db = TestDb::new("export_bytes");
    let dir = db.install();
    let client = db.client().await;
    common::awkward_changes(&client).await;
    assert_eq!(count(&client, "SELECT count(*) FROM users_audit").await, 15);
    // A row of yesterday must stay out of today's file.
    client
        .batch_execute(
            "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
             VALUES (1, current_date - interval '1 second', 'x', 'name', 'a', 'b')",
        )
        .await
        .unwrap();

    // The caller's session settings must not change the bytes.
    let caller = db.client().await;
    caller
        .batch_execute("SET datestyle = 'SQL, DMY'; SET intervalstyle = 'sql_standard'")
        .await
        .unwrap();
    let path: String = caller
        .query_one("SELECT export_audit_data(current_date)", &[])
        .await
        .unwrap()
        .get(0);
    let today: String = client
        .query_one("SELECT to_char(current_date, 'YYYYMMDD')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        path,
        dir.join(format!("users_audit_export_{today}.csv"))
            .display()
            .to_string()
    );
    let file = std::fs::read(&path).unwrap();
    let reference = copy_out(
        &client,
        "SELECT * FROM users_audit WHERE changed_at >= current_date \
         AND changed_at < current_date + 1 ORDER BY id",
    )
    .await;
    assert_eq!(file, reference);
    let text = String::from_utf8(file).unwrap();
    assert!(
        text.starts_with("id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n")
    );
    assert!(
        text.contains(",name,,\"\"\n"),
        "NULL → '' must read as an empty field then \"\""
    );
    assert!(
        !text.contains(",x,name,a,b"),
        "yesterday's row leaked into today's export"
    );

    // Yesterday's export holds exactly yesterday's row; export_todays_audit_data is today.
    let path: String = caller
        .query_one("SELECT export_audit_data(current_date - 1)", &[])
        .await
        .unwrap()
        .get(0);
    let yesterday = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(yesterday.lines().count(), 2);
    assert!(yesterday.lines().nth(1).unwrap().ends_with(",x,name,a,b"));
    let todays: String = caller
        .query_one("SELECT export_todays_audit_data()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        todays,
        dir.join(format!("users_audit_export_{today}.csv"))
            .display()
            .to_string()
    );

    let err = caller
        .query_one("SELECT export_audit_data(NULL)", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("must not be NULL")
    );
}

#[tokio::test]
async fn the_day_is_a_range_scan_on_the_changed_at_index() {
    let db = TestDb::new("range_scan");
    db.install();
    let client = db.client().await;
    // On a small table the planner prefers a sequential scan; forbid it to see that the index
    // serves the day's predicate at all.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan = strings(&client, "EXPLAIN (COSTS OFF) SELECT * FROM users_audit \
             WHERE changed_at >= '2025-10-21'::date AND changed_at < '2025-10-22'::date ORDER BY id").await;
    let plan = plan.join("\n");
    assert!(plan.contains("users_audit_changed_at_idx"), "{plan}");
    assert!(plan.contains("Index Cond"), "{plan}");
    // The export and verify read the day through users_audit_rows(): inlined into the same
    // range scan, not a Function Scan that materialises the whole day first.
    let plan = strings(
        &client,
        "EXPLAIN (COSTS OFF) SELECT * FROM users_audit_rows('2025-10-21') ORDER BY id",
    )
    .await;
    let plan = plan.join("\n");
    assert!(plan.contains("users_audit_changed_at_idx"), "{plan}");
    assert!(!plan.contains("Function Scan"), "{plan}");
}

#[tokio::test]
async fn actor_comes_from_audit_actor_else_the_login_role() {
    let db = TestDb::new("actor");
    db.install();
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO users (name) VALUES ('a');
             BEGIN; SET LOCAL audit.actor = 'alice@example.com'; UPDATE users SET name = 'b'; COMMIT;
             UPDATE users SET name = 'c';
             SET audit.actor = ''; UPDATE users SET name = 'd';",
        )
        .await
        .unwrap();
    let actors: Vec<String> = audit_rows(&client).await.into_iter().map(|r| r.4).collect();
    // After SET LOCAL ends the setting reads '', which must also fall back to the login role.
    assert_eq!(actors, vec!["alice@example.com", "postgres", "postgres"]);
}

#[tokio::test]
async fn no_op_updates_and_other_columns_leave_no_row_but_null_and_empty_differ() {
    let db = TestDb::new("noop");
    db.install();
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO users (name, email, role) VALUES ('n', NULL, 'r');
             UPDATE users SET name = name, email = email, role = role;
             UPDATE users SET updated_at = now() + interval '1 day';
             UPDATE users SET email = NULL;",
        )
        .await
        .unwrap();
    assert!(audit_rows(&client).await.is_empty());
    client
        .batch_execute("UPDATE users SET email = ''; UPDATE users SET email = NULL;")
        .await
        .unwrap();
    let rows = audit_rows(&client).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.1.as_str(), r.2.clone(), r.3.clone()))
            .collect::<Vec<_>>(),
        vec![("email", None, owned("")), ("email", owned(""), None)]
    );
}

#[tokio::test]
async fn rolled_back_transactions_leave_no_row() {
    let db = TestDb::new("rollback");
    db.install();
    let client = db.client().await;
    // Separate queries: in one multi-statement query the INSERT would join the explicit
    // transaction that follows it and roll back with it.
    for sql in [
        "INSERT INTO users (name) VALUES ('a')",
        "BEGIN; UPDATE users SET name = 'b', role = 'x'; ROLLBACK;",
        "BEGIN; SAVEPOINT s; UPDATE users SET email = 'e'; ROLLBACK TO s; \
         UPDATE users SET role = 'kept'; COMMIT;",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let rows = audit_rows(&client).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].1.as_str(), rows[0].3.as_deref()),
        ("role", Some("kept"))
    );
}

#[tokio::test]
async fn an_application_role_audits_but_cannot_tamper() {
    let db = TestDb::new("tamper");
    db.install();
    let owner = db.client().await;
    owner
        .batch_execute("INSERT INTO users (name) VALUES ('a'), ('b')")
        .await
        .unwrap();
    let app = db.create_role("app", "LOGIN");
    owner
        .batch_execute(&format!("GRANT SELECT, UPDATE ON users TO \"{app}\""))
        .await
        .unwrap();
    let client = db.client_as(&app).await;
    client
        .execute("UPDATE users SET name = 'changed' WHERE name = 'a'", &[])
        .await
        .expect("an application role that may update users still updates them");
    let rows = audit_rows(&owner).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].4, app, "changed_by is the application's login role");

    for statement in [
        "INSERT INTO users_audit (user_id, field_changed) VALUES (1, 'forged')",
        "UPDATE users_audit SET new_value = 'rewritten'",
        "DELETE FROM users_audit",
        "TRUNCATE users_audit",
        "SELECT nextval('users_audit_id_seq')",
        "SELECT export_audit_data(current_date)",
        "SELECT set_config('search_path', 'public', false); SELECT log_user_changes()",
    ] {
        let err = client.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err:?}"
        );
    }
    assert_eq!(audit_rows(&owner).await.len(), 1);

    // A write privilege granted by mistake is taken back by a re-install.
    owner
        .batch_execute(&format!("GRANT INSERT, DELETE ON users_audit TO \"{app}\""))
        .await
        .unwrap();
    db.install();
    let err = client
        .batch_execute("DELETE FROM users_audit")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test]
async fn reinstall_keeps_data_settings_and_trigger_once() {
    let db = TestDb::new("reinstall");
    let dir = db.install();
    let client = db.client().await;
    client
        .batch_execute("INSERT INTO users (name) VALUES ('a'); UPDATE users SET name = 'b';")
        .await
        .unwrap();
    // Twice more, the second time without choosing a directory.
    db.install();
    let out = db.install_with_psql(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&client, "SELECT count(*) FROM users").await, 1);
    assert_eq!(count(&client, "SELECT count(*) FROM users_audit").await, 1);
    client
        .batch_execute("UPDATE users SET name = 'c'")
        .await
        .unwrap();
    assert_eq!(
        count(&client, "SELECT count(*) FROM users_audit").await,
        2,
        "the trigger must fire once per change after re-installs"
    );
    let path: String = client
        .query_one("SELECT export_audit_data(current_date)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        path.starts_with(&dir.display().to_string()),
        "{path} not in {dir:?}"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn export_directory_is_chosen_at_install_time_and_must_be_absolute() {
    let db = TestDb::new("export_dir");
    let out = db.install_with_psql(&["-c", "SET audit.export_dir = 'relative/dir'"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("export_dir_is_absolute"));
    let out = db.install_with_psql(&["-c", "SET audit.export_dir = '/tmp/../etc'"]);
    assert!(!out.status.success());
    // Default: /tmp. (The file name is chosen here, so that the test claims nothing in the
    // machine's /tmp: see install.sql on export_name.)
    let out = db.install_with_psql(&["-c", "SET audit.export_name = 'users_audit_export'"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.psql("SELECT export_dir FROM audit_settings").trim(),
        "/tmp"
    );
    // PGOPTIONS works as well as SET, and overrides the earlier choice.
    let dir = db
        .cluster
        .server_writable_dir("chosen-by-pgoptions")
        .unwrap();
    let out = db
        .cluster
        .client_command("psql")
        .env(
            "PGOPTIONS",
            format!("-c audit.export_dir={}", dir.display()),
        )
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &db.name, "-f"])
        .arg(repo_path("sql/install.sql"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = db.psql("SELECT export_audit_data('2025-10-21')");
    assert_eq!(
        path.trim(),
        dir.join("users_audit_export_20251021.csv")
            .display()
            .to_string()
    );
    assert_eq!(
        std::fs::read_to_string(path.trim()).unwrap(),
        "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n"
    );
}

#[tokio::test]
async fn publication_publishes_inserts_of_users_audit_only_and_consumer_role_can_read() {
    let db = TestDb::new("publication");
    db.install();
    let row = db.psql(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, \
         (SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = p.pubname) \
         FROM pg_publication p WHERE pubname = 'users_audit_pub'",
    );
    assert_eq!(row.trim(), "t|f|f|f|users_audit");
    // A re-install repairs a publication widened by hand.
    db.psql("ALTER PUBLICATION users_audit_pub SET (publish = 'insert, update, delete')");
    db.install();
    let row = db.psql("SELECT pubdelete FROM pg_publication WHERE pubname = 'users_audit_pub'");
    assert_eq!(row.trim(), "f");
    let role = db.psql(
        "SELECT rolcanlogin, rolreplication, rolsuper, has_table_privilege('audit_tail', 'users_audit', 'SELECT'), \
         has_table_privilege('audit_tail', 'users_audit', 'INSERT'), has_table_privilege('audit_tail', 'users', 'SELECT') \
         FROM pg_roles WHERE rolname = 'audit_tail'",
    );
    assert_eq!(role.trim(), "t|t|f|t|f|f");
}

#[tokio::test]
async fn cron_job_is_scheduled_in_the_cron_database_and_explained_elsewhere() {
    let db = TestDb::new("cron");
    let cluster = &db.cluster;
    assert!(
        cluster.has_pg_cron(),
        "pg_cron must be installed for this test: scripts/test installs it"
    );
    // Installed into the cron database: the extension and the job appear.
    let out = {
        let _cron = common::CRON_DATABASE
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        common::install_with_psql(cluster, "postgres", &["-c", &db.set_export_dir()])
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = cluster
        .psql(
            "postgres",
            "SELECT schedule, command, database FROM cron.job WHERE jobname = 'export-daily-audit-data'",
        )
        .unwrap();
    assert_eq!(
        job.trim(),
        "0 3 * * *|SELECT public.export_audit_data(current_date - 1)|postgres"
    );
    let jobid = cluster
        .psql(
            "postgres",
            "SELECT jobid FROM cron.job WHERE jobname = 'export-daily-audit-data'",
        )
        .unwrap();
    let out = common::install_with_psql(cluster, "postgres", &["-c", &db.set_export_dir()]);
    assert!(out.status.success());
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "SELECT jobid FROM cron.job WHERE jobname = 'export-daily-audit-data'"
            )
            .unwrap(),
        jobid,
        "a re-install keeps the one job"
    );
    // pg_cron 1.4 upserts a job by name but keeps its database: start the second part afresh.
    cluster
        .psql(
            "postgres",
            "SELECT cron.unschedule('export-daily-audit-data')",
        )
        .unwrap();

    // Installed into another database: no failure, and a NOTICE with the statement to run.
    let out = db.install_with_psql(&["-c", &db.set_export_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let marker = "run in \"postgres\": ";
    let statement = stderr
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| panic!("no NOTICE with the statement in: {stderr}"));
    assert!(
        statement.starts_with("SELECT cron.schedule_in_database("),
        "{statement}"
    );
    cluster.psql("postgres", &statement).unwrap();
    // Its own job name: pg_cron 1.4 would keep another database's job of the same name.
    let job_name = format!("export-daily-audit-data-{}", db.name);
    let job = cluster
        .psql(
            "postgres",
            &format!(
                "SELECT schedule, command, database FROM cron.job WHERE jobname = '{job_name}'"
            ),
        )
        .unwrap();
    assert_eq!(
        job.trim(),
        format!(
            "0 3 * * *|SELECT public.export_audit_data(current_date - 1)|{}",
            db.name
        )
    );
    cluster
        .psql("postgres", &format!("SELECT cron.unschedule('{job_name}')"))
        .unwrap();
}

#[tokio::test]
async fn pg_cron_runs_the_export_within_seventy_seconds() {
    let db = TestDb::new("cron_runs");
    let dir = db.install();
    let client = db.client().await;
    client
        .batch_execute("INSERT INTO users (name) VALUES ('a'); UPDATE users SET name = 'b';")
        .await
        .unwrap();
    let job_name = format!("audit-tail-test-{}", db.name);
    // The extension may not be there yet: another test creates it by installing into postgres.
    common::ensure_pg_cron(&db.cluster);
    let jobid = db
        .cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cron.schedule_in_database('{job_name}', '* * * * *', \
                 'SELECT public.export_audit_data(current_date)', '{}')",
                db.name
            ),
        )
        .unwrap();
    let jobid = jobid.trim().to_string();
    let started = Instant::now();
    let status = loop {
        let status = db
            .cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT status || ' ' || coalesce(return_message, '') FROM cron.job_run_details \
                     WHERE jobid = {jobid} AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1"
                ),
            )
            .unwrap();
        if !status.trim().is_empty() || started.elapsed() > Duration::from_secs(70) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    db.cluster
        .psql("postgres", &format!("SELECT cron.unschedule({jobid})"))
        .unwrap();
    assert!(
        status.starts_with("succeeded"),
        "job did not succeed within 70 s: {status:?}"
    );
    let today: String = client
        .query_one("SELECT to_char(current_date, 'YYYYMMDD')", &[])
        .await
        .unwrap()
        .get(0);
    let file = std::fs::read(dir.join(format!("users_audit_export_{today}.csv"))).unwrap();
    let reference = copy_out(
        &client,
        "SELECT * FROM users_audit WHERE changed_at >= current_date \
         AND changed_at < current_date + 1 ORDER BY id",
    )
    .await;
    assert_eq!(file, reference);
}
