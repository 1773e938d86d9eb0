//! The psql runs of the install scripts that tests look into (their NOTICEs, their failure),
//! beside `install_audit_log`, which only needs them to succeed.

use std::process::{Command, Output};

use super::{TestDb, repo_path};

/// psql running install.sql then audit_log.sql in the test's database, the export directory set
/// as by `TestDb::install` (as docs/audit-log.md says: `psql -f sql/install.sql -f
/// sql/audit_log.sql`); not yet run, so that a test can set its environment.
pub fn both_scripts(db: &TestDb) -> Command {
    let mut psql = db.cluster.client_command("psql");
    psql.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &db.name, "-c"])
        .arg(db.set_export_dir())
        .arg("-f")
        .arg(repo_path("sql/install.sql"))
        .arg("-f")
        .arg(repo_path("sql/audit_log.sql"));
    psql
}

/// Runs install.sql then audit_log.sql (again); panics unless psql succeeds. Returns its stderr
/// (the NOTICEs) and stdout.
pub fn both_scripts_notices(db: &TestDb) -> (String, String) {
    let out = both_scripts(db).output().expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (stderr, String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs audit_log.sql alone with psql in `database`, whatever its outcome.
pub fn audit_log_sql_alone(db: &TestDb, database: &str) -> Output {
    db.cluster
        .client_command("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", database, "-f"])
        .arg(repo_path("sql/audit_log.sql"))
        .output()
        .expect("run psql")
}
