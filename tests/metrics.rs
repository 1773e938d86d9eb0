//! `audit-tail stream --metrics ADDR` against a real throwaway PostgreSQL: /metrics scraped
//! during a run moves with the stream and agrees with the files (rows and bytes per table), the
//! slot's confirmed position never passes the server's, a walsender ended by
//! pg_terminate_backend counts one reconnect, and an address in use stops the program (exit 2)
//! before it streams. `stream --no-files --nats` counts rows and bytes for sink="nats" as
//! JetStream holds them.

mod common;
mod nats_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scrape::{scrape, value};
use common::{Consumer, TestDb, csv_records, install_audit_log, stream_command};

/// A consumer whose stderr is collected by a thread (a full pipe would block it).
struct Running {
    _consumer: Consumer,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(db: &TestDb, out: &Path, extra: &[&str]) -> Running {
        Running::start(Consumer::spawn(db, out, extra))
    }

    /// `audit-tail stream --no-files --nats URL` for `db`, run in `cwd`, plus `extra`.
    fn spawn_without_files(db: &TestDb, cwd: &Path, url: &str, extra: &[&str]) -> Running {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .arg("stream")
            .arg("--dsn")
            .arg(db.cluster.conninfo(&db.name))
            .arg("--slot")
            .arg(&db.name)
            .args(["--no-files", "--nats", url])
            .args(extra)
            .current_dir(cwd)
            .env_remove("AUDIT_TAIL_DSN")
            .env("RUST_LOG", "audit_tail=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn audit-tail stream --no-files");
        Running::start(Consumer { child })
    }

