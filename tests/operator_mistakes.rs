//! Operator mistakes against a running stream: a second consumer on the same slot or out-dir, a
//! publication widened to another table or narrowed to drop users_audit, and users_audit altered
//! while streaming.

mod common;

use std::time::{Duration, Instant};

use common::{Consumer, TestDb, assert_files_equal_table, catch_up, wait};

fn stop(consumer: &mut Consumer) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(consumer.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(consumer.child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_consumer_on_the_same_slot_waits_and_takes_over() {
    let db = TestDb::new("same_slot");
    db.install();
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    catch_up(&db, first_dir.path());
    // The second out-dir starts from the first's state, as an operator restoring a copy would.
    // No row was streamed yet, so the state lists no files.
    let state = "audit-tail.state";
    std::fs::copy(first_dir.path().join(state), second_dir.path().join(state)).unwrap();
    let mut first = Consumer::spawn(&db, first_dir.path(), &["--format", "none"]);
    wait::streaming(&db, &db.name);
    // Meanwhile the first acknowledges positions past that copy, so when the second takes over
    // the slot is ahead of its checkpoint: whatever the first wrote in between would be skipped.
    // That is refused (tests/out_dir_identity.rs) unless the operator accepts the gap.
    // Its log goes to a file, so that its retries can be waited for while it runs.
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = common::stream_command(
        &db,
        second_dir.path(),
        &["--format", "none", "--accept-gap"],
    )
    .stderr(log.reopen().unwrap())
    .spawn()
    .unwrap();
    let mut second = Consumer { child };
    let busy = "is in use by another connection";
    // Twice: it was refused, waited, and tried again instead of giving up.
    wait::until(
        "the second consumer to retry on the busy slot",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(log.path())
                .unwrap()
                .matches(busy)
                .count()
                >= 2
        },
    );
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the second consumer must wait, not fail"
    );
    stop(&mut first);
    // Once the slot is free, the second one streams.
    db.psql("INSERT INTO users (name) VALUES ('a'); UPDATE users SET name = 'b';");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !second_dir.path().read_dir().unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("users_audit_stream_")
    }) {
        assert!(
            Instant::now() < deadline,
            "the second consumer never took over the slot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut second);
    assert_eq!(assert_files_equal_table(&db, second_dir.path()).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_consumer_on_the_same_out_dir_is_refused() {
    let db = TestDb::new("same_dir");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());
    let _first = Consumer::spawn(&db, dir.path(), &["--format", "none"]);
    wait::streaming(&db, &db.name);
    let other_slot = format!("{}_b", db.name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args(["stream", "--until", "now", "--slot", &other_slot, "--dsn"])
        .arg(db.cluster.conninfo(&db.name))
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    // The out-dir lock refuses before any slot is touched.
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another audit-tail is already writing to")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_changes_and_new_tables_get_their_own_files() {
    let db = TestDb::new("schema_change");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());
    let mut consumer = Consumer::spawn(&db, dir.path(), &["--format", "json"]);
    wait::streaming(&db, &db.name);
    db.psql("INSERT INTO users (name) VALUES ('a'); UPDATE users SET name = 'b';");
    db.psql("ALTER TABLE users_audit ADD COLUMN client_ip text");
    db.psql("UPDATE users SET name = 'c'");
    db.psql("INSERT INTO users_audit (user_id, field_changed, client_ip) VALUES (1, 'name', '10.0.0.1')");
    // A second table joins the publication.
    db.psql("CREATE TABLE logins (id serial PRIMARY KEY, who text); ALTER PUBLICATION users_audit_pub ADD TABLE logins; INSERT INTO logins (who) VALUES ('alice')");
    wait::caught_up(&db, &db.name);
    stop(&mut consumer);
    let today = db
        .psql("SELECT to_char(current_date, 'YYYYMMDD')")
        .trim()
        .to_string();
    let first = std::fs::read_to_string(dir.path().join(format!("users_audit_stream_{today}.csv")))
        .unwrap();
    let second =
        std::fs::read_to_string(dir.path().join(format!("users_audit_stream_{today}-2.csv")))
            .unwrap();
    assert!(
        first.starts_with("id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n")
    );
    assert_eq!(first.lines().count(), 2, "{first}");
    assert!(
        second.starts_with(
            "id,user_id,changed_at,changed_by,field_changed,old_value,new_value,client_ip\n"
        ),
        "{second}"
    );
    assert_eq!(second.lines().count(), 3, "{second}");
    assert!(second.ends_with(",10.0.0.1\n"), "{second}");
    // The other table: commit-day file, its own header.
    let logins: Vec<_> = dir
        .path()
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("logins_stream_"))
        .collect();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&logins[0])).unwrap(),
        "id,who\n1,alice\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn users_audit_dropped_from_the_publication_is_shown_by_verify_and_refused_on_start() {
    let db = TestDb::new("pub_narrowed");
    db.install();
    let dir = tempfile::tempdir().unwrap();
    catch_up(&db, dir.path());
    let mut consumer = Consumer::spawn(&db, dir.path(), &["--format", "none"]);
    db.psql("INSERT INTO users (name) VALUES ('a'), ('b'); UPDATE users SET role = 'streamed'");
    wait::caught_up(&db, &db.name);
    // pgoutput says nothing when a table leaves the publication: its rows just stop coming.
    db.psql("ALTER PUBLICATION users_audit_pub DROP TABLE users_audit");
    db.psql("UPDATE users SET role = 'unstreamed' WHERE name = 'a'");
    wait::caught_up(&db, &db.name);
    stop(&mut consumer);
    assert!(consumer.child.wait().unwrap().success());

    // verify names the rows the stream missed.
    let today = db.psql("SELECT current_date").trim().to_string();
    let conninfo = db.cluster.conninfo(&db.name);
    let verify = || {
        common::run_audit_tail(&[
            "verify",
            "--date",
            &today,
            "--out-dir",
            dir.path().to_str().unwrap(),
            "--dsn",
            &conninfo,
        ])
    };
    let missing = db
        .psql("SELECT id FROM users_audit WHERE new_value = 'unstreamed'")
        .trim()
        .to_string();
    let (code, stdout, _) = verify();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("only in the nightly export: 1 (ids {missing})")),
        "{stdout}"
    );

    // A new start is refused with what to do, instead of streaming nothing.
    let out = common::stream_command(&db, dir.path(), &["--until", "now", "--format", "none"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not publish inserts of users_audit")
            && stderr.contains("ADD TABLE users_audit"),
        "{stderr}"
    );
    // Put back, the stream goes on; the row committed meanwhile stays only in the export.
    db.psql("ALTER PUBLICATION users_audit_pub ADD TABLE users_audit");
    db.psql("UPDATE users SET role = 'streamed again'");
    catch_up(&db, dir.path());
    let (code, stdout, _) = verify();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("only in the nightly export: 1 (ids {missing})"))
            && stdout.contains("matching:       4"),
        "{stdout}"
    );
}
