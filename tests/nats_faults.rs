//! `stream --nats` and `archive` when things break: kill -9 of both at random moments under
//! load and kill -9 of nats-server while the stream publishes, a consumer down longer than JetStream's duplicate window,
//! NATS unreachable at start, wrong credentials, a subject the account may not publish to.

mod common;
mod nats_support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit_tail::nats_server::{NatsServer, NatsServerOptions};
use common::{Rng, TestDb, stream_command};

fn stream_with_nats(db: &TestDb, out: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--until", "now", "--format", "none", "--nats", url];
    args.extend(extra);
    stream_command(db, out, &args)
        .output()
        .expect("run audit-tail stream")
}

fn catch_up_with_nats(db: &TestDb, out: &Path, url: &str) {
    let out = stream_with_nats(db, out, url, &[]);
    assert!(
        out.status.success(),
        "stream --nats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn confirmed(db: &TestDb) -> String {
    db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    ))
    .trim()
    .to_string()
}

fn audit_rows(db: &TestDb) -> u64 {
    db.psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap()
}

/// The slot exists and 300 users are there; the first changes come after.
fn prepare(db: &TestDb, out: &Path) {
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 3000) g",
    );
    common::catch_up(db, out);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_fatal_and_acknowledge_nothing() {
    let nats = NatsServer::start_with(NatsServerOptions {
        config: "authorization { user: audit, password: right-one }".into(),
        ..Default::default()
    })
    .unwrap();
    let db = TestDb::new("nats_creds");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let before = confirmed(&db);
    db.psql("UPDATE users SET role = 'x' WHERE id <= 10");
    let run = stream_with_nats(
        &db,
        out.path(),
        &nats.url(),
        &[
            "--nats-user",
            "audit",
            "--nats-password",
            "secret-wrong-one",
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused us"), "{stderr}");
    assert!(
        stderr.contains("--nats-password"),
        "says what to check: {stderr}"
    );
    assert!(
        !stderr.contains("secret-wrong-one"),
        "the password is never printed: {stderr}"
    );
    assert_eq!(confirmed(&db), before, "nothing acknowledged");
    // The right password streams.
    let run = stream_with_nats(
        &db,
        out.path(),
        &nats.url(),
        &["--nats-user", "audit", "--nats-password", "right-one"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_ne!(confirmed(&db), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_the_account_may_not_publish_to_is_fatal_and_acknowledges_nothing() {
    let nats = NatsServer::start_with(NatsServerOptions {
        config: "accounts { APP { jetstream: enabled, users: [ { user: audit, password: pw, \
                 permissions: { publish: { deny: [\"audit.>\"] } } } ] } }"
            .into(),
        ..Default::default()
    })
    .unwrap();
    let db = TestDb::new("nats_perm");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let before = confirmed(&db);
    db.psql("UPDATE users SET role = 'x' WHERE id <= 10");
    let log = out.path().join("stream.log");
    let child = stream_command(
        &db,
        out.path(),
        &[
            "--until",
            "now",
            "--format",
            "none",
            "--nats",
            &nats.url(),
            "--nats-user",
            "audit",
            "--nats-password",
            "pw",
        ],
    )
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut run = common::Consumer { child };
    let mut status = None;
    common::wait::until("the stream to stop", Duration::from_secs(40), || {
        status = run.child.try_wait().unwrap();
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&log).unwrap();
    let run = std::process::Output {
        status: status.unwrap(),
        stdout: vec![],
        stderr: vec![],
    };
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused a publish"), "{stderr}");
    assert!(stderr.contains("Permissions Violation"), "{stderr}");
    assert_eq!(confirmed(&db), before, "nothing acknowledged");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_unreachable_at_start_is_waited_for_and_nothing_is_acknowledged_meanwhile() {
    let nats = NatsServer::start().unwrap();
    nats.kill();
    let db = TestDb::new("nats_down");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let before = confirmed(&db);
    db.psql("UPDATE users SET role = 'x' WHERE id <= 10");
    let log = out.path().join("stream.log");
    let child = stream_command(
        &db,
        out.path(),
        &["--until", "now", "--format", "none", "--nats", &nats.url()],
    )
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut child = common::Consumer { child };
    common::wait::until(
        "the stream to say NATS is unreachable",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("NATS is unreachable")
        },
    );
    assert_eq!(
        confirmed(&db),
        before,
        "nothing acknowledged while NATS is down"
    );
    nats.restart().unwrap();
    let status = child.child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        nats_support::count(&nats.url(), "AUDIT").await,
        audit_rows(&db)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_down_longer_than_the_duplicate_window_adds_no_duplicate() {
    let nats = NatsServer::start().unwrap();
    let db = TestDb::new("nats_window");
    let out = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    // A stream whose duplicate window is 2 s, used as it is by the sink.
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "AUDIT".into(),
            subjects: vec!["audit.>".into()],
            duplicate_window: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A second slot at today's position: it will send everything below again.
    let again = format!("{}_again", db.name);
    db.psql(&format!(
        "SELECT pg_copy_logical_replication_slot('{}', '{again}')",
        db.name
    ));
    db.psql("UPDATE users SET role = 'x' WHERE id <= 300");
    catch_up_with_nats(&db, out.path(), &nats.url());
    let rows = audit_rows(&db);
    assert_eq!(nats_support::count(&nats.url(), "AUDIT").await, rows);
    // Down for longer than the window: the server no longer knows the ids. (A wait on the
    // clock is the point here.)
    std::thread::sleep(Duration::from_secs(3));
    let other = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "stream",
            "--dsn",
            &db.cluster.conninfo(&db.name),
            "--slot",
            &again,
        ])
        .arg("--out-dir")
        .arg(other.path())
        .args(["--until", "now", "--format", "none", "--nats", &nats.url()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        nats_support::count(&nats.url(), "AUDIT").await,
        rows,
        "the rows sent again were skipped: no duplicate"
    );
    db.psql(&format!("SELECT pg_drop_replication_slot('{again}')"));
}

/// Single-row and bulk updates of `users` until `stop`.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let mut rng = Rng::from_env_or_clock("nats-writer");
        let mut transactions = 0;
        let client = audit_tail::sql::connect(&config).await.unwrap();
        while !stop.load(Ordering::SeqCst) {
            let sql = if rng.below(10) == 0 {
                format!(
                    "UPDATE users SET role = 'bulk-{}' WHERE id <= 1500",
                    rng.below(1_000_000)
                )
            } else {
                format!(
                    "UPDATE users SET name = 'n-{}', email = CASE WHEN random() < 0.5 THEN NULL ELSE 'e' END WHERE id = {}",
                    rng.below(1_000_000),
                    1 + rng.below(3000)
                )
            };
            client.batch_execute(&sql).await.unwrap();
            transactions += 1;
        }
        transactions
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_stream_archive_and_nats_server_loses_and_doubles_nothing() {
    let nats = NatsServer::start().unwrap();
    let db = TestDb::new("nats_kill9");
    let out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("nats-kill9");
    let seed = rng.seed;
    let kills = 16;
    let mut nats_kills = 0;
    for i in 0..kills {
        let log = logs.path().join(format!("stream-{i}.log"));
        let mut stream = common::Consumer {
            child: stream_command(
                &db,
                out.path(),
                &["--format", "none", "--nats", &nats.url()],
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        };
        // How many times the stream has read where its rows stop in JetStream (on start and
        // after each new connection).
        let connections = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("JetStream holds the rows of this database up to here")
                .count()
        };
        let mut archive = common::Consumer {
            child: nats_support::archive_command(&nats.url(), archive_out.path(), &[])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        };
        std::thread::sleep(Duration::from_millis(200 + rng.below(600)));
        // Every other round, the server itself, under the stream's publishing: its store is on
        // disk, what it acknowledged stays. Publishes in flight are lost with the connection;
        // JetStream must still hold each row once and in order. Sometimes the stream is killed
        // while the server is down (its rewind waits for NATS), sometimes it reconnects.
        if i % 2 == 1 {
            let before = connections();
            nats.kill();
            nats_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            let stream_killed = rng.below(3) == 0;
            if stream_killed {
                stream.child.kill().unwrap();
            }
            nats.restart().unwrap();
            if !stream_killed {
                // The stream lives through it: it connects again and goes on publishing.
                common::wait::until(
                    "the stream to connect to NATS again",
                    Duration::from_secs(60),
                    || connections() > before || stream.child.try_wait().unwrap().is_some(),
                );
                assert!(
                    stream.child.try_wait().unwrap().is_none(),
                    "the stream ended when NATS was killed (seed {seed}): {}",
                    std::fs::read_to_string(&log).unwrap()
                );
                std::thread::sleep(Duration::from_millis(rng.below(900)));
            }
        }
        // Kill them in a random order (the stream may be gone already).
        if rng.below(2) == 0 {
            let _ = stream.child.kill();
            archive.child.kill().unwrap();
        } else {
            archive.child.kill().unwrap();
            let _ = stream.child.kill();
        }
        let _ = stream.child.wait();
        let _ = archive.child.wait();
    }
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 30,
        "only {transactions} transactions (seed {seed})"
    );
    catch_up_with_nats(&db, out.path(), &nats.url());
    // JetStream first: every row once, in order, each transaction whole.
    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    if let Some(problem) = nats_support::order_problem(&stored) {
        panic!(
            "JetStream's rows are not in order after {nats_kills} kills of nats-server: {problem} (seed {seed})"
        );
    }
    let ids: std::collections::HashSet<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        stored.len(),
        "a row twice in JetStream (seed {seed})"
    );
    assert_eq!(
        stored.len() as u64,
        audit_rows(&db),
        "JetStream holds every row once (seed {seed})"
    );
    let mut archive = nats_support::Archive::spawn(&nats.url(), archive_out.path());
    if let Err(stall) =
        std::panic::catch_unwind(|| nats_support::wait_same_files(out.path(), archive_out.path()))
    {
        let (_, stderr) = archive.terminate();
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        panic!(
            "{:?} (seed {seed}); the archive's last lines:\n{}",
            stall.downcast_ref::<String>(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let (code, stderr) = archive.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(rows > 1000, "only {rows} rows compared (seed {seed})");
}

/// A rewind reads again what JetStream holds and skips exactly that: here JetStream got rows the
/// sink never saw acknowledged (the first two rows of a transaction, stored under other message
/// ids so that the duplicate window cannot hide a second copy), as when an acknowledgement is
/// lost with a connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewind_skips_exactly_what_jetstream_holds() {
    use audit_tail::capture::{Row, Table};
    use audit_tail::lsn::{Lsn, PgTimestamp};
    use audit_tail::sink::nats::{NatsConfig, NatsSink, message};
    use audit_tail::sink::{Sink, Txn};

    let nats = NatsServer::start().unwrap();
    let config = NatsConfig {
        url: nats.url(),
        subject_prefix: "audit".into(),
        stream: "AUDIT".into(),
        ..Default::default()
    };
    let mut sink = NatsSink::start(&config, ("app", 1), || false)
        .await
        .unwrap()
        .unwrap();
    let table = Arc::new(Table {
        oid: 1,
        schema: "public".into(),
        name: "t".into(),
        columns: vec!["id".into()],
        changed_at: None,
    });
    let row = |id: &str| Row {
        table: table.clone(),
        values: vec![Some(bytes::Bytes::copy_from_slice(id.as_bytes()))],
    };
    let txn = |lsn: u64| Txn {
        commit_lsn: Lsn(lsn),
        commit_time: PgTimestamp(0),
    };
    // Transaction A, three rows, acknowledged.
    let a = txn(0x1000);
    for i in 0..3 {
        sink.row(&row(&format!("a{i}")), a).unwrap();
    }
    sink.commit(a, Lsn(0x1010)).unwrap();
    common::wait::until("A to be acknowledged", Duration::from_secs(20), || {
        sink.flush().unwrap();
        sink.durable() >= Some(Lsn(0x1010))
    });
    // Rows 0 and 1 of transaction B reach JetStream behind the sink's back.
    let b = txn(0x2000);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for i in 0..2 {
        let position = message::Position {
            commit_lsn: b.commit_lsn,
            commit_time: b.commit_time,
            index: i,
            end_lsn: None,
        };
        let mut headers = message::headers("app", &position);
        headers.insert("Nats-Msg-Id", format!("elsewhere:{i}").as_str());
        js.publish_with_headers(
            "audit.app.public.t",
            headers,
            message::body(&row(&format!("b{i}")), b.commit_lsn, b.commit_time),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // The stream rewinds (and would then resend A and B): the sink resumes at B, past row 1.
    sink.rewind().unwrap();
    assert_eq!(sink.resume_point(), Some(b.commit_lsn));
    for i in 0..4 {
        sink.row(&row(&format!("b{i}")), b).unwrap();
    }
    sink.commit(b, Lsn(0x2010)).unwrap();
    common::wait::until("B to be acknowledged", Duration::from_secs(20), || {
        sink.flush().unwrap();
        sink.durable() >= Some(Lsn(0x2010))
    });
    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    let ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "app:0/1000:0",
            "app:0/1000:1",
            "app:0/1000:2",
            "elsewhere:0",
            "elsewhere:1",
            "app:0/2000:2",
            "app:0/2000:3"
        ]
    );
    assert_eq!(stored[6].end_lsn.as_deref(), Some("0/2010"));
    let values: Vec<&str> = stored
        .iter()
        .map(|s| s.body["row"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]);
}

/// NATS lost mid-run: the stream says so, waits for it (the rewind's new connection) and still
/// stops at once on SIGTERM with exit 0; the rows it could not publish are sent once NATS is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_waiting_for_nats_after_losing_it_stops_on_sigterm_and_loses_nothing() {
    let nats = NatsServer::start().unwrap();
    let db = TestDb::new("nats_lost_stop");
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    prepare(&db, out.path());
    let log = logs.path().join("stream.log");
    let child = stream_command(
        &db,
        out.path(),
        &["--format", "none", "--nats", &nats.url()],
    )
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut stream = common::Consumer { child };
    db.psql("UPDATE users SET role = 'x' WHERE id <= 10");
    let rows = audit_rows(&db);
    let url = nats.url();
    let published = || {
        let url = url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(nats_support::count_or_zero(&url, "AUDIT"))
        })
        .join()
        .unwrap()
    };
    common::wait::until("the rows in JetStream", Duration::from_secs(30), || {
        published() == rows
    });
    nats.kill();
    db.psql("UPDATE users SET role = 'y' WHERE id <= 10");
    let said = |text: &str| std::fs::read_to_string(&log).unwrap().contains(text);
    common::wait::until(
        "the stream to wait for NATS again",
        Duration::from_secs(30),
        || said("NATS is unreachable"),
    );
    assert!(said("the connection to NATS was lost"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stream.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    common::wait::until("the stream to stop", Duration::from_secs(15), || {
        status = stream.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(
        status.unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    nats.restart().unwrap();
    catch_up_with_nats(&db, out.path(), &nats.url());
    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    assert_eq!(nats_support::order_problem(&stored), None);
    assert_eq!(stored.len() as u64, audit_rows(&db), "every row once");
}
