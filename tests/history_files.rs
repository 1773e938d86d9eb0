//! `history` and `log` on out-dirs written by hand: bad input exits 2 naming the file and line,
//! nothing matched exits 1, only the days in range are read, and the output formats.

mod common;

use std::path::Path;

use common::run_audit_tail;

const HEADER: &str = "id,changed_at,op,schema_name,table_name,key,old_key,new_row,old_values,\
changed_columns,statement_at,txid,actor,reason,request_id,migration,context,application_name,client_addr\n";

fn day_file(dir: &Path, day: &str, rows: &str) {
    std::fs::write(
        dir.join(format!("audit.log_stream_{day}.csv")),
        format!("{HEADER}{rows}"),
    )
    .unwrap();
}

const INSERT: &str = "1,2026-11-23 10:00:00.5,INSERT,public,orders,\"{\"\"id\"\": 3}\",,\
\"{\"\"id\"\": 3, \"\"note\"\": \"\"a,\\\"\"b\\\"\"\"\"}\",,,2026-11-23 10:00:00.5+00,700,alice,\"two\nlines\",r1,,,psql,\n";
const UPDATE: &str = "2,2026-11-23 11:00:00,UPDATE,public,orders,\"{\"\"id\"\": 4}\",\"{\"\"id\"\": 3}\",\
\"{\"\"id\"\": 4, \"\"note\"\": \"\"x\"\"}\",\"{\"\"id\"\": 3, \"\"note\"\": \"\"a,\\\"\"b\"\"}\",\"{id,note}\",\
2026-11-23 11:00:00+00,701,bob,,,,,psql,\n";

fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--out-dir", dir.to_str().unwrap()]);
    if !args.contains(&"--tz") {
        all.extend(["--tz", "UTC"]);
    }
    run_audit_tail(&all)
}

fn out_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    day_file(dir.path(), "20261123", &format!("{INSERT}{UPDATE}"));
    dir
}

#[test]
fn a_record_across_a_key_change_and_its_state() {
    let dir = out_dir();
    let (code, stdout, stderr) = run(dir.path(), &["history", "orders", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "2026-11-23 10:00:00  public.orders  INSERT  {\"id\": 3}  by alice  (reason: \"two\\nlines\")\n\
         2026-11-23 11:00:00  public.orders  UPDATE  {\"id\": 4}  by bob    id, note\n"
    );
    let at = |key: &str, at: &str| {
        run(
            dir.path(),
            &["history", "orders", key, "--at", at, "--format", "json"],
        )
    };
    let (code, stdout, stderr) = at("3", "2026-11-23 10:30:00+00");
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "{\"id\":3,\"note\":\"a,\\\"b\\\"\"}\n"),
        "{stderr}"
    );
    let (code, stdout, _) = at("3", "2026-11-23T11:00:00Z");
    assert_eq!((code, stdout.as_str()), (Some(1), "null\n"));
    let (code, stdout, _) = at("4", "2026-11-23 09:00");
    assert_eq!((code, stdout.as_str()), (Some(1), "null\n"));
    let (code, stdout, stderr) = at("4", "2026-11-23 11:00");
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "{\"id\":4,\"note\":\"x\"}\n")
    );
    assert!(
        stderr.contains("has no zone"),
        "the zone a zone-less time is read in: {stderr}"
    );
    let (_, stdout, _) = run(
        dir.path(),
        &[
            "history",
            "orders",
            "4",
            "--at",
            "2026-11-23 12:00",
            "--format",
            "csv",
        ],
    );
    assert_eq!(stdout, "id,note\n4,x\n");
}

