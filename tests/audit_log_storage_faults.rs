//! audit.log's storage where a new-user trial broke it: the session's TimeZone, retention of a
//! day re-created after it was dropped, grants, concurrent writers and readers, DateStyle and
//! REPEATABLE READ, against a real throwaway PostgreSQL (whose TimeZone is UTC).
//! The usual paths: audit_log_partitions.rs and audit_log_retention.rs.

mod common;

use common::install::{both_scripts, both_scripts_notices};
use common::sql::{partition_days, psql_notices, scalar, strings};
use common::{TestDb, assert_files_equal, catch_up, install_audit_log, log_with};

/// Installs both scripts with psql from a session whose TimeZone is `pgtz` (libpq's PGTZ).
fn install_with_pgtz(db: &TestDb, pgtz: &str) {
    let out = both_scripts(db).env("PGTZ", pgtz).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_at_is_in_the_zone_fixed_at_install_whatever_the_session_sets() {
    let db = TestDb::new("store_zone");
    // The installer's own session is 14 hours ahead of the server: it decides nothing.
    install_with_pgtz(&db, "Pacific/Kiritimati");
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let client = db.client().await;
    assert_eq!(
        scalar(&client, "SELECT time_zone FROM audit.log_settings").await,
        "UTC",
        "the server's TimeZone as configured"
    );
    let days = partition_days(&client).await;
    let want = strings(
        &client,
        "SELECT ((now() AT TIME ZONE 'UTC')::date + n)::text FROM generate_series(-1, 7) AS n",
    )
    .await;
    assert_eq!(days, want, "yesterday, today and 7 days ahead, in UTC");
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders')",
        )
        .await
        .unwrap();
    // Sessions far west and east of the server, one changing its zone midway.
    for sql in [
        "SET TimeZone = '<X>+110'; INSERT INTO orders VALUES (1, 'new')",
        "SET TimeZone = '<Y>-110'; INSERT INTO orders VALUES (2, 'new')",
        "BEGIN; SET LOCAL TimeZone = 'Pacific/Kiritimati'; UPDATE orders SET status = 'paid' WHERE id = 1; \
         SET LOCAL TimeZone = 'Pacific/Pago_Pago'; UPDATE orders SET status = 'paid' WHERE id = 2; COMMIT; \
         RESET TimeZone",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let today = scalar(
        &client,
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .await;
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(DISTINCT tableoid::regclass::text, ',') || ' ' || \
                    bool_and(changed_at <= statement_at AT TIME ZONE 'UTC' \
                             AND changed_at > statement_at AT TIME ZONE 'UTC' - interval '1 minute') \
             FROM audit.log"
        )
        .await,
        format!("audit.log_{today} true"),
        "every row in today's partition (UTC), none in DEFAULT"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(DISTINCT changed_at)::text FROM audit.log WHERE op = 'UPDATE'"
        )
        .await,
        "1",
        "one transaction, one changed_at, whatever SET LOCAL TimeZone did midway"
    );
    // The stream's files follow changed_at: the rows are in today's file.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal(&db, out.path(), "audit", "log").await, 4);

    // Another zone chosen later applies to new rows at once; an unknown zone is refused.
    client
        .batch_execute(
            "UPDATE audit.log_settings SET time_zone = 'Pacific/Kiritimati'; \
             INSERT INTO orders VALUES (3, 'new')",
        )
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &client,
            "SELECT (statement_at AT TIME ZONE 'Pacific/Kiritimati' - changed_at \
                     BETWEEN interval '0' AND interval '1 minute')::text \
             FROM audit.log WHERE key = '{\"id\": 3}' AND op = 'INSERT'"
        )
        .await,
        "true",
        "changed_at in Kiritimati time"
    );
    let err = client
        .batch_execute("UPDATE audit.log_settings SET time_zone = 'Mars/Olympus_Mons'")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("time zone \"Mars/Olympus_Mons\" not recognized"),
        "{err:?}"
    );
    // A re-install keeps the zone chosen.
    install_audit_log(&db);
    assert_eq!(
        scalar(&client, "SELECT time_zone FROM audit.log_settings").await,
        "Pacific/Kiritimati"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_never_drops_rows_it_did_not_export_nor_overwrites_a_dropped_days_file() {
    // Day 1: exported with row 1, then dropped by retention.
    let (db, client) = log_with(
        "store_retain",
        "INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-01 10:00', 'PAUSE', 'one'); \
             SELECT audit.log_partitions(); SELECT audit.export_log('2020-01-01');",
    )
    .await;
    let dir = db.export_dir();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok && notices.contains("dropped 2020-01-01"), "{notices}");
    let file = dir.join("audit_log_export_20200101.csv");
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(first.lines().count(), 2, "{first}");
    // A row of that day arrives later (written by hand here; before the log's zone was fixed, any
    // session could): it lands in DEFAULT, then in a partition made again. As many rows as the
    // export wrote, but not those: retention keeps the day, and says what to do.
    client
        .batch_execute(
            "INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-01 11:00', 'PAUSE', 'two'); \
             SELECT audit.log_partitions();",
        )
        .await
        .unwrap();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok, "{notices}");
    assert!(
        notices.contains("kept 2020-01-01 (audit.log_20200101): its rows were written after retention dropped the day"),
        "{notices}"
    );
    assert!(notices.contains("move "), "{notices}");
    // Exporting it again would overwrite the only copy of row 1: refused, the file kept.
    let err = client
        .batch_execute("SELECT audit.export_log('2020-01-01')")
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap();
    assert!(
        err.message().contains("will not overwrite") && err.message().contains("retention dropped"),
        "{err:?}"
    );
    assert!(
        err.hint().unwrap().contains("move the file aside"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    // Moved aside, the day exports its new row, and then retention may drop it.
    std::fs::rename(&file, dir.join("audit_log_export_20200101.first.csv")).unwrap();
    client
        .batch_execute("SELECT audit.export_log('2020-01-01')")
        .await
        .unwrap();
    assert!(std::fs::read_to_string(&file).unwrap().contains(",two,"));
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok && notices.contains("dropped 2020-01-01"), "{notices}");

    // Day 2: exported with row 3; the owner then swaps it for another row of the day: the count
    // matches, the ids do not.
    client
        .batch_execute(
            "INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-02 10:00', 'PAUSE', 'three'); \
             SELECT audit.log_partitions(); SELECT audit.export_log('2020-01-02'); \
             DELETE FROM audit.log WHERE actor = 'three'; \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-02 10:00', 'PAUSE', 'four');",
        )
        .await
        .unwrap();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok, "{notices}");
    assert!(
        notices
            .contains("kept 2020-01-02 (audit.log_20200102): it holds other rows than its export"),
        "{notices}"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(actor, ',' ORDER BY id) FROM audit.log WHERE changed_at < '2021-01-01'"
        )
        .await,
        "four"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_grant_given_by_mistake_or_by_default_privileges_survives_on_the_log() {
    let db = TestDb::new("store_grants");
    install_audit_log(&db);
    let owner = db.client().await;
    let app = db.create_role("app", "LOGIN");
    let installer = scalar(&owner, "SELECT current_user::text").await;
    // As the trial did: every new table of schema audit granted to the application, and a
    // mistaken GRANT ALL on the log, its DEFAULT and today's partition; and on the sequence of
    // the log's ids.
    let today = scalar(&owner, "SELECT to_char(audit.log_today(), 'YYYYMMDD')").await;
    owner
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA audit TO \"{app}\"; \
             ALTER DEFAULT PRIVILEGES FOR ROLE \"{installer}\" IN SCHEMA audit GRANT ALL ON TABLES TO \"{app}\"; \
             GRANT ALL ON audit.log, audit.log_default, audit.log_{today}, audit.pauses TO \"{app}\"; \
             GRANT INSERT (actor) ON audit.log_default TO \"{app}\"; \
             ALTER DEFAULT PRIVILEGES FOR ROLE \"{installer}\" IN SCHEMA audit GRANT ALL ON SEQUENCES TO \"{app}\"; \
             DO $$ BEGIN EXECUTE format('GRANT ALL ON SEQUENCE %s TO %I', \
                 pg_get_serial_sequence('audit.log', 'id'), '{app}'); END $$;"
        ))
        .await
        .unwrap();
    install_audit_log(&db);
    owner
        .batch_execute("SELECT audit.create_log_partition('2030-06-01')")
        .await
        .unwrap();
    let privileges = scalar(
        &owner,
        &format!(
            "SELECT coalesce(string_agg(c.relname || ':' || a.privilege_type, ' ' ORDER BY c.relname, a.privilege_type), '') \
             FROM pg_class c, aclexplode(c.relacl) a \
             WHERE c.relnamespace = 'audit'::regnamespace AND a.grantee = '\"{app}\"'::regrole"
        ),
    )
    .await;
    assert_eq!(
        privileges, "log:SELECT pauses:SELECT",
        "only reading the log (as a whole) and the pauses stays"
    );
    let client = db.client_as(&app).await;
    for statement in [
        "INSERT INTO audit.log_20300601 (changed_at, op, actor) VALUES ('2030-06-01', 'PAUSE', 'forged')".to_string(),
        format!("INSERT INTO audit.log_{today} (changed_at, op, actor) VALUES (now(), 'PAUSE', 'forged')"),
        "INSERT INTO audit.log_default (actor) VALUES ('forged')".to_string(),
        "INSERT INTO audit.log (op, actor) VALUES ('PAUSE', 'forged')".to_string(),
        "CREATE FUNCTION pg_temp.f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.actor := ''x''; RETURN NEW; END'; \
         CREATE TRIGGER t BEFORE INSERT ON audit.log_20300601 FOR EACH ROW EXECUTE FUNCTION pg_temp.f()".to_string(),
        "CREATE FUNCTION pg_temp.g() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; \
         CREATE TRIGGER t BEFORE INSERT ON audit.pauses FOR EACH ROW EXECUTE FUNCTION pg_temp.g()".to_string(),
        format!("SELECT * FROM audit.log_{today}"),
        "SELECT setval(pg_get_serial_sequence('audit.log', 'id'), 1)".to_string(),
    ] {
        let err = client.batch_execute(&statement).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err:?}"
        );
    }
}

