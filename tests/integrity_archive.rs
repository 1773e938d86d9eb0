//! `verify --integrity` on an archive's out-dir (issues 15 and 16, docs/security.md): `archive`
//! copies the digests `stream --signing-key --nats` publishes into its out-dir, each once its
//! files are durable past what the digest covers, so the off-machine copy walks the same chain.

mod common;
mod nats_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit_tail::integrity::chain;
use audit_tail::integrity::digest::Digest;
use audit_tail::nats_server::NatsServer;
use common::signing::{catch_up_signed, keygen, signed_nats_args, verify_integrity};
use common::{Rng, TestDb, stream_command, wait};
use nats_support::{archive_command, csv_files, wait_same_files};

/// The digests of `out`: number → text.
fn digests(out: &Path) -> Vec<(u64, String)> {
    chain::list(out)
        .unwrap()
        .0
        .into_iter()
        .map(|(seq, p)| (seq, std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// A child whose stderr goes to a file of the test's temp dir (a pipe nobody reads would fill
/// up with the debug log and stop it).
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn audit-tail")
}

fn archive(url: &str, out: &Path, public: Option<&str>, log: &Path) -> Child {
    let extra: Vec<&str> = public.map(|p| vec!["--public-key", p]).unwrap_or_default();
    spawn_logged(archive_command(url, out, &extra), log)
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Single-row and bulk updates of `users` until `stop`; returns the transactions run.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let client = audit_tail::sql::connect(&config).await.unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let sql = if n.is_multiple_of(10) {
                format!("UPDATE users SET role = 'bulk-{n}' WHERE id <= 300")
            } else {
                format!("UPDATE users SET name = 'n-{n}' WHERE id = {}", 1 + n % 500)
            };
            client.batch_execute(&sql).await.unwrap();
            n += 1;
        }
        n
    })
}

