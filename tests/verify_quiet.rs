//! Quiet days, nightly files of another day and ids across midnight: what the stream records of
//! the time it covered, and what verify says from it.

mod common;

use std::path::Path;
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

const HEADER: &str = "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n";

fn row(id: i64, changed_at: &str) -> String {
    format!("{id},1,{changed_at},alice,name,old,new{id}\n")
}

/// An out-dir whose state file says the stream covered `from`..`to` in `zone` ("-": unknown).
fn out_dir_covering(covered: Option<(&str, &str, &str)>) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut state = "audit-tail state 1\nlsn 0/16B3748\n".to_string();
    if let Some((from, to, zone)) = covered {
        state.push_str(&format!("covered {from} {to} {zone}\n"));
    }
    std::fs::write(out.path().join("audit-tail.state"), state).unwrap();
    out
}

/// `audit-tail verify --date date --nightly nightly --out-dir out`.
fn verify(out: &Path, date: &str, nightly: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let file = out.join(format!("nightly-{date}.csv"));
    std::fs::write(&file, nightly).unwrap();
    let mut args = vec![
        "verify",
        "--date",
        date,
        "--out-dir",
        out.to_str().unwrap(),
        "--nightly",
        file.to_str().unwrap(),
    ];
    args.extend(extra);
    common::run_audit_tail(&args)
}

/// A day without changes leaves no stream file. When the stream's record shows it covered the
/// whole day, that means no rows: verify agrees with an empty export and says why, and finds the
/// export's rows missing from the stream otherwise. When it cannot know, it says so, exit 2.
#[test]
fn a_quiet_day_agrees_when_the_stream_covered_it_and_says_when_it_cannot_know() {
    let day = "2025-10-21";
    // Covered in UTC from the day before to the morning after.
    let out = out_dir_covering(Some((
        "2025-10-20T08:00:00Z",
        "2025-10-22T03:00:05Z",
        "UTC",
    )));
    let (code, stdout, stderr) = verify(out.path(), day, HEADER, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("the stream covered 2025-10-21 and saw no rows"),
        "{stdout}"
    );
    let (code, json, _) = verify(out.path(), day, HEADER, &["--format", "json"]);
    assert_eq!(code, Some(0), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["stream"]["rows"], 0);
    assert_eq!(v["stream"]["covered"], true);
    // The export has a row the stream should have seen: a difference, not a missing input.
    let nightly = format!("{HEADER}{}", row(7, "2025-10-21 12:00:00"));
    let (code, stdout, _) = verify(out.path(), day, &nightly, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("only in the nightly export: 1 (ids 7)"),
        "{stdout}"
    );

    // In Asia/Kathmandu (UTC+05:45) the day ends at 18:15 UTC: the same stretch covers it; in
    // America/Los_Angeles (UTC-7 in October) it ends at 07:00 UTC the next day: it does not.
    let out = out_dir_covering(Some((
        "2025-10-20T08:00:00Z",
        "2025-10-22T03:00:05Z",
        "Asia/Kathmandu",
    )));
    assert_eq!(verify(out.path(), day, HEADER, &[]).0, Some(0));
    let out = out_dir_covering(Some((
        "2025-10-20T08:00:00Z",
        "2025-10-22T03:00:05Z",
        "America/Los_Angeles",
    )));
    let (code, _, stderr) = verify(out.path(), day, HEADER, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no stream file for 2025-10-21")
            && stderr.contains("cannot tell whether the day had rows")
            && stderr.contains("2025-10-22T07:00:00Z"),
        "{stderr}"
    );

    // The zone unknown: the day may end as late as noon UTC the next day (UTC-12).
    let out = out_dir_covering(Some(("2025-10-20T08:00:00Z", "2025-10-22T11:00:00Z", "-")));
    let (code, _, stderr) = verify(out.path(), day, HEADER, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("time zone is unknown"), "{stderr}");
    let out = out_dir_covering(Some(("2025-10-20T08:00:00Z", "2025-10-22T12:00:00Z", "-")));
    assert_eq!(verify(out.path(), day, HEADER, &[]).0, Some(0));

    // Started during the day: rows before it may be missing.
    let out = out_dir_covering(Some((
        "2025-10-21T09:30:00Z",
        "2025-10-22T03:00:05Z",
        "UTC",
    )));
    let (code, _, stderr) = verify(out.path(), day, HEADER, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("from 2025-10-21T09:30:00Z") && stderr.contains("cannot tell"),
        "{stderr}"
    );

    // No record at all: an older audit-tail, or not an out-dir of a stream.
    let out = out_dir_covering(None);
    let (code, _, stderr) = verify(out.path(), day, HEADER, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("has not recorded which time it covered"),
        "{stderr}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = verify(empty.path(), day, HEADER, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no audit-tail.state"), "{stderr}");
}

