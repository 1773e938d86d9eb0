//! The NATS sink and the archiver: the drain bench's backlog (200,000 users, one bulk UPDATE of
//! 400,000 audit rows, 20,000 single-row transactions) drained by `stream` into files alone and
//! into files + JetStream, in ABBA order, in one run; then `archive` reading it all back into
//! files. A throwaway PostgreSQL cluster and a throwaway nats-server (file storage).
//!
//!     cargo bench --bench nats
//!     BENCH_SCALE=10 BENCH_ROUNDS=1 cargo bench --bench nats
//!
//! `stream` always writes its out-dir (it anchors the stream's checkpoint), so "JetStream alone"
//! is not measured. Each JetStream drain goes to a stream of its own (prefix `audit<i>`):
//! otherwise the second one, on another slot, would rightly publish nothing.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit_tail::nats_server::NatsServer;
use support::{Cost, env_or, measure, median};

fn count_rows(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            bytes.iter().filter(|&&b| b == b'\n').count() as u64 - 1
        })
        .sum()
}

fn csv_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn report(name: &str, runs: &[Cost], rows: u64) {
    let wall = median(runs.iter().map(|r| r.wall).collect());
    let cpu = median(runs.iter().map(|r| r.cpu).collect());
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap();
    println!(
        "{name}: median {:.2} s ({:.0} rows/s), client CPU {:.2} s, peak RSS {} MB, runs {:?}",
        wall.as_secs_f64(),
        rows as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        rss / 1024,
        runs.iter()
            .map(|r| format!("{:.2}", r.wall.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}

fn main() {
    let scale = env_or("BENCH_SCALE", 1);
    let pairs = env_or("BENCH_ROUNDS", 1);
    let users = 200_000 * scale;
    let small = 20_000 * scale;
    let nats = NatsServer::start().expect("a throwaway nats-server");
    let support::Backlog {
        cluster,
        slots,
        dir,
        endpos,
        rows,
    } = support::drain_backlog(users, small, pairs * 2);
    println!("nats: {rows} audit rows, end {endpos}");

    let mut files_only = Vec::new();
    let mut with_nats = Vec::new();
    let mut first_nats = None;
    for (i, slot) in slots.iter().enumerate() {
        let nats_turn = matches!(i % 4, 1 | 2);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-tail"));
        cmd.args([
            "stream", "--format", "none", "--slot", slot, "--until", &endpos, "--dsn",
        ])
        .arg(cluster.conninfo("bench"))
        .arg("--out-dir")
        .arg(dir.path().join(slot))
        .env("RUST_LOG", "audit_tail=warn")
        .stdout(Stdio::null());
        if nats_turn {
            let prefix = format!("audit{i}");
            cmd.args(["--nats", &nats.url(), "--nats-subject-prefix", &prefix])
                .args(["--nats-stream", &prefix.to_uppercase()]);
            first_nats.get_or_insert((prefix, dir.path().join(slot)));
        }
        let (status, cost) = measure(&mut cmd, || {});
        assert!(status.success(), "a drain failed");
        assert_eq!(count_rows(&dir.path().join(slot)), rows);
        if nats_turn {
            with_nats.push(cost);
        } else {
            files_only.push(cost);
        }
    }
    report("stream, files only", &files_only, rows);
    report("stream, files + JetStream", &with_nats, rows);
    let wall = |runs: &[Cost]| median(runs.iter().map(|r| r.wall).collect()).as_secs_f64();
    println!(
        "ratio files + JetStream / files only: {:.2}x (target <= 1.5x)",
        wall(&with_nats) / wall(&files_only)
    );

    // The archive: everything one drain published, back into files.
    let (prefix, stream_out) = first_nats.expect("a JetStream drain ran");
    let archive_out = dir.path().join("archive");
    let target = csv_bytes(&stream_out);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "archive",
            "--nats",
            &nats.url(),
            "--nats-subject-prefix",
            &prefix,
        ])
        .args(["--nats-stream", &prefix.to_uppercase()])
        .arg("--out-dir")
        .arg(&archive_out)
        .env("RUST_LOG", "audit_tail=warn")
        .spawn()
        .unwrap();
    let mut peak = 0;
    while csv_bytes(&archive_out) < target {
        peak = peak.max(support::tree_vm_hwm(child.id()).unwrap_or(0));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the archive did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(count_rows(&archive_out), rows);
    println!(
        "archive: {rows} rows in {:.2} s ({:.0} rows/s, target >= 100,000), peak RSS {} MB",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        peak / 1024
    );
}
