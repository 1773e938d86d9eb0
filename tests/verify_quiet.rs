//! Quiet days, nightly files of another day and ids across midnight: what the stream records of
//! the time it covered, and what verify says from it.

mod common;

use std::time::{Duration, Instant};

use audit_tail::checkpoint::Checkpoint;
use chrono::{DateTime, Utc};
use common::{Consumer, TestDb, repo_path};

/// The server's clock now.
fn server_now(db: &TestDb) -> DateTime<Utc> {
    let micros: i64 = db
        .psql("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8")
        .trim()
        .parse()
        .unwrap();
    DateTime::from_timestamp_micros(micros).unwrap()
}

/// The stream records, in its checkpoint, from when to when every committed transaction is in
/// its files, and the server's TimeZone in which changed_at (so each file's day) is written.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_records_the_server_time_it_covered_and_the_zone_of_its_days() {
    let db = TestDb::new("quiet_covered");
    db.install();
    db.psql(&format!(
        "ALTER DATABASE {} SET timezone = 'Asia/Kathmandu'",
        db.name
    ));
    let out = tempfile::tempdir().unwrap();
    let started = server_now(&db);
    let _consumer = Consumer::spawn(
        &db,
        out.path(),
        &["--status-interval", "1", "--format", "none"],
    );
    db.psql(&std::fs::read_to_string(repo_path("sql/demo_data.sql")).unwrap());
    let committed = server_now(&db);
    let deadline = Instant::now() + Duration::from_secs(60);
    let covered = loop {
        let state = Checkpoint::load(out.path()).unwrap();
        if let Some(covered) = state.and_then(|s| s.covered)
            && covered.to >= committed
        {
            break covered;
        }
        assert!(
            Instant::now() < deadline,
            "no covered line reaching {committed} in the state file"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(covered.from >= started, "{covered:?} {started}");
    assert_eq!(covered.zone.as_deref(), Some("Asia/Kathmandu"));
    let state = std::fs::read_to_string(out.path().join("audit-tail.state")).unwrap();
    assert!(state.contains("\ncovered 20"), "{state}");
}
