//! The nightly export's cost: `export_audit_data(day)` over a day of BENCH_ROWS rows (default
//! 1,000,000 and 5,000,000), beside its floor, a plain `COPY table TO file` of the same rows
//! (no range scan, no sort), in ABBA order. Reports seconds and the backend's peak anonymous
//! memory (RssAnon, sampled every 10 ms: shared buffers are not the export's own).
//!
//!     cargo bench --bench export
//!     BENCH_ROWS=1000000 cargo bench --bench export

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{bench_cluster, env_list, median, proc_status_kib};

fn main() {
    let sizes = env_list("BENCH_ROWS", &[1_000_000, 5_000_000]);
    let cluster = bench_cluster(Default::default(), 1_000);
    let dir = cluster.server_writable_dir("exports").unwrap();
    cluster
        .psql(
            "bench",
            &format!("UPDATE audit_settings SET export_dir = '{}'", dir.display()),
        )
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for rows in sizes {
        // The day's rows, and a tenth as many on the next day for the range scan to skip.
        cluster
            .psql(
                "bench",
                &format!(
                    "TRUNCATE users_audit; \
                     INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value, changed_at) \
                     SELECT 1 + g % 1000, 'app@example.com', 'name', 'old name ' || g, 'new, name ' || g, \
                            timestamp '2025-10-21' + (g * interval '86399 seconds') / {rows} \
                     FROM generate_series(1, {rows}) g; \
                     INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value, changed_at) \
                     SELECT 1, 'app', 'role', 'user', 'admin', timestamp '2025-10-22 00:00:01' \
                     FROM generate_series(1, {rows} / 10); \
                     DROP TABLE IF EXISTS day_copy; \
                     CREATE TABLE day_copy AS SELECT * FROM users_audit \
                     WHERE changed_at < '2025-10-22' ORDER BY id"
                ),
            )
            .unwrap();
        // VACUUM cannot share psql's -c transaction.
        cluster.psql("bench", "VACUUM ANALYZE users_audit").unwrap();
        cluster.psql("bench", "VACUUM ANALYZE day_copy").unwrap();
        let peer_sql = format!(
            "COPY day_copy TO '{}/peer.csv' WITH (FORMAT csv, HEADER)",
            dir.display()
        );
        let export_sql = "SELECT export_audit_data('2025-10-21')";
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        for round in 0..4 {
            let order = if round == 0 || round == 3 {
                [true, false]
            } else {
                [false, true]
            };
            for export in order {
                let sql = if export { export_sql } else { &peer_sql };
                let run = runtime.block_on(timed(&cluster, sql));
                if export {
                    ours.push(run)
                } else {
                    peer.push(run)
                }
            }
        }
        let size = std::fs::metadata(dir.join("users_audit_export_20251021.csv"))
            .unwrap()
            .len();
        assert_eq!(
            size,
            std::fs::metadata(dir.join("peer.csv")).unwrap().len(),
            "the export and the plain COPY wrote different bytes"
        );
        let report = |name: &str, runs: &[(Duration, u64)]| {
            let wall = median(runs.iter().map(|r| r.0).collect());
            let anon = runs.iter().map(|r| r.1).max().unwrap();
            println!(
                "{name}: median {:.2} s ({:.0} rows/s), backend peak RssAnon {:.1} MB, runs {:?}",
                wall.as_secs_f64(),
                rows as f64 / wall.as_secs_f64(),
                anon as f64 / 1024.0,
                runs.iter()
                    .map(|r| format!("{:.2}", r.0.as_secs_f64()))
                    .collect::<Vec<_>>()
            );
            wall
        };
        println!(
            "export: {rows} rows of one day ({} MB), {} rows of the next",
            size / 1_000_000,
            rows / 10
        );
        let a = report("export_audit_data", &ours);
        let b = report("COPY day_copy TO file", &peer);
        println!(
            "ratio export / plain COPY: {:.2}x (rows {rows})",
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

/// Runs `sql` in a fresh session; returns its wall time and the backend's peak RssAnon in KiB.
async fn timed(cluster: &audit_tail::cluster::Cluster, sql: &str) -> (Duration, u64) {
    let client = audit_tail::sql::connect(&cluster.config("bench"))
        .await
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(proc_status_kib(pid as u32, "RssAnon").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let started = Instant::now();
    client.batch_execute(sql).await.unwrap();
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    (wall, sampler.join().unwrap())
}
