//! `history --at` against the truth: snapshots of a tracked table taken at random moments of a
//! random workload, and of users, compared with what `history` rebuilds from the stream's files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::sql::server_now;
use common::{Rng, TestDb, catch_up, run_audit_tail, streamed_log};
use serde_json::Value;
use tokio_postgres::Client;

const KEYS: i64 = 12;

/// The table as it is now: id → row as JSON, and the moment (psql's text, with zone).
async fn snapshot(client: &Client) -> (String, BTreeMap<i64, Value>) {
    let row = client
        .query_one(
            "SELECT clock_timestamp()::text, \
             coalesce((SELECT jsonb_object_agg(id, to_jsonb(i)) FROM items i), '{}')::text",
            &[],
        )
        .await
        .unwrap();
    let rows: BTreeMap<String, Value> = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
    let rows = rows
        .into_iter()
        .map(|(id, row)| (id.parse().unwrap(), row))
        .collect();
    (row.get::<_, String>(0), rows)
}

/// One random change (or a transaction of several): inserts (re-inserting deleted keys), updates
/// of values and of the key, deletes.
async fn random_change(client: &Client, rng: &mut Rng) {
    let k = rng.below(KEYS as u64) as i64;
    let k2 = rng.below(KEYS as u64) as i64;
    let name = match rng.below(4) {
        0 => "NULL".to_string(),
        1 => "''".to_string(),
        _ => format!("'n{}, \"q\"'", rng.below(1000)),
    };
    let insert = format!(
        "INSERT INTO items VALUES ({k}, {name}, {}) ON CONFLICT DO NOTHING",
        rng.below(50)
    );
    let update = format!("UPDATE items SET name = {name}, qty = qty + 1 WHERE id = {k}");
    let rekey = format!(
        "UPDATE items SET id = {k2} WHERE id = {k} AND NOT EXISTS (SELECT FROM items WHERE id = {k2})"
    );
    let delete = format!("DELETE FROM items WHERE id = {k}");
    let sql = match rng.below(6) {
        0 | 1 => insert,
        2 => update,
        3 => rekey,
        4 => delete,
        _ => format!("BEGIN; {update}; {rekey}; {insert}; {delete}; COMMIT"),
    };
    client.batch_execute(&sql).await.unwrap();
}

fn history_at(
    out: &Path,
    table: &str,
    key: &str,
    at: &str,
    extra: &[&str],
) -> (Option<i32>, Value, String) {
    let mut args = vec![
        "history",
        table,
        key,
        "--at",
        at,
        "--format",
        "json",
        "--tz",
        "UTC",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (code, stdout, stderr) = run_audit_tail(&args);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "history --at --format json prints one line: {stdout:?} {stderr}"
    );
    (code, serde_json::from_str(lines[0]).unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn history_at_every_snapshot_equals_the_table() {
    let (db, out, client) = streamed_log("hist_truth").await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int); \
             SELECT audit.track('public.items');",
        )
        .await
        .unwrap();
    let mut rng = Rng::from_env_or_clock("history_truth");
    let mut snapshots = vec![snapshot(&client).await];
    for _ in 0..25 {
        for _ in 0..rng.below(8) {
            random_change(&client, &mut rng).await;
        }
        snapshots.push(snapshot(&client).await);
    }
    catch_up(&db, out.path());
    let seed = rng.seed;
    let conninfo = db.cluster.conninfo(&db.name);
    let mut present = 0;
    for (at, rows) in &snapshots {
        for key in 0..KEYS {
            let want = rows.get(&key).cloned().unwrap_or(Value::Null);
            for (source, extra) in [("files", vec![]), ("database", vec!["--dsn", &conninfo])] {
                let (code, got, stderr) =
                    history_at(out.path(), "public.items", &key.to_string(), at, &extra);
                assert_eq!(
                    got, want,
                    "seed {seed}: items {key} at {at} from the {source}: {stderr}"
                );
                assert_eq!(
                    code,
                    Some(if want.is_null() { 1 } else { 0 }),
                    "seed {seed}: {stderr}"
                );
            }
            present += usize::from(!want.is_null());
        }
    }
    assert!(present > 0, "seed {seed}: no snapshot held a row");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_at_a_moment_as_far_as_the_trail_tells() {
    let db = TestDb::new("hist_users");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO users (id, name, email, role) VALUES (3, 'Ann', 'a@x', 'admin')",
        )
        .await
        .unwrap();
    let before = server_now(&client).await;
    client
        .batch_execute("UPDATE users SET name = 'Anna' WHERE id = 3")
        .await
        .unwrap();
    let middle = server_now(&client).await;
    client
        .batch_execute("UPDATE users SET email = NULL, name = 'Annie' WHERE id = 3")
        .await
        .unwrap();
    let after = server_now(&client).await;
    catch_up(&db, out.path());
    let out = out.path();
    let (code, got, stderr) = history_at(out, "users", "3", &before, &[]);
    assert_eq!(
        (code, got),
        (
            Some(0),
            serde_json::json!({"id": 3, "name": "Ann", "email": "a@x"})
        )
    );
    assert!(stderr.contains("cannot tell role"), "{stderr}");
    let (_, got, _) = history_at(out, "users", "3", &middle, &[]);
    assert_eq!(
        got,
        serde_json::json!({"id": 3, "name": "Anna", "email": "a@x"})
    );
    let (_, got, _) = history_at(out, "users", "3", &after, &[]);
    assert_eq!(
        got,
        serde_json::json!({"id": 3, "name": "Annie", "email": null})
    );
    let (_, got, _) = history_at(out, "users", "3", &after, &["--field", "name"]);
    assert_eq!(got, serde_json::json!({"name": "Annie"}));
    let (code, got, _) = history_at(out, "users", "4", &after, &[]);
    assert_eq!((code, got), (Some(1), Value::Null));
}

