//! The chain of signed digests over time: kill -9 at random moments, a key rotation, a day
//! change and a schema change (a -2.csv part) all leave a chain that `verify --integrity` finds
//! intact (issue 16, docs/security.md).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit_tail::integrity::chain;
use common::signing::{keygen, marked_complete, verify_integrity};
use common::{Consumer, Rng, TestDb, stream_command, wait};

fn signing(key: &str) -> [&str; 4] {
    ["--signing-key", key, "--digest-interval", "0"]
}

/// `stream --until now` with signing on; panics unless it exits 0.
fn catch_up_signed(db: &TestDb, out: &Path, key: &str) {
    let mut args = vec!["--until", "now", "--format", "none"];
    args.extend(signing(key));
    let output = stream_command(db, out, &args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn digest_count(out: &Path) -> usize {
    chain::list(out).unwrap().0.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_signing_on_leaves_an_intact_chain() {
    let db = TestDb::new("integrity_kill9");
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 500) g",
    );
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    catch_up_signed(&db, out.path(), &key);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("integrity_kill9");
    let seed = rng.seed;
    common::kill_9_loop_with(&db, out.path(), &mut rng, 25, 500, &signing(&key));
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 30,
        "only {transactions} transactions (seed {seed})"
    );
    catch_up_signed(&db, out.path(), &key);
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "seed {seed}:\n{report}");
    assert!(report.contains("intact:"), "{report}");
    assert!(
        !report.contains("not yet covered"),
        "the last catch-up's digest covers all: {report}"
    );
    assert!(digest_count(out.path()) > 10, "{report}");
    // And the files are still exactly the table, every row once.
    let rows =
        common::assert_exactly_once_after_kills(db, out.path(), "public", "users_audit", seed)
            .await;
    assert!(rows > 300, "only {rows} rows (seed {seed})");
}

/// A writer of single-row and bulk updates of `users` until `stop`, reconnecting across server
/// restarts; returns the transactions it ran.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let Ok(client) = audit_tail::sql::connect(&config).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let sql = if n.is_multiple_of(10) {
                    format!("UPDATE users SET role = 'bulk-{n}' WHERE id <= 300")
                } else {
                    format!("UPDATE users SET name = 'n-{n}' WHERE id = {}", 1 + n % 500)
                };
                if client.batch_execute(&sql).await.is_err() {
                    break;
                }
                n += 1;
            }
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn server_crashes_and_restarts_with_signing_on_leave_an_intact_chain() {
    // Its own cluster: the crashes must not hit other tests.
    let cluster = Arc::new(audit_tail::cluster::Cluster::start().unwrap());
    let db = TestDb::on(cluster.clone(), "integrity_server_crash");
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 500) g",
    );
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    catch_up_signed(&db, out.path(), &key);
    let mut args = vec!["--format", "none"];
    args.extend(signing(&key));
    let mut consumer = Consumer::spawn(&db, out.path(), &args);
    wait::streaming(&db, &db.name);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        if round == 0 {
            cluster.crash().unwrap();
        } else {
            cluster.stop().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        cluster.restart().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "the consumer must survive server restarts"
    );
    consumer.child.kill().unwrap();
    consumer.child.wait().unwrap();
    catch_up_signed(&db, out.path(), &key);
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(!report.contains("not yet covered"), "{report}");
    common::assert_files_equal_table(&db, out.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_key_starts_a_chain_that_names_the_old_one() {
    let db = TestDb::new("integrity_rotation");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (old_key, old_public) = keygen(keys.path(), "old.key");
    let (new_key, new_public) = keygen(keys.path(), "new.key");
    let out = tempfile::tempdir().unwrap();
    catch_up_signed(&db, out.path(), &old_key);
    db.psql("INSERT INTO users (name, role) VALUES ('a', 'user'), ('b', 'user')");
    db.psql("UPDATE users SET name = name || '!'");
    catch_up_signed(&db, out.path(), &old_key);
    let before = digest_count(out.path());
    assert!(before >= 1);
    db.psql("UPDATE users SET role = 'admin'");
    catch_up_signed(&db, out.path(), &new_key);
    assert!(digest_count(out.path()) > before);
    let (code, report) = verify_integrity(out.path(), &[&old_public, &new_public], &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("note: key rotated at digest {}", before + 1)),
        "{report}"
    );
    // Each key alone leaves the other's digests unverified.
    for (public, other) in [(&new_public, &old_public), (&old_public, &new_public)] {
        let other_id = audit_tail::integrity::keys::key_id(
            &audit_tail::integrity::load_public_key(Path::new(other)).unwrap(),
        );
        let (code, report) = verify_integrity(out.path(), &[public], &[]);
        assert_eq!(code, Some(1), "{report}");
        assert!(
            report.contains(&format!("signed by key {other_id}")),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_goes_across_days_and_a_schema_change() {
    let db = TestDb::new("integrity_days");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["--format", "none", "--status-interval", "1"];
    args.extend(signing(&key));
    let consumer = Consumer::spawn(&db, out.path(), &args);
    wait::streaming(&db, &db.name);
    wait::caught_up(&db, &db.name);
    let row = |day: &str, v: &str| {
        format!(
            "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
             VALUES (1, '{day} 10:00:00', 'archivist', 'name', 'a', '{v}');"
        )
    };
    db.psql(&row("2020-01-15", "one"));
    db.psql(&row("2020-01-16", "two"));
    db.psql("INSERT INTO users (name, role) VALUES ('today', 'user')");
    db.psql("UPDATE users SET name = 'today!'");
    wait::caught_up(&db, &db.name);
    db.psql("ALTER TABLE users_audit ADD COLUMN note text");
    db.psql("UPDATE users SET role = 'admin'");
    wait::caught_up(&db, &db.name);
    let today = db
        .psql("SELECT to_char(current_date, 'YYYYMMDD')")
        .trim()
        .to_string();
    for file in [
        "users_audit_stream_20200115.csv".to_string(),
        "users_audit_stream_20200116.csv".to_string(),
        format!("users_audit_stream_{today}.csv"),
    ] {
        wait::until(
            &format!("{file} marked complete"),
            Duration::from_secs(60),
            || marked_complete(out.path(), &file),
        );
    }
    drop(consumer);
    assert!(
        out.path()
            .join(format!("users_audit_stream_{today}-2.csv"))
            .exists()
    );
    let manifests: Vec<String> = chain::list(out.path())
        .unwrap()
        .0
        .iter()
        .flat_map(|(_, p)| chain::read(p).unwrap().digest.manifests)
        .map(|(name, _)| name)
        .collect();
    assert!(
        manifests.contains(&"20200115.manifest".to_string()),
        "{manifests:?}"
    );
    assert!(
        manifests.contains(&"20200116.manifest".to_string()),
        "{manifests:?}"
    );
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
    // The complete first part of today may not grow: one more row in it is caught.
    let first = out.path().join(format!("users_audit_stream_{today}.csv"));
    let mut text = std::fs::read_to_string(&first).unwrap();
    text.push_str("1,2,x\n");
    std::fs::write(&first, text).unwrap();
    let (code, report) = verify_integrity(out.path(), &[&public], &[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("BROKEN users_audit_stream_{today}.csv line"))
            && report.contains("extended"),
        "{report}"
    );
}
