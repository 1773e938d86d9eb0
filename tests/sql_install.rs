//! sql/install.sql over what is already there: the tutorial's install, application tables of other
//! shapes, two databases on one server, and the consumer's role in another schema.

mod common;

use std::process::Output;
use std::sync::Arc;

use audit_tail::cluster::Cluster;
use common::{TestDb, catch_up};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "install.sql failed: {}", stderr(out));
}

/// The tutorial's install, written as the tutorial does: its tables, its trigger function and
/// trigger (`trigger`: the CREATE TRIGGER statement), `export_todays_audit_data()` returning void
/// and its pg_cron job (`job`: the cron.schedule statement); then a few changes.
fn tutorial_sql(trigger: &str, job: &str) -> String {
    format!(
        r#"
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    name TEXT,
    email TEXT,
    role TEXT,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE users_audit (
    id SERIAL PRIMARY KEY,
    user_id INTEGER,
    changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    changed_by TEXT,
    field_changed TEXT,
    old_value TEXT,
    new_value TEXT
);
CREATE OR REPLACE FUNCTION log_user_changes() RETURNS TRIGGER AS $$
BEGIN
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (OLD.id, current_user, 'name', OLD.name, NEW.name);
    END IF;
    IF NEW.email IS DISTINCT FROM OLD.email THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (OLD.id, current_user, 'email', OLD.email, NEW.email);
    END IF;
    IF NEW.role IS DISTINCT FROM OLD.role THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (OLD.id, current_user, 'role', OLD.role, NEW.role);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
{trigger};
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE OR REPLACE FUNCTION export_todays_audit_data() RETURNS void AS $$
BEGIN
    EXECUTE format(
        'COPY (SELECT * FROM users_audit WHERE changed_at >= CURRENT_DATE AND changed_at < CURRENT_DATE + INTERVAL ''1 day'') TO %L WITH CSV HEADER',
        '/tmp/users_audit_export_' || to_char(NOW(), 'YYYYMMDD') || '.csv');
END;
$$ LANGUAGE plpgsql;
{job};
INSERT INTO users (name, email, role) VALUES
    ('Иван Иванов', 'ivan@example.com', 'user'),
    ('Петр Петров', 'petr@example.com', 'user');
UPDATE users SET name = 'Иван Сидоров', role = 'admin' WHERE id = 1;
UPDATE users SET email = 'petr_p@example.com' WHERE id = 2;
"#
    )
}

/// Every row of users and users_audit, as text.
fn all_rows(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "SELECT 'users', u::text FROM users u UNION ALL \
             SELECT 'audit', a::text FROM (SELECT * FROM users_audit ORDER BY id) a",
        )
        .unwrap()
}

/// The tutorial's install in the cron database is upgraded in place, twice.
fn upgrade_tutorial(trigger: &str, job: &str) {
    let cluster = Arc::new(Cluster::start().expect("start a cluster"));
    assert!(cluster.has_pg_cron(), "pg_cron must be installed");
    cluster
        .psql("postgres", &tutorial_sql(trigger, job))
        .unwrap();
    let before = all_rows(&cluster, "postgres");
    assert_eq!(before.lines().count(), 2 + 3, "{before}");
    let dir = cluster.server_writable_dir("exports").unwrap();
    let set = format!("SET audit.export_dir = '{}'", dir.display());

    let out = common::install_with_psql(&cluster, "postgres", &["-c", &set]);
    assert_ok(&out);
    let notices = stderr(&out);
    for expected in [
        "export_todays_audit_data() returned void",
        "the previous complete day",
        "export_todays_audit_data",
    ] {
        assert!(notices.contains(expected), "no {expected:?} in: {notices}");
    }
    assert_eq!(all_rows(&cluster, "postgres"), before, "rows kept");
    let jobs = || {
        cluster
            .psql(
                "postgres",
                "SELECT jobid, jobname, schedule, command, database FROM cron.job ORDER BY jobid",
            )
            .unwrap()
    };
    let after = jobs();
    let lines: Vec<&str> = after.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one job, none left calling the old function: {after}"
    );
    assert!(
        lines[0].ends_with(
            "|export-daily-audit-data|0 3 * * *|SELECT public.export_audit_data(current_date - 1)|postgres"
        ),
        "{after}"
    );
    // One trigger, after the update: a change is audited once and the update is not cancelled.
    cluster
        .psql("postgres", "UPDATE users SET role = 'owner' WHERE id = 2")
        .unwrap();
    let audit = cluster
        .psql(
            "postgres",
            "SELECT (SELECT role FROM users WHERE id = 2), count(*) FROM users_audit \
             WHERE user_id = 2 AND field_changed = 'role'",
        )
        .unwrap();
    assert_eq!(audit.trim(), "owner|1");
    let path = cluster
        .psql("postgres", "SELECT export_todays_audit_data()")
        .unwrap();
    assert!(
        path.trim().starts_with(&dir.display().to_string()),
        "{path}"
    );

    // Again: nothing to upgrade, nothing changed.
    let rows = all_rows(&cluster, "postgres");
    let out = common::install_with_psql(&cluster, "postgres", &["-c", &set]);
    assert_ok(&out);
    assert!(
        !stderr(&out).contains("returned void") && !stderr(&out).contains("unscheduled"),
        "{}",
        stderr(&out)
    );
    assert_eq!(all_rows(&cluster, "postgres"), rows);
    assert_eq!(jobs(), after, "the same one job");
}

