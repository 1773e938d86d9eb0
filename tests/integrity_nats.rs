//! The off-machine copy of the digests (issue 16, docs/security.md): with `--signing-key` and
//! `--nats`, every digest goes to JetStream once (across a kill -9 and a NATS outage), and
//! `verify --integrity --nats` catches what the out-dir alone cannot: the newest digests deleted
//! with their rows, and a digest re-signed by someone holding the key.

mod common;
mod nats_support;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use audit_tail::integrity::{chain, hasher::PrefixHasher};
use audit_tail::nats_server::NatsServer;
use common::signing::{catch_up_signed, signed_nats_args};
use common::{Consumer, TestDb, run_audit_tail, wait};
use futures_util::StreamExt;

fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("signing.key");
    let (code, out, err) = run_audit_tail(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let key = key.to_str().unwrap().to_string();
    (key.clone(), format!("{key}.pub"))
}

fn verify(out: &Path, public: &str, nats: Option<&str>) -> (Option<i32>, String) {
    let mut args = vec![
        "verify",
        "--integrity",
        "--out-dir",
        out.to_str().unwrap(),
        "--public-key",
        public,
    ];
    if let Some(url) = nats {
        args.extend(["--nats", url]);
    }
    let (code, stdout, stderr) = run_audit_tail(&args);
    (code, format!("{stdout}{stderr}"))
}

fn audit_row(value: &str) -> String {
    format!(
        "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
         VALUES (1, now(), 'archivist', 'name', 'a', '{value}');"
    )
}

/// One message of the digests' stream.
#[derive(Debug)]
struct Published {
    subject: String,
    id: String,
    seq: u64,
    text: String,
}

/// Every message of `AUDIT_DIGESTS` (none when the stream does not exist yet).
fn published(url: &str) -> Vec<Published> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let Ok(mut stream) = js.get_stream("AUDIT_DIGESTS").await else {
            return Vec::new();
        };
        let total = stream.info().await.unwrap().state.messages as usize;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < total {
            let mut batch = consumer
                .fetch()
                .max_messages(100)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .unwrap();
            while let Some(m) = batch.next().await {
                let m = m.unwrap();
                let h = m.headers.clone().unwrap_or_default();
                let get = |n: &str| h.get(n).map(|v| v.as_str().to_string()).unwrap_or_default();
                out.push(Published {
                    subject: m.subject.to_string(),
                    id: get("Nats-Msg-Id"),
                    seq: get("Audit-Tail-Digest-Seq").parse().unwrap(),
                    text: String::from_utf8(m.payload.to_vec()).unwrap(),
                });
            }
        }
        out
    })
}

fn on_disk(out: &Path) -> Vec<(u64, String)> {
    chain::list(out)
        .unwrap()
        .0
        .into_iter()
        .map(|(seq, p)| (seq, std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// Waits until JetStream holds every digest of `out`.
fn wait_published(url: &str, out: &Path) {
    wait::until(
        "every digest of the out-dir in JetStream",
        Duration::from_secs(60),
        || {
            let disk = on_disk(out);
            !disk.is_empty() && published(url).len() >= disk.len()
        },
    );
}

#[test]
fn every_digest_is_published_once_across_a_kill_9_and_a_nats_outage() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_nats_once");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    let out = tempfile::tempdir().unwrap();
    let consumer = Consumer::spawn(&db, out.path(), &signed_nats_args(&key, &url));
    wait::streaming(&db, &db.name);
    db.psql(&audit_row("first"));
    wait::caught_up(&db, &db.name);
    wait_published(&url, out.path());

    // NATS goes away: digests are still written, on disk only, and the stream is killed.
    nats.kill();
    let before = on_disk(out.path()).len();
    db.psql(&audit_row("second"));
    db.psql(&audit_row("third"));
    wait::until(
        "digests written while NATS is down",
        Duration::from_secs(60),
        || on_disk(out.path()).len() >= before + 2,
    );
    drop(consumer); // kill -9
    nats.restart().expect("restart nats-server");
    db.psql(&audit_row("fourth"));
    catch_up_signed(&db, out.path(), &key, &url);
    // And a run that publishes and finds nothing new to send.
    catch_up_signed(&db, out.path(), &key, &url);

    let disk = on_disk(out.path());
    let stored = published(&url);
    assert!(disk.len() >= before + 3, "{} digests", disk.len());
    let seqs: Vec<u64> = stored.iter().map(|p| p.seq).collect();
    let expected: Vec<u64> = disk.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, expected, "each digest once, in order");
    for ((seq, text), p) in disk.iter().zip(&stored) {
        assert_eq!(&p.text, text, "digest {seq} as written");
        assert_eq!(p.subject, format!("audit-digests.{}", db.name));
        assert_eq!(p.id, format!("{}:{seq}", db.name));
    }
    // The rows' stream holds no digest: its consumers (archive) see rows only.
    let rows = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(nats_support::read_all(&url, "AUDIT"));
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.subject == format!("audit.{}.public.users_audit", db.name)),
        "{rows:?}"
    );
    let (code, report) = verify(out.path(), &public, Some(&url));
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("compared with {} digests", disk.len())),
        "{report}"
    );
}

