//! Test support: one throwaway cluster per test binary, one database per test.
//!
//! The cluster is shared through a weak reference, so it lives while any test holds it and is
//! stopped and removed (by Cluster's Drop) when the last one finishes, panics included. Every test
//! gets its own database and roles, dropped again when its `TestDb` goes out of scope.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use audit_tail::cluster::Cluster;
use tokio_postgres::Client;

static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The throwaway cluster of this test binary, started on first use.
pub fn cluster() -> Arc<Cluster> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(Cluster::start().expect("start a throwaway PostgreSQL cluster"));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// The repository's own files, such as sql/install.sql.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A database of one test, with the roles it created; both are dropped on Drop.
pub struct TestDb {
    pub cluster: Arc<Cluster>,
    pub name: String,
    roles: Mutex<Vec<String>>,
}

impl TestDb {
    /// Creates an empty database named after the test.
    pub fn new(test: &str) -> TestDb {
        let cluster = cluster();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut name = format!("t{}_{}_{}", std::process::id(), n, test.to_lowercase());
        name.truncate(60);
        cluster
            .psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .expect("create the test database");
        TestDb {
            cluster,
            name,
            roles: Mutex::new(Vec::new()),
        }
    }

    /// A new connection to this database as the superuser.
    pub async fn client(&self) -> Client {
        audit_tail::sql::connect(&self.cluster.config(&self.name))
            .await
            .expect("connect to the test database")
    }

    /// A connection to this database as `role` (which must be able to log in).
    pub async fn client_as(&self, role: &str) -> Client {
        let mut config = self.cluster.config(&self.name);
        config.user(role);
        audit_tail::sql::connect(&config)
            .await
            .expect("connect to the test database as a role")
    }

    /// Runs SQL through psql in this database; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql).expect("psql")
    }

    /// Runs sql/install.sql with psql exactly as the README says, plus `extra` arguments placed
    /// before `-f` (such as `-c "SET audit.export_dir = ..."`). Returns psql's output.
    pub fn install_with_psql(&self, extra: &[&str]) -> Output {
        install_with_psql(&self.cluster, &self.name, extra)
    }

    /// Installs with psql, with the export directory set to a server-writable directory of the
    /// cluster; panics if psql fails. Returns the export directory.
    pub fn install(&self) -> PathBuf {
        let dir = self
            .cluster
            .server_writable_dir(&format!("exports-{}", self.name))
            .expect("export directory");
        let set = format!("SET audit.export_dir = '{}'", dir.display());
        let out = self.install_with_psql(&["-c", &set]);
        assert!(
            out.status.success(),
            "install.sql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    /// Creates a cluster-wide role unique to this test, dropped with the database.
    pub fn create_role(&self, suffix: &str, attributes: &str) -> String {
        let role = format!("{}_{}", self.name, suffix);
        self.cluster
            .psql("postgres", &format!("CREATE ROLE \"{role}\" {attributes}"))
            .expect("create role");
        self.roles.lock().unwrap().push(role.clone());
        role
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.cluster.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
        for role in self.roles.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = self
                .cluster
                .psql("postgres", &format!("DROP ROLE IF EXISTS \"{role}\""));
        }
    }
}

/// psql -X -v ON_ERROR_STOP=1 [extra...] -f sql/install.sql, in `database`.
pub fn install_with_psql(cluster: &Cluster, database: &str, extra: &[&str]) -> Output {
    cluster
        .client_command("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", database])
        .args(extra)
        .arg("-f")
        .arg(repo_path("sql/install.sql"))
        .output()
        .expect("run psql")
}
