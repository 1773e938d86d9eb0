//! How a connection that cannot be made ends: at once for configuration errors (sslmode=require
//! against a server without TLS), with the server that was tried named as libpq names it, and each
//! cause said once. Every command that connects (stream, status, verify, drop-slot) behaves alike,
//! since they share one socket path (`wire::conn::open_socket`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;

/// Runs audit-tail with `args`, killing it after `limit`: (exit code or None if killed, stderr).
fn run_with_limit(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args(args)
        .env_remove("AUDIT_TAIL_DSN")
        .env_remove("PGSSLMODE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

#[test]
fn sslmode_require_against_a_server_without_tls_ends_at_once() {
    let db = TestDb::new("require_no_tls");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslmode=require",
        db.cluster.port(),
        db.name
    );
    let out_dir = out.path().to_str().unwrap();
    // verify reads its stream file before it connects: give it one, in an out-dir of its own.
    let verify_out = tempfile::tempdir().unwrap();
    let verify_dir = verify_out.path().to_str().unwrap();
    std::fs::write(
        verify_out.path().join("users_audit_stream_20251021.csv"),
        "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n",
    )
    .unwrap();
    let commands: [&[&str]; 4] = [
        &[
            "stream",
            "--dsn",
            &dsn,
            "--out-dir",
            out_dir,
            "--slot",
            "s1",
        ],
        &["status", "--dsn", &dsn, "--out-dir", out_dir],
        &[
            "verify",
            "--dsn",
            &dsn,
            "--out-dir",
            verify_dir,
            "--date",
            "2025-10-21",
        ],
        &["drop-slot", "--dsn", &dsn, "--slot", "s1"],
    ];
    for args in commands {
        // Before, stream retried with backoff for ever; 20 s is far above one attempt.
        let (code, err) = run_with_limit(args, Duration::from_secs(20));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?}: exit {code:?} (None: still retrying): {err}"
        );
        assert!(
            err.contains(&format!(
                "server at \"127.0.0.1\", port {} does not accept TLS, and sslmode=require",
                db.cluster.port()
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("reconnecting"), "{args:?}: {err}");
    }
}

#[test]
fn a_refused_connection_names_the_server_tried_and_says_it_once() {
    // A port nobody listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = format!(
        "host={} port={port} user=postgres dbname=app",
        socket_dir.path().display()
    );
    for (dsn, target, question) in [
        (
            &tcp,
            format!("connection to server at \"127.0.0.1\", port {port} failed"),
            "accepting TCP/IP connections",
        ),
        (
            &socket,
            format!(
                "connection to server on socket \"{}/.s.PGSQL.{port}\" failed",
                socket_dir.path().display()
            ),
            "accepting connections on that socket",
        ),
    ] {
        let (code, _, err) = common::run_audit_tail(&["status", "--dsn", dsn]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&target), "{err}");
        assert!(err.contains(question), "{err}");
        // The OS's reason once, not once per layer.
        let reason = if dsn == &tcp {
            "Connection refused"
        } else {
            "No such file or directory"
        };
        assert_eq!(err.matches(reason).count(), 1, "{err}");
    }
}

#[test]
fn hostaddr_is_where_to_connect_and_host_only_names_the_server() {
    let db = TestDb::new("hostaddr");
    db.install();
    // No resolver knows this name: only hostaddr can reach the server.
    let dsn = format!(
        "host=audit-tail-test.invalid hostaddr=127.0.0.1 port={} user=postgres dbname={}",
        db.cluster.port(),
        db.name
    );
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = common::run_audit_tail(&[
        "status",
        "--dsn",
        &dsn,
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = common::run_audit_tail(&[
        "stream",
        "--dsn",
        &dsn,
        "--out-dir",
        out.path().to_str().unwrap(),
        "--until",
        "now",
        "--slot",
        "hostaddr_slot",
        "--format",
        "none",
    ]);
    assert_eq!(code, Some(0), "{err}");
    db.psql("SELECT pg_drop_replication_slot('hostaddr_slot')");
}