/// The length the digest at `path` covers of `file`.
fn covered(path: &Path, file: &str) -> Option<u64> {
    chain::read(path)
        .unwrap()
        .digest
        .files
        .iter()
        .find(|f| f.name == file)
        .map(|f| f.len)
}

fn stream_file_name(db: &TestDb) -> String {
    let day = db.psql("SELECT to_char(current_date, 'YYYYMMDD')");
    format!("users_audit_stream_{}.csv", day.trim())
}

#[test]
fn the_newest_digests_deleted_with_their_rows_are_caught_only_with_nats() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_nats_deleted");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    let out = tempfile::tempdir().unwrap();
    catch_up_signed(&db, out.path(), &key, &url);
    for value in ["one", "two", "three"] {
        db.psql(&audit_row(value));
        catch_up_signed(&db, out.path(), &key, &url);
    }
    wait_published(&url, out.path());
    let name = stream_file_name(&db);
    let digests = chain::list(out.path()).unwrap().0;
    assert!(digests.len() >= 3, "{digests:?}");
    // Root deletes the rows "two" and "three" and the digests that cover them: the file cut back
    // to what the newest remaining digest covers.
    let text = std::fs::read_to_string(out.path().join(&name)).unwrap();
    let (keep, len) = digests
        .iter()
        .rev()
        .find_map(|(seq, p)| {
            covered(p, &name)
                .filter(|&len| !text[..len as usize].contains("two"))
                .map(|len| (*seq, len))
        })
        .unwrap();
    let removed: Vec<u64> = digests.iter().map(|d| d.0).filter(|&s| s > keep).collect();
    assert!(!removed.is_empty());
    for &seq in &removed {
        std::fs::remove_file(out.path().join(chain::DIGESTS_DIR).join(chain::name(seq))).unwrap();
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(out.path().join(&name))
        .unwrap();
    file.set_len(len).unwrap();

    // The out-dir alone cannot tell: what is left is a complete, intact chain.
    let (code, report) = verify(out.path(), &public, None);
    assert_eq!(code, Some(0), "{report}");
    // The copy in JetStream can.
    let (code, report) = verify(out.path(), &public, Some(&url));
    assert_eq!(code, Some(1), "{report}");
    let newest = removed.last().unwrap();
    assert!(
        report.contains(&format!(
            "BROKEN audit-tail.digests/{}: removed: the copy in JetStream",
            chain::name(*newest)
        )) && report.contains(&format!("the out-dir's digests end at {keep}")),
        "{report}"
    );
}

#[test]
fn a_digest_re_signed_with_the_key_is_caught_only_with_nats() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("integrity_nats_replaced");
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    let out = tempfile::tempdir().unwrap();
    catch_up_signed(&db, out.path(), &key, &url);
    db.psql(&audit_row("genuine"));
    catch_up_signed(&db, out.path(), &key, &url);
    wait_published(&url, out.path());
    let name = stream_file_name(&db);
    // Someone holding the key edits a row and signs the newest digest over the edit.
    let path = out.path().join(&name);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("genuine", "forged!", 1)).unwrap();
    let (seq, digest_path) = chain::list(out.path()).unwrap().0.pop().unwrap();
    let mut digest = chain::read(&digest_path).unwrap().digest;
    let entry = digest.files.iter_mut().find(|f| f.name == name).unwrap();
    let mut hasher = PrefixHasher::default();
    assert!(hasher.extend_from(&path, entry.len).unwrap());
    entry.sha256 = hasher.sha256();
    entry.rowsum = hasher.rowsum;
    entry.rows = hasher.rows();
    let signing = audit_tail::integrity::load_signing_key(Path::new(&key)).unwrap();
    let (forged, _) = digest.sign(&signing);
    std::fs::write(&digest_path, forged).unwrap();

    let (code, report) = verify(out.path(), &public, None);
    assert_eq!(code, Some(0), "the out-dir alone is consistent: {report}");
    let (code, report) = verify(out.path(), &public, Some(&url));
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "BROKEN audit-tail.digests/{} line ",
            chain::name(seq)
        )) && report.contains("replaced: it differs from the copy in JetStream"),
        "{report}"
    );
}

#[test]
fn verify_nats_without_a_stream_identity_is_bad_input() {
    let nats = NatsServer::start().expect("start nats-server");
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keygen(keys.path());
    let out = tempfile::tempdir().unwrap();
    let (code, report) = verify(out.path(), &public, Some(&nats.url()));
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("names no database"), "{report}");
}

#[test]
fn verify_nats_without_integrity_is_bad_input() {
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_audit_tail(&[
        "verify",
        "--date",
        "2026-01-01",
        "--out-dir",
        out.path().to_str().unwrap(),
        "--nats",
        "nats://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("verify --nats compares digests"),
        "{stderr}"
    );
}
