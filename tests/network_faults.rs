//! Network faults between the consumer and the server, through a TCP proxy on loopback that can
//! cut every connection, stall them (forward nothing, close nothing), or slow them down (forward
//! at a fixed byte rate).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Consumer, TestDb, assert_files_equal_table, catch_up};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
struct Faults {
    stalled: Arc<AtomicBool>,
    /// Connections opened before the current generation are cut.
    generation: Arc<AtomicU64>,
    /// Bytes per second each direction forwards; 0 for no limit.
    rate: Arc<AtomicU64>,
}

/// Forwards 127.0.0.1:<returned port> to 127.0.0.1:`upstream`, obeying `faults`.
async fn proxy(upstream: u16, faults: Faults) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let born = faults.generation.load(Ordering::SeqCst);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, faults.clone(), born));
            tokio::spawn(pump(sr, cw, faults.clone(), born));
        }
    });
    port
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Faults,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if faults.generation.load(Ordering::SeqCst) != born {
            return; // cut: both halves drop, both peers see the connection close
        }
        if faults.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // A slow link forwards at most rate/50 bytes per 20 ms tick.
        let rate = faults.rate.load(Ordering::SeqCst) as usize;
        let take = if rate == 0 {
            buf.len()
        } else {
            (rate / 50).clamp(1, buf.len())
        };
        match tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf[..take])).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if rate > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_and_stalled_connections_are_noticed_replaced_and_lose_nothing() {
    let db = TestDb::new("network");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 100) g");
    let faults = Faults::default();
    let port = proxy(db.cluster.port(), faults.clone()).await;
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={} sslmode=disable",
        db.name
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "stream",
            "--format",
            "none",
            "--status-interval",
            "1",
            "--slot",
            &db.name,
            "--dsn",
            &dsn,
        ])
        .arg("--out-dir")
        .arg(out.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut consumer = Consumer { child };

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let config = db.cluster.config(&db.name);
        tokio::spawn(async move {
            let client = audit_tail::sql::connect(&config).await.unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                client
                    .batch_execute(&format!(
                        "UPDATE users SET name = 'v{n}' WHERE id = {}",
                        1 + n % 100
                    ))
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    // Faults begin once it streams through the proxy, with the writer going.
    tokio::task::block_in_place(|| common::wait::streaming(&db, &db.name));
    tokio::time::sleep(Duration::from_millis(500)).await;
    faults.generation.fetch_add(1, Ordering::SeqCst); // cut
    tokio::time::sleep(Duration::from_millis(2500)).await;
    faults.stalled.store(true, Ordering::SeqCst); // stall: silent, but nothing closes
    tokio::time::sleep(Duration::from_secs(5)).await;
    faults.stalled.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let updates = writer.await.unwrap();
    assert!(updates > 100);
    // Everything written is acknowledged: the consumer came back and caught up.
    tokio::task::block_in_place(|| common::wait::caught_up(&db, &db.name));
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "the consumer must survive network faults"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(consumer.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(consumer.child.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(consumer.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(
        stderr.contains("nothing from the server for 3 s"),
        "the stall went unnoticed: {stderr}"
    );
    catch_up(&db, out.path());
    assert!(assert_files_equal_table(&db, out.path()).await >= updates as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_link_delivers_everything_without_false_reconnects() {
    let db = TestDb::new("slow_link");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 2000) g");
    for round in 0..3 {
        db.psql(&format!("UPDATE users SET name = name || ' r{round}'"));
    }
    let rows: u64 = db
        .psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap();
    let faults = Faults::default();
    // 128 KB/s: the backlog (several hundred KB of change stream) takes seconds to cross, many
    // times the 1 s status interval, with data trickling in all the while.
    faults.rate.store(128 * 1024, Ordering::SeqCst);
    let port = proxy(db.cluster.port(), faults.clone()).await;
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={} sslmode=disable",
        db.name
    );
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking({
        let out = out.path().to_path_buf();
        let slot = db.name.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
                .args(["stream", "--format", "none", "--status-interval", "1"])
                .args(["--until", "now", "--slot", &slot, "--dsn", &dsn])
                .arg("--out-dir")
                .arg(out)
                .env("RUST_LOG", "audit_tail=info")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        elapsed > Duration::from_secs(3),
        "the link was not slow: {elapsed:?}"
    );
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    assert_eq!(assert_files_equal_table(&db, out.path()).await as u64, rows);
}
