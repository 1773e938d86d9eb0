//! SIGTERM before streaming begins: connect and pre-flight end at once, as they do while
//! streaming, rather than after the connect timeout.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A server that takes the connection and never answers: `stream` must still stop at once on
/// SIGTERM, exit 0, and not wait for the 30 s connect timeout.
#[test]
fn sigterm_while_the_server_never_answers_exits_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .arg("stream")
        .arg("--dsn")
        .arg(format!(
            "host=127.0.0.1 port={port} user=nobody dbname=nowhere sslmode=disable"
        ))
        .arg("--slot")
        .arg("never")
        .arg("--out-dir")
        .arg(out.path())
        .env_remove("AUDIT_TAIL_DSN")
        .env_remove("PGCONNECT_TIMEOUT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The event to wait for: the consumer has connected and now waits for the server's answer.
    let (_socket, _) = listener.accept().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(2) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no exit within 2 s of SIGTERM while connecting");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit status {status}: {stderr}");
}