/// Waits until the backend `pid` waits for a lock.
fn waits_for_a_lock(db: &TestDb, pid: i32) {
    common::wait::until(
        "a backend waiting for a lock",
        std::time::Duration::from_secs(30),
        || {
            db.psql(&format!(
                "SELECT count(*) FROM pg_locks WHERE pid = {pid} AND NOT granted"
            ))
            .trim()
                != "0"
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_is_made_while_rows_of_its_day_are_being_written_into_default() {
    let db = TestDb::new("store_move");
    install_audit_log(&db);
    let writer = db.client().await;
    let upkeep = db.client().await;
    let pid: i32 = upkeep
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // A writer of a day without a partition, still in its transaction.
    writer
        .batch_execute(
            "BEGIN; INSERT INTO audit.log (changed_at, op, actor) VALUES ('2031-03-04 10:00', 'PAUSE', 'w')",
        )
        .await
        .unwrap();
    let made = tokio::spawn(async move {
        upkeep
            .query_one("SELECT audit.create_log_partition('2031-03-04')", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
    });
    waits_for_a_lock(&db, pid);
    writer.batch_execute("COMMIT").await.unwrap();
    // Before, the row committed after the move made the ATTACH fail ("updated partition
    // constraint for default partition would be violated").
    assert!(made.await.unwrap().expect("the partition is made"));
    assert_eq!(
        scalar(
            &writer,
            "SELECT string_agg(tableoid::regclass::text, ',') FROM audit.log WHERE actor = 'w'"
        )
        .await,
        "audit.log_20310304"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nightly_export_survives_a_failed_upkeep_and_retention_waits_for_no_long_reader() {
    let db = TestDb::new("store_upkeep");
    let dir = install_audit_log(&db);
    let client = db.client().await;
    // A table in the way of a partition due: the upkeep fails, the export is written anyway.
    let due = scalar(&client, "SELECT to_char(audit.log_today() + 3, 'YYYYMMDD')").await;
    client
        .batch_execute(&format!(
            "DROP TABLE audit.log_{due}; CREATE TABLE audit.log_{due} (x int); \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-01 10:00', 'PAUSE', 'a'); \
             SELECT audit.create_log_partition('2020-01-01'); \
             UPDATE audit.log_settings SET retention = '1 day';"
        ))
        .await
        .unwrap();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.nightly_log('2020-01-01')");
    assert!(ok, "the run succeeds: {notices}");
    assert!(
        notices.contains(
            "the nightly upkeep of audit.log's partitions failed, the export of 2020-01-01 goes on"
        ) && notices.contains("is not that partition"),
        "{notices}"
    );
    assert!(dir.join("audit_log_export_20200101.csv").exists());
    assert!(notices.contains("dropped 2020-01-01"), "{notices}");

    // A long reader of the log: retention does not queue every write behind its DETACH, it
    // keeps the day for a later run.
    client
        .batch_execute(
            "INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-02 10:00', 'PAUSE', 'b'); \
             SELECT audit.create_log_partition('2020-01-02'); SELECT audit.export_log('2020-01-02');",
        )
        .await
        .unwrap();
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM audit.log")
        .await
        .unwrap();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok, "{notices}");
    assert!(
        notices.contains(
            "kept 2020-01-02 (audit.log_20200102): audit.log was in use for longer than 2s"
        ),
        "{notices}"
    );
    reader.batch_execute("COMMIT").await.unwrap();
    let (ok, notices, _) = psql_notices(&db, "SELECT audit.retain('1 day')");
    assert!(ok && notices.contains("dropped 2020-01-02"), "{notices}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sessions_datestyle_and_isolation_level_break_no_upkeep() {
    let db = TestDb::new("store_style");
    install_audit_log(&db);
    let client = db.client().await;
    client
        .batch_execute(
            "SET datestyle = 'SQL, DMY'; \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2031-02-03 10:00', 'PAUSE', 'a'), \
                                                                  ('2020-01-01 10:00', 'PAUSE', 'b'); \
             SELECT audit.log_partitions(); \
             SELECT audit.nightly_log('2020-01-01'); \
             SELECT audit.retain('1 day');",
        )
        .await
        .expect("upkeep under DateStyle SQL, DMY");
    let storage = scalar(&client, "SELECT audit.log_storage()::text").await;
    let storage: serde_json::Value = serde_json::from_str(&storage).unwrap();
    assert_eq!(storage["default_rows"], 0, "{storage}");
    assert!(
        storage["partitions"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("2031-02-03")),
        "{storage}"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*)::text FROM audit.retention_plan('1 day')"
        )
        .await,
        "0",
        "2020-01-01 was exported and dropped"
    );

    // A REPEATABLE READ transaction whose snapshot predates a partition made meanwhile finds it
    // made, not "a table ... exists and is not that partition".
    let other = db.client().await;
    client
        .batch_execute(
            "RESET datestyle; BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class",
        )
        .await
        .unwrap();
    other
        .batch_execute("SELECT audit.create_log_partition('2032-01-01')")
        .await
        .unwrap();
    let made: bool = client
        .query_one("SELECT audit.create_log_partition('2032-01-01')", &[])
        .await
        .expect("no false table in the way")
        .get(0);
    assert!(!made);
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_setup_outside_the_cron_database_says_what_to_run_there() {
    let db = TestDb::new("store_first");
    let (stderr, _) = both_scripts_notices(&db);
    let details: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("DETAIL:  pg_cron must be created"))
        .collect();
    assert_eq!(details.len(), 2, "one per script: {stderr}");
    for detail in &details {
        assert!(
            detail.contains("in \"postgres\" first, once: CREATE EXTENSION IF NOT EXISTS pg_cron;"),
            "{detail}"
        );
    }
    assert!(
        details[0].contains("run the statement its NOTICE gives instead"),
        "install.sql points to audit_log.sql's statement: {}",
        details[0]
    );
    assert!(
        details[1].contains("replaces the one sql/install.sql gave"),
        "{}",
        details[1]
    );
    assert!(
        !stderr.contains("HINT:  an earlier install scheduled"),
        "a first install hears of no earlier one: {stderr}"
    );
}
