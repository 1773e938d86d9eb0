//! The exit codes of docs/operations.md ("Exit codes"), end to end: 2 only for input the user
//! must correct, 1 for everything else that failed, whichever command met it.

mod common;

use common::run_audit_tail;

const HEADER: &str = "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n";

/// A port nobody listens on: bind one, learn its number, close it.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn verify_against_an_unreachable_database_exits_1_not_2() {
    // The inputs are fine: a stream file for the date, a well-formed connection string. The
    // database being down is no mistake of the command line, so it is not exit 2 (which says
    // "correct your input"); verify could not compare, which is a failure like any other.
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("users_audit_stream_20251021.csv"), HEADER).unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        closed_port()
    );
    let out_dir = out.path().to_str().unwrap();
    let (code, stdout, stderr) = run_audit_tail(&[
        "verify",
        "--dsn",
        &dsn,
        "--out-dir",
        out_dir,
        "--date",
        "2025-10-21",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stdout.is_empty(),
        "no report when nothing was compared: {stdout}"
    );
    assert!(
        stderr.contains("could not read the nightly export from the database"),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn verify_with_malformed_input_still_exits_2() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("users_audit_stream_20251021.csv"), HEADER).unwrap();
    let nightly = out.path().join("nightly.csv");
    std::fs::write(&nightly, "id,wrong\n").unwrap();
    let missing = out.path().join("missing.csv");
    for file in [&nightly, &missing] {
        let (code, _, stderr) = run_audit_tail(&[
            "verify",
            "--nightly",
            file.to_str().unwrap(),
            "--out-dir",
            out.path().to_str().unwrap(),
            "--date",
            "2025-10-21",
        ]);
        assert_eq!(code, Some(2), "{}: {stderr}", file.display());
    }
}
