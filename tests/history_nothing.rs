//! When nothing matches, `history` and `log` exit 1 and say so on stderr with what they read
//! (which copy, which files and days), and the same question gets the same exit code and the
//! same message from the files and from the database: a tracked table that has had no change is
//! "nothing matched" from either copy; only the database can tell a name that is not tracked at
//! all (exit 2).

mod common;

use common::{TestDb, catch_up, run_audit_tail, streamed_log};

/// `audit-tail ARGS` from the files, then from the database: (exit code, stdout, stderr) of each.
fn from_both_copies(db: &TestDb, out: &str, args: &[&str]) -> [(Option<i32>, String, String); 2] {
    let conninfo = db.cluster.conninfo(&db.name);
    [vec![], vec!["--dsn", conninfo.as_str()]].map(|extra| {
        let mut all = args.to_vec();
        all.extend(["--tz", "UTC", "--out-dir", out]);
        all.extend(extra);
        run_audit_tail(&all)
    })
}

/// The line of `stderr` that says nothing matched, with the copy it names cut out (`in ...`
/// up to the next `;` or the end).
fn message(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("nothing matched"))
        .unwrap_or_else(|| panic!("no \"nothing matched\" on stderr: {stderr:?}"));
    let start = line.find("nothing matched").unwrap();
    let line = &line[start..];
    let copy = line.find(" in ").unwrap();
    let end = line[copy..].find(';').map_or(line.len(), |e| copy + e);
    format!("{}{}", &line[..copy], &line[end..])
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_matched_is_exit_1_and_said_the_same_from_either_copy() {
    let (db, out_dir, client) = streamed_log("hist_nothing").await;
    client
        .batch_execute(
            "CREATE TABLE quiet (id int PRIMARY KEY, note text); \
             SELECT audit.track('public.quiet'); \
             CREATE TABLE busy (id int PRIMARY KEY, note text); \
             SELECT audit.track('public.busy'); \
             INSERT INTO busy VALUES (1, 'a'); \
             INSERT INTO users (id, name, email, role) VALUES (7, 'Bo', 'bo@x', 'staff'); \
             UPDATE users SET role = 'admin' WHERE id = 7;",
        )
        .await
        .unwrap();
    catch_up(&db, out_dir.path());
    let out = out_dir.path().to_str().unwrap();
    let today: String = client
        .query_one("SELECT current_date::text", &[])
        .await
        .unwrap()
        .get(0);

    // A tracked table that has had no change: nothing matched, from either copy, one message.
    for args in [
        vec!["history", "quiet", "1"],
        vec!["log", "--table", "quiet"],
    ] {
        let [files, database] = from_both_copies(&db, out, &args);
        for (code, stdout, stderr) in [&files, &database] {
            assert_eq!(code, &Some(1), "{args:?}: {stdout}{stderr}");
            assert_eq!(stdout, "", "{args:?}");
        }
        assert_eq!(message(&files.2), message(&database.2), "{args:?}");
        assert_eq!(
            message(&files.2),
            "nothing matched: no row of public.quiet; if the name is right, the table has had \
             no change there (audit-tail tracked lists the tracked tables)"
        );
        assert!(
            files
                .2
                .contains(&format!("in 1 file of audit.log in {out} (day {today})")),
            "the files read: {}",
            files.2
        );
        assert!(
            database.2.contains("in the database's audit.log"),
            "{}",
            database.2
        );
    }

    // A name the database neither tracks nor logged: it can tell, and says what to check.
    let [files, database] = from_both_copies(&db, out, &["history", "nope", "1"]);
    assert_eq!(files.0, Some(1), "{}", files.2);
    assert_eq!(database.0, Some(2), "{}", database.2);
    assert!(
        database.2.contains(
            "public.nope is not tracked and the database's audit.log holds no row of it: \
             check the name (audit-tail tracked lists the tracked tables)"
        ),
        "{}",
        database.2
    );

    // A user with no change: nothing on stdout, and stderr says what was searched.
    let [files, database] = from_both_copies(&db, out, &["history", "users", "8"]);
    for (code, stdout, stderr) in [&files, &database] {
        assert_eq!((code, stdout.as_str()), (&Some(1), ""), "{stderr}");
    }
    assert!(
        files.2.contains(&format!(
            "nothing matched: no change of user 8 in 1 file of users_audit in {out} (day {today})"
        )),
        "{}",
        files.2
    );
    assert!(
        database
            .2
            .contains("nothing matched: no change of user 8 in the database's users_audit"),
        "{}",
        database.2
    );
    assert_eq!(message(&files.2), message(&database.2));

    // Days with no file: the days asked are named.
    let [files, _] = from_both_copies(
        &db,
        out,
        &[
            "history",
            "busy",
            "1",
            "--since",
            "2001-01-01",
            "--until",
            "2001-01-02",
        ],
    );
    assert_eq!(files.0, Some(1), "{}", files.2);
    assert!(
        files.2.contains(&format!(
            "nothing matched: no change of public.busy {{\"id\":1}} from 2001-01-01 00:00:00 to \
             2001-01-02 00:00:00 in no file of audit.log in {out} for days 2001-01-01 to 2001-01-02"
        )),
        "{}",
        files.2
    );
    // A log question that matched nothing says its filters.
    let [files, database] = from_both_copies(&db, out, &["log", "--actor", "nobody"]);
    for (code, _, stderr) in [&files, &database] {
        assert_eq!(code, &Some(1), "{stderr}");
    }
    assert!(
        files.2.contains(&format!(
            "nothing matched: no change by nobody in 1 file of users_audit in {out} (day {today}) \
             and 1 file of audit.log in {out} (day {today})"
        )),
        "{}",
        files.2
    );
    assert_eq!(message(&files.2), message(&database.2));
}
