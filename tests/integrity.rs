//! Tamper evidence end to end (issue 16, docs/security.md): `keygen`, `stream --signing-key`
//! writing signed, chained digests, and `verify --integrity` naming every kind of tampering with
//! its file and line. The stream runs against a real cluster; the tampering is done on copies of
//! its out-dir, one copy per case.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use audit_tail::integrity::chain;
use common::signing::{keygen, marked_complete, verify_integrity};
use common::{Consumer, TestDb, run_audit_tail, wait};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The rows (1-based lines) of a file, each with its line end.
fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.concat()).unwrap();
}

/// The newest digest's entry for `file`: (rows, complete).
fn newest_entry(out: &Path, file: &str) -> Option<(u64, bool)> {
    let signed = chain::newest(out).ok()??;
    signed
        .digest
        .files
        .iter()
        .find(|f| f.name == file)
        .map(|f| (f.rows, f.complete))
}

fn past_row(changed_at: &str, new_value: &str) -> String {
    format!(
        "INSERT INTO users_audit (user_id, changed_at, changed_by, field_changed, old_value, new_value) \
         VALUES (1, '{changed_at}', 'archivist', 'name', 'a', '{new_value}');"
    )
}

fn today_row(n: u32) -> String {
    format!(
        "INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value) \
         VALUES (1, 'app', 'name', 'a', 'value-{n}');"
    )
}

/// Today's file (the stream file that is not of `past`).
fn today_file(out: &Path, past: &str) -> String {
    let mut names: Vec<String> = audit_tail::layout::list(out)
        .unwrap()
        .into_iter()
        .map(|f| f.name())
        .filter(|n| !n.contains(past))
        .collect();
    names.sort();
    assert_eq!(names.len(), 1, "{names:?}");
    names.remove(0)
}

const PAST: &str = "20200115";

/// A signed out-dir: today's file with a header and 8 rows, each row covered by its own digest,
/// and a sealed past day's file marked complete with its manifest. Returns (out, keys dir,
/// today's file name, the public key).
fn signed_out_dir(db: &TestDb) -> (tempfile::TempDir, tempfile::TempDir, String, String) {
    db.install();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "signing.key");
    let out = tempfile::tempdir().unwrap();
    let mut consumer = Consumer::spawn(
        db,
        out.path(),
        &[
            "--format",
            "none",
            "--status-interval",
            "1",
            "--signing-key",
            &key,
            "--digest-interval",
            "0",
        ],
    );
    wait::streaming(db, &db.name);
    wait::caught_up(db, &db.name);
    db.psql(&past_row("2020-01-15 10:00:00", "past"));
    let past = format!("users_audit_stream_{PAST}.csv");
    wait::until(
        "the past day sealed and marked complete",
        Duration::from_secs(60),
        || marked_complete(out.path(), &past),
    );
    for n in 1..=8 {
        db.psql(&today_row(n));
        wait::until(
            &format!("a digest covering row {n}"),
            Duration::from_secs(30),
            || {
                audit_tail::layout::list(out.path()).is_ok_and(|files| {
                    files.iter().map(|f| f.name()).any(|name| {
                        !name.contains(PAST)
                            && newest_entry(out.path(), &name)
                                .is_some_and(|(rows, _)| rows == n as u64)
                    })
                })
            },
        );
    }
    consumer.child.kill().unwrap();
    consumer.child.wait().unwrap();
    let today = today_file(out.path(), PAST);
    (out, keys, today, public)
}

/// Changes the lines of `file` in a copied out-dir with `f`.
fn edit_lines(file: String, f: fn(&mut Vec<String>)) -> impl FnOnce(&Path) {
    move |dir: &Path| {
        let path = dir.join(&file);
        let mut l = lines(&path);
        f(&mut l);
        write_lines(&path, &l);
    }
}

/// Copies `out`, changes the copy with `tamper`, and runs verify --integrity on it.
fn tampered(
    out: &Path,
    public: &str,
    tamper: impl FnOnce(&Path),
) -> (Option<i32>, String, tempfile::TempDir) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(out, copy.path());
    tamper(copy.path());
    let (code, report) = verify_integrity(copy.path(), &[public], &[]);
    (code, report, copy)
}

