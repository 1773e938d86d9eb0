//! `audit-tail demo` as a user runs it: the binary, a real throwaway cluster, stdout and exit code.

use std::process::Command;

#[test]
fn demo_prints_the_six_reference_rows_and_their_csv() {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .arg("demo")
        .output()
        .expect("run audit-tail demo");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "user 1 name: \"Иван Иванов\" → \"Иван Сидоров\" by admin@example.com",
        "user 1 role: \"user\" → \"admin\" by admin@example.com",
        "user 2 email: \"petr@example.com\" → \"petr_p@example.com\" by postgres",
        "user 3 name: \"Андрей Сидоров\" → \"Сергей Иванов\" by hr@example.com",
        "user 3 email: \"sidorov@example.com\" → \"ivanov_s@example.com\" by hr@example.com",
        "user 3 role: \"manager\" → \"user\" by hr@example.com",
        "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n",
        ",admin@example.com,name,Иван Иванов,Иван Сидоров\n",
        ",hr@example.com,role,manager,user\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let csv_rows = stdout
        .lines()
        .skip_while(|l| !l.starts_with("id,user_id"))
        .take_while(|l| !l.starts_with("5. "))
        .count();
    assert_eq!(csv_rows, 7, "header and six rows:\n{stdout}");
    assert!(
        stdout.contains("the nightly export and the live stream agree (6 rows)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 3 * * *  SELECT public.export_audit_data(current_date - 1)"),
        "{stdout}"
    );
    // The live lines come before the export: the stream printed them as they were committed.
    let live = stdout.find("user 3 role: \"manager\" → \"user\"").unwrap();
    assert!(live < stdout.find("id,user_id").unwrap(), "{stdout}");
    // One command audits any table: its rows arrive live, with who and why, the card redacted.
    for expected in [
        "public.orders INSERT {\"id\": 1} by shop@example.com (reason: \"checkout\")",
        "public.orders UPDATE {\"id\": 1} by support@example.com: status, total (reason: \"refund, ticket 88\")",
        "7. Cleaned up",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("4111"),
        "the redacted card reached stdout:\n{stdout}"
    );
    // Logs go to stderr, never into the data on stdout.
    assert!(!stdout.contains("INFO"), "{stdout}");
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

/// Every command, given malformed arguments, connection strings, dates or values: exit 2, a
/// message that names the problem, and no panic. Nothing here reaches a server.
#[test]
fn malformed_arguments_of_every_command_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["stream", "--bogus"], "unexpected argument"),
        (&["stream", "--status-interval", "0"], "--status-interval"),
        (&["stream", "--format", "xml"], "invalid value 'xml'"),
        (&["stream", "--until", "0/XYZ"], "--until"),
        (
            &["stream", "--dsn", "port=notaport"],
            "invalid port \"notaport\"",
        ),
        (
            &["setup", "--dsn", "host=/tmp 'unterminated"],
            "invalid connection string",
        ),
        (&["setup", "--dsn", "sslmode=sometimes"], "sslmode"),
        (&["setup", "--export-dir"], "a value is required"),
        (&["verify"], "--date"),
        (&["verify", "--date", "2025-02-30"], "is not a date"),
        (&["verify", "--date", "yesterday"], "is not a date"),
        (
            &["verify", "--date", "2025-10-21", "--format", "yaml"],
            "invalid value 'yaml'",
        ),
        (
            &["verify", "--date", "2025-10-21", "--dsn", "user=x nonsense"],
            "invalid connection string",
        ),
        (&["status", "--slot", "Bad-Name"], "lower-case letters"),
        (&["status", "--format", "csv"], "invalid value 'csv'"),
        (&["status", "--dsn", "port=-1"], "invalid port \"-1\""),
        (&["drop-slot", "--slot", ""], "--slot"),
        (
            &["drop-slot", "--slot", "a;drop table users"],
            "lower-case letters",
        ),
        (
            &["drop-slot", "--dsn", "connect_timeout=soon"],
            "invalid connect_timeout",
        ),
        (&["drop-slot", "--force=yes"], "--force"),
        (&["demo", "--keep", "--bogus"], "unexpected argument"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_audit-tail"))
            .args(*args)
            .env_remove("AUDIT_TAIL_DSN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
