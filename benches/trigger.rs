//! What auditing costs the application: pgbench single-row updates of users (one changed field
//! each) with the audit trigger enabled and disabled, in alternating rounds (ABBA); the TPS ratio.
//! BENCH_SECONDS per round (default 10), BENCH_ROUNDS pairs (default 2). The throwaway cluster
//! runs with fsync off unless BENCH_FSYNC=on, which makes commits cost what they do in production.
//!
//!     cargo bench --bench trigger

mod support;

use audit_tail::cluster::Cluster;
use support::{bench_cluster, env_or, single_row_update_script};

fn tps(cluster: &Cluster, script: &std::path::Path, seconds: u64) -> f64 {
    let out = cluster
        .client_command("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(script)
        .arg("bench")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .expect("pgbench prints tps");
    line["tps = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let pairs = env_or("BENCH_ROUNDS", 2);
    let fsync = std::env::var("BENCH_FSYNC").is_ok_and(|v| v == "on");
    let settings = if fsync {
        vec![
            ("fsync".to_string(), "on".to_string()),
            ("full_page_writes".to_string(), "on".to_string()),
        ]
    } else {
        Vec::new()
    };
    let cluster = bench_cluster(
        audit_tail::cluster::ClusterOptions {
            settings,
            ..Default::default()
        },
        10_000,
    );
    println!("trigger: fsync {}", if fsync { "on" } else { "off" });
    let dir = tempfile::tempdir().unwrap();
    let script = single_row_update_script(dir.path(), 10_000);
    let set = |on: bool| {
        let verb = if on { "ENABLE" } else { "DISABLE" };
        cluster
            .psql(
                "bench",
                &format!("ALTER TABLE users {verb} TRIGGER users_audit_trigger"),
            )
            .unwrap();
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..pairs * 2 {
        let trigger_first = round % 2 == 0;
        for trigger in [trigger_first, !trigger_first] {
            set(trigger);
            let t = tps(&cluster, &script, seconds);
            if trigger { on.push(t) } else { off.push(t) }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "trigger on:  {:?} tps (mean {:.0})",
        on.iter().map(|t| t.round()).collect::<Vec<_>>(),
        mean(&on)
    );
    println!(
        "trigger off: {:?} tps (mean {:.0})",
        off.iter().map(|t| t.round()).collect::<Vec<_>>(),
        mean(&off)
    );
    println!(
        "ratio on / off: {:.3} (overhead {:.1}%)",
        mean(&on) / mean(&off),
        (1.0 - mean(&on) / mean(&off)) * 100.0
    );
}
