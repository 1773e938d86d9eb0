//! The generic log (sql/audit_log.sql: audit.log, audit.track/untrack/tracked) and the `track`,
//! `untrack` and `tracked` commands, against a real throwaway PostgreSQL.

mod common;

use common::install::audit_log_sql_alone;
use common::sql::strings;
use common::{
    TestDb, catch_up, copy_out, csv_records, install_audit_log, log_with, run_audit_tail,
    streamed_log,
};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// Every row of audit.log, oldest first, as JSON objects (without the columns that differ from
/// run to run: id, times, txid, client_addr).
async fn log_rows(client: &Client) -> Vec<Value> {
    client
        .query(
            "SELECT (to_jsonb(l) - 'id' - 'changed_at' - 'statement_at' - 'txid' - 'client_addr')::text \
             FROM audit.log l ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect()
}

/// The fields of `row` named in `fields`, as an object (to compare a part of a log row).
fn pick(row: &Value, fields: &[&str]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|f| (f.to_string(), row[*f].clone()))
            .collect(),
    )
}

async fn count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM audit.log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_with_actor_context_and_row_images() {
    let (_db, client) = log_with(
        "log_ops",
        "CREATE TABLE orders (id int PRIMARY KEY, status text, note text, total numeric); \
             SELECT audit.track('public.orders');",
    )
    .await;
    client
        .batch_execute(
            "BEGIN; \
             SET LOCAL audit.actor = 'alice@example.com'; SET LOCAL audit.reason = 'ticket 42'; \
             SET LOCAL audit.request_id = 'req-1'; SET LOCAL audit.migration = '0007'; \
             SET LOCAL audit.context = '{\"tenant\": 7}'; SET LOCAL application_name = 'shop'; \
             INSERT INTO orders VALUES (1, 'draft', NULL, 10.50), (2, 'paid', '', 3); \
             COMMIT; \
             UPDATE orders SET note = '', status = 'sent' WHERE id = 1; \
             UPDATE orders SET note = NULL WHERE id = 2; \
             UPDATE orders SET status = status; \
             DELETE FROM orders WHERE id = 2; \
             TRUNCATE orders;",
        )
        .await
        .unwrap();
    let rows = log_rows(&client).await;
    let context = [
        "actor",
        "reason",
        "request_id",
        "migration",
        "context",
        "application_name",
    ];
    assert_eq!(
        pick(&rows[0], &context),
        json!({"actor": "alice@example.com", "reason": "ticket 42", "request_id": "req-1",
               "migration": "0007", "context": {"tenant": 7}, "application_name": "shop"})
    );
    let what = [
        "op",
        "schema_name",
        "table_name",
        "key",
        "old_key",
        "new_row",
        "old_values",
        "changed_columns",
    ];
    let got: Vec<Value> = rows.iter().map(|r| pick(r, &what)).collect();
    let row = |op: &str, key: Value, new: Value, old: Value, changed: Value| {
        json!({"op": op, "schema_name": "public", "table_name": "orders", "key": key,
               "old_key": null, "new_row": new, "old_values": old, "changed_columns": changed})
    };
    assert_eq!(
        got,
        vec![
            row(
                "INSERT",
                json!({"id": 1}),
                json!({"id": 1, "status": "draft", "note": null, "total": 10.50}),
                json!(null),
                json!(null)
            ),
            row(
                "INSERT",
                json!({"id": 2}),
                json!({"id": 2, "status": "paid", "note": "", "total": 3}),
                json!(null),
                json!(null)
            ),
            // NULL -> '' and '' -> NULL are changes, in the table's column order.
            row(
                "UPDATE",
                json!({"id": 1}),
                json!({"id": 1, "status": "sent", "note": "", "total": 10.50}),
                json!({"status": "draft", "note": null}),
                json!(["status", "note"])
            ),
            row(
                "UPDATE",
                json!({"id": 2}),
                json!({"id": 2, "status": "paid", "note": null, "total": 3}),
                json!({"note": ""}),
                json!(["note"])
            ),
            // The no-op UPDATE wrote nothing; the DELETE keeps the whole old row.
            row(
                "DELETE",
                json!({"id": 2}),
                json!(null),
                json!({"id": 2, "status": "paid", "note": null, "total": 3}),
                json!(null)
            ),
            row(
                "TRUNCATE",
                json!(null),
                json!(null),
                json!(null),
                json!(null)
            ),
        ]
    );
    // Outside the transaction that set them, the context is gone and the actor is the login.
    let user: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pick(&rows[2], &context),
        json!({"actor": user, "reason": null, "request_id": null, "migration": null,
               "context": null, "application_name": null})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_keys_and_key_changes() {
    let (_db, client) = log_with(
        "log_keys",
        "CREATE TABLE lines (order_id int, n int, qty int, PRIMARY KEY (order_id, n)); \
             SELECT audit.track('lines'); \
             INSERT INTO lines VALUES (1, 1, 5); \
             UPDATE lines SET qty = 6; \
             UPDATE lines SET n = 2, qty = 7;",
    )
    .await;
    let rows = log_rows(&client).await;
    let got: Vec<Value> = rows
        .iter()
        .map(|r| pick(r, &["key", "old_key", "old_values", "changed_columns"]))
        .collect();
    assert_eq!(
        got,
        vec![
            json!({"key": {"order_id": 1, "n": 1}, "old_key": null, "old_values": null,
                   "changed_columns": null}),
            json!({"key": {"order_id": 1, "n": 1}, "old_key": null, "old_values": {"qty": 5},
                   "changed_columns": ["qty"]}),
            json!({"key": {"order_id": 1, "n": 2}, "old_key": {"order_id": 1, "n": 1},
                   "old_values": {"n": 1, "qty": 6}, "changed_columns": ["n", "qty"]}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_only_redact_and_when() {
    let (_db, client) = log_with(
        "log_options",
        "CREATE TABLE accounts (id int PRIMARY KEY, email text, card text, updated_at timestamp, \
                                    status text); \
             SELECT audit.track('accounts', ignore => ARRAY['updated_at'], redact => ARRAY['card']); \
             INSERT INTO accounts VALUES (1, 'a@x', '4111-1111-1111-1111', now(), 'draft');",
    )
    .await;
    assert_eq!(count(&client).await, 1);
    // An UPDATE of ignored columns alone writes nothing, and does not even call the function:
    // the trigger's WHEN decides.
    client
        .batch_execute(
            "BEGIN; SET LOCAL track_functions = 'pl'; \
             UPDATE accounts SET updated_at = updated_at + interval '1 day'; \
             UPDATE accounts SET status = status; \
             CREATE TEMP TABLE calls AS SELECT coalesce(sum(calls), 0)::bigint AS n \
             FROM pg_stat_xact_user_functions WHERE schemaname = 'audit' AND funcname = 'log_change'; \
             COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(
        count(&client).await,
        1,
        "an ignore-only update is not logged"
    );
    let calls: i64 = client
        .query_one("SELECT n FROM calls", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        calls, 0,
        "the trigger function was called for an ignore-only update"
    );
    client
        .batch_execute(
            "UPDATE accounts SET card = '5500-0000-0000-0004', updated_at = now() WHERE id = 1; \
             DELETE FROM accounts;",
        )
        .await
        .unwrap();
    let rows = log_rows(&client).await;
    assert_eq!(
        pick(&rows[1], &["new_row", "old_values", "changed_columns"]),
        json!({"new_row": {"id": 1, "email": "a@x", "card": "[redacted]", "status": "draft"},
               "old_values": {"card": "[redacted]"}, "changed_columns": ["card"]})
    );
    let everything: String = client
        .query_one("SELECT string_agg(l::text, ' ') FROM audit.log l", &[])
        .await
        .unwrap()
        .get(0);
    for secret in ["4111", "5500", "0004"] {
        assert!(
            !everything.contains(secret),
            "{secret} reached the log: {everything}"
        );
    }

    // Tracking again replaces the options: only status now, and only rows that are not drafts.
    client
        .batch_execute(
            "SELECT audit.track('accounts', \"only\" => ARRAY['status'], \"when\" => 'NEW.status <> ''draft'''); \
             DELETE FROM audit.log WHERE false; \
             INSERT INTO accounts VALUES (2, 'b@x', 'c', now(), 'draft'), (3, 'c@x', 'c', now(), 'open'); \
             UPDATE accounts SET email = 'changed', card = 'other';",
        )
        .await
        .unwrap();
    let rows = log_rows(&client).await;
    let new: Vec<Value> = rows[3..]
        .iter()
        .map(|r| pick(r, &["op", "new_row"]))
        .collect();
    assert_eq!(
        new,
        vec![json!({"op": "INSERT", "new_row": {"id": 3, "status": "open"}})],
        "the draft and the updates of unaudited columns are not logged"
    );
    let tracked: String = client
        .query_one(
            "SELECT json_agg(json_build_object('table', \"table\", 'only', \"only\", \
             'redact', redact, 'when', \"when\"))::text FROM audit.tracked",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        serde_json::from_str::<Value>(&tracked).unwrap(),
        json!([{"table": "public.accounts", "only": ["status"], "redact": null,
                "when": "NEW.status <> 'draft'"}])
    );

    // Untracked: nothing more is logged, what was logged stays.
    let before = count(&client).await;
    client
        .batch_execute(
            "SELECT audit.untrack('accounts'); \
             INSERT INTO accounts VALUES (4, 'd@x', 'c', now(), 'open'); TRUNCATE accounts;",
        )
        .await
        .unwrap();
    assert_eq!(count(&client).await, before);
    let tracked: i64 = client
        .query_one("SELECT count(*) FROM audit.tracked", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tracked, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_it_cannot_audit_and_unknown_columns_are_refused() {
    let db = TestDb::new("log_refuse");
    install_audit_log(&db);
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE events (at timestamp, what text); CREATE TABLE t (id int PRIMARY KEY, a text); CREATE VIEW v AS SELECT * FROM t; \
             CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id)")
        .await
        .unwrap();
    for (call, words) in [
        ("SELECT audit.track('events')", "it has no primary key"),
        (
            "SELECT audit.track('t', ignore => ARRAY['nope'])",
            "has no column nope",
        ),
        (
            "SELECT audit.track('t', redact => ARRAY['b'])",
            "has no column b",
        ),
        (
            "SELECT audit.track('t', redact => ARRAY['id'])",
            "it is the key",
        ),
        (
            "SELECT audit.track('t', \"only\" => ARRAY['a'], ignore => ARRAY['a'])",
            "not both",
        ),
        ("SELECT audit.track('audit.log')", "the log itself"),
        ("SELECT audit.track('v')", "it is not a table"),
        ("SELECT audit.track('p')", "it is a partitioned table"),
    ] {
        let err = client.batch_execute(call).await.unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{call}: {err}"));
        assert!(db_err.message().contains(words), "{call}: {db_err:?}");
        if words == "it has no primary key" {
            assert!(
                db_err.hint().unwrap().contains("add a primary key"),
                "{db_err:?}"
            );
        }
    }
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('events'::regclass, 't'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "a refused track leaves no trigger behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_role_is_logged_but_cannot_tamper() {
    let db = TestDb::new("log_tamper");
    install_audit_log(&db);
    let owner = db.client().await;
    let app = db.create_role("app", "LOGIN");
    owner
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); \
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON orders TO \"{app}\"; \
             SELECT audit.track('orders');"
        ))
        .await
        .unwrap();
    let client = db.client_as(&app).await;
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new'); UPDATE orders SET status = 'paid'; \
             BEGIN; SET LOCAL audit.actor = 'bob'; DELETE FROM orders; COMMIT;",
        )
        .await
        .expect("the application's writes go on, and are logged");
    let actors: Vec<String> = log_rows(&owner)
        .await
        .iter()
        .map(|r| r["actor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actors, vec![app.clone(), app.clone(), "bob".to_string()]);

    for statement in [
        "INSERT INTO audit.log (op, schema_name, table_name, actor) VALUES ('INSERT', 'x', 'y', 'z')",
        "UPDATE audit.log SET actor = 'someone else'",
        "DELETE FROM audit.log",
        "TRUNCATE audit.log",
        "SELECT * FROM audit.log",
        "SELECT audit.untrack('orders')",
        "SELECT audit.track('orders')",
        "DELETE FROM audit.tracked_tables",
    ] {
        let err = client.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err:?}"
        );
    }
    assert_eq!(count(&owner).await, 3);

    // A write grant given by mistake is taken back by running the script again, which keeps the
    // rows and what is tracked.
    owner
        .batch_execute(&format!("GRANT INSERT, DELETE ON audit.log TO \"{app}\"; GRANT USAGE ON SCHEMA audit TO \"{app}\""))
        .await
        .unwrap();
    install_audit_log(&db);
    let err = client
        .batch_execute("DELETE FROM audit.log")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert_eq!(count(&owner).await, 3);
    client
        .batch_execute("INSERT INTO orders VALUES (2, 'new')")
        .await
        .unwrap();
    assert_eq!(count(&owner).await, 4, "still tracked after the re-install");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_writes_the_log_copy_identical() {
    // The slot exists from here on: what follows is streamed.
    let (db, out, client) = streamed_log("log_stream").await;
    client
        .batch_execute(
            "CREATE TABLE odd (a int, b text, c jsonb, d timestamptz, e numeric, f text[], \
                               PRIMARY KEY (a, b)); \
             SELECT audit.track('odd'); \
             BEGIN; SET LOCAL audit.context = '{\"k\": \"line1\\nline2, \\\"q\\\"\"}'; \
             SET LOCAL audit.reason = 'a,b \"c\"'; \
             INSERT INTO odd VALUES (1, '', 'null', now(), 1.50, '{x,NULL,\"y z\"}'), \
                                    (2, E'\\\\.', '{\"é\": [1, \"\\\\u0000x\"]}', NULL, NULL, NULL), \
                                    (3, 'NULL', NULL, 'infinity', 'NaN', '{}'); \
             COMMIT; \
             UPDATE odd SET b = 'x', c = '\"\"' WHERE a = 1; \
             DELETE FROM odd WHERE a = 3; TRUNCATE odd;",
        )
        .await
        .unwrap();
    catch_up(&db, out.path());
    let days = strings(
        &client,
        "SELECT DISTINCT to_char(changed_at, 'YYYYMMDD') FROM audit.log ORDER BY 1",
    )
    .await;
    assert!(!days.is_empty());
    let mut rows = 0;
    for day in &days {
        let file = out.path().join(format!("audit.log_stream_{day}.csv"));
        let stream = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let reference = copy_out(
            &client,
            &format!(
                "SELECT * FROM audit.log WHERE to_char(changed_at, 'YYYYMMDD') = '{day}' ORDER BY id"
            ),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&stream),
            String::from_utf8_lossy(&reference),
            "the stream's file of {day} is COPY's bytes"
        );
        rows += csv_records(&reference).len() - 1;
    }
    assert_eq!(rows, 6, "3 inserts, 1 update, 1 delete, 1 truncate");
}

#[tokio::test(flavor = "multi_thread")]
async fn track_untrack_and_tracked_commands() {
    let (db, _client) = log_with(
        "log_cli",
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY, status text, \
             updated_at timestamp, card text); CREATE TABLE shop.nokey (a int)",
    )
    .await;
    let dsn = db.cluster.conninfo(&db.name);
    let (code, _, err) = run_audit_tail(&[
        "track",
        "shop.orders",
        "--ignore",
        "updated_at",
        "--redact",
        "card",
        "--when",
        "NEW.status <> 'draft'",
        "--dsn",
        &dsn,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run_audit_tail(&["tracked", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("shop.orders"), "{out}");
    assert!(out.contains("ignore updated_at"), "{out}");
    assert!(out.contains("redact card"), "{out}");
    assert!(out.contains("when NEW.status <> 'draft'"), "{out}");
    let (code, out, err) = run_audit_tail(&["tracked", "--format", "json", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        json!([{"table": "shop.orders", "key": ["id"], "only": null, "ignore": ["updated_at"],
                "redact": ["card"], "when": "NEW.status <> 'draft'", "bulk": false}])
    );
    // Again with other options: replaced.
    let (code, _, err) = run_audit_tail(&[
        "track",
        "shop.orders",
        "--only",
        "status,card",
        "--bulk",
        "--dsn",
        &dsn,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run_audit_tail(&["tracked", "--format", "json", "--dsn", &dsn]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["only"], json!(["status", "card"]));
    assert_eq!(json[0]["ignore"], json!(null));
    assert_eq!(json[0]["bulk"], json!(true));
    let (_, out, _) = run_audit_tail(&["tracked", "--dsn", &dsn]);
    assert!(out.contains("  bulk"), "{out}");
    // --bulk and --when exclude each other (a when condition is evaluated row by row): exit 2.
    let (code, _, err) = run_audit_tail(&[
        "track",
        "shop.orders",
        "--bulk",
        "--when",
        "true",
        "--dsn",
        &dsn,
    ]);
    assert_eq!(code, Some(2), "{err}");

    // The server's refusal, in its words (with its hint): exit 1.
    let (code, _, err) = run_audit_tail(&["track", "shop.nokey", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("it has no primary key"), "{err}");
    assert!(err.contains("add a primary key"), "{err}");
    let (code, _, err) = run_audit_tail(&["track", "shop.missing", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("\"shop.missing\" does not exist"), "{err}");
    // Bad arguments: exit 2.
    let (code, _, err) = run_audit_tail(&["track", "--dsn", &dsn]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run_audit_tail(&[
        "track",
        "shop.orders",
        "--only",
        "a",
        "--ignore",
        "b",
        "--dsn",
        &dsn,
    ]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run_audit_tail(&["track", "shop.orders", "--only", "", "--dsn", &dsn]);
    assert_eq!(code, Some(2), "{err}");

    let (code, out, err) = run_audit_tail(&["untrack", "shop.orders", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("shop.orders is no longer tracked"), "{out}");
    let (code, _, err) = run_audit_tail(&["untrack", "shop.orders", "--dsn", &dsn]);
    assert_eq!(code, Some(1), "nothing matched: {err}");
    assert!(err.contains("shop.orders is not tracked"), "{err}");
    let (code, out, err) = run_audit_tail(&["tracked", "--dsn", &dsn]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no table is tracked"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_installs_the_log_and_can_run_again() {
    let db = TestDb::new("log_setup");
    let dsn = db.cluster.conninfo(&db.name);
    let dir = db.export_dir();
    let dir = dir.to_str().unwrap();
    // audit_log.sql alone says what to run first.
    let out = audit_log_sql_alone(&db, &db.name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("run sql/install.sql first"), "{stderr}");

    for _ in 0..2 {
        let (code, _, err) = run_audit_tail(&["setup", "--export-dir", dir, "--dsn", &dsn]);
        assert_eq!(code, Some(0), "{err}");
        let client = db.client().await;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY); SELECT audit.track('t'); \
                 INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t",
            )
            .await
            .unwrap();
    }
    let client = db.client().await;
    assert_eq!(
        count(&client).await,
        2,
        "the second setup kept the first row"
    );
    let published = strings(
        &client,
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
             WHERE pubname = 'users_audit_pub' ORDER BY 1",
    )
    .await;
    assert_eq!(published, vec!["audit.log", "public.users_audit"]);
}
