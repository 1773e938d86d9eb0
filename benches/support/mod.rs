//! Measuring a child process: wall time, CPU seconds (user + system, from getrusage of the
//! waited children) and peak RSS (VmHWM sampled from /proc while it runs). Benchmarks report
//! ratios against a peer measured in the same run, since the machines are shared and noisy.

#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// What one run cost. Peak RSS covers the program and whatever it started (sampled every
/// 20 ms).
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// The system (kernel) part of `cpu`.
    pub sys: Duration,
    pub peak_rss_kib: u64,
}

/// CPU time of the waited children so far: (user, system).
fn children_cpu() -> (Duration, Duration) {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    (tv(usage.user_time()), tv(usage.system_time()))
}

/// Peak resident set of `pid` so far, in KiB.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// A `kB` field of /proc/<pid>/status (VmHWM, RssAnon, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The largest peak RSS of `pid` and its descendants so far, in KiB: a shell's pipeline is
/// measured by its biggest program, not by the shell.
pub fn tree_vm_hwm(pid: u32) -> Option<u64> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the ")" that ends the command name.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|f| f.parse::<u32>().ok())
        {
            parents.push((p, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.into_iter().filter_map(vm_hwm).max()
}

/// Runs `cmd` to the end and measures it; `during` is called every 20 ms while it runs.
pub fn measure(cmd: &mut Command, mut during: impl FnMut()) -> (ExitStatus, Cost) {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child: Child = cmd.spawn().expect("spawn the measured program");
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = tree_vm_hwm(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        during();
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let (user, sys) = children_cpu();
    let user = user.saturating_sub(cpu_before.0);
    let sys = sys.saturating_sub(cpu_before.1);
    (
        status,
        Cost {
            wall,
            cpu: user + sys,
            sys,
            peak_rss_kib: peak,
        },
    )
}

/// The median of some durations.
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    }
}

/// An environment variable as numbers separated by commas (`BENCH_ROWS=1000000,5000000`), or
/// `default`.
pub fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: numbers separated by commas, not {text:?}"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// An environment variable as a number, or a default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A throwaway cluster with a database `bench` holding sql/install.sql and `users` rows 1..=n.
pub fn bench_cluster(
    options: audit_tail::cluster::ClusterOptions,
    users: u64,
) -> audit_tail::cluster::Cluster {
    let cluster = audit_tail::cluster::Cluster::start_with(options).expect("a throwaway cluster");
    cluster.psql("postgres", "CREATE DATABASE bench").unwrap();
    let install = cluster
        .client_command("psql")
        // Exports go to the cluster's own directory, named as the tutorial names them: nothing
        // lands in (or claims) the machine's /tmp.
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bench", "-c"])
        .arg(format!(
            "SET audit.export_dir = '{}'; SET audit.export_name = 'users_audit_export'",
            cluster.server_writable_dir("exports").unwrap().display()
        ))
        .arg("-f")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/install.sql"))
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    cluster
        .psql(
            "bench",
            &format!(
                "INSERT INTO users (name, email, role) SELECT 'user ' || g, 'u' || g || '@example.com', 'user' \
                 FROM generate_series(1, {users}) g"
            ),
        )
        .unwrap();
    cluster
}

/// Runs pgbench on database `bench` with 4 clients and 2 threads for `seconds`, running `script`,
/// plus `extra` options (`-R RATE`); returns the transactions per second it reports.
pub fn pgbench(
    cluster: &audit_tail::cluster::Cluster,
    script: &std::path::Path,
    seconds: u64,
    extra: &[&str],
) -> f64 {
    let out = cluster
        .client_command("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string()])
        .args(extra)
        .arg("-f")
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

/// A pgbench script in `dir`: one random user's name changes, so one audit row per transaction.
pub fn single_row_update_script(dir: &std::path::Path, users: u64) -> std::path::PathBuf {
    let script = dir.join("update.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {users})\nUPDATE users SET name = 'n' || random() WHERE id = :id;\n"
        ),
    )
    .unwrap();
    script
}

/// Runs the SQL file `path` through psql in database `bench`, stopping at its first error.
pub fn psql_file(cluster: &audit_tail::cluster::Cluster, path: &std::path::Path) {
    let out = cluster
        .client_command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bench", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The median of some numbers.
pub fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The drain benches' backlog (benches/drain.rs, benches/nats.rs): a cluster of `users` users,
/// `slots` slots created at one point, then one bulk UPDATE of every user's name and role (two
/// audit rows per user in one transaction) and `small` single-row transactions.
pub struct Backlog {
    pub cluster: audit_tail::cluster::Cluster,
    pub slots: Vec<String>,
    /// A temporary directory for the benches' outputs (the small transactions' script is here).
    pub dir: tempfile::TempDir,
    /// The WAL position after the backlog: drains run `--until` it.
    pub endpos: String,
    /// users_audit's rows after the backlog.
    pub rows: u64,
}

pub fn drain_backlog(users: u64, small: u64, slots: u64) -> Backlog {
    use std::io::Write;
    let cluster = bench_cluster(Default::default(), users);
    let psql = |sql: &str| cluster.psql("bench", sql).expect("psql");
    let slots: Vec<String> = (0..slots).map(|i| format!("bench_{i}")).collect();
    for slot in &slots {
        psql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ));
    }
    psql("UPDATE users SET name = name || ' jr', role = 'admin'");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("small.sql");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&script).unwrap());
    for i in 1..=small {
        writeln!(
            f,
            "UPDATE users SET email = 'changed{i}@example.com' WHERE id = {};",
            1 + i % users
        )
        .unwrap();
    }
    drop(f);
    psql_file(&cluster, &script);
    let endpos = psql("SELECT pg_current_wal_lsn()").trim().to_string();
    let rows = psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap();
    Backlog {
        cluster,
        slots,
        dir,
        endpos,
        rows,
    }
}