    fn start(mut consumer: Consumer) -> Running {
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = consumer.child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running {
            _consumer: consumer,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The address the metrics are served at, from the start-up log line (port 0 given).
    fn metrics_addr(&self) -> String {
        let mut addr = None;
        common::wait::until(
            "the metrics URL in the log",
            Duration::from_secs(30),
            || {
                addr = self.stderr().lines().find_map(|l| {
                    let url = l.split("url=http://").nth(1)?;
                    Some(url.trim_end_matches("/metrics").to_string())
                });
                addr.is_some()
            },
        );
        addr.unwrap()
    }
}

fn rows(text: &str, table: &str) -> f64 {
    value(
        text,
        &format!("audit_tail_rows_written_total{{sink=\"files\",table=\"{table}\"}}"),
    )
    .unwrap_or(0.0)
}

fn bytes(text: &str, table: &str) -> f64 {
    value(
        text,
        &format!("audit_tail_bytes_written_total{{sink=\"files\",table=\"{table}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Rows (records past each file's header) and bytes of `schema.table`'s stream files.
fn in_files(out: &Path, schema: &str, table: &str) -> (f64, f64) {
    let (mut rows, mut bytes) = (0, 0);
    for file in audit_tail::layout::list(out).unwrap() {
        if file.schema == schema && file.table == table {
            let content = std::fs::read(out.join(file.name())).unwrap();
            bytes += content.len();
            rows += csv_records(&content).len() - 1;
        }
    }
    (rows as f64, bytes as f64)
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Both tables' rows and bytes in the metrics equal their files'.
fn assert_agree_with_files(text: &str, out: &Path) {
    for (schema, table) in [("public", "users_audit"), ("audit", "log")] {
        let qualified = format!("{schema}.{table}");
        let (file_rows, file_bytes) = in_files(out, schema, table);
        assert!(file_rows > 0.0, "no rows of {qualified} in the files");
        assert_eq!(
            rows(text, &qualified),
            file_rows,
            "rows of {qualified}\n{text}"
        );
        assert_eq!(
            bytes(text, &qualified),
            file_bytes,
            "bytes of {qualified}\n{text}"
        );
    }
}

/// users_audit rows (an update of each new user: inserts are not audited) and audit.log rows,
/// in two transactions that reach the stream.
fn write_some(db: &TestDb, round: u32) {
    db.psql(&format!(
        "INSERT INTO users (name, role) SELECT 'u{round}-' || g, 'user' FROM generate_series(1, 50) g"
    ));
    db.psql(&format!(
        "UPDATE users SET email = 'e{round}' WHERE name LIKE 'u{round}-%'"
    ));
    db.psql(&format!(
        "INSERT INTO orders SELECT {round} * 1000 + g, 'new' FROM generate_series(1, 30) g"
    ));
}

#[test]
fn scraped_figures_move_with_the_stream_and_agree_with_the_files() {
    let db = TestDb::new("metrics_run");
    install_audit_log(&db);
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('public.orders')");
    let out = tempfile::tempdir().unwrap();
    let run = Running::spawn(
        &db,
        out.path(),
        &[
            "--format",
            "none",
            "--status-interval",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let addr = run.metrics_addr();
    common::wait::streaming(&db, &db.name);
    let first = scrape(&addr);
    assert_eq!(value(&first, "audit_tail_streaming"), Some(1.0), "{first}");
    assert_eq!(rows(&first, "public.users_audit"), 0.0, "{first}");

    write_some(&db, 1);
    common::wait::caught_up(&db, &db.name);
    let text = scrape(&addr);
    assert_agree_with_files(&text, out.path());
    let transactions = value(&text, "audit_tail_transactions_total").unwrap();
    assert!(transactions >= 2.0, "{text}");
    let durable = value(&text, "audit_tail_commit_to_durable_seconds_count").unwrap();
    assert!(durable >= 2.0, "{text}");
    assert!(
        value(&text, "audit_tail_seconds_since_last_commit").unwrap() < 60.0,
        "{text}"
    );
    // The slot's confirmed position as the server has it is what we sent: at most the server's.
    let slot = lsn(&db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    )));
    let mut text = text;
    common::wait::until(
        "the confirmed position in the metrics",
        Duration::from_secs(10),
        || {
            text = scrape(&addr);
            value(&text, "audit_tail_slot_confirmed_lsn_bytes").unwrap() >= slot as f64
        },
    );
    let confirmed = value(&text, "audit_tail_slot_confirmed_lsn_bytes").unwrap();
    let server = value(&text, "audit_tail_server_wal_lsn_bytes").unwrap();
    assert!(
        confirmed <= server,
        "confirmed {confirmed} > server {server}\n{text}"
    );
    assert_eq!(
        value(&text, "audit_tail_slot_lag_bytes"),
        Some(server - confirmed)
    );
    assert_eq!(
        value(&text, "audit_tail_reconnects_total"),
        Some(0.0),
        "{text}"
    );

    // End the walsender: the consumer reconnects once, and nothing is counted twice.
    db.psql(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
        db.name
    ));
    common::wait::until(
        "the reconnect to be counted",
        Duration::from_secs(30),
        || value(&scrape(&addr), "audit_tail_reconnects_total") == Some(1.0),
    );
    common::wait::streaming(&db, &db.name);
    write_some(&db, 2);
    common::wait::caught_up(&db, &db.name);
    let after = scrape(&addr);
    assert_agree_with_files(&after, out.path());
    assert!(rows(&after, "public.users_audit") > rows(&text, "public.users_audit"));
    assert!(value(&after, "audit_tail_transactions_total").unwrap() > transactions);
    assert_eq!(
        value(&after, "audit_tail_reconnects_total"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(&after, "audit_tail_errors_total{kind=\"transient\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(value(&after, "audit_tail_streaming"), Some(1.0), "{after}");
    let later = value(&after, "audit_tail_slot_confirmed_lsn_bytes").unwrap();
    assert!(
        later > confirmed,
        "the confirmed position did not move\n{after}"
    );
    assert!(later <= value(&after, "audit_tail_server_wal_lsn_bytes").unwrap());
}

#[test]
fn an_address_in_use_exits_2_before_streaming() {
    let db = TestDb::new("metrics_in_use");
    db.install();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let output = stream_command(&db, out.path(), &["--format", "none", "--metrics", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("could not listen on {addr} for --metrics")),
        "{stderr}"
    );
    // Nothing was started: no slot, no files.
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .trim(),
        "0"
    );
    assert!(!out.path().join("audit-tail.state").exists());
}

/// Catching up on a backlog shows, on a stderr that is not a terminal, log lines with how far
/// behind the stream is, how fast it goes and when it should be done.
#[test]
fn a_backlog_shows_progress_lines_on_stderr() {
    let db = TestDb::new("metrics_backlog");
    db.install();
    let out = tempfile::tempdir().unwrap();
    common::catch_up(&db, out.path());
    db.psql(
        "INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 20000) g",
    );
    // Many transactions, so that commits keep arriving while the backlog drains: enough that
    // draining takes several report intervals even on a quiet machine (720,000 audit rows; 240,000
    // drained in under 2 s once, before the first report was due).
    let round = |r: u32| {
        format!(
            "BEGIN; UPDATE users SET name = 'n{r}-' || id, email = 'e{r}' WHERE id % 50 = {}; COMMIT;",
            r % 50
        )
    };
    for batch in 0..18 {
        let sql: String = (batch * 50..batch * 50 + 50).map(round).collect();
        db.psql(&sql);
    }
    // A backlog is made of commits older than CATCHING_UP when they arrive: no event to wait
    // for, only the server's clock.
    std::thread::sleep(audit_tail::metrics::backlog::CATCHING_UP + Duration::from_secs(1));
    let output = stream_command(
        &db,
        out.path(),
        &[
            "--until",
            "now",
            "--format",
            "none",
            "--status-interval",
            "1",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("catching up on a backlog"))
        .collect();
    assert!(!lines.is_empty(), "no progress line:\n{stderr}");
    eprintln!("{}", lines.join("\n"));
    for line in lines {
        for field in ["behind=", "rate=", "/s", "eta=", "position=", "server="] {
            assert!(line.contains(field), "{field} missing in {line:?}");
        }
    }
}

/// `stream --no-files --nats`: the rows and bytes JetStream holds, per table, as
/// `audit_tail_{rows,bytes}_written_total{sink="nats",table}` (bytes: the message bodies), and
/// no files series.
#[tokio::test(flavor = "multi_thread")]
async fn jetstream_alone_counts_rows_and_bytes_for_the_nats_sink() {
    let nats = audit_tail::nats_server::NatsServer::start().expect("start nats-server");
    let db = TestDb::new("metrics_nats_only");
    install_audit_log(&db);
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('public.orders')");
    let cwd = tempfile::tempdir().unwrap();
    let run = Running::spawn_without_files(
        &db,
        cwd.path(),
        &nats.url(),
        &["--format", "none", "--metrics", "127.0.0.1:0"],
    );
    let addr = run.metrics_addr();
    common::wait::streaming(&db, &db.name);
    write_some(&db, 1);
    write_some(&db, 2);
    common::wait::caught_up(&db, &db.name);

    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    let mut expected: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for message in &stored {
        let table = format!(
            "{}.{}",
            message.body["schema"].as_str().unwrap(),
            message.body["table"].as_str().unwrap()
        );
        // The bodies are written as serde_json writes them (src/sink/nats/message.rs).
        let bytes = serde_json::to_vec(&message.body).unwrap().len() as f64;
        let e = expected.entry(table).or_default();
        e.0 += 1.0;
        e.1 += bytes;
    }
    assert!(expected.contains_key("public.users_audit"), "{expected:?}");
    assert!(expected.contains_key("audit.log"), "{expected:?}");
    let series = |text: &str, what: &str, table: &str| {
        value(
            text,
            &format!("audit_tail_{what}_written_total{{sink=\"nats\",table=\"{table}\"}}"),
        )
    };
    let mut text = String::new();
    common::wait::until("the nats rows counted", Duration::from_secs(30), || {
        text = scrape(&addr);
        expected
            .iter()
            .all(|(t, (rows, _))| series(&text, "rows", t) == Some(*rows))
    });
    for (table, (_, bytes)) in &expected {
        assert_eq!(
            series(&text, "bytes", table),
            Some(*bytes),
            "{table}\n{text}"
        );
    }
    assert!(!text.contains("sink=\"files\""), "{text}");
    assert!(run.stderr().contains("serving Prometheus metrics"));
}

/// `archive --metrics`: only the archive's figures (no rule on the stream's gauges can fire for
/// it), every error kind from the start, and a NATS failure it retries counted as a transient
/// error and a reconnect.
#[test]
fn the_archive_serves_its_own_figures_and_counts_its_errors() {
    let nats = audit_tail::nats_server::NatsServer::start().expect("start nats-server");
    let out = tempfile::tempdir().unwrap();
    let child = nats_support::archive_command(
        &nats.url(),
        out.path(),
        // A filter: without one an archive of an empty stream waits for the first row to
        // learn its database before it reads JetStream.
        &[
            "--metrics",
            "127.0.0.1:0",
            "--nats-filter",
            "audit.metrics.>",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn audit-tail archive");
    let run = Running::start(Consumer { child });
    let addr = run.metrics_addr();
    common::wait::until(
        "the archive reading JetStream",
        Duration::from_secs(30),
        || run.stderr().contains("reading JetStream"),
    );
    let text = scrape(&addr);
    for stream_only in [
        "audit_tail_streaming",
        "audit_tail_seconds_since_last_commit",
        "audit_tail_slot_",
        "audit_tail_server_wal_lsn_bytes",
        "audit_tail_transactions_total",
        "audit_tail_sink_",
    ] {
        assert!(!text.contains(stream_only), "{stream_only} in\n{text}");
    }
    for series in [
        "audit_tail_archive_pending_messages",
        "audit_tail_archive_seconds_since_last_write",
        "audit_tail_reconnects_total",
        "audit_tail_errors_total{kind=\"transient\"}",
        "audit_tail_errors_total{kind=\"data\"}",
    ] {
        assert!(value(&text, series).is_some(), "no {series} in\n{text}");
    }
    assert_eq!(
        value(&text, "audit_tail_errors_total{kind=\"transient\"}"),
        Some(0.0)
    );

    nats.kill();
    let mut text = String::new();
    common::wait::until("the NATS failure counted", Duration::from_secs(60), || {
        text = scrape(&addr);
        value(&text, "audit_tail_errors_total{kind=\"transient\"}") >= Some(1.0)
    });
    assert!(
        value(&text, "audit_tail_reconnects_total") >= Some(1.0),
        "{text}"
    );
}
