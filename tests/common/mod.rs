//! Test support: one throwaway cluster per test binary, one database per test.
//!
//! The cluster is shared through a weak reference, so it lives while any test holds it and is
//! stopped and removed (by Cluster's Drop) when the last one finishes, panics included. Every test
//! gets its own database and roles, dropped again when its `TestDb` goes out of scope.

#![allow(dead_code)]

pub mod install;
pub mod memory;
pub mod scrape;
pub mod signing;
pub mod sql;
pub mod wait;

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

/// Tests of one binary share a cluster, and pg_cron's extension lives in its cron database
/// (postgres): two sessions creating it at once can fail on pg_extension's unique index, so
/// whoever creates it there (directly, or through install.sql) holds this lock.
pub static CRON_DATABASE: Mutex<()> = Mutex::new(());

/// Creates pg_cron's extension in the cron database of `cluster` when it is not there yet.
pub fn ensure_pg_cron(cluster: &Cluster) {
    let _guard = CRON_DATABASE.lock().unwrap_or_else(|e| e.into_inner());
    cluster
        .psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_cron")
        .expect("create the pg_cron extension in postgres");
}

/// A small deterministic generator. Its seed comes from AUDIT_TAIL_TEST_SEED when set, else from
/// the clock; it is printed and named in the failure message, so a failing run can be replayed
/// with `AUDIT_TAIL_TEST_SEED=<seed> cargo test --test stream_faults <test>`.
pub struct Rng {
    state: u64,
    pub seed: u64,
}