#[test]
fn tutorial_install_with_its_named_job_is_upgraded_in_place() {
    upgrade_tutorial(
        "CREATE TRIGGER users_audit_trigger AFTER UPDATE ON users FOR EACH ROW \
         EXECUTE FUNCTION log_user_changes()",
        "SELECT cron.schedule('export-daily-audit-data', '0 3 * * *', 'SELECT export_todays_audit_data();')",
    );
}

#[test]
fn tutorial_install_with_an_unnamed_job_and_another_trigger_is_upgraded_in_place() {
    upgrade_tutorial(
        "CREATE TRIGGER log_user_changes_trigger BEFORE UPDATE ON users FOR EACH ROW \
         EXECUTE FUNCTION log_user_changes()",
        "SELECT cron.schedule('0 3 * * *', 'SELECT export_todays_audit_data()')",
    );
}

#[tokio::test]
async fn bigint_user_ids_are_audited() {
    for (name, users, audit) in [
        (
            "bigserial",
            "id BIGSERIAL PRIMARY KEY, name TEXT, email TEXT, role TEXT",
            None,
        ),
        (
            "identity_over_integer_audit",
            "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT, email TEXT, role TEXT, \
             updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP",
            Some(
                "CREATE TABLE users_audit (id SERIAL PRIMARY KEY, user_id INTEGER, \
                 changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, changed_by TEXT, \
                 field_changed TEXT, old_value TEXT, new_value TEXT); \
                 INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
                 VALUES (7, 'x', 'name', 'a', 'b')",
            ),
        ),
    ] {
        let db = TestDb::new(&format!("bigint_{name}"));
        db.psql(&format!("CREATE TABLE users ({users})"));
        if let Some(audit) = audit {
            db.psql(audit);
        }
        let out = db.install_with_psql(&["-c", &db.set_export_dir()]);
        assert_ok(&out);
        let client = db.client().await;
        client
            .batch_execute(
                "INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE VALUES (3000000000, 'a'); \
                 UPDATE users SET name = 'b' WHERE id = 3000000000",
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let row = db.psql(
            "SELECT user_id, old_value, new_value, pg_typeof(user_id) FROM users_audit \
             WHERE user_id = 3000000000",
        );
        assert_eq!(row.trim(), "3000000000|a|b|bigint", "{name}");
        if audit.is_some() {
            assert_eq!(
                db.psql("SELECT user_id FROM users_audit WHERE id = 1")
                    .trim(),
                "7",
                "{name}: rows kept"
            );
            assert!(
                stderr(&out).contains("user_id") && stderr(&out).contains("bigint"),
                "{name}: say it was widened: {}",
                stderr(&out)
            );
        }
    }
}

#[tokio::test]
async fn a_case_only_change_of_a_citext_email_is_audited() {
    let db = TestDb::new("citext");
    db.psql(
        "CREATE EXTENSION citext; CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT, \
         email CITEXT, role TEXT, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    );
    assert_ok(&db.install_with_psql(&["-c", &db.set_export_dir()]));
    db.psql(
        "INSERT INTO users (email) VALUES ('Ivan@Example.com'); \
         UPDATE users SET email = 'ivan@example.com'",
    );
    let rows = db.psql("SELECT field_changed, old_value, new_value FROM users_audit");
    assert_eq!(rows.trim(), "email|Ivan@Example.com|ivan@example.com");
}

const TUTORIAL_AUDIT_COLUMNS: &str = "id SERIAL PRIMARY KEY, user_id INTEGER, \
    changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, changed_by TEXT, field_changed TEXT, \
    old_value TEXT, new_value TEXT";

#[test]
fn tables_of_another_shape_are_refused_before_anything_changes() {
    let users = "CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT, email TEXT, role TEXT)";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "audit_missing_column",
            format!(
                "{users}; CREATE TABLE users_audit (id SERIAL PRIMARY KEY, user_id INTEGER, \
                 changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, field_changed TEXT, \
                 old_value TEXT, new_value TEXT)"
            ),
            vec!["users_audit", "changed_by text", "found field_changed text"],
        ),
        (
            "audit_wrong_type",
            format!(
                "{users}; CREATE TABLE users_audit ({})",
                TUTORIAL_AUDIT_COLUMNS.replace("changed_at TIMESTAMP", "changed_at TIMESTAMPTZ")
            ),
            vec![
                "users_audit",
                "changed_at timestamp without time zone",
                "found changed_at timestamp with time zone",
            ],
        ),
        (
            "audit_other_order",
            format!(
                "{users}; CREATE TABLE users_audit (id SERIAL PRIMARY KEY, user_id INTEGER, \
                 changed_by TEXT, changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, \
                 field_changed TEXT, old_value TEXT, new_value TEXT)"
            ),
            vec![
                "users_audit",
                "changed_at timestamp without time zone",
                "found changed_by text",
                "column order",
            ],
        ),
        (
            "audit_varchar_value",
            format!(
                "{users}; CREATE TABLE users_audit ({})",
                TUTORIAL_AUDIT_COLUMNS.replace("old_value TEXT", "old_value VARCHAR(20)")
            ),
            vec!["users_audit", "old_value text", "character varying(20)"],
        ),
        (
            "audit_extra_column",
            format!("{users}; CREATE TABLE users_audit ({TUTORIAL_AUDIT_COLUMNS}, note TEXT)"),
            vec!["users_audit", "found note text"],
        ),
        (
            "users_missing_email",
            "CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT, role TEXT)".into(),
            vec!["table users", "email", "found none"],
        ),
        (
            "users_uuid_id",
            "CREATE TABLE users (id UUID PRIMARY KEY, name TEXT, email TEXT, role TEXT)".into(),
            vec!["table users", "id integer or bigint", "found id uuid"],
        ),
    ];
    for (name, setup, expected) in cases {
        let db = TestDb::new(&format!("shape_{name}"));
        db.psql(&setup);
        let before = db.psql(
            "SELECT string_agg(oid::regclass::text, ',' ORDER BY oid) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace",
        );
        let out = db.install_with_psql(&[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: install accepted it: {err}");
        for e in expected {
            assert!(err.contains(e), "{name}: no {e:?} in: {err}");
        }
        let after = db.psql(
            "SELECT string_agg(oid::regclass::text, ',' ORDER BY oid) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace",
        );
        assert_eq!(after, before, "{name}: nothing created");
        let functions = db.psql(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace; \
             SELECT count(*) FROM pg_publication",
        );
        assert_eq!(functions.trim(), "0\n0", "{name}: nothing created");
    }
}

/// The first line of `notices` that holds `marker`, after it.
fn after_marker(notices: &str, marker: &str) -> String {
    notices
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| panic!("no {marker:?} in: {notices}"))
}

/// Installs into `db` with `dir` as the export directory, and runs the schedule statement that
/// install.sql prints in the cron database. Returns the job's name.
fn install_and_schedule(db: &TestDb, dir: &std::path::Path) -> String {
    let set = format!("SET audit.export_dir = '{}'", dir.display());
    let out = db.install_with_psql(&["-c", &set]);
    assert_ok(&out);
    let statement = after_marker(&stderr(&out), "run in \"postgres\": ");
    common::ensure_pg_cron(&db.cluster);
    db.cluster.psql("postgres", &statement).unwrap();
    let job = after_marker(&statement, "cron.schedule_in_database('");
    job.split('\'').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_databases_get_their_own_job_file_and_status() {
    let a = TestDb::new("two_a");
    let b = TestDb::new("two_b");
    assert!(a.cluster.has_pg_cron(), "pg_cron must be installed");
    let dir = a
        .cluster
        .server_writable_dir(&format!("exports-{}", a.name))
        .unwrap();
    let job_a = install_and_schedule(&a, &dir);
    let job_b = install_and_schedule(&b, &dir);
    let unschedule = || {
        for job in [&job_a, &job_b] {
            let _ = a.cluster.psql(
                "postgres",
                &format!("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = '{job}'"),
            );
        }
    };
    let jobs = a
        .cluster
        .psql(
            "postgres",
            &format!(
                "SELECT jobname, database, command FROM cron.job \
                 WHERE database IN ('{}', '{}') ORDER BY jobid",
                a.name, b.name
            ),
        )
        .unwrap();
    let expected = format!(
        "{job_a}|{a}|SELECT public.export_audit_data(current_date - 1)\n\
         {job_b}|{b}|SELECT public.export_audit_data(current_date - 1)\n",
        a = a.name,
        b = b.name
    );
    if jobs != expected {
        unschedule();
    }
    assert_eq!(jobs, expected, "one job per database");

    // Two files: the first database keeps the tutorial's name, the other has its name in it.
    let path_a = a.psql("SELECT export_audit_data('2025-10-21')");
    let path_b = b.psql("SELECT export_audit_data('2025-10-21')");
    let (path_a, path_b) = (path_a.trim(), path_b.trim());
    assert_eq!(
        path_a,
        dir.join("users_audit_export_20251021.csv")
            .to_str()
            .unwrap()
    );
    assert_eq!(
        path_b,
        dir.join(format!("users_audit_export_{}_20251021.csv", b.name))
            .to_str()
            .unwrap()
    );
    assert!(std::path::Path::new(path_a).is_file() && std::path::Path::new(path_b).is_file());
    // Stable over re-installs, in either order.
    let set = format!("SET audit.export_dir = '{}'", dir.display());
    assert_ok(&b.install_with_psql(&["-c", &set]));
    assert_ok(&a.install_with_psql(&["-c", &set]));
    assert_eq!(
        a.psql("SELECT export_audit_data('2025-10-21')").trim(),
        path_a
    );
    assert_eq!(
        b.psql("SELECT export_audit_data('2025-10-21')").trim(),
        path_b
    );

    // status shows each database's own job.
    let out_dir = tempfile::tempdir().unwrap();
    for (db, job) in [(&a, &job_a), (&b, &job_b)] {
        let (code, json, err) = common::run_audit_tail(&[
            "status",
            "--dsn",
            &db.cluster.conninfo(&db.name),
            "--slot",
            &db.name,
            "--out-dir",
            out_dir.path().to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        if v["export_job"]["exports_database"] != db.name.as_str() {
            unschedule();
        }
        assert_eq!(v["export_job"]["exports_database"], db.name.as_str(), "{v}");
        assert_eq!(v["export_job"]["job_name"], job.as_str(), "{v}");
    }
    unschedule();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_role_verifies_and_reads_status_in_another_schema() {
    let db = TestDb::new("schema_app");
    db.psql("CREATE SCHEMA app");
    let dir = db
        .cluster
        .server_writable_dir(&format!("exports-{}", db.name))
        .unwrap();
    let set = format!("SET audit.export_dir = '{}'", dir.display());
    assert_ok(&db.install_with_psql(&["-c", "SET search_path = app", "-c", &set]));
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql("INSERT INTO app.users (name) VALUES ('a'); UPDATE app.users SET name = 'b'");
    catch_up(&db, out.path());
    let today = db
        .psql("SELECT to_char(current_date, 'YYYYMMDD')")
        .trim()
        .to_string();
    // The stream names the files of a table outside public after its schema, and verify finds
    // them under that name.
    assert!(
        out.path()
            .join(format!("app.users_audit_stream_{today}.csv"))
            .is_file()
    );
    let consumer = format!("{} user=audit_tail", db.cluster.conninfo(&db.name));
    let date = db.psql("SELECT current_date").trim().to_string();
    let (code, stdout, stderr) = common::run_audit_tail(&[
        "verify",
        "--out-dir",
        out.path().to_str().unwrap(),
        "--dsn",
        &consumer,
        "--date",
        &date,
    ]);
    assert_eq!(code, Some(0), "verify as audit_tail: {stdout}{stderr}");
    assert!(
        stdout.contains("agree (1 rows)") || stdout.contains("agree (1 row)"),
        "{stdout}"
    );
    // From the export file too (written by the superuser): verify finds the schema's files.
    let export = db.psql("SELECT app.export_audit_data(current_date)");
    let (code, stdout, stderr) = common::run_audit_tail(&[
        "verify",
        "--out-dir",
        out.path().to_str().unwrap(),
        "--nightly",
        export.trim(),
        "--date",
        &date,
    ]);
    assert_eq!(code, Some(0), "verify --nightly: {stdout}{stderr}");

    // The role may read, not write files on the server: no EXECUTE on the export functions.
    let privileges = db.psql(
        "SELECT has_schema_privilege('audit_tail', 'app', 'USAGE'), \
         has_function_privilege('audit_tail', 'app.export_audit_data(date)', 'EXECUTE'), \
         has_function_privilege('audit_tail', 'app.export_todays_audit_data()', 'EXECUTE'), \
         has_table_privilege('audit_tail', 'app.users', 'SELECT'), \
         has_function_privilege('audit_tail', 'app.users_audit_rows(date)', 'EXECUTE')",
    );
    assert_eq!(privileges.trim(), "t|f|f|f|t");

    let (code, stdout, stderr) = common::run_audit_tail(&[
        "status",
        "--dsn",
        &consumer,
        "--slot",
        &db.name,
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("export job:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(!line.contains("must be superuser"), "{line}");
    assert!(
        line.contains("not visible to role audit_tail")
            && line.contains("pg_read_all_settings")
            && line.contains("job's owner"),
        "{line}"
    );
}
