//! What auditing costs the application: pgbench single-row updates of users (one changed field
//! each) with the audit trigger disabled, with the same trigger calling an empty function, and
//! with the audit trigger, in rotating order; the ratios of median TPS against no trigger.
//! BENCH_SECONDS per round (default 10), BENCH_ROUNDS × 2 rounds (default 2). The throwaway cluster
//! runs with fsync off unless BENCH_FSYNC=on, which makes commits cost what they do in production.
//!
//! Then the bulk case: one UPDATE changing the role of every one of BENCH_BULK_ROWS users (default
//! 500,000; 0 skips it) with the trigger disabled, with the audit trigger of sql/install.sql, and
//! with a copy of the plain row-level trigger (one PL/pgSQL call and INSERT per changed field and
//! row; today the same as the audit trigger, kept as the baseline against which a variant of
//! log_user_changes() is measured), in rotating order, BENCH_ROUNDS × 2 rounds; medians against
//! disabled.
//!
//!     cargo bench --bench trigger
//!     BENCH_SECONDS=1 BENCH_ROUNDS=1 BENCH_BULK_ROWS=500000 cargo bench --bench trigger

mod support;

use support::{bench_cluster, env_or, pgbench, single_row_update_script};

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
    let install = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/install.sql");
    let psql = |sql: &str| {
        cluster.psql("bench", sql).unwrap();
    };
    // Three ways of running the same updates; the middle one keeps the trigger's declaration
    // (AFTER UPDATE FOR EACH ROW, WHEN, SECURITY DEFINER, pinned search_path) but not its body,
    // to tell what PostgreSQL's trigger machinery costs from what writing the audit row costs.
    let set = |mode: Mode| match mode {
        Mode::Off => psql("ALTER TABLE users DISABLE TRIGGER users_audit_trigger"),
        Mode::Empty => {
            psql("ALTER TABLE users ENABLE TRIGGER users_audit_trigger");
            psql(
                "CREATE OR REPLACE FUNCTION log_user_changes() RETURNS trigger LANGUAGE plpgsql \
                 SECURITY DEFINER SET search_path FROM CURRENT AS $$ BEGIN RETURN NULL; END $$",
            );
        }
        Mode::Full => {
            psql("ALTER TABLE users ENABLE TRIGGER users_audit_trigger");
            let out = cluster
                .client_command("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bench", "-f"])
                .arg(install)
                .output()
                .unwrap();
            assert!(out.status.success(), "re-install failed");
        }
    };
    let modes = [Mode::Off, Mode::Empty, Mode::Full];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); 3];
    // Rotating order (off-empty-full, empty-full-off, full-off-empty, ...) spreads drift.
    for round in 0..pairs * 2 {
        for k in 0..3 {
            let i = (round as usize + k) % 3;
            set(modes[i]);
            results[i].push(pgbench(&cluster, &script, seconds, &[]));
        }
    }
    // Medians: one round disturbed by another load on the machine must not move the result.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    for (mode, tps) in modes.iter().zip(&results) {
        println!(
            "{:<28} {:?} tps (median {:.0})",
            mode.label(),
            tps.iter().map(|t| t.round()).collect::<Vec<_>>(),
            median(tps)
        );
    }
    let off = median(&results[0]);
    let overhead = |i: usize| (1.0 - median(&results[i]) / off) * 100.0;
    println!(
        "overhead against no trigger: empty trigger {:.1}%, audit trigger {:.1}% (ratio {:.3})",
        overhead(1),
        overhead(2),
        median(&results[2]) / off
    );

    let bulk_rows = env_or("BENCH_BULK_ROWS", 500_000);
    if bulk_rows > 0 {
        bulk(&cluster, bulk_rows, pairs * 2, &median);
    }
}

/// The plain row-level trigger of install.sql, under other names: the baseline.
const ROW_LEVEL_REFERENCE: &str = "\
CREATE OR REPLACE FUNCTION log_user_changes_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
SET search_path FROM CURRENT AS $$ \
DECLARE actor TEXT := coalesce(nullif(current_setting('audit.actor', true), ''), session_user); \
BEGIN \
    IF NEW.name::text IS DISTINCT FROM OLD.name::text THEN \
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'name', OLD.name::text, NEW.name::text); END IF; \
    IF NEW.email::text IS DISTINCT FROM OLD.email::text THEN \
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'email', OLD.email::text, NEW.email::text); END IF; \
    IF NEW.role::text IS DISTINCT FROM OLD.role::text THEN \
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'role', OLD.role::text, NEW.role::text); END IF; \
    RETURN NULL; \
END $$; \
CREATE TRIGGER users_audit_row_reference AFTER UPDATE ON users FOR EACH ROW \
WHEN (OLD.name::text IS DISTINCT FROM NEW.name::text OR OLD.email::text IS DISTINCT FROM NEW.email::text \
      OR OLD.role::text IS DISTINCT FROM NEW.role::text) \
EXECUTE FUNCTION log_user_changes_row(); \
ALTER TABLE users DISABLE TRIGGER users_audit_row_reference;";

/// One UPDATE of every user's role: untriggered, audit trigger, row-level reference.
fn bulk(
    cluster: &audit_tail::cluster::Cluster,
    rows: u64,
    rounds: u64,
    median: &dyn Fn(&[f64]) -> f64,
) {
    let psql = |sql: &str| {
        cluster.psql("bench", sql).unwrap();
    };
    psql("ALTER TABLE users ENABLE TRIGGER users_audit_trigger");
    psql("TRUNCATE users, users_audit RESTART IDENTITY");
    psql(&format!(
        "INSERT INTO users (name, email, role) SELECT 'user ' || g, 'u' || g || '@example.com', 'user' \
         FROM generate_series(1, {rows}) g"
    ));
    psql(ROW_LEVEL_REFERENCE);
    let labels = ["trigger disabled", "audit trigger", "row-level reference"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round as usize + k) % 3;
            let (ours, reference) = match i {
                0 => ("DISABLE", "DISABLE"),
                1 => ("ENABLE", "DISABLE"),
                _ => ("DISABLE", "ENABLE"),
            };
            psql(&format!(
                "ALTER TABLE users {ours} TRIGGER users_audit_trigger; \
                 ALTER TABLE users {reference} TRIGGER users_audit_row_reference; \
                 TRUNCATE users_audit"
            ));
            // VACUUM cannot share psql's -c transaction.
            psql("VACUUM users");
            psql("CHECKPOINT");
            let started = std::time::Instant::now();
            psql("UPDATE users SET role = CASE role WHEN 'user' THEN 'member' ELSE 'user' END");
            times[i].push(started.elapsed().as_secs_f64());
            let logged: i64 = cluster
                .psql("bench", "SELECT count(*) FROM users_audit")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let expected = if i == 0 { 0 } else { rows as i64 };
            assert_eq!(logged, expected, "{}: users_audit rows", labels[i]);
        }
    }
    let off = median(&times[0]);
    for (label, t) in labels.iter().zip(&times) {
        println!(
            "bulk UPDATE of {rows} users, {label:<20} {:?} s (median {:.2} s, {:.2}x untriggered)",
            t.iter()
                .map(|s| (s * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            median(t),
            median(t) / off
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Off,
    Empty,
    Full,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Off => "trigger disabled:",
            Mode::Empty => "same trigger, empty body:",
            Mode::Full => "audit trigger:",
        }
    }
}
