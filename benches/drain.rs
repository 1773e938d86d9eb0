//! Drain throughput: audit-tail against PostgreSQL's own pg_recvlogical on the same backlog.
//!
//! A throwaway cluster; 200,000 users; slots created at one point; then the backlog: one bulk
//! UPDATE of every user's name and role (400,000 audit rows in one transaction) and 20,000
//! single-row transactions. Each slot is drained once, by pg_recvlogical (pgoutput, --endpos, to
//! a file) or by `audit-tail stream --until` (CSV files, fsynced, checkpointed), in ABBA order.
//! BENCH_SCALE multiplies the backlog (10 for the scaling run); BENCH_ROUNDS sets the ABBA pairs.
//!
//!     cargo bench --bench drain
//!     BENCH_SCALE=10 cargo bench --bench drain
//!
//! For profiling, BENCH_WRAP runs audit-tail under a tool (see `wrapped`), and BENCH_RUST_LOG
//! sets its RUST_LOG.
//!
//! BENCH_SIGNING=1 puts `audit-tail stream --signing-key` where pg_recvlogical was, so the same
//! run compares the stream with and without signed digests (docs/security.md);
//! BENCH_DIGEST_INTERVAL sets its --digest-interval (default 3600; 0 is the worst case, a digest
//! at every durable point).
//!
//!     BENCH_SIGNING=1 BENCH_DIGEST_INTERVAL=0 cargo bench --bench drain

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Cost, env_or, measure, median};

/// The walsender serving the one replication connection, and its CPU time so far.
fn walsender_cpu() -> Option<(u32, Duration)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("walsender") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the ")" of the command: utime is the 12th, stime the 13th (clock ticks).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        return Some((pid, Duration::from_millis(ticks * 10)));
    }
    None
}

struct Run {
    cost: Cost,
    walsender: Duration,
}

fn drain(mut cmd: Command) -> Run {
    let mut walsender = Duration::ZERO;
    let (status, cost) = measure(cmd.stdout(Stdio::null()), || {
        if let Some((_, cpu)) = walsender_cpu() {
            walsender = walsender.max(cpu);
        }
    });
    assert!(status.success(), "a drain failed");
    Run { cost, walsender }
}

fn main() {
    let scale = env_or("BENCH_SCALE", 1);
    let pairs = env_or("BENCH_ROUNDS", 2);
    let users = 200_000 * scale;
    let small = 20_000 * scale;
    let support::Backlog {
        cluster,
        slots,
        dir,
        endpos,
        rows,
    } = support::drain_backlog(users, small, pairs * 2);
    println!(
        "drain: {rows} audit rows ({} in one transaction, {small} single-row transactions), end {endpos}",
        2 * users
    );

    let signing = env_or("BENCH_SIGNING", 0) == 1;
    let key = dir.path().join("signing.key");
    if signing {
        let status = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(["keygen", "--out"])
            .arg(&key)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let interval = env_or("BENCH_DIGEST_INTERVAL", 3600).to_string();
    let audit_tail = |slot: &str, signed: bool| {
        let mut cmd = wrapped(env!("CARGO_BIN_EXE_audit-tail"));
        cmd.args([
            "stream", "--format", "none", "--slot", slot, "--until", &endpos, "--dsn",
        ])
        .arg(cluster.conninfo("bench"))
        .arg("--out-dir")
        .arg(dir.path().join(slot))
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "audit_tail=warn".into()),
        );
        if signed {
            cmd.arg("--signing-key")
                .arg(&key)
                .args(["--digest-interval", &interval]);
        }
        cmd
    };
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        // ABBA ABBA ...: pg_recvlogical first in the first and last of each four.
        let peer_turn = matches!(i % 4, 0 | 3);
        if peer_turn && signing {
            peer.push(drain(audit_tail(slot, true)));
            let written = count_rows(&dir.path().join(slot));
            assert_eq!(written, rows, "audit-tail wrote {written} of {rows} rows");
            let digests = std::fs::read_dir(dir.path().join(slot).join("audit-tail.digests"))
                .map(|d| d.count())
                .unwrap_or(0);
            println!("signed drain of {slot}: {digests} digests");
        } else if peer_turn {
            let mut cmd = cluster.client_command("pg_recvlogical");
            cmd.args([
                "-d",
                &cluster.conninfo("bench"),
                "--slot",
                slot,
                "--start",
                "--no-loop",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=users_audit_pub",
            ])
            .arg(format!("--endpos={endpos}"))
            .arg("-f")
            .arg(dir.path().join(format!("{slot}.bin")));
            peer.push(drain(cmd));
        } else {
            ours.push(drain(audit_tail(slot, false)));
            let written = count_rows(&dir.path().join(slot));
            assert_eq!(written, rows, "audit-tail wrote {written} of {rows} rows");
        }
    }
    let peer_name = if signing {
        "audit-tail stream --signing-key"
    } else {
        "pg_recvlogical"
    };
    report("audit-tail stream", &ours, rows);
    report(peer_name, &peer, rows);
    let wall = |runs: &[Run]| median(runs.iter().map(|r| r.cost.wall).collect()).as_secs_f64();
    let rss = |runs: &[Run]| runs.iter().map(|r| r.cost.peak_rss_kib).max().unwrap() as f64;
    if signing {
        println!(
            "ratio signed / unsigned: wall time {:.3}x, peak RSS {:.2}x (scale {scale}, --digest-interval {interval})",
            wall(&peer) / wall(&ours),
            rss(&peer) / rss(&ours)
        );
        return;
    }
    println!(
        "ratio audit-tail / pg_recvlogical: wall time {:.2}x, peak RSS {:.2}x (scale {scale})",
        wall(&ours) / wall(&peer),
        rss(&ours) / rss(&peer)
    );
}

/// `program`, run under BENCH_WRAP when set (a profiler: `strace -f -c -o FILE`,
/// `valgrind --tool=callgrind`, `perf record -g -o FILE`); its figures then mean little.
fn wrapped(program: &str) -> Command {
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn count_rows(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            // No field of this backlog holds a newline: lines are rows, less the header.
            bytes.iter().filter(|&&b| b == b'\n').count() as u64 - 1
        })
        .sum()
}

fn report(name: &str, runs: &[Run], rows: u64) {
    let wall = median(runs.iter().map(|r| r.cost.wall).collect());
    let cpu = median(runs.iter().map(|r| r.cost.cpu).collect());
    let sys = median(runs.iter().map(|r| r.cost.sys).collect());
    let sender = median(runs.iter().map(|r| r.walsender).collect());
    let rss = runs.iter().map(|r| r.cost.peak_rss_kib).max().unwrap();
    println!(
        "{name}: median {:.2} s ({:.0} rows/s), client CPU {:.2} s ({:.2} s system), walsender CPU {:.2} s, peak RSS {} MB, runs {:?}",
        wall.as_secs_f64(),
        rows as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        sys.as_secs_f64(),
        sender.as_secs_f64(),
        rss / 1024,
        runs.iter()
            .map(|r| format!("{:.2}", r.cost.wall.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}