/// Waits until the archive holds every digest of the stream's out-dir.
fn wait_same_digests(stream_out: &Path, archive_out: &Path) {
    wait::until(
        "the archive to hold every digest of the stream",
        Duration::from_secs(120),
        || {
            let theirs = digests(stream_out);
            !theirs.is_empty() && digests(archive_out).len() >= theirs.len()
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_of_a_signed_stream_verifies_and_survives_kill_9() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_archive");
    db.install();
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 500) g",
    );
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let archive_log = logs.path().join("archive.log");
    catch_up_signed(&db, stream_out.path(), &key, &url);

    // Under load: the stream signs and publishes while the archive is killed and restarted.
    let mut stream = spawn_logged(
        stream_command(&db, stream_out.path(), &signed_nats_args(&key, &url)),
        &logs.path().join("stream.log"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("integrity_archive");
    let seed = rng.seed;
    for _ in 0..8 {
        let mut child = archive(&url, archive_out.path(), Some(&public), &archive_log);
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        kill_9(&mut child);
    }
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(transactions > 30, "only {transactions} (seed {seed})");
    kill_9(&mut stream);
    // The stream's last digest covers every row: the archive's last one must too.
    catch_up_signed(&db, stream_out.path(), &key, &url);

    let mut child = archive(&url, archive_out.path(), Some(&public), &archive_log);
    wait_same_files(stream_out.path(), archive_out.path());
    wait_same_digests(stream_out.path(), archive_out.path());
    let (code, _) = nats_support::terminate(&mut child);
    let log = std::fs::read_to_string(&archive_log).unwrap();
    assert_eq!(code, Some(0), "seed {seed}: {log}");
    assert!(!log.contains("not written"), "seed {seed}: {log}");

    // Each of the stream's digests once, as the stream wrote it: none lost, none twice.
    let theirs = digests(stream_out.path());
    assert!(theirs.len() > 5, "{} digests (seed {seed})", theirs.len());
    assert_eq!(
        digests(archive_out.path()),
        theirs,
        "the archive's digests are the stream's (seed {seed})"
    );
    assert_eq!(
        chain::list(archive_out.path()).unwrap().1,
        Vec::<String>::new(),
        "nothing else in the archive's digests directory"
    );
    let (code, report) = verify_integrity(archive_out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "seed {seed}:\n{report}");
    assert!(
        report.contains("intact:") && !report.contains("not yet covered"),
        "{report}"
    );
    let rows = common::assert_files_equal_table(&db, archive_out.path()).await;
    assert!(rows > 300, "{rows} rows (seed {seed})");

    // One byte of an archived file edited: named with its file and line.
    let (name, bytes) = csv_files(archive_out.path()).pop_first().unwrap();
    let at = bytes.iter().rposition(|&b| b == b'n').expect("a name");
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut edited = bytes.clone();
    edited[at] = b'N';
    std::fs::write(archive_out.path().join(&name), edited).unwrap();
    let (code, report) = verify_integrity(archive_out.path(), &[&public], &[]);
    assert_eq!(code, Some(1), "{report}");
    // The line, or the stretch of lines between two digests that holds it.
    let named = report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("BROKEN {name} line ")))
        .unwrap_or_else(|| panic!("{name} named:\n{report}"));
    let (first, what) = named.split_once(": ").unwrap();
    let first: usize = first.parse().unwrap();
    let last = what
        .split_once("lines ")
        .and_then(|(_, r)| r.split_once(['-', ' ']))
        .and_then(|(_, r)| r.split(' ').next()?.parse::<usize>().ok())
        .unwrap_or(first);
    assert!(
        what.starts_with("edited") && first <= line && line <= last,
        "line {line} of {name}:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_digest_in_jetstream_is_refused_and_the_real_one_written() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_archive_forged");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let (other, _) = keygen(keys.path(), "other.key");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let archive_log = logs.path().join("archive.log");
    catch_up_signed(&db, stream_out.path(), &key, &url);
    db.psql("INSERT INTO users (name, role) VALUES ('before', 'user')");
    db.psql("UPDATE users SET name = 'before!'");
    catch_up_signed(&db, stream_out.path(), &key, &url);
    wait::until("the stream's digests", Duration::from_secs(30), || {
        !digests(stream_out.path()).is_empty()
    });

    // Someone who may publish on the digests' subject, but holds another key, gets the next
    // number in first: a copy of the newest digest, renumbered and signed with their key.
    let (newest, path) = chain::list(stream_out.path()).unwrap().0.pop().unwrap();
    let signed = chain::read(&path).unwrap();
    let forged_key = audit_tail::integrity::load_signing_key(Path::new(&other)).unwrap();
    let forged = Digest {
        seq: newest + 1,
        prev: Some(signed.signature),
        prev_key: Some(signed.digest.key.clone()),
        key: audit_tail::integrity::keys::key_id(&forged_key.verifying_key()),
        ..signed.digest.clone()
    };
    let (text, _) = forged.sign(&forged_key);
    // And a digest with no valid text at all.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    for body in [text, "audit-tail digest 1\nnot a digest\n".to_string()] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Audit-Tail-Digest-Seq", (newest + 1).to_string().as_str());
        js.publish_with_headers(format!("audit-digests.{}", db.name), headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    db.psql("UPDATE users SET name = 'after'");
    catch_up_signed(&db, stream_out.path(), &key, &url);

    let mut child = archive(&url, archive_out.path(), Some(&public), &archive_log);
    wait_same_files(stream_out.path(), archive_out.path());
    wait_same_digests(stream_out.path(), archive_out.path());
    let (code, _) = nats_support::terminate(&mut child);
    let log = std::fs::read_to_string(&archive_log).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "digest {} from JetStream is not written: it is signed by key",
            newest + 1
        )) && log.contains("is not written: it is not a digest (line 2"),
        "{log}"
    );
    assert_eq!(digests(archive_out.path()), digests(stream_out.path()));
    let (code, report) = verify_integrity(archive_out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_rebuilds_sealed_days_manifests_and_its_chain_spans_days() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_archive_days");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let stream_out = tempfile::tempdir().unwrap();
    let archive_out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let archive_log = logs.path().join("archive.log");
    let mut args = vec!["--status-interval", "1"];
    args.extend(signed_nats_args(&key, &url));
    let mut stream = spawn_logged(
        stream_command(&db, stream_out.path(), &args),
        &logs.path().join("stream.log"),
    );
    wait::streaming(&db, &db.name);
    // Rows of days long over: the stream seals those days, and its digests sign the manifests.
    for (day, v) in [("2020-01-15", "one"), ("2020-01-16", "two")] {
        db.psql(&format!(
            "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
             VALUES (1, '{day} 10:00:00', 'archivist', 'name', 'a', '{v}');"
        ));
    }
    db.psql("INSERT INTO users (name, role) VALUES ('today', 'user')");
    db.psql("UPDATE users SET name = 'today!'");
    wait::caught_up(&db, &db.name);
    let signed_manifests = || -> Vec<String> {
        digests(stream_out.path())
            .iter()
            .flat_map(|(_, text)| {
                audit_tail::integrity::digest::decode(text, Path::new("d"))
                    .unwrap()
                    .digest
                    .manifests
            })
            .map(|(name, _)| name)
            .collect()
    };
    wait::until(
        "both days sealed and signed",
        Duration::from_secs(60),
        || {
            let m = signed_manifests();
            m.contains(&"20200115.manifest".to_string())
                && m.contains(&"20200116.manifest".to_string())
        },
    );
    let (code, _) = nats_support::terminate(&mut stream);
    assert_eq!(code, Some(0));

    let mut child = archive(&url, archive_out.path(), Some(&public), &archive_log);
    wait_same_files(stream_out.path(), archive_out.path());
    wait_same_digests(stream_out.path(), archive_out.path());
    let (code, _) = nats_support::terminate(&mut child);
    let log = std::fs::read_to_string(&archive_log).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(digests(archive_out.path()), digests(stream_out.path()));
    // The manifests, byte for byte the stream's.
    for day in ["20200115", "20200116"] {
        let name = format!("audit-tail.days/{day}.manifest");
        assert_eq!(
            std::fs::read(archive_out.path().join(&name)).ok(),
            std::fs::read(stream_out.path().join(&name)).ok(),
            "{name}: {log}"
        );
    }
    let (code, report) = verify_integrity(archive_out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}\n{log}");
    // And restarted on them, the archive goes on: the sealed days' files are left alone.
    db.psql("UPDATE users SET name = 'later'");
    catch_up_signed(&db, stream_out.path(), &key, &url);
    let mut child = archive(&url, archive_out.path(), Some(&public), &archive_log);
    wait_same_files(stream_out.path(), archive_out.path());
    wait_same_digests(stream_out.path(), archive_out.path());
    let (code, _) = nats_support::terminate(&mut child);
    assert_eq!(code, Some(0));
    let (code, report) = verify_integrity(archive_out.path(), &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn a_bad_public_key_is_refused_before_archiving() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "not a key\n").unwrap();
    let out = dir.path().join("archive");
    for key in [bad, dir.path().join("missing.pub")] {
        let (code, stdout, stderr) = common::run_audit_tail(&[
            "archive",
            "--nats",
            "nats://127.0.0.1:1",
            "--out-dir",
            out.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(2), "{stdout}{stderr}");
        assert!(
            stderr.contains("is not an audit-tail public key"),
            "{stderr}"
        );
        assert!(!out.exists(), "nothing written");
    }
}
