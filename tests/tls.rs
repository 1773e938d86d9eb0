//! TLS on both connections against a throwaway cluster with `ssl = on` and a certificate made at
//! test time. Plain connections are rejected by pg_hba.conf, so a success proves TLS was used.

mod common;

use std::sync::Arc;

use audit_tail::cluster::{Cluster, ClusterOptions};
use common::TestDb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key: String,
}

/// A CA, and a server certificate it signed that names only `localhost`.
fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "audit-tail test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server.pem(),
        server_key: server_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn require_and_verify_full_work_and_a_wrong_host_name_is_refused() {
    let pki = make_pki();
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "'server.crt'".into()),
                ("ssl_key_file".into(), "'server.key'".into()),
            ],
            hba: vec![
                "hostnossl all all 127.0.0.1/32 reject".into(),
                "hostnossl replication all 127.0.0.1/32 reject".into(),
            ],
            files: vec![
                ("server.crt".into(), pki.server_pem.into_bytes()),
                ("server.key".into(), pki.server_key.into_bytes()),
            ],
        })
        .unwrap(),
    );
    let db = TestDb::on(cluster.clone(), "tls");
    db.install();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pki.ca_pem).unwrap();
    let ca = ca.path().display().to_string();
    let dsn = |host: &str, extra: &str| {
        format!(
            "host={host} port={} user=postgres dbname={} {extra}",
            cluster.port(),
            db.name
        )
    };
    let run = |dsn: String| {
        let out = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(["stream", "--until", "now", "--format", "none", "--slot"])
            .arg(&db.name)
            .arg("--out-dir")
            .arg(out.path())
            .arg("--dsn")
            .arg(&dsn)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A TLS failure must be fatal, not retried for ever: give it 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{dsn}: still running after 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // Without TLS the server refuses us: the lines above are in force.
    let (code, err) = run(dsn("127.0.0.1", "sslmode=disable"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no encryption"), "{err}");

    for extra in [
        "sslmode=require",
        "",
        &format!("sslmode=verify-ca sslrootcert={ca}"),
    ] {
        let (code, err) = run(dsn("127.0.0.1", extra));
        assert_eq!(code, Some(0), "{extra}: {err}");
    }
    let (code, err) = run(dsn(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ));
    assert_eq!(code, Some(0), "verify-full with the right name: {err}");

    let (code, err) = run(dsn(
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("certificate"),
        "verify-full with the wrong name: {err}"
    );

    let (code, err) = run(dsn("localhost", "sslmode=verify-full"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs the CA certificate"), "{err}");

    // A CA that did not sign the server's certificate.
    let other = make_pki();
    let wrong_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong_ca.path(), other.ca_pem).unwrap();
    let (code, err) = run(dsn(
        "localhost",
        &format!(
            "sslmode=verify-ca sslrootcert={}",
            wrong_ca.path().display()
        ),
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_binds_to_the_tls_channel_on_both_connections() {
    let pki = make_pki();
    let cluster = Arc::new(
        Cluster::start_with(ClusterOptions {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "'server.crt'".into()),
                ("ssl_key_file".into(), "'server.key'".into()),
                ("password_encryption".into(), "'scram-sha-256'".into()),
            ],
            hba: vec!["host all at_cb 127.0.0.1/32 scram-sha-256".into()],
            files: vec![
                ("server.crt".into(), pki.server_pem.into_bytes()),
                ("server.key".into(), pki.server_key.into_bytes()),
            ],
        })
        .unwrap(),
    );
    let db = TestDb::on(cluster.clone(), "channel_binding");
    db.install();
    cluster
        .psql(
            "postgres",
            &format!(
                "CREATE ROLE at_cb LOGIN REPLICATION PASSWORD 'cb secret'; \
                 GRANT SELECT ON ALL TABLES IN SCHEMA public TO at_cb; \
                 GRANT CREATE ON DATABASE \"{}\" TO at_cb",
                db.name
            ),
        )
        .unwrap();
    db.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO at_cb");
    let dsn = |user: &str, extra: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password='cb secret' dbname={} {extra}",
            cluster.port(),
            db.name
        )
    };
    let out = tempfile::tempdir().unwrap();
    // Each run gets 30 s: a refusal retried for ever fails the test instead of hanging it.
    let run = |args: &[&str], dsn: String| {
        let output = std::process::Command::new("timeout")
            .arg("30")
            .arg(env!("CARGO_BIN_EXE_audit-tail"))
            .args(args)
            .arg("--dsn")
            .arg(&dsn)
            .arg("--out-dir")
            .arg(out.path())
            .env_remove("PGCHANNELBINDING")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let stream = [
        "stream", "--until", "now", "--format", "none", "--slot", "cb_slot",
    ];
    let status = ["status", "--slot", "cb_slot"];

    // SCRAM-SHA-256-PLUS on the replication connection (ours) and on the SQL one
    // (tokio-postgres over our socket): a wrong binding would fail the server's check.
    for args in [&stream[..], &status[..]] {
        let (code, err) = run(
            args,
            dsn("at_cb", "sslmode=require channel_binding=require"),
        );
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    // Without TLS there is no channel to bind to (a configuration error, exit 2); with trust
    // there is no SCRAM to bind (refused at login, exit 1). Neither is retried.
    for (user, extra, exit) in [
        ("at_cb", "sslmode=disable channel_binding=require", 2),
        ("postgres", "sslmode=require channel_binding=require", 1),
    ] {
        for args in [&stream[..], &status[..]] {
            let (code, err) = run(args, dsn(user, extra));
            assert_eq!(code, Some(exit), "{args:?} {extra}: {err}");
            assert!(err.contains("channel"), "{args:?} {extra}: {err}");
        }
    }
    db.psql("SELECT pg_drop_replication_slot('cb_slot')");
    cluster
        .psql(
            "postgres",
            &format!("REVOKE ALL ON DATABASE \"{}\" FROM at_cb", db.name),
        )
        .ok();
}