fn expect(
    case: &str,
    (code, report, _copy): (Option<i32>, String, tempfile::TempDir),
    want_code: i32,
    wants: &[&str],
) {
    assert_eq!(code, Some(want_code), "{case}: {report}");
    for want in wants {
        assert!(
            report.contains(want),
            "{case}: the report does not say {want:?}:\n{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_is_named_with_its_file_and_line() {
    let db = TestDb::new("integrity_tamper");
    let (out, keys, today, public) = signed_out_dir(&db);
    let out = out.path();
    let past = format!("users_audit_stream_{PAST}.csv");
    let (code, report) = verify_integrity(out, &[&public], &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("intact:"), "{report}");
    assert!(!report.contains("not yet covered"), "{report}");

    // Files: line 1 is the header, line n+1 holds value-n.
    let edit = |f: fn(&mut Vec<String>)| edit_lines(today.clone(), f);
    expect(
        "an edited byte",
        tampered(
            out,
            &public,
            edit(|l| l[4] = l[4].replace("value-4", "valuE-4")),
        ),
        1,
        &[&format!("BROKEN {today} line 5: edited")],
    );
    expect(
        "an inserted row",
        tampered(
            out,
            &public,
            edit(|l| {
                let row = l[4].clone();
                l.insert(5, row);
            }),
        ),
        1,
        &[&format!("BROKEN {today} line 6: 1 row(s) inserted")],
    );
    expect(
        "a removed row",
        tampered(
            out,
            &public,
            edit(|l| {
                l.remove(4);
            }),
        ),
        1,
        &[&format!("BROKEN {today} line 5: 1 row(s) removed")],
    );
    expect(
        "reordered rows",
        tampered(out, &public, edit(|l| l.swap(4, 5))),
        1,
        &[&format!(
            "BROKEN {today} line 5: rows reordered in lines 5-6"
        )],
    );
    expect(
        "a truncated file",
        tampered(out, &public, |dir| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dir.join(&today))
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 3).unwrap();
        }),
        1,
        &[&format!("BROKEN {today} line 9: truncated")],
    );
    expect(
        "a complete file extended",
        tampered(out, &public, |dir| {
            let mut text = fs::read_to_string(dir.join(&past)).unwrap();
            text.push_str("99,1,2020-01-15 11:00:00,x,name,a,b\n");
            fs::write(dir.join(&past), text).unwrap();
        }),
        1,
        &[&format!("BROKEN {past} line 3: extended")],
    );
    expect(
        "rows after the last digest",
        tampered(out, &public, |dir| {
            let mut text = fs::read_to_string(dir.join(&today)).unwrap();
            text.push_str("99,1,2020-01-15 11:00:00,x,name,a,b\n");
            fs::write(dir.join(&today), text).unwrap();
        }),
        0,
        &[&format!("not yet covered {today} line 10"), "intact:"],
    );
    expect(
        "a removed file",
        tampered(out, &public, |dir| {
            fs::remove_file(dir.join(&past)).unwrap()
        }),
        1,
        &[&format!("BROKEN {past}: removed")],
    );
    expect(
        "a renamed file",
        tampered(out, &public, |dir| {
            fs::rename(
                dir.join(&today),
                dir.join("users_audit_stream_20200301.csv"),
            )
            .unwrap()
        }),
        1,
        &[&format!(
            "BROKEN {today}: renamed to users_audit_stream_20200301.csv"
        )],
    );
    expect(
        "an added file",
        tampered(out, &public, |dir| {
            fs::copy(dir.join(&past), dir.join("users_audit_stream_20200302.csv")).unwrap();
        }),
        1,
        &["BROKEN users_audit_stream_20200302.csv line 1: added"],
    );
    expect(
        "an edited manifest",
        tampered(out, &public, |dir| {
            let path = dir.join(format!("audit-tail.days/{PAST}.manifest"));
            let text = fs::read_to_string(&path)
                .unwrap()
                .replace("day 2020-01-15", "day 2020-01-15\ncsv safe");
            fs::write(path, text).unwrap();
        }),
        1,
        &[&format!(
            "BROKEN audit-tail.days/{PAST}.manifest: the sealed day's manifest was edited"
        )],
    );
    expect(
        "a removed digest",
        tampered(out, &public, |dir| {
            fs::remove_file(dir.join("audit-tail.digests").join(chain::name(3))).unwrap()
        }),
        1,
        &[
            "BROKEN audit-tail.digests: digest 3 is missing",
            "00000004.digest line 5: does not chain onto digest 2",
        ],
    );
    expect(
        "an edited digest",
        tampered(out, &public, |dir| {
            let path = dir.join("audit-tail.digests").join(chain::name(3));
            let text = fs::read_to_string(&path).unwrap();
            // One more byte claimed for the file: the signature no longer holds.
            let signed = chain::read(&path).unwrap();
            let f = &signed.digest.files[0];
            let text = text.replacen(
                &format!(" {} {} ", f.len, f.rows),
                &format!(" {} {} ", f.len + 1, f.rows),
                1,
            );
            fs::write(path, text).unwrap();
        }),
        1,
        &["BROKEN audit-tail.digests/00000003.digest: its signature does not verify"],
    );
    let (other_key, other_public) = keygen(keys.path(), "other.key");
    let other_id = audit_tail::integrity::keys::key_id(
        &audit_tail::integrity::load_public_key(Path::new(&other_public)).unwrap(),
    );
    expect(
        "a digest replaced by one signed with another key",
        tampered(out, &public, |dir| {
            let path = dir.join("audit-tail.digests").join(chain::name(3));
            let mut digest = chain::read(&path).unwrap().digest;
            digest.key = other_id.clone();
            digest.files[0].rows += 1;
            let key = audit_tail::integrity::load_signing_key(Path::new(&other_key)).unwrap();
            fs::write(path, digest.sign(&key).0).unwrap();
        }),
        1,
        &[&format!(
            "BROKEN audit-tail.digests/00000003.digest line 4: signed by key {other_id}, which is none of the --public-key given"
        )],
    );
    // The right out-dir, the wrong public key: nothing verifies.
    let (code, report) = verify_integrity(out, &[&other_public], &[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("00000001.digest line 4: signed by key"),
        "{report}"
    );

    // --since/--until limit the files checked: the past day's damage is outside.
    let (code, report, _copy) = tampered(out, &public, |dir| {
        fs::remove_file(dir.join(&past)).unwrap()
    });
    assert_eq!(code, Some(1), "{report}");
    let (code, report) = verify_integrity(_copy.path(), &[&public], &["--since", "2020-01-16"]);
    assert_eq!(code, Some(0), "{report}");

    // Bad input: exit 2 with a sentence that says what to give.
    let (code, report) = verify_integrity(out, &[&format!("{public}.missing")], &[]);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        report.contains("is not an audit-tail public key"),
        "{report}"
    );
    let (code, report) = verify_integrity(
        out,
        &[&public],
        &["--since", "2020-02-01", "--until", "2020-01-01"],
    );
    assert_eq!(code, Some(2), "{report}");
    let (code, _) = verify_integrity(&out.join("nowhere"), &[&public], &[]);
    assert_eq!(code, Some(2));
    let (code, report) = verify_integrity(out, &[&public], &["--format", "json"]);
    assert_eq!(
        code,
        Some(2),
        "--format is the export comparison's: {report}"
    );
    let (code, _, err) = run_audit_tail(&[
        "keygen",
        "--out",
        &keys.path().join("signing.key").to_string_lossy(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
}

/// The stream refuses a signing key others can read, and a public key given as the secret one.
#[test]
fn a_bad_signing_key_is_refused_before_streaming() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "k");
    let out = tempfile::tempdir().unwrap();
    for (path, says) in [
        (public.as_str(), "not an audit-tail secret key"),
        (key.as_str(), "chmod 600"),
    ] {
        if path == key {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        }
        let (code, _, err) = run_audit_tail(&[
            "stream",
            "--dsn",
            "host=/nonexistent",
            "--out-dir",
            out.path().to_str().unwrap(),
            "--signing-key",
            path,
        ]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
}
