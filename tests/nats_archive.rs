//! `audit-tail archive`: the rows `stream --nats` published, written on "another machine" as the
//! same rolling daily CSV files, byte for byte, which `verify --out-dir` accepts.

mod common;
mod nats_support;

use audit_tail::nats_server::{NatsServer, NatsServerOptions};
use common::{TestDb, stream_command};
use nats_support::{csv_files, wait_same_files};

fn catch_up_with_nats(db: &TestDb, out: &std::path::Path, url: &str) {
    let out = stream_command(
        db,
        out,
        &["--until", "now", "--format", "none", "--nats", url],
    )
    .output()
    .expect("run audit-tail stream");
    assert!(
        out.status.success(),
        "stream --nats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
