//! Sealed days: a day that can receive no more rows gets a manifest (files, lengths, rows,
//! SHA-256, LSN range) and leaves the state file; its files may then be archived; a late row of a
//! sealed day goes to a new part; a stream file the stream did not write is moved aside, never
//! deleted. Days of the past are made by inserting audit rows with a chosen changed_at directly,
//! as the superuser (the publication streams inserts into users_audit).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use audit_tail::lsn::Lsn;
use common::{Consumer, TestDb, catch_up};

const DAY: &str = "20200115";

/// Waits (at most a minute) until `what` holds in `out`, re-checking as the stream moves on. On
/// a timeout the consumer is stopped and its log is part of the failure, with the state file.
fn wait_for(what: &str, out: &Path, consumer: &mut Consumer, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            let _ = consumer.child.kill();
            let _ = consumer.child.wait();
            let mut log = String::new();
            if let Some(stderr) = consumer.child.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(stderr, &mut log);
            }
            panic!(
                "timed out waiting for {what}; the state file:\n{}\nthe consumer's log:\n{log}",
                std::fs::read_to_string(out.join("audit-tail.state")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn past_row(changed_at: &str, new_value: &str) -> String {
    format!(
        "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
         VALUES (1, '{changed_at}', 'archivist', 'name', 'a', '{new_value}');"
    )
}

fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The manifest's `file` line for `name`, split into its fields.
fn manifest_entry(manifest: &str, name: &str) -> Option<Vec<String>> {
    manifest.lines().find_map(|l| {
        let fields: Vec<String> = l.split(' ').map(str::to_string).collect();
        (fields.first().map(String::as_str) == Some("file")
            && fields.get(1).map(String::as_str) == Some(name))
        .then_some(fields)
    })
}

fn status_json(db: &TestDb, out: &Path) -> serde_json::Value {
    let conninfo = db.cluster.conninfo(&db.name);
    let (code, json, stderr) = common::run_audit_tail(&[
        "status",
        "--out-dir",
        out.to_str().unwrap(),
        "--dsn",
        &conninfo,
        "--slot",
        &db.name,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&json).unwrap()
}

/// A past day is sealed with a manifest whose SHA-256 is sha256sum's, the state file stops
/// listing it, a late row of it lands in a new part with its own manifest entry, status shows
/// sealed and open days, and moving the sealed day away does not block a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_past_day_is_sealed_and_can_be_archived() {
    let db = TestDb::new("sealed_past_day");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let manifest_path = out.path().join(format!("audit-tail.days/{DAY}.manifest"));
    let first = out.path().join(format!("users_audit_stream_{DAY}.csv"));
    let late = out.path().join(format!("users_audit_stream_{DAY}-2.csv"));
    let mut consumer = Consumer::spawn(
        &db,
        out.path(),
        &["--status-interval", "1", "--format", "none"],
    );
    // Rows committed before the new slot's consistent point are not streamed (by PostgreSQL's
    // design, docs/operations.md "The first start"): while the slot is being created it already
    // shows as active, so wait for the walsender that streams it.
    wait_for(
        "the consumer's walsender on its slot",
        out.path(),
        &mut consumer,
        || common::wait::walsender_holds(&db, &db.name),
    );
    // One transaction: the day is sealed as soon as it commits.
    db.psql(&format!(
        "BEGIN; {} {} COMMIT;",
        past_row("2020-01-15 10:00:00", "one"),
        past_row("2020-01-15 10:00:01", "two,\"quoted\"\nand a newline")
    ));
    wait_for(
        "the manifest of 2020-01-15",
        out.path(),
        &mut consumer,
        || manifest_path.exists(),
    );
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(
        manifest.starts_with("audit-tail day 1\nday 2020-01-15\n"),
        "{manifest}"
    );
    let name = format!("users_audit_stream_{DAY}.csv");
    let entry = manifest_entry(&manifest, &name).unwrap_or_else(|| panic!("{manifest}"));
    let len = std::fs::metadata(&first).unwrap().len();
    // file NAME BYTES ROWS SHA256 FIRST-LSN LAST-LSN
    assert_eq!(entry[2], len.to_string(), "{manifest}");
    assert_eq!(entry[3], "2", "{manifest}");
    assert_eq!(entry[4], sha256sum(&first), "{manifest}");
    // One transaction: its end LSN is both the first and the last.
    let first_lsn: Lsn = entry[5].parse().unwrap_or_else(|_| panic!("{manifest}"));
    assert_eq!(entry[6], entry[5], "{manifest}");
    assert!(first_lsn > Lsn::ZERO, "{manifest}");
    let state = std::fs::read_to_string(out.path().join("audit-tail.state")).unwrap();
    assert!(
        !state.contains(DAY),
        "the state file still lists the sealed day:\n{state}"
    );

    // A late row of the sealed day: a new part, the first file untouched.
    let sealed_sum = sha256sum(&first);
    db.psql(&past_row("2020-01-15 23:00:00", "late"));
    wait_for(
        "the late part in the manifest",
        out.path(),
        &mut consumer,
        || {
            std::fs::read_to_string(&manifest_path).is_ok_and(|m| {
                manifest_entry(&m, &format!("users_audit_stream_{DAY}-2.csv")).is_some()
            })
        },
    );
    assert_eq!(sha256sum(&first), sealed_sum);
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(manifest_entry(&manifest, &name).is_some(), "{manifest}");
    let text = std::fs::read_to_string(&late).unwrap();
    assert!(text.starts_with("id,user_id,changed_at,"), "{text}");
    assert!(text.contains(",late\n"), "{text}");
    assert_eq!(
        sha256sum(&late),
        manifest_entry(&manifest, &format!("users_audit_stream_{DAY}-2.csv")).unwrap()[4]
    );

    // Today's row keeps an open day; status shows both kinds.
    db.psql(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         VALUES (1, 'today', 'name', 'a', 'b')",
    );
    let today = db
        .psql("SELECT to_char(current_date, 'YYYY-MM-DD')")
        .trim()
        .to_string();
    wait_for(
        "today's file in the state file",
        out.path(),
        &mut consumer,
        || {
            std::fs::read_to_string(out.path().join("audit-tail.state"))
                // A `file` line: its rows are durable (a `created` line comes before any row is).
                .is_ok_and(|s| {
                    let name = format!("_stream_{}", today.replace('-', ""));
                    s.lines()
                        .any(|l| l.starts_with("file ") && l.contains(&name))
                })
        },
    );
    let v = status_json(&db, out.path());
    let sealed = v["checkpoint"]["days"]["sealed"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    let day = sealed
        .iter()
        .find(|d| d["day"] == "2020-01-15")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(day["files"], 2, "{v}");
    assert_eq!(day["rows"], 3, "{v}");
    assert_eq!(day["files_present"], 2, "{v}");
    assert_eq!(
        v["checkpoint"]["days"]["open"],
        serde_json::json!([today]),
        "{v}"
    );
    drop(consumer);

    // Archive the sealed day: its files and its manifest move away; nothing blocks a restart.
    let archive = tempfile::tempdir().unwrap();
    for path in [&first, &late, &manifest_path] {
        std::fs::rename(path, archive.path().join(path.file_name().unwrap())).unwrap();
    }
    catch_up(&db, out.path());
    let conninfo = db.cluster.conninfo(&db.name);
    let (code, text, stderr) = common::run_audit_tail(&[
        "status",
        "--out-dir",
        out.path().to_str().unwrap(),
        "--dsn",
        &conninfo,
        "--slot",
        &db.name,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(text.contains(&format!("open days:   {today}")), "{text}");
}

/// A stream file copied into the out-dir that the stream did not write is moved into
/// out-dir/unknown/ with a warning, not deleted; the stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_file_is_moved_aside_not_deleted() {
    let db = TestDb::new("sealed_foreign");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let foreign = "users_audit_stream_20190301.csv";
    let contents = "id,user_id,changed_at\n1,1,2019-03-01 00:00:00\n";
    std::fs::write(out.path().join(foreign), contents).unwrap();
    let output = catch_up(&db, out.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!out.path().join(foreign).exists(), "{stderr}");
    let aside = out.path().join("unknown").join(foreign);
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap_or_else(|e| panic!("{e}: {stderr}")),
        contents
    );
    assert!(
        stderr.contains("moved aside") && stderr.contains(foreign),
        "{stderr}"
    );
    // Moved once: the next start finds nothing to move.
    let output = catch_up(&db, out.path());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("moved aside"));
}
