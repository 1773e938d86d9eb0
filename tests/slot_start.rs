//! A new slot under load: `audit-tail stream` creates its slot on a busy server, a row is
//! committed the moment the slot is active, and every row committed after the slot's creation
//! point is in the files, once. The server runs with log_min_messages = debug1, so a failure shows
//! the slot's own "starting logical decoding" and "consistent point" lines next to the
//! consumer's log.
//!
//! Load, all the time: short and overlapping longer transactions in another database (so the slot
//! is created while transactions run, and has to wait for them to reach its consistent point),
//! other slots created and dropped (they share pg_logical/snapshots with ours), and a writer in
//! the streamed database whose rows are stamped with the WAL insert position before they commit.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_tail::cluster::{Cluster, ClusterOptions};
use audit_tail::lsn::Lsn;
use common::TestDb;

/// New slots per run: each a fresh out-dir, as a first start in production.
const ROUNDS: usize = 25;

/// One row of the writer in the streamed database: its id, the WAL insert position before its
/// INSERT began (a lower bound of its commit LSN) and after its commit returned (an upper bound).
#[derive(Debug, Clone, Copy)]
struct Stamped {
    id: i32,
    before: Lsn,
    after: Lsn,
}

fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not an LSN"))
}

/// The server log, whole (log_tail has only its end).
fn server_log(db: &TestDb) -> String {
    let data = db.psql("SHOW data_directory");
    let path = Path::new(data.trim()).with_file_name("server.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// A running `audit-tail stream` whose stderr is read as it comes.
struct Stream {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Stream {
    fn spawn(db: &TestDb, slot: &str, out: &Path) -> Stream {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(["stream", "--format", "none", "--status-interval", "1"])
            .arg("--dsn")
            .arg(db.cluster.conninfo(&db.name))
            .arg("--slot")
            .arg(slot)
            .arg("--out-dir")
            .arg(out)
            .env_remove("AUDIT_TAIL_DSN")
            .env("RUST_LOG", "audit_tail=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn audit-tail stream");
        let log = Arc::new(Mutex::new(String::new()));
        let (mut stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Stream { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first line of the log that contains `text`, once there is one.
    fn wait_for_line(&self, text: &str) -> String {
        common::wait::until(
            &format!("{text:?} in the consumer's log"),
            Duration::from_secs(60),
            || self.log().contains(text),
        );
        self.log()
            .lines()
            .find(|l| l.contains(text))
            .unwrap()
            .to_string()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name=` in a log line of the consumer.
fn field(line: &str, name: &str) -> Option<Lsn> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))?
        .parse()
        .ok()
}

/// id → how many times it is in the users_audit files of `out`.
fn ids_in_files(out: &Path) -> HashMap<i32, usize> {
    let mut ids = HashMap::new();
    for file in audit_tail::layout::list(out).unwrap() {
        if file.table != "users_audit" {
            continue;
        }
        let mut bytes = std::fs::read(out.join(file.name())).unwrap();
        // The stream is still writing: rows past the confirmed position may end in a partial
        // line (a buffer written out mid-transaction). Those are not checked: keep whole lines.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
        for record in common::csv_records(&bytes).into_iter().skip(1) {
            let text = String::from_utf8_lossy(&record);
            let id = text.split(',').next().unwrap().parse().unwrap();
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    ids
}

/// Waits until `slot` confirmed the server's current WAL position; returns that position.
fn caught_up(db: &TestDb, slot: &str) -> Lsn {
    let target = db.psql("SELECT pg_current_wal_lsn()");
    common::wait::until(
        &format!("slot {slot} to confirm {}", target.trim()),
        Duration::from_secs(60),
        || {
            db.psql(&format!(
                "SELECT confirmed_flush_lsn >= '{}'::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = '{slot}'",
                target.trim()
            ))
            .trim()
                == "t"
        },
    );
    lsn(&target)
}

/// Runs `f` in a loop on its own thread and runtime until `stop`.
fn background<F, Fut>(stop: &Arc<AtomicBool>, f: F) -> std::thread::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let stop = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            rt.block_on(f());
        }
    })
}

/// Short transactions, and longer ones that stay open across slot creations, in `load`.
fn load_transactions(
    load: &Arc<TestDb>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    load.psql("CREATE TABLE IF NOT EXISTS noise (id bigserial PRIMARY KEY, t text)");
    let mut threads = Vec::new();
    for hold_ms in [0u64, 30, 150] {
        let config = load.cluster.config(&load.name);
        threads.push(background(stop, move || {
            let config = config.clone();
            async move {
                let client = audit_tail::sql::connect(&config).await.unwrap();
                for _ in 0..50 {
                    client
                        .batch_execute(&format!(
                            "BEGIN; INSERT INTO noise (t) VALUES (repeat('x', 200)); \
                             SELECT pg_sleep({}); COMMIT",
                            hold_ms as f64 / 1000.0
                        ))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    threads
}

/// Other slots created and dropped in `load`, as parallel tests and other consumers do.
fn load_slots(load: &Arc<TestDb>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let config = load.cluster.config(&load.name);
    background(stop, move || {
        let config = config.clone();
        async move {
            let client = audit_tail::sql::connect(&config).await.unwrap();
            client
                .batch_execute(
                    "SELECT pg_create_logical_replication_slot('noise_slot', 'pgoutput'); \
                     SELECT pg_drop_replication_slot('noise_slot')",
                )
                .await
                .unwrap();
        }
    })
}

/// Rows of users_audit committed all the time in `db`, each stamped.
fn writer(
    db: &Arc<TestDb>,
    stop: &Arc<AtomicBool>,
    rows: &Arc<Mutex<Vec<Stamped>>>,
) -> std::thread::JoinHandle<()> {
    let config = db.cluster.config(&db.name);
    let rows = rows.clone();
    background(stop, move || {
        let (config, rows) = (config.clone(), rows.clone());
        async move {
            let client = audit_tail::sql::connect(&config).await.unwrap();
            for _ in 0..100 {
                let row = client
                    .query_one(
                        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
                         VALUES (2, 'writer', 'name', 'a', pg_current_wal_insert_lsn()::text) \
                         RETURNING id, new_value",
                        &[],
                    )
                    .await
                    .unwrap();
                let after: String = client
                    .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                    .await
                    .unwrap()
                    .get(0);
                rows.lock().unwrap().push(Stamped {
                    id: row.get(0),
                    before: lsn(row.get(1)),
                    after: lsn(&after),
                });
            }
        }
    })
}

/// The server's log lines about `slot` and about consistent points, for a failure message.
fn slot_lines(log: &str, slot: &str) -> String {
    log.lines()
        .filter(|l| {
            l.contains(slot)
                || l.contains("consistent point")
                || l.contains("Streaming transactions committing after")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every round: a new slot and out-dir; one row committed as soon as the stream says it streams
/// (even rounds: a walsender holds the slot; odd rounds: the consumer logged "streaming"), a past
/// day's row as in tests/sealed_days.rs; and the writer's rows all along. Once the slot confirmed
/// the server's position: the round's row is there once, and so is every writer row whose INSERT
/// began after the slot's creation point and whose commit returned before that position; and the
/// consumer's "streaming" line names the point the server streams from.
#[test]
fn every_row_committed_after_a_new_slot_is_created_is_streamed_once() {
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            settings: vec![("log_min_messages".into(), "debug1".into())],
            ..ClusterOptions::default()
        })
        .expect("start a throwaway PostgreSQL cluster"),
    );
    let db = Arc::new(TestDb::on(cluster.clone(), "slot_start"));
    db.install();
    let load = Arc::new(TestDb::on(cluster.clone(), "slot_start_load"));
    let stop = Arc::new(AtomicBool::new(false));
    let rows = Arc::new(Mutex::new(Vec::new()));
    let mut threads = load_transactions(&load, &stop);
    threads.push(load_slots(&load, &stop));
    threads.push(writer(&db, &stop, &rows));

    let mut checked = 0;
    for round in 0..ROUNDS {
        let slot = format!("slot_start_{round}");
        let out = tempfile::tempdir().unwrap();
        let stream = Stream::spawn(&db, &slot, out.path());
        if round % 2 == 0 {
            common::wait::streaming(&db, &slot);
        } else {
            stream.wait_for_line("streaming:");
        }
        let marker: i32 = db
            .psql(&format!(
                "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
                 VALUES (1, '2020-01-15 10:00:00', 'round', 'name', 'a', 'round {round}') RETURNING id"
            ))
            .trim()
            .parse()
            .unwrap();
        let target = caught_up(&db, &slot);
        let created = field(&stream.wait_for_line("created the replication slot"), "lsn").unwrap();
        let from = field(&stream.wait_for_line("streaming:"), "from").unwrap();
        let server_log = server_log(&db);
        let detail = format!("Streaming transactions committing after {from}, ");
        let ids = ids_in_files(out.path());
        let must: Vec<Stamped> = rows
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.before >= created && r.after <= target)
            .copied()
            .collect();
        let missing: Vec<String> = must
            .iter()
            .filter(|r| ids.get(&r.id) != Some(&1))
            .map(|r| format!("{r:?} ×{}", ids.get(&r.id).copied().unwrap_or(0)))
            .chain((ids.get(&marker) != Some(&1)).then(|| format!("the round's row {marker}")))
            .collect();
        let twice: Vec<&i32> = ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect();
        if !missing.is_empty()
            || !twice.is_empty()
            || from != created
            || !server_log.contains(&detail)
        {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "round {round}: slot {slot} created at {created}, streams from {from}, confirmed \
                 {target}; missing or not once: {missing:?}; twice: {twice:?}\nthe consumer's \
                 log:\n{}\nthe server's lines:\n{}",
                stream.log(),
                slot_lines(&server_log, &slot)
            );
        }
        checked += must.len() + 1;
        drop(stream);
        common::wait::released(&db, &slot);
        db.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("{ROUNDS} new slots, {checked} rows checked");
    assert!(
        checked > 2 * ROUNDS,
        "the writer's rows were hardly checked"
    );
}

/// By design, and said so: a row committed while `stream` is still creating its slot (the
/// creation waits for a transaction that was running when it began) is not streamed. The
/// creating backend holds the slot meanwhile (active, but no walsender); the consumer logs that
/// it waits, then the consistent point, which is after that row, and streams only from there; the
/// next row is streamed; verify names the row as only in the nightly export.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_committed_while_the_slot_is_created_is_named_by_verify() {
    let db = TestDb::new("slot_start_by_design");
    db.install();
    let slot = db.name.clone();
    let out = tempfile::tempdir().unwrap();
    // A transaction with an xid, open across the slot's creation.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let stream = tokio::task::block_in_place(|| {
        let stream = Stream::spawn(&db, &slot, out.path());
        stream.wait_for_line("creating the replication slot: waiting for the transactions");
        common::wait::until("the slot to exist", Duration::from_secs(30), || {
            common::wait::slot_active(&db, &slot)
        });
        stream
    });
    // Active, but held by the creating backend: nothing streams it yet.
    assert!(!common::wait::walsender_holds(&db, &slot));
    assert_eq!(
        db.psql(&format!(
            "SELECT confirmed_flush_lsn IS NULL FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .trim(),
        "t"
    );
    assert!(!stream.log().contains("streaming"), "{}", stream.log());
    let before = db.psql(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         VALUES (1, 'early', 'name', 'a', 'before the slot') RETURNING id",
    );
    let committed = lsn(&db.psql("SELECT pg_current_wal_insert_lsn()"));
    holder.batch_execute("ROLLBACK").await.unwrap();
    let (created, from) = tokio::task::block_in_place(|| {
        let created = field(&stream.wait_for_line("created the replication slot"), "lsn");
        let from = field(&stream.wait_for_line("streaming:"), "from");
        (created.unwrap(), from.unwrap())
    });
    assert!(created > committed, "{created} {committed}");
    assert_eq!(from, created, "{}", stream.log());
    db.psql(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         VALUES (1, 'late', 'name', 'a', 'after the slot')",
    );
    tokio::task::block_in_place(|| {
        caught_up(&db, &slot);
    });
    drop(stream);
    let files = audit_tail::layout::list(out.path()).unwrap();
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(out.path().join(f.name())).unwrap())
        .collect();
    assert!(text.contains("after the slot"), "{text}");
    assert!(!text.contains("before the slot"), "{text}");

    let today = db.psql("SELECT current_date").trim().to_string();
    let (code, stdout, stderr) = common::verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "only in the nightly export: 1 (ids {})",
            before.trim()
        )),
        "{stdout}"
    );
}
