//! audit.log's retention (only days exported in full after they ended), the one nightly job of
//! users_audit and the log, and what `status` says of the log's storage, against a real
//! throwaway PostgreSQL. The partitions themselves: audit_log_partitions.rs.

mod common;

use common::install::audit_log_sql_alone;
use common::sql::{partition_days, psql_ok, scalar};
use common::{TestDb, install_audit_log, log_with};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_only_old_days_exported_in_full_after_they_ended() {
    // Four old days: exported; exported, then a row added; never exported; exported while the
    // day was running (as a manual export of the current day would be).
    let (db, client) = log_with(
        "part_retain",
        "INSERT INTO audit.log (changed_at, op, actor) VALUES \
                 ('2020-01-01 10:00', 'PAUSE', 'a'), ('2020-01-02 10:00', 'PAUSE', 'b'), \
                 ('2020-01-03 10:00', 'PAUSE', 'c'), ('2020-01-04 10:00', 'PAUSE', 'd'); \
             SELECT audit.log_partitions(); \
             SELECT audit.export_log('2020-01-01'), audit.export_log('2020-01-02'), audit.export_log('2020-01-04'); \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2020-01-02 11:00', 'PAUSE', 'late'); \
             UPDATE audit.log_exports SET exported_at = '2020-01-04 12:00' WHERE day = '2020-01-04';",
    )
    .await;
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(day || ':' || rows, ' ' ORDER BY day) FROM audit.log_exports"
        )
        .await,
        "2020-01-01:1 2020-01-02:1 2020-01-04:1",
        "export_log records the day and the rows it wrote"
    );
    // A failed export of 2020-01-03 (its directory is gone) records nothing.
    let err = client
        .batch_execute(
            "BEGIN; UPDATE audit_settings SET export_dir = export_dir || '/gone'; \
             SELECT audit.export_log('2020-01-03'); COMMIT;",
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("gone"), "{err:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    for bad in ["NULL", "'1 hour'"] {
        let err = client
            .batch_execute(&format!("SELECT audit.retain({bad})"))
            .await
            .unwrap_err();
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("at least one day"),
            "{err:?}"
        );
    }
    let (notices, dropped) = psql_ok(&db, "SELECT audit.retain('30 days')");
    assert_eq!(dropped.trim(), "1", "{notices}");
    for (day, why) in [
        (
            "dropped 2020-01-01 (audit.log_20200101, 1 rows): exported to ",
            "",
        ),
        (
            "kept 2020-01-02 (audit.log_20200102): it holds 2 rows, its export ",
            "",
        ),
        (
            "kept 2020-01-03 (audit.log_20200103): it was never exported",
            "",
        ),
        (
            "kept 2020-01-04 (audit.log_20200104): its export ",
            "ran before the day ended",
        ),
    ] {
        let line = notices
            .lines()
            .find(|l| l.contains(day))
            .unwrap_or_else(|| panic!("no NOTICE {day:?} in:\n{notices}"));
        assert!(line.contains(why), "{line}");
    }
    let days = partition_days(&client).await;
    assert!(!days.contains(&"2020-01-01".to_string()), "{days:?}");
    for kept in ["2020-01-02", "2020-01-03", "2020-01-04"] {
        assert!(days.contains(&kept.to_string()), "{kept}: {days:?}");
    }
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(actor, ',' ORDER BY id) FROM audit.log"
        )
        .await,
        "b,c,d,late"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT (to_regclass('audit.log_20200101') IS NULL)::text"
        )
        .await,
        "true",
        "the partition is detached and dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nightly_part_of_the_log_makes_partitions_exports_and_retains_when_set() {
    let (db, client) = log_with(
        "part_nightly",
        "INSERT INTO audit.log (changed_at, op, actor) VALUES \
                 ('2020-01-01 10:00', 'PAUSE', 'a'), ('2020-01-02 10:00', 'PAUSE', 'b'); \
             UPDATE audit.log_settings SET days_ahead = 9;",
    )
    .await;
    let dir = db.export_dir();
    // Without retention set, the job keeps every day; with it, it drops the exported ones.
    let (_, path) = psql_ok(&db, "SELECT audit.nightly_log('2020-01-01')");
    assert_eq!(
        path.trim(),
        dir.join("audit_log_export_20200101.csv")
            .display()
            .to_string()
    );
    let days = partition_days(&client).await;
    assert!(days.contains(&"2020-01-01".to_string()), "{days:?}");
    assert!(
        days.contains(&"2020-01-02".to_string()),
        "DEFAULT's days get partitions: {days:?}"
    );
    assert_eq!(
        scalar(&client, "SELECT (current_date + 9)::text").await,
        *days.last().unwrap(),
        "days_ahead days ahead"
    );
    client
        .batch_execute("UPDATE audit.log_settings SET retention = '30 days'")
        .await
        .unwrap();
    let (notices, _) = psql_ok(&db, "SELECT audit.nightly_log('2020-01-02')");
    assert!(notices.contains("dropped 2020-01-01"), "{notices}");
    assert!(notices.contains("dropped 2020-01-02"), "{notices}");
    assert_eq!(
        scalar(&client, "SELECT count(*)::text FROM audit.log").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_nightly_job_exports_both_and_replaces_the_logs_own_job() {
    let db = TestDb::new("part_job");
    let _cron = common::CRON_DATABASE
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // The two-job layout of an earlier install, in the cron database.
    let out = common::install_with_psql(&db.cluster, "postgres", &["-c", &db.set_export_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.cluster
        .psql(
            "postgres",
            "SELECT cron.schedule('export-daily-audit-log', '0 3 * * *', 'SELECT audit.export_log(current_date - 1)')",
        )
        .unwrap();
    let out = audit_log_sql_alone(&db, "postgres");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let jobs = || {
        db.cluster
            .psql(
                "postgres",
                "SELECT jobname, schedule, command FROM cron.job \
                 WHERE jobname LIKE 'export-daily-audit-%' AND database = 'postgres' ORDER BY jobname",
            )
            .unwrap()
    };
    let one = "export-daily-audit-data|0 3 * * *|SELECT public.export_audit_data(current_date - 1), audit.nightly_log(audit.log_today() - 1)";
    let got = jobs();
    assert!(
        stderr.contains("unscheduled pg_cron job export-daily-audit-log"),
        "{stderr}"
    );
    // install.sql run again alone keeps the log's part of the one job.
    let out = common::install_with_psql(&db.cluster, "postgres", &["-c", &db.set_export_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = jobs();
    db.cluster
        .psql(
            "postgres",
            "SELECT cron.unschedule('export-daily-audit-data'); DROP SCHEMA audit CASCADE",
        )
        .unwrap();
    assert_eq!(got.trim(), one);
    assert_eq!(again.trim(), one);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_job_run_by_pg_cron_writes_users_audit_as_before_and_the_log() {
    let db = TestDb::new("part_jobcmd");
    let dir = install_audit_log(&db);
    let client = db.client().await;
    client
        .batch_execute(&std::fs::read_to_string(common::repo_path("sql/demo_data.sql")).unwrap())
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders'); \
             INSERT INTO orders VALUES (1, 'new');",
        )
        .await
        .unwrap();
    let users_copy = common::copy_out(
        &client,
        "SELECT * FROM users_audit WHERE changed_at >= current_date AND changed_at < current_date + 1 ORDER BY id",
    )
    .await;
    let log_copy = common::copy_out(
        &client,
        "SELECT * FROM audit.log WHERE changed_at >= current_date AND changed_at < current_date + 1 ORDER BY id",
    )
    .await;
    // The job's statement, for today instead of yesterday, run by pg_cron in this database.
    let command = "SELECT public.export_audit_data(current_date), audit.nightly_log(current_date)";
    common::ensure_pg_cron(&db.cluster);
    let jobid = db
        .cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cron.schedule_in_database('audit-tail-test-{0}', '* * * * *', '{command}', '{0}')",
                db.name
            ),
        )
        .unwrap();
    let jobid = jobid.trim().to_string();
    let mut status = String::new();
    common::wait::until("a run of the job", Duration::from_secs(70), || {
        status = db
            .cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT status || ' ' || coalesce(return_message, '') FROM cron.job_run_details \
                     WHERE jobid = {jobid} AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1"
                ),
            )
            .unwrap();
        !status.trim().is_empty()
    });
    db.cluster
        .psql("postgres", &format!("SELECT cron.unschedule({jobid})"))
        .unwrap();
    assert!(status.starts_with("succeeded"), "{status}");
    let today = scalar(&client, "SELECT to_char(current_date, 'YYYYMMDD')").await;
    let users = dir.join(format!("users_audit_export_{today}.csv"));
    let log = dir.join(format!("audit_log_export_{today}.csv"));
    assert_eq!(
        std::fs::read(users).unwrap(),
        users_copy,
        "users_audit's export as before"
    );
    assert_eq!(std::fs::read(log).unwrap(), log_copy);
    assert_eq!(
        users_copy.iter().filter(|b| **b == b'\n').count(),
        7,
        "six reference rows"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*)::text FROM audit.log_exports WHERE day = current_date"
        )
        .await,
        "1",
        "the day is recorded as exported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_partitions_due_days_default_rows_and_what_retention_would_drop() {
    let db = TestDb::new("part_status");
    install_audit_log(&db);
    let out = tempfile::tempdir().unwrap();
    let conninfo = db.cluster.conninfo(&db.name);
    let status = |format: &str| {
        let (code, stdout, stderr) = common::run_audit_tail(&[
            "status",
            "--dsn",
            &conninfo,
            "--out-dir",
            out.path().to_str().unwrap(),
            "--format",
            format,
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        (stdout, stderr)
    };
    let client = db.client().await;
    let yesterday = scalar(&client, "SELECT (current_date - 1)::text").await;
    let last = scalar(&client, "SELECT (current_date + 7)::text").await;
    let (text, _) = status("text");
    assert!(
        text.contains(&format!(
            "log partitions: 9 days ({yesterday} .. {last}), 7 days ahead; due: none\n  retention: not set"
        )),
        "{text}"
    );

    // A due day, rows in DEFAULT, two old days of which one was exported, and retention set.
    let due = scalar(&client, "SELECT (current_date + 3)::text").await;
    client
        .batch_execute(&format!(
            "DROP TABLE audit.log_{}; \
             INSERT INTO audit.log (changed_at, op, actor) VALUES \
                 ('2020-01-01 10:00', 'PAUSE', 'a'), ('2020-01-02 10:00', 'PAUSE', 'b'); \
             SELECT audit.create_log_partition('2020-01-01'), audit.create_log_partition('2020-01-02'); \
             SELECT audit.export_log('2020-01-01'); \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2031-02-03 10:00', 'PAUSE', 'c'); \
             UPDATE audit.log_settings SET retention = '30 days';",
            due.replace('-', "")
        ))
        .await
        .unwrap();
    let (text, stderr) = status("text");
    assert!(
        text.contains(&format!(
            "log partitions: 10 days (2020-01-01 .. {last}), 7 days ahead; due: {due} (run SELECT audit.log_partitions()"
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "  WARNING: audit.log_default holds 1 rows (of 2031-02-03): days without a partition; \
             run SELECT audit.log_partitions()"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  retention 30 days: would drop 2020-01-01; would keep 2020-01-02 (it was never exported)"
        ),
        "{text}"
    );
    assert!(stderr.contains("audit.log_default holds rows"), "{stderr}");
    let (json, _) = status("json");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let storage = &json["log_storage"];
    assert_eq!(storage["due"], serde_json::json!([due]));
    assert_eq!(storage["default_rows"], 1);
    assert_eq!(storage["time_zone"], "UTC", "the log's zone");
    assert_eq!(storage["retention_plan"][0]["drop"], true);
    assert_eq!(storage["retention_plan"][1]["drop"], false);
    // status changed nothing, and the consumer's role may ask too.
    assert_eq!(partition_days(&client).await.len(), 10);
    assert_eq!(
        scalar(
            &client,
            "SELECT has_function_privilege('audit_tail', 'audit.log_storage()', 'EXECUTE')::text"
        )
        .await,
        "true"
    );
}
