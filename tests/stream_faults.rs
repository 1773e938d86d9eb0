//! Crash safety and fatal conditions of `audit-tail stream`, by breaking things on purpose:
//! kill -9 of the consumer, server crashes and restarts, a dropped slot, a missing publication.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use audit_tail::cluster::{Cluster, ClusterOptions};
use common::{Consumer, Rng, TestDb, assert_files_equal_table, catch_up, stream_command};

/// Single-row and bulk updates of `users` until `stop`, reconnecting across server restarts.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let mut rng = Rng::from_env_or_clock("writer");
        let mut transactions = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok(client) = audit_tail::sql::connect(&config).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let sql = if rng.below(10) == 0 {
                    // A bulk update: thousands of audit rows in one transaction.
                    format!(
                        "UPDATE users SET role = 'bulk-{}' WHERE id <= 2000",
                        rng.below(1_000_000)
                    )
                } else {
                    format!(
                        "UPDATE users SET name = 'n-{}', email = CASE WHEN random() < 0.5 THEN NULL ELSE 'e' END WHERE id = {}",
                        rng.below(1_000_000),
                        1 + rng.below(3000)
                    )
                };
                if client.batch_execute(&sql).await.is_err() {
                    break;
                }
                transactions += 1;
            }
        }
        transactions
    })
}

fn prepare(db: &TestDb, out: &Path) {
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 3000) g",
    );
    catch_up(db, out);
}