#[tokio::test(flavor = "multi_thread")]
async fn both_copies_flag_the_row_a_superuser_edited() {
    let (db, out, client) = streamed_log("hist_both").await;
    client
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, owner text); \
             SELECT audit.track('public.acct'); \
             INSERT INTO acct VALUES (1, 'ann'), (2, 'bob'); \
             BEGIN; SET LOCAL audit.actor = 'mallory'; \
             UPDATE acct SET owner = 'mallory' WHERE id = 1; COMMIT;",
        )
        .await
        .unwrap();
    // A change over TCP: the log records the client's address, which the database's text cast
    // and the files' COPY text spell differently ("127.0.0.1/32" against "127.0.0.1").
    let (tcp, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            db.cluster.port(),
            db.name
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    tcp.batch_execute("UPDATE acct SET owner = 'bobby' WHERE id = 2")
        .await
        .unwrap();
    drop(tcp);
    catch_up(&db, out.path());
    let conninfo = db.cluster.conninfo(&db.name);
    let out = out.path().to_str().unwrap();
    let both = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--out-dir", out, "--dsn", &conninfo, "--both"]);
        run_audit_tail(&all)
    };
    let (code, stdout, stderr) = both(&["history", "acct", "1"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("DIFFERS"), "{stdout}");
    // The superuser covers the tracks: the update is now someone else's.
    let edited: String = client
        .query_one(
            "UPDATE audit.log SET actor = 'ann' WHERE actor = 'mallory' RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, stdout, _) = both(&["history", "acct", "1"]);
    assert_eq!(code, Some(1), "{stdout}");
    let flagged: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("DIFFERS"))
        .collect();
    assert_eq!(
        flagged,
        [format!(
            "DIFFERS audit.log id {edited}: actor: database \"ann\", files \"mallory\""
        )],
        "{stdout}"
    );
    assert!(stdout.contains("by mallory"), "the files' answer: {stdout}");
    // A state at a moment stays one JSON line; the flag goes to stderr.
    let (code, stdout, stderr) = both(&["history", "acct", "1", "--at", "now", "--format", "json"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(1), "{\"id\":1,\"owner\":\"mallory\"}\n")
    );
    assert!(
        stderr.contains(&format!("DIFFERS audit.log id {edited}: actor")),
        "{stderr}"
    );
    let (code, stdout, _) = both(&["history", "acct", "2"]);
    assert_eq!(code, Some(0), "the other record agrees: {stdout}");
    // A row deleted from the log is in the files only; `log --both` names it, in JSON too.
    client
        .batch_execute(&format!("DELETE FROM audit.log WHERE id = {edited}"))
        .await
        .unwrap();
    let (code, stdout, _) = both(&["log", "--table", "acct", "--format", "json"]);
    assert_eq!(code, Some(1), "{stdout}");
    let differs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("differs").is_some())
        .collect();
    assert_eq!(differs.len(), 1, "{stdout}");
    assert_eq!(differs[0]["differs"]["id"], Value::String(edited));
    assert_eq!(differs[0]["differs"]["database"], Value::Null);
}
