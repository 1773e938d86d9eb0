//! An out-dir belongs to one server, database and slot, and never silently misses rows: a slot
//! moved ahead of its checkpoint by another out-dir is refused (or, with `--accept-gap`, the gap
//! is recorded for verify), and the same out-dir pointed at another server, database or slot is
//! refused.

mod common;

use std::path::Path;
use std::sync::Arc;

use audit_tail::checkpoint::Checkpoint;
use audit_tail::cluster::Cluster;
use audit_tail::lsn::Lsn;
use common::{TestDb, assert_files_equal_table, catch_up};

/// `audit-tail stream --until now` for `db` into `out_dir`, slot `slot`, plus `extra`.
fn stream_once(db: &TestDb, slot: &str, out_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "stream", "--until", "now", "--format", "none", "--slot", slot,
        ])
        .arg("--dsn")
        .arg(db.cluster.conninfo(&db.name))
        .arg("--out-dir")
        .arg(out_dir)
        .args(extra)
        .env_remove("AUDIT_TAIL_DSN")
        .output()
        .expect("run audit-tail stream");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn checkpoint_lsn(out_dir: &Path) -> Lsn {
    Checkpoint::load(out_dir).unwrap().unwrap().lsn
}

fn slot_lsn(db: &TestDb) -> Lsn {
    db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    ))
    .trim()
    .parse()
    .unwrap()
}

fn system_identifier(db: &TestDb) -> String {
    db.psql("SELECT system_identifier FROM pg_control_system()")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_moved_by_another_out_dir_is_refused_and_the_gap_flag_records_the_gap() {
    let db = TestDb::new("two_dirs");
    db.install();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // A streams, stops.
    catch_up(&db, a.path());
    db.psql("INSERT INTO users (name) VALUES ('in a')");
    catch_up(&db, a.path());
    let a_lsn = checkpoint_lsn(a.path());
    // B, a new out-dir on the same slot (another working directory, same defaults), streams more.
    db.psql("UPDATE users SET name = 'only in b'");
    let out = catch_up(&db, b.path());
    let b_log = String::from_utf8_lossy(&out.stderr);
    assert!(
        b_log.contains("the existing replication slot") && b_log.contains("not in this out-dir"),
        "a new out-dir on a used slot is warned about: {b_log}"
    );
    let moved = slot_lsn(&db);
    assert!(moved > a_lsn);

    // A starts again: the server would skip what B acknowledged. Refused, with both positions.
    let (code, stderr) = stream_once(&db, &db.name, a.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    for needle in [
        a_lsn.to_string(),
        moved.to_string(),
        "--accept-gap".into(),
        "--slot".into(),
        "--out-dir".into(),
    ] {
        assert!(stderr.contains(&needle), "{needle} in: {stderr}");
    }
    assert_eq!(checkpoint_lsn(a.path()), a_lsn, "nothing moved on refusal");

    // With the flag it goes on, and the gap is recorded durably for verify.
    let (code, stderr) = stream_once(&db, &db.name, a.path(), &["--accept-gap"]);
    assert_eq!(code, Some(0), "{stderr}");
    let gaps = audit_tail::gaps::load(a.path()).unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].from, gaps[0].to), (a_lsn, moved));
    let today: chrono::NaiveDate = db.psql("SELECT current_date").trim().parse().unwrap();
    assert!(gaps[0].affects(today), "{gaps:?}");
    assert_eq!(audit_tail::gaps::for_day(a.path(), today).unwrap().len(), 1);
    // Later rows stream as usual; the flag is not needed again.
    db.psql("UPDATE users SET name = 'in a again'");
    let (code, stderr) = stream_once(&db, &db.name, a.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let a_file = std::fs::read_to_string(
        a.path()
            .join(format!("users_audit_stream_{}.csv", today.format("%Y%m%d"))),
    )
    .unwrap();
    assert!(
        a_file.contains("in a again") && !a_file.contains(",only in b\n"),
        "{a_file}"
    );
    assert_eq!(audit_tail::gaps::load(a.path()).unwrap().len(), 1);

    // verify names the recorded gap beside the row it left out.
    let conninfo = db.cluster.conninfo(&db.name);
    let (code, stdout, _) = common::run_audit_tail(&[
        "verify",
        "--date",
        &today.to_string(),
        "--out-dir",
        a.path().to_str().unwrap(),
        "--dsn",
        &conninfo,
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("only in the nightly export: 1")
            && stdout.contains(&format!("recorded gap: {a_lsn}..{moved}"))
            && stdout.contains("--accept-gap"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_out_dir_against_another_server_is_refused() {
    let db = TestDb::new("other_server");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());
    let before = std::fs::read(dir.path().join("audit-tail.state")).unwrap();

    let other_cluster = Arc::new(Cluster::start().unwrap());
    let other = TestDb::on(other_cluster, "other_server");
    other.install();
    let (code, stderr) = stream_once(&other, &db.name, dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&system_identifier(&db)) && stderr.contains(&system_identifier(&other)),
        "both servers named: {stderr}"
    );
    assert!(stderr.contains("--out-dir"), "{stderr}");
    // Nothing was created on the other server, and the out-dir is as it was.
    assert_eq!(
        other
            .psql("SELECT count(*) FROM pg_replication_slots")
            .trim(),
        "0"
    );
    assert_eq!(
        std::fs::read(dir.path().join("audit-tail.state")).unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_database_or_slot_on_the_same_out_dir_is_refused() {
    let db = TestDb::new("other_slot");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());

    let other_slot = format!("{}_b", db.name);
    let (code, stderr) = stream_once(&db, &other_slot, dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("\"{}\"", db.name))
            && stderr.contains(&format!("\"{other_slot}\""))
            && stderr.contains("--slot"),
        "both slots named: {stderr}"
    );

    let other = TestDb::new("other_db");
    other.install();
    let (code, stderr) = stream_once(&other, &db.name, dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("\"{}\"", db.name))
            && stderr.contains(&format!("\"{}\"", other.name)),
        "both databases named: {stderr}"
    );
    // The out-dir still streams from its own slot.
    db.psql("INSERT INTO users (name) VALUES ('x'); UPDATE users SET name = 'y'");
    catch_up(&db, dir.path());
    assert_eq!(assert_files_equal_table(&db, dir.path()).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_state_file_without_identity_is_adopted() {
    let db = TestDb::new("adopt");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());
    // A state file as written before the identity lines existed.
    let state = dir.path().join("audit-tail.state");
    let old: String = std::fs::read_to_string(&state)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("server ") && !l.starts_with("database ") && !l.starts_with("slot ")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&state, &old).unwrap();

    db.psql("INSERT INTO users (name) VALUES ('a'); UPDATE users SET name = 'b'");
    catch_up(&db, dir.path());
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains(&format!("\nserver {}\n", system_identifier(&db)))
            && text.contains(&format!("\ndatabase {}\n", db.name))
            && text.contains(&format!("\nslot {}\n", db.name)),
        "{text}"
    );
    assert_eq!(assert_files_equal_table(&db, dir.path()).await, 1);
    // Adopted means checked from now on.
    let (code, stderr) = stream_once(&db, &format!("{}_b", db.name), dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
}