fn pid(consumer: &Consumer) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(consumer.child.id() as i32)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let db = TestDb::new("kill9");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("kill9");
    let seed = rng.seed;
    common::kill_9_loop(&db, out.path(), &mut rng, 50, 500);
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 30,
        "the writer ran only {transactions} transactions (seed {seed})"
    );
    let rows =
        common::assert_exactly_once_after_kills(db, out.path(), "public", "users_audit", seed)
            .await;
    assert!(rows > 1000, "only {rows} rows were compared (seed {seed})");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_crashes_and_restarts_lose_and_double_nothing() {
    // Its own cluster: the crashes must not hit other tests.
    let cluster = Arc::new(Cluster::start().unwrap());
    let db = TestDb::on(cluster.clone(), "server_crash");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let mut consumer = Consumer::spawn(&db, out.path(), &["--format", "none"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        if round == 1 {
            cluster.stop().unwrap();
        } else {
            // No shutdown checkpoint: the slot's confirmed position goes back to the last
            // checkpoint, so the server sends transactions again that are already in the files.
            cluster.crash().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        cluster.restart().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "the consumer must survive server restarts"
    );
    nix::sys::signal::kill(pid(&consumer), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = consumer.child.wait().unwrap();
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(consumer.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("reconnecting"), "{stderr}");
    // The clean stop ends the stream with CommandComplete: said as what it means.
    assert!(
        stderr.contains("the server ended the replication stream"),
        "{stderr}"
    );
    assert!(!stderr.contains("CommandComplete"), "{stderr}");
    catch_up(&db, out.path());
    assert_files_equal_table(&db, out.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_across_midnight_lands_in_the_day_of_changed_at() {
    let db = TestDb::new("midnight");
    let out = tempfile::tempdir().unwrap();
    db.install();
    catch_up(&db, out.path());
    // changed_at is the transaction's start; this one "started" before midnight and commits now.
    db.psql(
        "BEGIN; \
         INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) VALUES \
         (1, '2025-10-21 23:59:59.999999', 'night', 'name', 'a', 'b'), \
         (1, '2025-10-22 00:00:00', 'night', 'role', 'x', 'y'); \
         COMMIT;",
    );
    catch_up(&db, out.path());
    assert!(out.path().join("users_audit_stream_20251021.csv").exists());
    assert!(out.path().join("users_audit_stream_20251022.csv").exists());
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_publication_on_a_busy_database_does_not_pin_wal() {
    let db = TestDb::new("idle_wal");
    let out = tempfile::tempdir().unwrap();
    db.install();
    catch_up(&db, out.path());
    let _consumer = Consumer::spawn(&db, out.path(), &["--format", "none"]);
    db.psql("CREATE TABLE other (id int, body text)");
    for _ in 0..4 {
        db.psql(
            "INSERT INTO other SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 30000) g",
        );
    }
    let written: i64 = db
        .psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .trim()
        .parse::<f64>()
        .unwrap() as i64;
    assert!(written > 100_000_000, "only {written} bytes of WAL written");
    let lag_sql = format!(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    );
    let started = Instant::now();
    let lag = loop {
        let lag: i64 = db.psql(&lag_sql).trim().parse().unwrap();
        if lag < 4 * 1024 * 1024 || started.elapsed() > Duration::from_secs(20) {
            break lag;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        lag < 4 * 1024 * 1024,
        "the slot is {lag} bytes behind after 100+ MB of WAL elsewhere"
    );
}

fn run_stream(db: &TestDb, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let output = stream_command(db, out, extra).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fatal_conditions_stop_with_a_message_that_says_what_to_do() {
    let db = TestDb::new("fatal");
    db.install();
    let out = tempfile::tempdir().unwrap();

    let (code, err) = run_stream(
        &db,
        out.path(),
        &["--publication", "nope", "--until", "now"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("publication \"nope\" does not exist") && err.contains("install.sql"),
        "{err}"
    );

    let (code, _, err) = common::run_audit_tail(&["stream", "--slot", "Bad-Name"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("lower-case letters"), "{err}");

    let (code, err) = run_stream(&db, out.path(), &["--until", "yesterday"]);
    assert_eq!(code, Some(2), "{err}");

    let file = out.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, err) = run_stream(&db, &file.join("sub"), &["--until", "now"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("could not create the out-dir"), "{err}");

    let (code, _, err) =
        common::run_audit_tail(&["stream", "--dsn", "host=/nonexistent port=1 nonsense"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid connection string"), "{err}");

    // A slot dropped behind the stream's back: rows may be missing, so refuse to go on.
    catch_up(&db, out.path());
    db.psql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
    let (code, err) = run_stream(&db, out.path(), &["--until", "now"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("was dropped"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_dropped_while_streaming_ends_the_stream_with_an_error() {
    let db = TestDb::new("drop_live");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let mut consumer = Consumer::spawn(&db, out.path(), &["--format", "none"]);
    common::wait::streaming(&db, &db.name);
    // End its walsender, and drop the slot in the moment before the consumer reconnects.
    db.psql(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    ));
    common::wait::released(&db, &db.name);
    db.psql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = consumer.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running after its slot was dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(consumer.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("was dropped"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_replica_is_refused() {
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            settings: vec![("wal_level".into(), "replica".into())],
            ..Default::default()
        })
        .unwrap(),
    );
    let db = TestDb::on(cluster, "wal_level");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let (code, err) = run_stream(&db, out.path(), &["--until", "now"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("wal_level = logical"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_and_md5_logins_stream_and_a_wrong_password_is_fatal() {
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            // A logical replication connection names a database and matches the database's
            // lines, never `replication` (that keyword is for physical replication): the
            // `reject` lines prove it, since streaming succeeds below.
            hba: vec![
                "host replication at_scram,at_md5 127.0.0.1/32 reject".into(),
                "host all at_scram 127.0.0.1/32 scram-sha-256".into(),
                "host all at_md5 127.0.0.1/32 md5".into(),
            ],
            ..Default::default()
        })
        .unwrap(),
    );
    let db = TestDb::on(cluster.clone(), "auth");
    db.install();
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE at_scram LOGIN REPLICATION PASSWORD 'scram secret'; \
             SET password_encryption = 'md5'; CREATE ROLE at_md5 LOGIN REPLICATION PASSWORD 'md5 secret';",
        )
        .unwrap();
    for (user, password) in [("at_scram", "scram secret"), ("at_md5", "md5 secret")] {
        let out = tempfile::tempdir().unwrap();
        let dsn = format!(
            "postgresql://{user}:{}@127.0.0.1:{}/{}",
            password.replace(' ', "%20"),
            cluster.port(),
            db.name
        );
        let slot = format!("slot_{user}");
        let run = |extra: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
                .args([
                    "stream",
                    "--format",
                    "json",
                    "--until",
                    "now",
                    "--slot",
                    &slot,
                    "--out-dir",
                ])
                .arg(out.path())
                .args(extra)
                .env("AUDIT_TAIL_DSN", &dsn)
                .output()
                .unwrap()
        };
        let first = run(&[]);
        assert!(
            first.status.success(),
            "{user}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        db.psql(&format!("INSERT INTO users (name) VALUES ('{user}'); UPDATE users SET name = 'x-{user}' WHERE name = '{user}'"));
        let second = run(&[]);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(second.status.success(), "{user}: {stderr}");
        let stdout = String::from_utf8_lossy(&second.stdout);
        assert!(
            stdout.contains(&format!("\"new_value\":\"x-{user}\"")),
            "{user}: {stdout}"
        );
        assert!(
            !stderr.contains(password),
            "the password leaked into the log"
        );
        // The wrong password: fatal at once, with the server's reason and no password.
        let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(["stream", "--until", "now", "--slot", &slot, "--out-dir"])
            .arg(out.path())
            .arg("--dsn")
            .arg(format!(
                "postgresql://{user}:wrong-pw@127.0.0.1:{}/{}",
                cluster.port(),
                db.name
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&wrong.stderr);
        assert_eq!(wrong.status.code(), Some(1), "{stderr}");
        // The server's reason once, after the server it came from.
        assert_eq!(
            stderr.matches("password authentication failed").count(),
            1,
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("server at \"127.0.0.1\", port {}", cluster.port())),
            "{stderr}"
        );
        assert!(!stderr.contains("wrong-pw"), "{stderr}");
        db.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    }
    cluster
        .psql(
            "postgres",
            &format!(
                "REVOKE ALL ON DATABASE \"{}\" FROM at_scram, at_md5",
                db.name
            ),
        )
        .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_wal_sender_timeout_does_not_trip_under_a_large_transaction() {
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            settings: vec![("wal_sender_timeout".into(), "'3s'".into())],
            ..Default::default()
        })
        .unwrap(),
    );
    let db = TestDb::on(cluster, "sender_timeout");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         SELECT g, 'bulk', 'name', repeat('o', 100), repeat('n', 100) FROM generate_series(1, 300000) g",
    );
    // Drain it, then idle for longer than the timeout, with the consumer connected throughout.
    let mut consumer = Consumer::spawn(&db, out.path(), &["--format", "none"]);
    common::wait::caught_up(&db, &db.name);
    std::thread::sleep(Duration::from_secs(6)); // twice wal_sender_timeout
    assert!(consumer.child.try_wait().unwrap().is_none());
    nix::sys::signal::kill(pid(&consumer), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(consumer.child.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(consumer.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        !stderr.contains("reconnecting"),
        "the connection was dropped: {stderr}"
    );
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 300_000);
}