#[test]
fn csv_output_is_the_files_own_rows() {
    let dir = out_dir();
    let (code, stdout, _) = run(
        dir.path(),
        &["log", "--table", "public.orders", "--format", "csv"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(stdout, format!("{HEADER}{INSERT}{UPDATE}"));
}

#[test]
fn only_the_days_in_range_are_read() {
    let dir = out_dir();
    // A broken file of another day: read only when the range includes it.
    day_file(
        dir.path(),
        "20261120",
        "1,2026-11-20 10:00:00,INSERT,public,orders,\"{\"\"id\"\": 3}\"",
    );
    let (code, stdout, stderr) = run(
        dir.path(),
        &["log", "--actor", "bob", "--since", "2026-11-22"],
    );
    assert_eq!((code, stdout.lines().count()), (Some(0), 1), "{stderr}");
    let (code, _, stderr) = run(dir.path(), &["log", "--actor", "bob"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(
            "audit.log_stream_20261120.csv, line 2: the file ends in the middle of a record"
        ),
        "{stderr}"
    );
}

#[test]
fn bad_input_exits_2_with_what_to_correct() {
    let dir = out_dir();
    let broken = tempfile::tempdir().unwrap();
    day_file(
        broken.path(),
        "20261123",
        &format!("{INSERT}2,2026-11-23 11:00:00,UP\"DA\"TE,public,orders,{{}}\n"),
    );
    let wrong_header = tempfile::tempdir().unwrap();
    std::fs::write(
        wrong_header.path().join("audit.log_stream_20261123.csv"),
        "id,when\n1,x\n",
    )
    .unwrap();
    let bad_image = tempfile::tempdir().unwrap();
    day_file(
        bad_image.path(),
        "20261123",
        &INSERT.replace("\"\"note\"\": ", "\"\"note\"\" "),
    );
    let missing = dir.path().join("missing");
    for (where_, args, says) in [
        (
            dir.path(),
            vec!["history", "orders", "3", "--at", "soon"],
            "\"soon\" is not a time",
        ),
        (
            dir.path(),
            vec!["log", "--since", "2026-11-31"],
            "is not a time",
        ),
        (
            dir.path(),
            vec!["log", "--tz", "Mars/Base"],
            "is not a time zone",
        ),
        (
            dir.path(),
            vec!["history", "orders", "x"],
            "the key column id is a number",
        ),
        (
            dir.path(),
            vec!["history", "users", "x"],
            "is not a user id",
        ),
        (dir.path(), vec!["history", ".x", "1"], "is not a table"),
        (missing.as_path(), vec!["log"], "is not a directory"),
        (
            broken.path(),
            vec!["log", "--op", "update"],
            "audit.log_stream_20261123.csv, line 4: a quote inside an unquoted field",
        ),
        (
            wrong_header.path(),
            vec!["log"],
            "line 1: the header has no column changed_at",
        ),
    ] {
        let (code, stdout, stderr) = run(where_, &args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, stdout, _) = run(dir.path(), &["history", "orders", "99"]);
    assert_eq!((code, stdout.as_str()), (Some(1), ""));
    // The files cannot tell a wrong name from a tracked table that had no change: nothing
    // matched, with what was read and what to check.
    for args in [vec!["history", "nope", "1"], vec!["log", "--table", "nope"]] {
        let (code, stdout, stderr) = run(dir.path(), &args);
        assert_eq!((code, stdout.as_str()), (Some(1), ""), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "nothing matched: no row of public.nope in 1 file of audit.log in {} \
                 (day 2026-11-23); if the name is right, the table has had no change there \
                 (audit-tail tracked lists the tracked tables)",
                dir.path().display()
            )),
            "{args:?}: {stderr}"
        );
    }
    let (code, _, _) = run(dir.path(), &["log", "--actor", "nobody"]);
    assert_eq!(code, Some(1));
}

/// `audit-tail ARGS` on a terminal (script(1) gives it one), with NO_COLOR set or not: what it
/// printed.
fn on_a_terminal(dir: &Path, args: &[&str], no_color: bool) -> String {
    let mut command = vec![env!("CARGO_BIN_EXE_audit-tail").to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    command.extend(["--tz", "UTC", "--out-dir", dir.to_str().unwrap()].map(String::from));
    let line = command
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    script.env_remove("NO_COLOR");
    if no_color {
        script.env("NO_COLOR", "1");
    }
    let output = script.output().expect("script(1), from bsdutils");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn text_is_coloured_only_on_a_terminal_without_no_color() {
    let dir = out_dir();
    let args = ["history", "orders", "3"];
    let coloured = on_a_terminal(dir.path(), &args, false);
    assert!(
        coloured.contains("\x1b[32mINSERT\x1b[0m") && coloured.contains("\x1b[33mUPDATE\x1b[0m"),
        "{coloured:?}"
    );
    let plain = on_a_terminal(dir.path(), &args, true);
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    assert!(
        plain.contains("public.orders  INSERT  {\"id\": 3}"),
        "{plain:?}"
    );
    let (_, piped, _) = run(dir.path(), &args);
    assert!(!piped.contains('\x1b'), "a pipe: {piped:?}");
}
