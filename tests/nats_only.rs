//! `audit-tail stream --nats URL --no-files`: JetStream alone, no out-dir. The stream resumes
//! from the slot and JetStream's last row of the database, so across kill -9 every row lands
//! in JetStream exactly once, and an archive rebuilds files equal to the table. Options that
//! need files are usage errors.

mod common;
mod nats_support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit_tail::nats_server::NatsServer;
use common::{Rng, TestDb};

/// `audit-tail stream --no-files --nats URL` for `db` (slot named after it), run in `cwd`.
fn stream_without_files(db: &TestDb, cwd: &std::path::Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-tail"));
    cmd.arg("stream")
        .arg("--dsn")
        .arg(db.cluster.conninfo(&db.name))
        .arg("--slot")
        .arg(&db.name)
        .args(["--no-files", "--format", "none", "--nats", url])
        .args(extra)
        .current_dir(cwd)
        .env_remove("AUDIT_TAIL_DSN")
        .env("RUST_LOG", "audit_tail=debug");
    cmd
}

fn catch_up(db: &TestDb, cwd: &std::path::Path, url: &str) -> String {
    let out = stream_without_files(db, cwd, url, &["--until", "now"])
        .output()
        .expect("run audit-tail stream");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stream --no-files failed: {stderr}");
    stderr
}

fn audit_rows(db: &TestDb) -> u64 {
    db.psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap()
}

/// Single-row and bulk updates of `users` until `stop`; returns the transactions.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let mut rng = Rng::from_env_or_clock("nats-only-writer");
        let client = audit_tail::sql::connect(&config).await.unwrap();
        let mut transactions = 0;
        while !stop.load(Ordering::SeqCst) {
            let sql = if rng.below(10) == 0 {
                format!(
                    "UPDATE users SET role = 'bulk-{}' WHERE id <= 300",
                    rng.below(1_000_000)
                )
            } else {
                format!(
                    "UPDATE users SET name = 'n-{}' WHERE id = {}",
                    rng.below(1_000_000),
                    1 + rng.below(1000)
                )
            };
            client.batch_execute(&sql).await.unwrap();
            transactions += 1;
        }
        transactions
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_alone_gets_every_row_once_across_kill_9_and_no_files() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("nats_only");
    let cwd = tempfile::tempdir().unwrap();
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 1000) g",
    );
    // The first run creates the slot: rows come after.
    catch_up(&db, cwd.path(), &nats.url());

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("nats-only");
    let seed = rng.seed;
    for _ in 0..6 {
        let mut stream = common::Consumer {
            child: stream_without_files(&db, cwd.path(), &nats.url(), &[])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        };
        common::wait::streaming(&db, &db.name);
        std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
        stream.child.kill().unwrap();
        stream.child.wait().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 20,
        "only {transactions} transactions (seed {seed})"
    );
    let stderr = catch_up(&db, cwd.path(), &nats.url());
    assert!(
        stderr.contains("JetStream holds the rows of this database up to here"),
        "it resumes from JetStream's last row: {stderr}"
    );

    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    let ids: std::collections::HashSet<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a row twice (seed {seed})");
    assert_eq!(
        stored.len() as u64,
        audit_rows(&db),
        "JetStream holds every row once (seed {seed})"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no out-dir (nor any file) was created"
    );

    // The second copy lives elsewhere: the archive's files equal the table row for row.
    let archive_out = tempfile::tempdir().unwrap();
    let mut archive = nats_support::Archive::spawn(&nats.url(), archive_out.path());
    common::wait::until(
        "the archive to take every message",
        Duration::from_secs(120),
        || nats_support::consumer_waiting(&nats),
    );
    let (code, err) = archive.terminate();
    assert_eq!(code, Some(0), "{err}");
    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert_eq!(rows as u64, stored.len() as u64);

    // A slot dropped while JetStream holds rows of the database is refused, as for an out-dir.
    db.psql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
    let out = stream_without_files(&db, cwd.path(), &nats.url(), &["--until", "now"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not exist, but JetStream stream \"AUDIT\" holds"),
        "{stderr}"
    );
    assert!(
        !common::wait::slot_active(&db, &db.name)
            && db
                .psql(&format!(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
                    db.name
                ))
                .trim()
                == "0",
        "the slot was not recreated"
    );
}

#[test]
fn options_that_need_files_are_usage_errors_without_them() {
    let url = "nats://127.0.0.1:1";
    let cases: [&[&str]; 5] = [
        &["stream", "--no-files"],
        &["stream", "--no-files", "--nats", url, "--out-dir", "x"],
        &["stream", "--no-files", "--nats", url, "--safe-csv"],
        &["stream", "--no-files", "--nats", url, "--accept-gap"],
        &["stream", "--no-files", "--nats", url, "--signing-key", "k"],
    ];
    for args in cases {
        let (code, _, stderr) = common::run_audit_tail(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let named = if args.len() == 2 { "--nats" } else { args[4] };
        assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
    }
}
