//! Two PostgreSQL clusters whose databases have the same name, publishing to one NATS server:
//! the second is refused (not silently skipped past the first's rows) until each cluster has
//! its own --nats-subject-prefix; and a stream whose subjects overlap an existing stream's is
//! refused naming that stream.

mod common;
mod nats_support;

use std::process::{Command, Output};
use std::sync::Arc;

use audit_tail::cluster::Cluster;
use audit_tail::nats_server::NatsServer;
use common::TestDb;

/// `audit-tail stream --until now --format none --nats URL` on `database` of `cluster` (slot
/// named after the database), with `extra`.
fn stream(cluster: &Cluster, database: &str, url: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .arg("stream")
        .arg("--dsn")
        .arg(cluster.conninfo(database))
        .arg("--slot")
        .arg(database)
        .args(["--until", "now", "--format", "none", "--nats", url])
        .args(extra)
        .env_remove("AUDIT_TAIL_DSN")
        .env("RUST_LOG", "audit_tail=debug")
        .output()
        .expect("run audit-tail stream")
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stream failed: {stderr}");
    stderr
}

fn system_id(cluster: &Cluster) -> String {
    cluster
        .psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cluster_with_the_same_database_name_is_refused_on_the_same_subjects() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let a = TestDb::new("same_name");
    a.install();
    // The other company cluster, with a database of the same name.
    let b = Arc::new(Cluster::start().expect("start a second cluster"));
    b.psql("postgres", &format!("CREATE DATABASE \"{}\"", a.name))
        .unwrap();
    let export = b
        .server_writable_dir(&format!("exports-{}", a.name))
        .unwrap();
    let set = format!("SET audit.export_dir = '{}'", export.display());
    let installed = common::install_with_psql(&b, &a.name, &["-c", &set]);
    assert!(installed.status.success(), "install on the second cluster");
    let (id_a, id_b) = (system_id(&a.cluster), system_id(&b));
    assert_ne!(id_a, id_b);

    // A publishes its rows.
    let files_a = tempfile::tempdir().unwrap();
    let out_a = files_a.path().to_str().unwrap();
    ok(stream(&a.cluster, &a.name, &url, &["--out-dir", out_a]));
    // users_audit logs updates.
    a.psql("INSERT INTO users (name, role) SELECT 'a' || g, 'user' FROM generate_series(1, 20) g");
    a.psql("UPDATE users SET role = 'a'");
    ok(stream(&a.cluster, &a.name, &url, &["--out-dir", out_a]));
    let published = nats_support::count(&url, "AUDIT").await;
    assert!(published > 0);

    // B on the same subjects: refused, with files and without, naming both clusters.
    let files_b = tempfile::tempdir().unwrap();
    let out_b = files_b.path().to_str().unwrap();
    for extra in [vec!["--out-dir", out_b], vec!["--no-files"]] {
        let out = stream(&b, &a.name, &url, &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?} refused: {stderr}");
        for needle in [
            id_a.as_str(),
            id_b.as_str(),
            "another PostgreSQL cluster",
            "--nats-subject-prefix",
        ] {
            assert!(stderr.contains(needle), "{extra:?}: {needle} in {stderr}");
        }
        assert!(!stderr.contains("slot was dropped"), "{stderr}");
    }
    assert_eq!(nats_support::count(&url, "AUDIT").await, published);

    // Its own prefix: B publishes every row of its own, A's rows stay as they were.
    let insert =
        "INSERT INTO users (name, role) SELECT 'b' || g, 'user' FROM generate_series(1, 5) g";
    b.psql(&a.name, insert).unwrap();
    b.psql(&a.name, "UPDATE users SET role = 'b'").unwrap();
    let mine = [
        "--no-files",
        "--nats-subject-prefix",
        "auditb",
        "--nats-stream",
        "AUDITB",
    ];
    ok(stream(&b, &a.name, &url, &mine));
    b.psql(&a.name, "UPDATE users SET role = 'b2'").unwrap();
    ok(stream(&b, &a.name, &url, &mine));
    let rows_b: u64 = b
        .psql(&a.name, "SELECT count(*) FROM users_audit")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let of_b = nats_support::read_all(&url, "AUDITB").await;
    assert!(of_b.iter().all(|s| s.subject.starts_with("auditb.")));
    // The slot was made by the first run with its own prefix, after B's first update.
    assert_eq!(of_b.len(), 5, "B's rows under its prefix (of {rows_b})");
    assert_eq!(
        nats_support::count(&url, "AUDIT").await,
        published,
        "A's rows untouched"
    );
    // Dropped before the cluster goes (the slot keeps no walsender: the runs ended).
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_overlapping_an_existing_one_is_refused_naming_it() {
    let nats = NatsServer::start().expect("start nats-server");
    let url = nats.url();
    let db = TestDb::new("overlap");
    db.install();
    let files = tempfile::tempdir().unwrap();
    let out_dir = files.path().to_str().unwrap();
    ok(stream(&db.cluster, &db.name, &url, &["--out-dir", out_dir]));
    let out = stream(
        &db.cluster,
        &db.name,
        &url,
        &["--out-dir", out_dir, "--nats-stream", "OTHER"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "JetStream stream \"OTHER\"",
        "overlap those of stream \"AUDIT\"",
        "--nats-subject-prefix",
    ] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
}