impl Rng {
    pub fn from_env_or_clock(test: &str) -> Rng {
        let seed = match std::env::var("AUDIT_TAIL_TEST_SEED") {
            Ok(text) => text
                .parse()
                .unwrap_or_else(|_| panic!("AUDIT_TAIL_TEST_SEED={text:?} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {seed} (replay with AUDIT_TAIL_TEST_SEED={seed})");
        Rng {
            state: seed | 1,
            seed,
        }
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % n
    }
}

/// Starts a consumer on `out_dir` and kills it with -9, `kills` times, each after 100 ms plus up
/// to `spread_ms` more drawn from `rng`: the crash loop of the kill -9 tests.
pub fn kill_9_loop(db: &TestDb, out_dir: &Path, rng: &mut Rng, kills: u32, spread_ms: u64) {
    kill_9_loop_with(db, out_dir, rng, kills, spread_ms, &[]);
}

/// `kill_9_loop` with `extra` arguments for every consumer (such as `--signing-key`).
pub fn kill_9_loop_with(
    db: &TestDb,
    out_dir: &Path,
    rng: &mut Rng,
    kills: u32,
    spread_ms: u64,
    extra: &[&str],
) {
    let args: Vec<&str> = ["--format", "none"].iter().chain(extra).copied().collect();
    for _ in 0..kills {
        let mut consumer = Consumer::spawn(db, out_dir, &args);
        std::thread::sleep(std::time::Duration::from_millis(100 + rng.below(spread_ms)));
        consumer.child.kill().unwrap();
        consumer.child.wait().unwrap();
    }
}

/// After a crash loop: catches up, then checks `schema.table`'s files against the table
/// (`assert_files_equal`), naming `seed` if they differ. Returns the rows compared.
pub async fn assert_exactly_once_after_kills(
    db: TestDb,
    out_dir: &Path,
    schema: &'static str,
    table: &'static str,
    seed: u64,
) -> usize {
    catch_up(&db, out_dir);
    // The comparison panics on the first difference; say which seed produced it.
    let out = out_dir.to_path_buf();
    tokio::spawn(async move { assert_files_equal(&db, &out, schema, table).await })
        .await
        .unwrap_or_else(|e| panic!("kill -9 run with seed {seed} failed: {e}"))
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
    /// Creates an empty database named after the test, in this binary's shared cluster.
    pub fn new(test: &str) -> TestDb {
        TestDb::on(cluster(), test)
    }

    /// Creates an empty database named after the test in `cluster`.
    pub fn on(cluster: Arc<Cluster>, test: &str) -> TestDb {
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
        let dir = self.export_dir();
        let set = format!("SET audit.export_dir = '{}'", dir.display());
        let out = self.install_with_psql(&["-c", &set]);
        assert!(
            out.status.success(),
            "install.sql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    /// A server-writable export directory of this test inside the cluster's own directory, so
    /// that nothing it exports (nor install.sql's claim of a directory) lands in the machine's
    /// /tmp.
    pub fn export_dir(&self) -> PathBuf {
        self.cluster
            .server_writable_dir(&format!("exports-{}", self.name))
            .expect("export directory")
    }

    /// `SET audit.export_dir = '<export_dir()>'`, for install_with_psql's `-c`.
    pub fn set_export_dir(&self) -> String {
        format!("SET audit.export_dir = '{}'", self.export_dir().display())
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
        // Slots keep a database from being dropped: end their walsenders (waiting up to 5 s for
        // each to exit, which releases its slot), then drop them.
        let _ = self.cluster.psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
                 WHERE database = '{0}' AND active_pid IS NOT NULL; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = '{0}' AND NOT active",
                self.name
            ),
        );
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

/// A running `audit-tail stream` child process.
pub struct Consumer {
    pub child: std::process::Child,
}

impl Consumer {
    /// Starts `audit-tail stream` for `db` into `out_dir` with slot `db.name`, plus `extra` args.
    pub fn spawn(db: &TestDb, out_dir: &Path, extra: &[&str]) -> Consumer {
        let child = stream_command(db, out_dir, extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn audit-tail stream");
        Consumer { child }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `audit-tail stream` for `db` (slot named after the database) into `out_dir`.
pub fn stream_command(db: &TestDb, out_dir: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"));
    cmd.arg("stream")
        .arg("--dsn")
        .arg(db.cluster.conninfo(&db.name))
        .arg("--slot")
        .arg(&db.name)
        .arg("--out-dir")
        .arg(out_dir)
        .args(extra)
        .env_remove("AUDIT_TAIL_DSN")
        .env("RUST_LOG", "audit_tail=debug");
    cmd
}

/// Runs `audit-tail stream --until now` to completion; panics unless it exits 0.
pub fn catch_up(db: &TestDb, out_dir: &Path) -> Output {
    let out = stream_command(db, out_dir, &["--until", "now", "--format", "none"])
        .output()
        .expect("run audit-tail stream");
    assert!(
        out.status.success(),
        "stream --until now failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The path of part `part` of public.users_audit's stream file of `day` (`2025-10-21` or
/// `20251021`) in `out_dir`, as src/layout.rs names it.
pub fn stream_file(out_dir: &Path, day: &str, part: u32) -> PathBuf {
    let day = day.trim();
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(day, "%Y%m%d"))
        .unwrap_or_else(|e| panic!("{day:?} is not a date: {e}"));
    out_dir.join(audit_tail::layout::file_name(
        "public",
        "users_audit",
        date,
        part,
    ))
}

/// The records of a CSV text: split at line ends outside quotes, so quoted newlines stay inside.
pub fn csv_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut current = Vec::new();
    let mut quoted = false;
    for &b in bytes {
        current.push(b);
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => records.push(std::mem::take(&mut current)),
            _ => {}
        }
    }
    assert!(
        current.is_empty(),
        "CSV ends in a partial line: {:?}",
        String::from_utf8_lossy(&current)
    );
    records
}

/// `COPY (query) TO STDOUT WITH (FORMAT csv, HEADER)`: the reference the files must equal.
pub async fn copy_out(client: &Client, query: &str) -> Vec<u8> {
    use futures_util::TryStreamExt;
    let stream = client
        .copy_out(&format!(
            "COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// Inserts five users with awkward values (NULL, '', commas, quotes, CR/LF, `\.`, padding,
/// Cyrillic, a TOASTed long value) and changes every field of each: 15 audit rows whose old and
/// new values cover NULL → '' and '' → NULL.
pub async fn awkward_changes(client: &Client) {
    let long = "длинный текст, \"с кавычками\"\n".repeat(50_000); // stored out of line (TOAST)
    let first: i32 = client
        .query_one(
            "WITH ins AS (INSERT INTO users (name, email, role) VALUES \
             (NULL, '', 'user'), ('a,b', 'say \"hi\"', 'x'), ('line1\nline2', E'cr\\rlf\\r\\n', 'y'), \
             ('\\.', '  padded  ', 'Иван'), ($1, 'NULL', '\"') RETURNING id) SELECT min(id) FROM ins",
            &[&long],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE users SET name = CASE WHEN name IS NULL THEN '' ELSE name || E'\\n,\"' END, \
                              email = CASE WHEN email = '' THEN NULL ELSE '\\.' END, \
                              role = role || ' ' WHERE id >= $1",
            &[&first],
        )
        .await
        .unwrap();
}

/// Runs the audit-tail binary with exactly `args` (and no AUDIT_TAIL_DSN from outside): exit
/// code, stdout, stderr.
pub fn run_audit_tail<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args(args)
        .env_remove("AUDIT_TAIL_DSN")
        .output()
        .expect("run audit-tail");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `audit-tail verify` on `db` (its database as the nightly side) and `out`, plus `extra`.
pub fn verify(db: &TestDb, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let conninfo = db.cluster.conninfo(&db.name);
    let out = out.to_str().unwrap();
    let mut args = vec!["verify", "--out-dir", out, "--dsn", &conninfo];
    args.extend(extra);
    run_audit_tail(&args)
}

/// Checks that the stream files in `out_dir` hold exactly the rows of users_audit: per day, the
/// same header and the same records as COPY, no more, no fewer, none twice. Returns the number
/// of rows compared.
pub async fn assert_files_equal_table(db: &TestDb, out_dir: &Path) -> usize {
    assert_files_equal(db, out_dir, "public", "users_audit").await
}

/// The same check for any streamed table with a `changed_at` column (audit.log, say).
pub async fn assert_files_equal(db: &TestDb, out_dir: &Path, schema: &str, table: &str) -> usize {
    let client = db.client().await;
    let qualified = format!("\"{schema}\".\"{table}\"");
    let days: Vec<String> = client
        .query(
            &format!("SELECT DISTINCT to_char(changed_at, 'YYYYMMDD') FROM {qualified} ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut files: Vec<PathBuf> = audit_tail::layout::list(out_dir)
        .unwrap()
        .into_iter()
        .filter(|f| f.schema == schema && f.table == table)
        .map(|f| out_dir.join(f.name()))
        .collect();
    files.sort();
    let file_of = |day: &str| {
        let day = chrono::NaiveDate::parse_from_str(day, "%Y%m%d").unwrap();
        out_dir.join(audit_tail::layout::file_name(schema, table, day, 1))
    };
    let expected_files: Vec<PathBuf> = days.iter().map(|d| file_of(d)).collect();
    assert_eq!(
        files, expected_files,
        "one stream file per day of {qualified}"
    );
    let mut total = 0;
    for day in &days {
        let reference = copy_out(
            &client,
            &format!(
                "SELECT * FROM {qualified} WHERE to_char(changed_at, 'YYYYMMDD') = '{day}' ORDER BY id"
            ),
        )
        .await;
        let stream = std::fs::read(file_of(day)).unwrap();
        let mut want = csv_records(&reference);
        let mut got = csv_records(&stream);
        assert_eq!(got.first(), want.first(), "header of {day}");
        let (want_rows, got_rows) = (want.split_off(1), got.split_off(1));
        let mut sorted_want = want_rows.clone();
        let mut sorted_got = got_rows.clone();
        sorted_want.sort();
        sorted_got.sort();
        let mut deduped = sorted_got.clone();
        deduped.dedup();
        assert_eq!(
            deduped.len(),
            sorted_got.len(),
            "duplicate rows in the stream file of {day}"
        );
        if sorted_got != sorted_want {
            let missing = sorted_want
                .iter()
                .filter(|r| !sorted_got.contains(r))
                .count();
            let extra = sorted_got
                .iter()
                .filter(|r| !sorted_want.contains(r))
                .count();
            panic!(
                "stream file of {day} differs from the table: {} rows in the table, {} in the file, {missing} missing, {extra} extra",
                sorted_want.len(),
                sorted_got.len()
            );
        }
        total += want_rows.len();
    }
    total
}

/// Installs sql/install.sql then sql/audit_log.sql with psql, as docs/audit-log.md says (`psql
/// -f sql/install.sql -f sql/audit_log.sql`), the export directory set as by `TestDb::install`;
/// panics if psql fails. Returns the export directory.
pub fn install_audit_log(db: &TestDb) -> PathBuf {
    let out = install::both_scripts(db).output().expect("run psql");
    assert!(
        out.status.success(),
        "install.sql + audit_log.sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.export_dir()
}

/// A database with install.sql and audit_log.sql installed and its slot made by one catch-up
/// (so all that follows is streamed), the stream's temporary out-dir, and a client as the owner.
pub async fn streamed_log(test: &str) -> (TestDb, tempfile::TempDir, Client) {
    let db = TestDb::new(test);
    install_audit_log(&db);
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let client = db.client().await;
    (db, out, client)
}

/// A database with the log installed and `sql` run in it by the owner (the tables a test
/// creates and tracks), and the owner's client.
pub async fn log_with(test: &str, sql: &str) -> (TestDb, Client) {
    let db = TestDb::new(test);
    install_audit_log(&db);
    let client = db.client().await;
    client.batch_execute(sql).await.unwrap();
    (db, client)
}
