//! `audit-tail archive`: the rows `stream --nats` published, written on "another machine" as the
//! same rolling daily CSV files, byte for byte, which `verify --out-dir` accepts.

mod common;
mod nats_support;

use std::process::Stdio;
use std::time::Duration;

use audit_tail::nats_server::{NatsServer, NatsServerOptions};
use common::TestDb;
use common::scrape::scrape;
use nats_support::{archive_command, catch_up_with_nats, csv_files, terminate, wait_same_files};

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_writes_the_streams_files_byte_for_byte_and_verify_accepts_them() {
    let nats = NatsServer::start_with(NatsServerOptions {
        config: "max_payload: 8MB".into(),
        ..Default::default()
    })
    .expect("start nats-server");
    let db = TestDb::new("nats_archive");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    // Awkward values, but not awkward_changes' 2.7 MB one (tests/nats_publish.rs has it): verify
    // takes minutes on that in a debug build.
    db.psql(
        "INSERT INTO users (name, email, role) VALUES (NULL, '', 'user'), ('a,b', 'say \"hi\"', 'x'), \
         (E'line1\nline2', E'cr\\rlf', 'y'), ('\\.', '  padded  ', 'Иван')",
    );
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 500) g",
    );
    // Updates write the audit rows, one per changed field.
    db.psql("UPDATE users SET name = name || E' \"2\"', email = coalesce(email, '') || ',x'");
    catch_up_with_nats(&db, stream_out.path(), &nats.url());

    let mut archive = nats_support::Archive::spawn(&nats.url(), archive_out.path());
    wait_same_files(stream_out.path(), archive_out.path());
    // More rows while the archive runs.
    db.psql("UPDATE users SET role = 'later' WHERE id % 3 = 0");
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    wait_same_files(stream_out.path(), archive_out.path());
    let (code, stderr) = archive.terminate();
    assert_eq!(code, Some(0), "archive stops on SIGTERM with 0: {stderr}");
    // An unsigned stream publishes no digests: the archive writes none, and says why.
    assert!(
        !archive_out.path().join("audit-tail.digests").exists(),
        "{stderr}"
    );
    assert!(stderr.contains("no digests in JetStream"), "{stderr}");

    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(rows > 100, "{rows}");
    let today = db.psql("SELECT current_date").trim().to_string();
    let (code, out, err) = common::verify(&db, archive_out.path(), &["--date", &today]);
    assert_eq!(code, Some(0), "verify on the archive's files: {out}{err}");

    // Restarted, it adds nothing.
    let mut archive = nats_support::Archive::spawn(&nats.url(), archive_out.path());
    common::wait::until(
        "the restarted archive to read its consumer",
        std::time::Duration::from_secs(30),
        || nats_support::consumer_waiting(&nats),
    );
    let (code, _) = archive.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(csv_files(stream_out.path()), csv_files(archive_out.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_rides_out_a_nats_restart_and_stops_on_sigterm_while_nats_is_down() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("nats_archive_down");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 100) g",
    );
    db.psql("UPDATE users SET role = 'one'");
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    let mut archive = nats_support::Archive::spawn(&nats.url(), archive_out.path());
    wait_same_files(stream_out.path(), archive_out.path());
    // The server goes away under a waiting fetch and comes back: the archive goes on.
    nats.kill();
    nats.restart().unwrap();
    db.psql("UPDATE users SET role = 'two'");
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    wait_same_files(stream_out.path(), archive_out.path());
    // Down again: SIGTERM still ends it at once, with 0.
    nats.kill();
    let started = std::time::Instant::now();
    let (code, stderr) = archive.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{stderr}"
    );
    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(rows >= 200, "{rows}");
}

/// The sum of the samples of `name` (any labels).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_serves_its_pending_messages_rows_and_bytes_as_metrics() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("nats_archive_metrics");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    db.install();
    // The first run makes the slot: rows count from there.
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    db.psql("INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 50) g");
    db.psql("UPDATE users SET role = 'one'");
    catch_up_with_nats(&db, stream_out.path(), &nats.url());

    let mut child = archive_command(
        &nats.url(),
        archive_out.path(),
        &["--metrics", "127.0.0.1:0"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The log goes to a buffer the test reads the metrics URL from.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let mut archive = common::Consumer { child };
    let mut addr = None;
    common::wait::until(
        "the metrics URL in the log",
        Duration::from_secs(30),
        || {
            addr = log.lock().unwrap().lines().find_map(|l| {
                let url = l.split("url=http://").nth(1)?;
                Some(url.trim_end_matches("/metrics").to_string())
            });
            addr.is_some()
        },
    );
    let addr = addr.unwrap();
    wait_same_files(stream_out.path(), archive_out.path());
    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(rows >= 50, "{rows}");
    let csv_bytes: u64 = std::fs::read_dir(archive_out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let mut text = String::new();
    common::wait::until(
        "the archive's rows counted",
        Duration::from_secs(30),
        || {
            text = scrape(&addr);
            sum(&text, "audit_tail_rows_written_total") == rows as f64
        },
    );
    assert_eq!(
        sum(&text, "audit_tail_bytes_written_total"),
        csv_bytes as f64,
        "{text}"
    );
    assert_eq!(
        sum(&text, "audit_tail_archive_pending_messages"),
        0.0,
        "{text}"
    );
    assert!(text.contains("audit_tail_reconnects_total"), "{text}");

    // JetStream goes away and comes back: the archive counts the reconnection.
    nats.kill();
    nats.restart().unwrap();
    common::wait::until("the reconnection counted", Duration::from_secs(60), || {
        sum(&scrape(&addr), "audit_tail_reconnects_total") >= 1.0
    });
    let (code, stderr) = terminate(&mut archive.child);
    assert_eq!(code, Some(0), "{stderr}{}", log.lock().unwrap());
}
