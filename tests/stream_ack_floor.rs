//! The flush position the stream sends never goes below the slot's confirmed position, even
//! while a sink resumes from further back: JetStream whose last row is older than the slot
//! (the files went on alone for a while). The server's view of what we sent
//! (pg_stat_replication) and the slot's confirmed position are watched for a lower one.
//!
//! JetStream's acknowledgements are held back by a proxy while the positions are watched, so
//! its durable position stays behind the slot for several status updates (without it, the
//! first idle keepalive after a second moves JetStream past the slot and hides the problem).
//! Meanwhile /metrics shows the JetStream sink behind the files, and caught up once released.

mod common;
mod nats_support;

use nats_support::catch_up_with_nats;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_tail::nats_server::NatsServer;
use common::scrape::{scrape, value};
use common::{Consumer, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:<port> to `upstream`; while held, nothing goes from the server to the
/// client (JetStream's acknowledgements wait), the other way is untouched.
struct AckHolder {
    port: u16,
    held: Arc<watch::Sender<bool>>,
}

impl AckHolder {
    async fn start(upstream: u16) -> AckHolder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(watch::channel(false).0);
        let sender = held.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut held = sender.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if held.wait_for(|h| !*h).await.is_err()
                            || cw.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        AckHolder { port, held }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}

fn lsn(text: &str) -> f64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) as f64
}

const NATS_DURABLE: &str = "audit_tail_sink_durable_lsn_bytes{sink=\"nats\"}";
const FILES_DURABLE: &str = "audit_tail_sink_durable_lsn_bytes{sink=\"files\"}";
const NATS_BEHIND: &str = "audit_tail_sink_behind_bytes{sink=\"nats\"}";

fn audit_rows(db: &TestDb) -> u64 {
    db.psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_behind_the_slot_never_lowers_the_flush_position_sent() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("ack_floor");
    let out = tempfile::tempdir().unwrap();
    db.install();
    let slot = db.name.clone();
    db.psql("INSERT INTO users (name, role) SELECT g || '', 'user' FROM generate_series(1, 30) g");
    // The audit trigger logs updates: each of these writes audit rows for a third of the users.
    let change = |third: i32, role: &str| {
        db.psql(&format!(
            "UPDATE users SET role = '{role}' WHERE name::int % 3 = {third}"
        ));
    };
    // Files and JetStream together hold the first rows.
    catch_up_with_nats(&db, out.path(), &nats.url());
    change(0, "a");
    catch_up_with_nats(&db, out.path(), &nats.url());
    let published = audit_rows(&db);
    assert!(published > 0);
    assert_eq!(nats_support::count(&nats.url(), "AUDIT").await, published);
    // The files go on alone: the slot is confirmed past JetStream's last row.
    change(1, "b");
    common::catch_up(&db, out.path());
    let before = audit_rows(&db);
    let confirmed = db
        .psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .trim()
        .to_string();

    // Both again, JetStream's acknowledgements held while a few status updates go out.
    let holder = AckHolder::start(nats.port()).await;
    let mut consumer = Consumer::spawn(
        &db,
        out.path(),
        &[
            "--format",
            "none",
            "--status-interval",
            "1",
            "--nats",
            &holder.url(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    // Its stderr read as it is written (a full pipe would stop it), for the metrics' address.
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = consumer.child.stderr.take().unwrap();
    let collected = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = collected.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let mut addr = None;
    common::wait::until(
        "the metrics URL in the log",
        Duration::from_secs(30),
        || {
            addr = stderr.lock().unwrap().lines().find_map(|l| {
                let url = l.split("url=http://").nth(1)?;
                Some(url.trim_end_matches("/metrics").to_string())
            });
            addr.is_some()
        },
    );
    let addr = addr.unwrap();
    common::wait::streaming(&db, &slot);
    holder.hold(true);
    change(2, "c");
    let target = db.psql("SELECT pg_current_wal_lsn()").trim().to_string();
    let client = db.client().await;
    let watch = format!(
        "SELECT r.reply_time::text, r.flush_lsn::text, r.write_lsn::text, \
                s.confirmed_flush_lsn::text, \
                coalesce(r.flush_lsn >= '{confirmed}'::pg_lsn, true) \
                AND coalesce(r.write_lsn >= '{confirmed}'::pg_lsn, true) \
                AND s.confirmed_flush_lsn >= '{confirmed}'::pg_lsn \
         FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name = '{slot}'"
    );
    let mut replies = std::collections::BTreeSet::new();
    let mut lower = std::collections::BTreeSet::new();
    let mut nats_seen_behind = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Two status updates while JetStream holds nothing past the slot (well within the 5 s a
    // publish waits for its acknowledgement before the link is taken for broken), and the
    // metrics showing it.
    while replies.len() < 2 || !nats_seen_behind {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for two status updates; saw {replies:?}"
        );
        if let Some(row) = client.query_opt(&watch, &[]).await.unwrap() {
            let reply: Option<String> = row.get(0);
            if let Some(reply) = reply {
                replies.insert(reply);
            }
            if !row.get::<_, bool>(4) {
                let seen: [Option<String>; 3] = [row.get(1), row.get(2), row.get(3)];
                lower.insert(seen);
            }
        }
        let text = scrape(&addr);
        if let Some(sent) = value(&text, "audit_tail_slot_confirmed_lsn_bytes")
            && sent > 0.0
            && sent < lsn(&confirmed)
        {
            lower.insert([Some(format!("metrics: {sent}")), None, None]);
        }
        if let (Some(nats), Some(files), Some(behind)) = (
            value(&text, NATS_DURABLE),
            value(&text, FILES_DURABLE),
            value(&text, NATS_BEHIND),
        ) {
            nats_seen_behind |= behind > 0.0 && nats < files;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held_back = db.psql(&format!(
        "SELECT confirmed_flush_lsn < '{target}'::pg_lsn FROM pg_replication_slots \
         WHERE slot_name = '{slot}'"
    ));
    holder.hold(false);
    if held_back.trim() != "t" || !lower.is_empty() {
        eprintln!("{}", stderr.lock().unwrap());
    }
    assert!(
        lower.is_empty(),
        "positions below the slot's confirmed {confirmed} were sent (flush, write, slot): {lower:?}"
    );
    assert_eq!(
        held_back.trim(),
        "t",
        "JetStream, which acknowledged nothing, held the slot back"
    );
    // Once JetStream acknowledges, the slot moves on, and it holds the new rows once (the
    // stretch the files took alone is not in it: the server does not send it again).
    common::wait::caught_up(&db, &slot);
    common::wait::until(
        "the metrics to show JetStream caught up",
        Duration::from_secs(10),
        || {
            let text = scrape(&addr);
            value(&text, NATS_BEHIND) == Some(0.0)
                && value(&text, NATS_DURABLE).is_some_and(|d| d >= lsn(&target))
        },
    );
    assert_eq!(
        nats_support::count(&nats.url(), "AUDIT").await,
        published + audit_rows(&db) - before
    );
}
