//! Messages of the commands a new user meets first (a trial as a DBA new to audit-tail found
//! them confusing): each says what is wrong in the user's terms and what to do, with the exit
//! code of docs/operations.md ("Exit codes").

mod common;

use common::{TestDb, install_audit_log, run_audit_tail};

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_case_name_written_unquoted_gets_the_quoted_form_to_use() {
    let db = TestDb::new("cli_case");
    install_audit_log(&db);
    db.psql(
        "CREATE SCHEMA \"Sales\"; \
         CREATE TABLE \"Sales\".\"OrderLine\" (id int PRIMARY KEY, qty int)",
    );
    let dsn = db.cluster.conninfo(&db.name);
    let (code, _, err) = run_audit_tail(&["track", "Sales.OrderLine", "--dsn", &dsn]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("schema \"sales\" does not exist"), "{err}");
    assert!(err.contains("folded to lower case"), "{err}");
    assert!(err.contains("'\"Sales\".\"OrderLine\"'"), "{err}");
    // The quoted form it shows works.
    let (code, out, err) = run_audit_tail(&["track", "\"Sales\".\"OrderLine\"", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("is tracked"), "{out}");
    // The schema right but the table's case wrong: the same help, for untrack too.
    let (code, _, err) = run_audit_tail(&["untrack", "\"Sales\".orderline", "--dsn", &dsn]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("audit-tail untrack '\"Sales\".\"OrderLine\"'"),
        "{err}"
    );
    // A name that matches nothing, in any case, keeps the server's words and exit 1; so does a
    // table of the same name in a schema not on the search_path: case is not the mistake.
    let (code, _, err) = run_audit_tail(&["track", "Sales.Nothing", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("folded"), "{err}");
    db.psql("CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY)");
    let (code, _, err) = run_audit_tail(&["track", "orders", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("\"orders\" does not exist"), "{err}");
    assert!(!err.contains("folded"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_commands_in_a_database_without_the_log_say_to_run_setup() {
    let db = TestDb::new("cli_nolog");
    db.psql("CREATE TABLE orders (id int PRIMARY KEY)");
    let dsn = db.cluster.conninfo(&db.name);
    for args in [
        vec!["tracked"],
        vec!["track", "orders"],
        vec!["untrack", "orders"],
    ] {
        let mut args = args.clone();
        args.extend(["--dsn", &dsn]);
        let (code, out, err) = run_audit_tail(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.contains("is not installed in database")
                && err.contains(&db.name)
                && err.contains("audit-tail setup --dsn"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("does not exist"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn untrack_of_a_table_not_tracked_says_so_and_exits_1() {
    let db = TestDb::new("cli_untrack");
    install_audit_log(&db);
    db.psql("CREATE TABLE orders (id int PRIMARY KEY)");
    let dsn = db.cluster.conninfo(&db.name);
    let (code, out, err) = run_audit_tail(&["untrack", "orders", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("orders is not tracked, nothing to untrack"),
        "{err}"
    );
    let (code, _, err) = run_audit_tail(&["track", "orders", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run_audit_tail(&["untrack", "orders", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("orders is no longer tracked"), "{out}");
}

/// No test of this binary creates pg_cron's extension in the cron database (postgres), so there
/// the schema cron is missing, as on a server where pg_cron was only preloaded.
#[tokio::test(flavor = "multi_thread")]
async fn status_says_pg_cron_needs_its_extension_and_retention_in_a_sentence() {
    let db = TestDb::new("cli_status");
    if !db.cluster.has_pg_cron() {
        panic!("pg_cron is not installed: scripts/install-deps installs it");
    }
    install_audit_log(&db);
    db.psql("UPDATE audit.log_settings SET retention = '30 days'");
    let dsn = db.cluster.conninfo(&db.name);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().to_str().unwrap();
    let (code, text, err) = run_audit_tail(&["status", "--dsn", &dsn, "--out-dir", out]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.contains("CREATE EXTENSION pg_cron; in \"postgres\""),
        "{text}"
    );
    assert!(
        text.contains("retention 30 days: no day is older than that yet"),
        "{text}"
    );
    assert!(!text.contains("would keep none"), "{text}");
}

/// The stream started today, so today is only partly covered; users_audit had no change (no file
/// of today), the log had two. verify still compares the log, and its refusal names the table
/// and the file it lacks, not only users_audit_stream_D.csv.
#[tokio::test(flavor = "multi_thread")]
async fn verify_of_a_partly_covered_day_compares_the_log_and_names_the_missing_file() {
    let db = TestDb::new("cli_verify_part");
    install_audit_log(&db);
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, qty int); SELECT audit.track('orders')");
    let out = tempfile::tempdir().unwrap();
    common::catch_up(&db, out.path());
    db.psql("INSERT INTO orders VALUES (1, 1), (2, 2)");
    common::catch_up(&db, out.path());
    let today = db.psql("SELECT current_date").trim().to_string();
    let (code, stdout, stderr) = common::verify(&db, out.path(), &["--date", &today]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let day = today.replace('-', "");
    assert!(
        stderr.contains("of public.users_audit (")
            && stderr.contains(&format!("users_audit_stream_{day}.csv does not exist")),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("audit.log was compared: its nightly export and live stream agree (2 rows)"),
        "{stderr}"
    );
}

/// Two databases export to one directory, so the second's files carry its name
/// (install.sql's export_name). verify --nightly with the second's file and the first's out-dir
/// names the mix-up instead of reporting every row as different.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_another_database_s_export_file() {
    let shop = TestDb::new("cli_shop");
    let billing = TestDb::new("cli_billing");
    let dir = shop.install();
    let set = format!("SET audit.export_dir = '{}'", dir.display());
    let out = billing.install_with_psql(&["-c", &set]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = tempfile::tempdir().unwrap();
    common::catch_up(&shop, stream.path());
    shop.psql("INSERT INTO users (name, email, role) VALUES ('a', 'a@x', 'user'); UPDATE users SET role = 'admin'");
    billing.psql("INSERT INTO users (name, email, role) VALUES ('b', 'b@x', 'user'); UPDATE users SET role = 'admin'");
    common::catch_up(&shop, stream.path());
    let today = shop.psql("SELECT current_date").trim().to_string();
    let theirs = billing.psql("SELECT export_audit_data(current_date)");
    let theirs = theirs.trim();
    assert!(theirs.contains(&billing.name), "{theirs}");
    let (code, stdout, stderr) = common::verify(
        &shop,
        stream.path(),
        &["--date", &today, "--nightly", theirs],
    );
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("DIFFER"), "{stdout}");
    assert!(
        stderr.contains(&format!("is the export of database \"{}\"", billing.name))
            && stderr.contains(&format!("of database \"{}\"", shop.name)),
        "{stderr}"
    );
    // Its own export is compared as ever.
    let ours = shop.psql("SELECT export_audit_data(current_date)");
    let (code, stdout, stderr) = common::verify(
        &shop,
        stream.path(),
        &["--date", &today, "--nightly", ours.trim()],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// `audit-tail setup` with `env` added to its environment: exit code and stderr.
fn setup_with_env(db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args(["setup", "--dsn", &db.cluster.conninfo(&db.name)])
        .args(extra)
        .env_remove("AUDIT_TAIL_DSN")
        .envs(env.iter().copied())
        .output()
        .expect("run audit-tail setup");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_takes_pgoptions_as_psql_does() {
    let db = TestDb::new("cli_pgoptions");
    let dir = db.export_dir();
    let options = format!("-c audit.export_dir={}", dir.display());
    let (code, err) = setup_with_env(&db, &[], &[("PGOPTIONS", &options)]);
    assert_eq!(code, Some(0), "{err}");
    let set = db.psql("SELECT export_dir FROM audit_settings");
    assert_eq!(set.trim(), dir.to_str().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_setup_keeps_only_the_notices_that_say_something() {
    let db = TestDb::new("cli_rerun");
    let dir = db.export_dir();
    let dir = dir.to_str().unwrap();
    let (code, err) = setup_with_env(&db, &["--export-dir", dir], &[]);
    assert_eq!(code, Some(0), "{err}");
    // The first install drops the old signature of audit.track, which is not there.
    assert!(!err.contains("does not exist, skipping"), "{err}");
    let (code, err) = setup_with_env(&db, &[], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("already exists, skipping"), "{err}");
    assert!(!err.contains("does not exist, skipping"), "{err}");
    // The installer's own advice still reaches the user: this is not pg_cron's database.
    assert!(err.contains("pg_cron keeps its jobs in database"), "{err}");
    // With -v the skipped objects are there for whoever wants them.
    let (code, err) = setup_with_env(&db, &["-v"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("already exists, skipping"), "{err}");
    assert!(err.contains("does not exist, skipping"), "{err}");
}

/// With NATS_USER and NATS_PASSWORD in the environment (as a service sets them), a usage error
/// shows a usage line without --nats-user and --nats-password: they are not required.
#[test]
fn usage_lines_do_not_list_options_the_environment_gave() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args([
            "stream",
            "--no-files",
            "--signing-key",
            "k",
            "--nats",
            "nats://127.0.0.1:1",
        ])
        .env("NATS_USER", "someone")
        .env("NATS_PASSWORD", "secret")
        .output()
        .expect("run audit-tail stream");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot be used with '--signing-key <PATH>'"),
        "{err}"
    );
    assert!(
        err.contains("Usage: audit-tail stream --no-files --nats <URL>\n"),
        "{err}"
    );
    assert!(!err.contains("--nats-user"), "{err}");
    assert!(!err.contains("--nats-password"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// `verify --help` says its NATS options read the digests the stream published; it lists no
/// --nats-max-age (verify creates no stream).
#[test]
fn verify_help_says_it_reads_digests_from_jetstream() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"))
        .args(["verify", "--help"])
        .output()
        .expect("run audit-tail verify --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{help}");
    assert!(help.contains("read the digests"), "{help}");
    assert!(!help.contains("Publish every row"), "{help}");
    assert!(!help.contains("--nats-max-age"), "{help}");
}
