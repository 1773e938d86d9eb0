//! `log --dsn` streams its answer: the rows come through a cursor a chunk at a time, so an answer
//! far larger than the limit below is printed in bounded memory (reading every row first, as
//! before, peaked at 417 MiB here; now about 28 MiB).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::TestDb;
use common::memory::run_and_watch_peak;

#[tokio::test(flavor = "multi_thread")]
async fn log_from_the_database_prints_a_large_answer_in_bounded_memory() {
    const ROWS: usize = 30_000;
    let db = TestDb::new("hist_memory");
    common::install_audit_log(&db);
    db.psql(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, note text); SELECT audit.track('public.wide'); \
         INSERT INTO wide SELECT g, repeat(md5(g::text), 128) FROM generate_series(1, {ROWS}) g"
    ));
    let conninfo = db.cluster.conninfo(&db.name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "log", "--table", "wide", "--format", "csv", "--dsn", &conninfo,
        ])
        .env_remove("AUDIT_TAIL_DSN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut lines, mut bytes, mut buf) = (0usize, 0usize, vec![0; 1 << 16]);
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return (lines, bytes);
            }
            bytes += n;
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        }
    });
    let (status, peak) = run_and_watch_peak(child);
    let (lines, bytes) = reader.join().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(lines, ROWS + 1, "the header and every row");
    assert!(bytes > 120 << 20, "an answer of {bytes} bytes");
    let peak_mib = peak / 1024;
    eprintln!(
        "peak RSS of log --dsn printing {} MiB: {peak_mib} MiB",
        bytes >> 20
    );
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB");
}
