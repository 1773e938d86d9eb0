//! `audit-tail stream` against real throwaway PostgreSQL clusters: the files equal the table.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{Consumer, TestDb, assert_files_equal_table, catch_up, repo_path};

fn demo_data() -> String {
    std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_files_equal_copy_of_the_table_for_awkward_values() {
    let db = TestDb::new("stream_equals");
    db.install();
    let out = tempfile::tempdir().unwrap();
    // The slot is created by the first run; rows before it are not in the stream.
    catch_up(&db, out.path());
    let client = db.client().await;
    client.batch_execute(&demo_data()).await.unwrap();
    common::awkward_changes(&client).await;
    let result = catch_up(&db, out.path());
    assert!(result.stdout.is_empty(), "--format none prints nothing");
    let rows = assert_files_equal_table(&db, out.path()).await;
    assert_eq!(rows, 6 + 15);
    // A second catch-up writes nothing twice.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn tails_the_reference_scenario_live_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new("live_tail");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let mut consumer = Consumer::spawn(&db, out.path(), &[]);
    let stdout = consumer.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Once it streams, apply the scenario.
    common::wait::streaming(&db, &db.name);
    let client = db.client().await;
    client.batch_execute(&demo_data()).await.unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.len() < 6 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
    }
    assert_eq!(lines.len(), 6, "six live lines: {lines:?}");
    assert!(
        lines[0].ends_with("user 1 name: \"Иван Иванов\" → \"Иван Сидоров\" by admin@example.com"),
        "{}",
        lines[0]
    );
    assert!(
        lines[5].ends_with("user 3 role: \"manager\" → \"user\" by hr@example.com"),
        "{}",
        lines[5]
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(consumer.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = consumer.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 6);
    // Everything durable was acknowledged: the slot is at the stream's checkpoint.
    let state = std::fs::read_to_string(out.path().join("audit-tail.state")).unwrap();
    let lsn = state
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("lsn ")
        .unwrap()
        .to_string();
    let confirmed = db.psql(&format!(
        "SELECT confirmed_flush_lsn = '{lsn}' FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    ));
    assert_eq!(confirmed.trim(), "t");
}