/// Yesterday's export given with today's --date is named as such, not as every row missing.
#[test]
fn a_nightly_file_of_another_day_is_named_as_such() {
    let out = out_dir_covering(Some((
        "2025-10-19T00:00:00Z",
        "2025-10-22T03:00:05Z",
        "UTC",
    )));
    let yesterday = format!(
        "{HEADER}{}{}",
        row(1, "2025-10-20 09:00:00"),
        row(2, "2025-10-20 23:59:59.5")
    );
    std::fs::write(
        common::stream_file(out.path(), "20251021", 1),
        format!("{HEADER}{}", row(3, "2025-10-21 08:00:00")),
    )
    .unwrap();
    let (code, stdout, stderr) = verify(out.path(), "2025-10-21", &yesterday, &[]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "the nightly file holds rows of 2025-10-20, not 2025-10-21: check --date or the file"
        ),
        "{stderr}"
    );
    // A quiet day too: the wrong file is named first.
    let (code, _, stderr) = verify(out.path(), "2025-10-22", &yesterday, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("holds rows of 2025-10-20, not 2025-10-22"),
        "{stderr}"
    );
}

/// Across midnight ids interleave: a transaction that began before midnight takes its ids after
/// some of the next day's, and the reverse. Ids of the neighbouring days' rows within the day's
/// span are no gap; verify finds them in the neighbouring days' stream files and says so.
#[test]
fn ids_of_the_neighbouring_days_are_not_reported_as_gaps() {
    let out = out_dir_covering(Some((
        "2025-10-19T00:00:00Z",
        "2025-10-23T03:00:05Z",
        "UTC",
    )));
    // Day D-1: 1, 2, and 5 (its transaction began at 23:59:59 and inserted after midnight).
    // Day D: 3, 4, 6, 7, 10 (10's transaction began at 23:59:58 and inserted late).
    // Day D+1: 8, 9, 11. Id 12 is rolled back, 13 on D+1.
    let stream_file = |day: &str, rows: &[(i64, &str)]| {
        let text: String = rows.iter().map(|&(id, at)| row(id, at)).collect();
        std::fs::write(
            common::stream_file(out.path(), day, 1),
            format!("{HEADER}{text}"),
        )
        .unwrap();
    };
    stream_file(
        "20251020",
        &[
            (1, "2025-10-20 10:00:00"),
            (2, "2025-10-20 12:00:00"),
            (5, "2025-10-20 23:59:59"),
        ],
    );
    let day_rows = [
        (3, "2025-10-21 00:00:01"),
        (4, "2025-10-21 00:00:02"),
        (6, "2025-10-21 09:00:00"),
        (7, "2025-10-21 23:00:00"),
        (10, "2025-10-21 23:59:58"),
    ];
    stream_file("20251021", &day_rows);
    stream_file(
        "20251022",
        &[
            (8, "2025-10-22 00:00:01"),
            (9, "2025-10-22 00:00:02"),
            (11, "2025-10-22 00:00:03"),
            (13, "2025-10-22 00:00:04"),
        ],
    );
    let nightly: String = HEADER.to_string()
        + &day_rows
            .iter()
            .map(|&(id, at)| row(id, at))
            .collect::<String>();
    let (code, stdout, stderr) = verify(out.path(), "2025-10-21", &nightly, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("ids in neither copy"), "{stdout}");
    assert!(
        stdout.contains("ids of neighbouring days within the day's span: 3"),
        "{stdout}"
    );
    // Without the file of the day before, and the stream covered that day: no row of it, so id 5
    // is a gap as a rolled-back transaction leaves one.
    std::fs::remove_file(common::stream_file(out.path(), "20251020", 1)).unwrap();
    let (code, stdout, _) = verify(out.path(), "2025-10-21", &nightly, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("ids in neither copy: 1 (5): rolled-back transactions"),
        "{stdout}"
    );
    // Not known to be quiet either: verify cannot tell, and says what they may be.
    let state = std::fs::read_to_string(out.path().join("audit-tail.state")).unwrap();
    std::fs::write(
        out.path().join("audit-tail.state"),
        state.replace("2025-10-19T00:00:00", "2025-10-20T12:00:00"),
    )
    .unwrap();
    let (code, stdout, _) = verify(out.path(), "2025-10-21", &nightly, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ids in neither copy: 1 (5)"), "{stdout}");
    assert!(
        stdout.contains("without a stream file of 2025-10-20")
            && stdout.contains("rows of the neighbouring days"),
        "{stdout}"
    );
    let (_, json, _) = verify(out.path(), "2025-10-21", &nightly, &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["gaps"]["count"], 1, "{json}");
    assert_eq!(v["neighbouring_days"]["count"], 2, "{json}");
    assert_eq!(v["neighbouring_days"]["unknown"][0], "2025-10-20", "{json}");
}
