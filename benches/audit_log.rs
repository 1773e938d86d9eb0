//! What tracking a table costs its statements, beside PostgreSQL-Audit's two trigger kinds, in
//! one run on one throwaway cluster. The table is
//! `orders(id bigint primary key, status text, total numeric, note text, updated_at timestamptz)`
//! and each workload runs on it
//! - untracked (no trigger),
//! - tracked by `audit.track('orders')` (sql/audit_log.sql: row-level triggers, the default),
//! - tracked by `audit.track('orders', bulk => true)` (statement-level triggers),
//! - with PostgreSQL-Audit's row-level triggers,
//! - with PostgreSQL-Audit's statement-level triggers (transition tables),
//!
//! in rotating order, BENCH_ROUNDS rounds (default 3), reporting medians. Workloads: pgbench
//! single-row UPDATE transactions (4 clients, BENCH_SECONDS per round, default 5), then INSERT,
//! UPDATE and DELETE of every row as one statement each, for BENCH_ROWS rows (default 10000 and
//! 500000 × BENCH_SCALE, default 1: the 10k and 500k-row statements). For each it prints
//! the time the trigger adds to the untracked statement (per transaction for pgbench) and the
//! ratios ours / the cheaper of PostgreSQL-Audit's two, for each of our two paths.
//!
//! PostgreSQL-Audit is fetched at bench time (`pip download PostgreSQL-Audit --no-deps` into the
//! cluster's directory; set BENCH_PGA_DIR to a directory holding its templates/ instead) and
//! installed the way its VersioningManager does: its `transaction` and `activity` tables as its
//! SQLAlchemy models declare them, then its templates with `${schema_prefix}` rendered, once in
//! schema `pga_row` (row-level) and once in `pga_stmt` (statement-level). If it cannot be fetched,
//! the bench says why and measures untracked against ours only.
//!
//!     cargo bench --bench audit_log
//!     BENCH_SCALE=0.2 BENCH_ROUNDS=1 cargo bench --bench audit_log
//!     BENCH_ROWS=10000 BENCH_ROUNDS=5 cargo bench --bench audit_log

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use support::{bench_cluster, env_list, env_or, median_f64, pgbench, psql_file};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Untracked,
    Ours,
    OursBulk,
    PgaRow,
    PgaStmt,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Untracked => "untracked",
            Mode::Ours => "audit.track",
            Mode::OursBulk => "track bulk",
            Mode::PgaRow => "PGA row-level",
            Mode::PgaStmt => "PGA stmt-level",
        }
    }

    /// The table that receives this mode's audit rows.
    fn log(self) -> Option<&'static str> {
        match self {
            Mode::Untracked => None,
            Mode::Ours | Mode::OursBulk => Some("audit.log"),
            Mode::PgaRow => Some("pga_row.activity"),
            Mode::PgaStmt => Some("pga_stmt.activity"),
        }
    }
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3);
    let seconds = env_or("BENCH_SECONDS", 5);
    // The 500,000-row statements; BENCH_SCALE (default 1) scales them for a shorter run.
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let sizes = env_list("BENCH_ROWS", &[10_000, (500_000.0 * scale) as u64]);
    let cluster = bench_cluster(Default::default(), 1);
    psql_file(
        &cluster,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/audit_log.sql")),
    );
    let psql = |sql: &str| {
        cluster.psql("bench", sql).unwrap();
    };
    psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text, total numeric, note text, \
         updated_at timestamptz)",
    );

    let mut modes = vec![Mode::Untracked, Mode::Ours, Mode::OursBulk];
    match postgresql_audit_templates(&cluster) {
        Ok(templates) => {
            install_postgresql_audit(&cluster, &templates);
            modes.extend([Mode::PgaRow, Mode::PgaStmt]);
        }
        Err(why) => println!("audit_log: PostgreSQL-Audit left out: {why}"),
    }
    let mut logs: Vec<&str> = modes.iter().filter_map(|m| m.log()).collect();
    logs.dedup();
    let truncate_logs = format!(
        "TRUNCATE {}{}",
        logs.join(", "),
        if modes.contains(&Mode::PgaRow) {
            ", pga_row.transaction, pga_stmt.transaction"
        } else {
            ""
        }
    );
    // Every mode starts from no trigger at all on orders and empty logs.
    let set = |mode: Mode| {
        psql(
            "DO $$ BEGIN \
               IF EXISTS (SELECT FROM audit.tracked_tables WHERE tbl = 'orders'::regclass) THEN \
                 PERFORM audit.untrack('orders'); \
               END IF; \
             END $$",
        );
        psql(
            "DROP TRIGGER IF EXISTS audit_trigger_row ON orders; \
             DROP TRIGGER IF EXISTS audit_trigger_insert ON orders; \
             DROP TRIGGER IF EXISTS audit_trigger_update ON orders; \
             DROP TRIGGER IF EXISTS audit_trigger_delete ON orders",
        );
        psql(&truncate_logs);
        psql("CHECKPOINT");
        match mode {
            Mode::Untracked => {}
            Mode::Ours => psql("SELECT audit.track('orders')"),
            Mode::OursBulk => psql("SELECT audit.track('orders', bulk => true)"),
            Mode::PgaRow => psql("SELECT pga_row.audit_table('orders')"),
            Mode::PgaStmt => psql("SELECT pga_stmt.audit_table('orders')"),
        }
    };
    // Rotating order (a b c d, b c d a, ...) spreads the machine's drift over the modes.
    let order = |round: u64| -> Vec<usize> {
        (0..modes.len())
            .map(|k| (round as usize + k) % modes.len())
            .collect()
    };

    // (workload, per mode: seconds per statement or per transaction, one per round)
    let mut results: Vec<(String, Vec<Vec<f64>>)> = Vec::new();

    // Tiny transactions: one row's status and updated_at change.
    let pgbench_rows = 10_000;
    psql(&format!(
        "INSERT INTO orders SELECT g, 'new', g * 1.5, 'note ' || g, now() \
         FROM generate_series(1, {pgbench_rows}) g"
    ));
    // VACUUM cannot share psql's -c transaction.
    psql("VACUUM ANALYZE orders");
    let script = cluster
        .server_writable_dir("audit_log_bench")
        .unwrap()
        .join("update.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {pgbench_rows})\n\
             UPDATE orders SET status = 's' || random(), updated_at = now() WHERE id = :id;\n"
        ),
    )
    .unwrap();
    let mut tiny = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for i in order(round) {
            set(modes[i]);
            let tps = pgbench(&cluster, &script, seconds, &[]);
            if let Some(log) = modes[i].log() {
                let rows: i64 = cluster
                    .psql("bench", &format!("SELECT count(*) FROM {log}"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                assert!(rows > 0, "{}: no audit rows in {log}", modes[i].label());
            }
            tiny[i].push(1.0 / tps);
        }
    }
    results.push(("single-row UPDATE txn (pgbench)".to_string(), tiny));

    // Bulk statements: INSERT n rows, UPDATE them all, DELETE them all, each one statement.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for &rows in &sizes {
        let statements = [
            (
                "INSERT",
                format!(
                    "INSERT INTO orders SELECT g, 'new', g * 1.5, 'note ' || g, now() \
                     FROM generate_series(1, {rows}) g"
                ),
            ),
            (
                "UPDATE",
                "UPDATE orders SET status = 'paid', updated_at = now()".to_string(),
            ),
            ("DELETE", "DELETE FROM orders".to_string()),
        ];
        let mut times = vec![vec![Vec::new(); modes.len()]; statements.len()];
        for round in 0..rounds {
            for i in order(round) {
                psql("TRUNCATE orders");
                set(modes[i]);
                let client = runtime
                    .block_on(audit_tail::sql::connect(&cluster.config("bench")))
                    .unwrap();
                for (s, (_, sql)) in statements.iter().enumerate() {
                    let started = Instant::now();
                    runtime.block_on(client.batch_execute(sql)).unwrap();
                    times[s][i].push(started.elapsed().as_secs_f64());
                }
                drop(client);
                // Each trigger recorded every row of every statement: the figures are real work.
                if let Some(log) = modes[i].log() {
                    let logged: i64 = cluster
                        .psql("bench", &format!("SELECT count(*) FROM {log}"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    assert_eq!(
                        logged,
                        3 * rows as i64,
                        "{}: {log} holds {logged} rows after {rows} inserted, updated and deleted",
                        modes[i].label()
                    );
                }
            }
        }
        for ((name, _), t) in statements.iter().zip(times) {
            results.push((format!("{name} {rows} rows (1 statement)"), t));
        }
    }

    println!(
        "audit_log: medians of {rounds} rounds; added = median with the trigger - median untracked"
    );
    let mut header = format!("{:<34} {:>12}", "workload", "untracked");
    for mode in &modes[1..] {
        header += &format!(" {:>26}", format!("{} (added)", mode.label()));
    }
    let pga = modes.len() == 5;
    if pga {
        header += &format!(" {:>14} {:>14}", "row/cheaper", "bulk/cheaper");
    }
    println!("{header}");
    for (name, per_mode) in &results {
        let medians: Vec<f64> = per_mode.iter().map(|v| median_f64(v.clone())).collect();
        let added: Vec<f64> = medians.iter().map(|m| m - medians[0]).collect();
        let mut line = format!("{name:<34} {:>12}", show(medians[0]));
        for i in 1..modes.len() {
            line += &format!(
                " {:>26}",
                format!("{} (+{})", show(medians[i]), show(added[i]))
            );
        }
        if pga {
            let cheaper = added[3].min(added[4]);
            line += &format!(" {:>14.2} {:>14.2}", added[1] / cheaper, added[2] / cheaper);
        }
        println!("{line}");
    }
    for (name, per_mode) in &results {
        println!(
            "  runs {name}: {}",
            modes
                .iter()
                .zip(per_mode)
                .map(|(m, v)| format!(
                    "{} [{}]",
                    m.label(),
                    v.iter().map(|&s| show(s)).collect::<Vec<_>>().join(" ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

/// Seconds as µs, ms or s.
fn show(seconds: f64) -> String {
    if seconds.abs() < 1e-3 {
        format!("{:.0} µs", seconds * 1e6)
    } else if seconds.abs() < 1.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{:.2} s", seconds)
    }
}

/// PostgreSQL-Audit's templates/ directory: BENCH_PGA_DIR's, or the one in the wheel (or
/// sdist) that pip downloads into the cluster's directory.
fn postgresql_audit_templates(cluster: &audit_tail::cluster::Cluster) -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("BENCH_PGA_DIR") {
        return find_templates(Path::new(&dir)).ok_or_else(|| {
            format!("BENCH_PGA_DIR {dir} holds no templates/create_activity_row_level.sql")
        });
    }
    let dir = cluster
        .server_writable_dir("postgresql_audit")
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("pip")
        .args(["download", "PostgreSQL-Audit", "--no-deps", "--quiet", "-d"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("could not run pip ({e}); install pip or set BENCH_PGA_DIR"))?;
    if !out.status.success() {
        return Err(format!(
            "pip download PostgreSQL-Audit failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let archive = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".whl") || name.ends_with(".tar.gz") || name.ends_with(".zip")
        })
        .ok_or("pip downloaded no wheel or sdist")?;
    println!(
        "audit_log: PostgreSQL-Audit from {}",
        archive.file_name().unwrap().to_string_lossy()
    );
    let module = if archive.to_string_lossy().ends_with(".tar.gz") {
        "tarfile"
    } else {
        "zipfile"
    };
    let unpacked = dir.join("unpacked");
    let out = std::process::Command::new("python3")
        .args(["-m", module, "-e"])
        .arg(&archive)
        .arg(&unpacked)
        .output()
        .map_err(|e| format!("could not run python3 to unpack {}: {e}", archive.display()))?;
    if !out.status.success() {
        return Err(format!(
            "unpacking {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    find_templates(&unpacked).ok_or_else(|| {
        format!(
            "{} holds no templates/create_activity_row_level.sql",
            archive.display()
        )
    })
}

/// The directory under `dir` that holds create_activity_row_level.sql.
fn find_templates(dir: &Path) -> Option<PathBuf> {
    if dir.join("create_activity_row_level.sql").is_file() {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .find_map(|e| find_templates(&e.path()))
}

/// Installs PostgreSQL-Audit twice, as its VersioningManager(schema_name=...) would: schema
/// `pga_row` with `use_statement_level_triggers=False`, schema `pga_stmt` with True. The tables
/// are its SQLAlchemy models' (transaction_base, activity_base: a BigInteger primary key is a
/// bigserial, so `activity_id_seq` exists; the actor column of the transaction table as a plain
/// text column); the functions are its templates, rendered as its render_tmpl renders them.
fn install_postgresql_audit(cluster: &audit_tail::cluster::Cluster, templates: &Path) {
    let render = |name: &str, schema: &str| -> String {
        std::fs::read_to_string(templates.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .replace("${schema_prefix}", &format!("{schema}."))
            .replace("${schema_name}", schema)
    };
    let mut sql = String::new();
    for (schema, level) in [("pga_row", "row_level"), ("pga_stmt", "stmt_level")] {
        sql += &render("create_schema.sql", schema);
        sql += &format!(
            "\nCREATE TABLE {schema}.transaction (\
                 id BIGSERIAL PRIMARY KEY, native_transaction_id XID8, issued_at TIMESTAMP, \
                 client_addr INET, actor_id TEXT, \
                 CONSTRAINT transaction_unique_native_tx_id UNIQUE (native_transaction_id));\n\
             CREATE TABLE {schema}.activity (\
                 id BIGSERIAL PRIMARY KEY, schema_name TEXT, table_name TEXT, relid INTEGER, \
                 issued_at TIMESTAMP, native_transaction_id XID8, verb TEXT, \
                 old_data JSONB DEFAULT '{{}}', changed_data JSONB DEFAULT '{{}}', \
                 transaction_id BIGINT REFERENCES {schema}.transaction (id));\n\
             CREATE INDEX ix_activity_native_transaction_id ON {schema}.activity (native_transaction_id);\n"
        );
        // The after_create listeners of the activity table, in its order.
        sql += &render("jsonb_change_key_name.sql", schema);
        sql += "\n";
        sql += &render(&format!("create_activity_{level}.sql"), schema);
        sql += "\n";
        sql += &render(&format!("audit_table_{level}.sql"), schema);
        sql += "\n";
    }
    sql += &render("operators.sql", "public");
    sql += "\n";
    let file = cluster
        .server_writable_dir("audit_log_bench")
        .unwrap()
        .join("postgresql_audit.sql");
    std::fs::write(&file, sql).unwrap();
    psql_file(cluster, &file);
}
