//! `audit-tail archive` under a steady load with NATS healthy: it reads on without a single
//! reconnection (a fetch that ended without an answer from NATS was taken for NATS gone).

mod common;
mod nats_support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use audit_tail::nats_server::NatsServer;
use common::{TestDb, stream_command};
use nats_support::{archive_command, wait_same_files};

/// How long the load runs.
const LOAD: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread")]
async fn a_long_archive_run_under_load_never_reconnects() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("archive_load");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    db.install();
    db.psql("INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 50) g");
    // The slot first: rows count from there.
    let out = stream_command(
        &db,
        stream_out.path(),
        &["--until", "now", "--format", "none", "--nats", &nats.url()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stream = common::Consumer {
        child: stream_command(
            &db,
            stream_out.path(),
            &["--format", "none", "--nats", &nats.url()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    };
    let mut child = archive_command(&nats.url(), archive_out.path(), &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let mut archive = common::Consumer { child };

    // Rows all the time: a statement of 50 audit rows after another, and now and then a pause
    // of a second (the archive caught up waits on an empty fetch, then rows come again).
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < LOAD {
        n += 1;
        db.psql(&format!("UPDATE users SET role = 'r{n}'"));
        if n.is_multiple_of(40) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // The stream stopped, then run to the end of the WAL: every row is in JetStream.
    let (code, _) = nats_support::terminate(&mut stream.child);
    assert_eq!(code, Some(0));
    let out = stream_command(
        &db,
        stream_out.path(),
        &["--until", "now", "--format", "none", "--nats", &nats.url()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_same_files(stream_out.path(), archive_out.path());
    let (code, _) = nats_support::terminate(&mut archive.child);
    let stderr = log.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("archive interrupted"),
        "the archive reconnected under load with NATS healthy: {}",
        stderr
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let archived = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(archived >= 50 * n as usize, "{archived}");
}
