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
