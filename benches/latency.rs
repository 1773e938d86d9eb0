//! Commit-to-disk latency under steady load: pgbench updates one user per transaction (one audit
//! row each) at a fixed rate while `audit-tail stream` runs; the stream measures each row from its
//! Commit timestamp to the fsync that made it durable and logs p50/p99/max when it stops.
//! Rates: BENCH_RATES (default "1000,5000" rows/s), for BENCH_SECONDS each (default 10).
//!
//!     cargo bench --bench latency

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{bench_cluster, env_list, env_or, pgbench, single_row_update_script};

fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let rates = env_list("BENCH_RATES", &[1000, 5000]);
    let cluster = bench_cluster(Default::default(), 10_000);
    let dir = tempfile::tempdir().unwrap();
    let script = single_row_update_script(dir.path(), 10_000);

    for (i, rate) in rates.iter().enumerate() {
        let slot = format!("latency_{i}");
        let mut consumer = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(["stream", "--format", "none", "--slot", &slot, "--dsn"])
            .arg(cluster.conninfo("bench"))
            .arg("--out-dir")
            .arg(dir.path().join(&slot))
            .env("RUST_LOG", "audit_tail=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let tps = pgbench(&cluster, &script, seconds, &["-R", &rate.to_string()]);
        std::thread::sleep(Duration::from_secs(1));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(consumer.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut log = String::new();
        consumer
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(consumer.wait().unwrap().success());
        let report = log
            .lines()
            .rfind(|l| l.contains("commit-to-disk latency"))
            .expect("the stream logs its latency when it stops");
        let field = |name: &str| {
            report
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "latency at {rate} rows/s (pgbench tps {tps:.0}): {} rows, commit→fsync p50 {} ms, p99 {} ms, max {} ms",
            field("rows"),
            field("p50_ms"),
            field("p99_ms"),
            field("max_ms")
        );
    }
}
