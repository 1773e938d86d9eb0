//! `audit-tail status` and `drop-slot` on a real cluster.

mod common;

use common::{Consumer, TestDb, catch_up};

/// The binary with `args`, on `db` and its slot.
fn audit_tail(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let conninfo = db.cluster.conninfo(&db.name);
    let mut all = args.to_vec();
    all.extend(["--dsn", &conninfo, "--slot", &db.name]);
    common::run_audit_tail(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_slot_checkpoint_and_export_job_and_drop_slot_is_careful() {
    let db = TestDb::new("operator");
    // The job lives in the cron database: schedule this database's own, as install.sql says.
    let out = db.install_with_psql(&["-c", &db.set_export_dir()]);
    let notices = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notices}");
    let statement = notices
        .lines()
        .find_map(|l| {
            l.split_once("run in \"postgres\": ")
                .map(|(_, s)| s.to_string())
        })
        .unwrap_or_else(|| panic!("no statement to schedule the job in: {notices}"));
    common::ensure_pg_cron(&db.cluster);
    db.cluster.psql("postgres", &statement).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out_arg = out_dir.path().to_str().unwrap();

    let (code, stdout, stderr) = audit_tail(&db, &["status", "--out-dir", out_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("does not exist"), "{stdout}");
    assert!(stdout.contains("nothing streamed"), "{stdout}");
    assert!(stdout.contains("0 3 * * *"), "{stdout}");

    catch_up(&db, out_dir.path());
    let _consumer = Consumer::spawn(&db, out_dir.path(), &["--format", "none"]);
    common::wait::streaming(&db, &db.name);
    db.psql("INSERT INTO users (name) SELECT 'x' || g FROM generate_series(1, 1000) g");
    let (code, stdout, stderr) = audit_tail(&db, &["status", "--out-dir", out_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("(pgoutput), active (pid"), "{stdout}");
    assert!(stdout.contains("retained WAL:"), "{stdout}");
    let (code, json, _) = audit_tail(&db, &["status", "--out-dir", out_arg, "--format", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["slot"]["active"], true);
    // The slot keeps WAL from its restart_lsn on, and WAL was written since: a positive size,
    // far below what a runaway slot would keep (a status that printed 0 or null fails here).
    let retained = v["slot"]["retained_wal_bytes"].as_i64().unwrap();
    assert!(retained > 0 && retained < 1 << 30, "{v}");
    assert!(v["checkpoint"]["lsn"].is_string(), "{v}");
    assert_eq!(v["export_job"]["schedule"], "0 3 * * *");

    // drop-slot refuses while the consumer holds the slot, then --force ends it and drops it.
    let (code, _, stderr) = audit_tail(&db, &["drop-slot"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("is in use by process") && stderr.contains("--force"),
        "{stderr}"
    );
    let (code, stdout, stderr) = audit_tail(&db, &["drop-slot", "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("dropped replication slot"));
    let (code, _, stderr) = audit_tail(&db, &["drop-slot"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("there is no replication slot"), "{stderr}");
    db.cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cron.unschedule('export-daily-audit-data-{}')",
                db.name
            ),
        )
        .unwrap();
}
