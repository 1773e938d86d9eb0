//! The questions an audit trail exists to answer, each by one command, checked against SQL over
//! the database: PostgreSQL-Audit's three (who modified record x on day d, what did person p do
//! between t1 and t2, the activity history of record x) and the audit_logs proposal's (changes to
//! one field, counts by table and operation, bursts of one actor), from the files and from the
//! database.

mod common;

use std::collections::BTreeSet;

use common::sql::{server_now, strings};
use common::{TestDb, catch_up, run_audit_tail, streamed_log};
use serde_json::Value;

/// `audit-tail ARGS --format json` from the files and from the database: both give the same
/// lines, returned as JSON values.
fn ask(db: &TestDb, out: &str, args: &[&str]) -> Vec<Value> {
    let conninfo = db.cluster.conninfo(&db.name);
    let mut answers = Vec::new();
    for extra in [vec![], vec!["--dsn", conninfo.as_str()]] {
        let mut all = args.to_vec();
        all.extend(["--format", "json", "--tz", "UTC", "--out-dir", out]);
        all.extend(extra);
        let (code, stdout, stderr) = run_audit_tail(&all);
        assert!(matches!(code, Some(0 | 1)), "{all:?}: {stderr}");
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            code == Some(0),
            !lines.is_empty(),
            "{all:?}: {stdout}{stderr}"
        );
        answers.push(lines);
    }
    assert_eq!(
        answers[0], answers[1],
        "{args:?}: files and database differ"
    );
    answers.remove(0)
}

/// The `id`s of audit.log rows in an answer (users_audit rows are marked with their table).
fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| match r.get("table") {
            Some(t) => format!("{}#{}", t.as_str().unwrap(), r["id"]),
            None => r["id"].to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_question_is_one_command() {
    let (db, out_dir, client) = streamed_log("hist_questions").await;
    let as_actor = |actor: &str, sql: &str| {
        format!("BEGIN; SET LOCAL audit.actor = '{actor}'; {sql}; COMMIT;")
    };
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, total int); \
             SELECT audit.track('public.orders'); \
             INSERT INTO users (id, name, email, role) VALUES (7, 'Bo', 'bo@x', 'staff');",
        )
        .await
        .unwrap();
    client
        .batch_execute(&as_actor(
            "alice",
            "INSERT INTO orders VALUES (1, 'new', 10), (2, 'new', 5)",
        ))
        .await
        .unwrap();
    let t1 = server_now(&client).await;
    client
        .batch_execute(&as_actor(
            "bob",
            "UPDATE orders SET status = 'paid' WHERE id = 1; UPDATE users SET role = 'admin' WHERE id = 7",
        ))
        .await
        .unwrap();
    client
        .batch_execute(&as_actor(
            "bob",
            "UPDATE orders SET total = 11 WHERE id = 1",
        ))
        .await
        .unwrap();
    let t2 = server_now(&client).await;
    client
        .batch_execute(&as_actor(
            "carol",
            "UPDATE orders SET total = total + 1; UPDATE orders SET total = total + 1; \
             UPDATE orders SET status = 'sent'; DELETE FROM orders WHERE id = 2",
        ))
        .await
        .unwrap();
    client
        .batch_execute(&as_actor("bob", "UPDATE orders SET total = 1 WHERE id = 1"))
        .await
        .unwrap();
    catch_up(&db, out_dir.path());
    let out = out_dir.path().to_str().unwrap();
    let today: String = client
        .query_one("SELECT current_date::text", &[])
        .await
        .unwrap()
        .get(0);
    let record = "(key = '{\"id\": 1}' OR old_key = '{\"id\": 1}')";

    // 1. Who modified order 1 today?
    let answer = ask(
        &db,
        out,
        &[
            "history",
            "orders",
            "1",
            "--since",
            &today,
            "--until",
            &format!("{today} 23:59:59.999999"),
        ],
    );
    let who: BTreeSet<&str> = answer
        .iter()
        .map(|r| r["actor"].as_str().unwrap())
        .collect();
    let want: BTreeSet<String> = strings(&client, &format!(
        "SELECT DISTINCT actor FROM audit.log WHERE {record} AND changed_at::date = current_date"
    ))
    .await
    .into_iter()
    .collect();
    assert_eq!(who, want.iter().map(String::as_str).collect(), "{answer:?}");
    assert_eq!(who, BTreeSet::from(["alice", "bob", "carol"]));

    // 2. What did bob do between t1 and t2? Both trails: his order updates and the users change.
    let answer = ask(
        &db,
        out,
        &["log", "--actor", "bob", "--since", &t1, "--until", &t2],
    );
    let mut want = strings(&client, &format!(
        "SELECT id::text AS ident FROM audit.log WHERE actor = 'bob' AND changed_at BETWEEN '{t1}' AND '{t2}' ORDER BY id"
    ))
    .await;
    want.extend(
        strings(
            &client,
            "SELECT 'public.users#' || id FROM users_audit WHERE changed_by = 'bob'",
        )
        .await,
    );
    let mut got = ids(&answer);
    got.sort();
    want.sort();
    assert_eq!(got, want, "{answer:?}");
    assert_eq!(got.len(), 3);

    // 3. The activity history of order 1, oldest first.
    let answer = ask(&db, out, &["history", "orders", "1"]);
    let want = strings(
        &client,
        &format!("SELECT id::text AS ident FROM audit.log WHERE {record} ORDER BY id"),
    )
    .await;
    assert_eq!(ids(&answer), want);
    assert_eq!(want.len(), 7);

    // Changes to one field: order 1's status (and its insert).
    let answer = ask(&db, out, &["history", "orders", "1", "--field", "status"]);
    let want = strings(&client, &format!(
        "SELECT id::text AS ident FROM audit.log WHERE {record} AND (op <> 'UPDATE' OR 'status' = ANY (changed_columns)) ORDER BY id"
    ))
    .await;
    assert_eq!(ids(&answer), want);
    assert_eq!(want.len(), 3);

    // Counts by table and operation, in changes: one record changed by one transaction (carol's
    // transaction changed order 1 and 2 by six UPDATE rows and deleted 2: two UPDATE changes, one
    // DELETE change).
    let answer = ask(&db, out, &["log", "--stats", "--by", "table,op"]);
    let got: BTreeSet<String> = answer
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["table"].as_str().unwrap(),
                r["op"].as_str().unwrap(),
                r["changes"]
            )
        })
        .collect();
    let mut want: BTreeSet<String> = strings(
        &client,
        "SELECT schema_name || '.' || table_name || ' ' || op || ' ' || count(DISTINCT (txid, key::text)) \
         FROM audit.log WHERE table_name IS NOT NULL GROUP BY schema_name, table_name, op",
    )
    .await
    .into_iter()
    .collect();
    want.insert("public.users UPDATE 1".to_string());
    assert_eq!(got, want, "{answer:?}");
    assert!(got.contains("public.orders UPDATE 5"), "{got:?}");

    // Bursts: who made at least 4 changes within one hour? bob (order 1 three times, user 7
    // once); carol wrote 7 rows but changed 2 records in one transaction.
    let answer = ask(
        &db,
        out,
        &["log", "--stats", "--by", "actor,hour", "--min", "4"],
    );
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(
        (answer[0]["actor"].as_str(), answer[0]["changes"].as_u64()),
        (Some("bob"), Some(4))
    );
    let answer = ask(&db, out, &["log", "--stats", "--by", "actor", "--min", "5"]);
    assert!(answer.is_empty());
}
