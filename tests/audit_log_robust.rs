//! The generic log under pressure: pausing auditing (audit.pause/resume, only for audit_admin),
//! tracking across pg_dump and pg_restore, and the midnight rule (one transaction, one day),
//! against a real throwaway PostgreSQL.

mod common;

use common::sql::strings;
use common::{TestDb, catch_up, install_audit_log, log_with, streamed_log};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// op, table, key, actor and reason of every audit.log row, oldest first.
async fn log_rows(client: &Client) -> Vec<Value> {
    client
        .query(
            "SELECT jsonb_build_object('op', op, 'table', table_name, 'key', key, \
                                       'actor', actor, 'reason', reason)::text \
             FROM audit.log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect()
}

fn row(op: &str, id: Option<i32>, actor: &str, reason: Option<&str>) -> Value {
    json!({"op": op, "table": id.map(|_| "orders"), "key": id.map(|id| json!({"id": id})),
           "actor": actor, "reason": reason})
}

/// A tracked table `orders` that `roles` may write.
async fn orders(owner: &Client, roles: &[&str]) {
    owner
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders');",
        )
        .await
        .unwrap();
    for role in roles {
        owner
            .batch_execute(&format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO \"{role}\""
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_designated_role_pauses_and_the_switch_is_logged() {
    let db = TestDb::new("robust_pause");
    install_audit_log(&db);
    let owner = db.client().await;
    let admin = db.create_role("admin", "LOGIN IN ROLE audit_admin");
    orders(&owner, &[&admin]).await;
    let client = db.client_as(&admin).await;
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new'); \
             BEGIN; SELECT audit.pause('bulk load 2025-10'); \
             INSERT INTO orders VALUES (2, 'new'), (3, 'new'); UPDATE orders SET status = 'x'; \
             SELECT audit.resume(); \
             INSERT INTO orders VALUES (4, 'new'); COMMIT; \
             INSERT INTO orders VALUES (5, 'new'); \
             BEGIN; SELECT audit.pause('migration 0008'); DELETE FROM orders WHERE id < 3; COMMIT; \
             INSERT INTO orders VALUES (6, 'new');",
        )
        .await
        .expect("a member of audit_admin may pause and resume");
    assert_eq!(
        log_rows(&owner).await,
        vec![
            row("INSERT", Some(1), &admin, None),
            row("PAUSE", None, &admin, Some("bulk load 2025-10")),
            row("RESUME", None, &admin, Some("bulk load 2025-10")),
            row("INSERT", Some(4), &admin, None),
            // A pause ends with its transaction.
            row("INSERT", Some(5), &admin, None),
            row("PAUSE", None, &admin, Some("migration 0008")),
            row("INSERT", Some(6), &admin, None),
        ]
    );
    let err = client
        .batch_execute("SELECT audit.pause('  ')")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("give a reason") || format!("{err:?}").contains("give a reason"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_cannot_pause_nor_fake_a_pause() {
    let db = TestDb::new("robust_fake");
    install_audit_log(&db);
    let owner = db.client().await;
    let admin = db.create_role("admin", "LOGIN IN ROLE audit_admin");
    let app = db.create_role("app", "LOGIN");
    orders(&owner, &[&admin, &app]).await;
    // A real pause of the admin, whose token the application then tries.
    db.client_as(&admin)
        .await
        .batch_execute(
            "BEGIN; SELECT audit.pause('load'); INSERT INTO orders VALUES (1, 'x'); COMMIT;",
        )
        .await
        .unwrap();
    let token: String = owner
        .query_one("SELECT token::text FROM audit.pauses", &[])
        .await
        .unwrap()
        .get(0);

    let client = db.client_as(&app).await;
    for statement in [
        "SELECT audit.pause('mine')",
        "SELECT audit.resume()",
        "INSERT INTO audit.pauses VALUES (txid_current(), gen_random_uuid(), 'me', 'x')",
        "SELECT * FROM audit.pauses",
    ] {
        let err = client.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err:?}"
        );
    }
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL audit.pause_token = '{token}'; INSERT INTO orders VALUES (2, 'x'); COMMIT; \
             BEGIN; SET LOCAL audit.pause_token = 'on'; INSERT INTO orders VALUES (3, 'x'); COMMIT;"
        ))
        .await
        .expect("the application's writes go on");
    assert_eq!(
        log_rows(&owner).await,
        vec![
            row("PAUSE", None, &admin, Some("load")),
            row("INSERT", Some(2), &app, None),
            row("INSERT", Some(3), &app, None),
        ],
        "a pause the application sets itself is no pause"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reinstall_widens_the_op_check_of_an_older_log() {
    // audit.log as the first step installed it.
    let (db, owner) = log_with(
        "robust_widen",
        "INSERT INTO audit.log (op, schema_name, table_name, actor) VALUES ('INSERT', 's', 't', 'a'); \
             ALTER TABLE audit.log DROP CONSTRAINT log_op_check, \
                 ADD CONSTRAINT log_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')), \
                 ALTER COLUMN schema_name SET NOT NULL, ALTER COLUMN table_name SET NOT NULL;",
    )
    .await;
    install_audit_log(&db);
    install_audit_log(&db);
    owner
        .batch_execute(
            "BEGIN; SELECT audit.pause('after the upgrade'); SELECT audit.resume(); COMMIT;",
        )
        .await
        .expect("the re-installed log takes PAUSE and RESUME rows");
    let ops = strings(&owner, "SELECT op FROM audit.log ORDER BY id").await;
    assert_eq!(ops, ["INSERT", "PAUSE", "RESUME"]);
    let err = owner
        .batch_execute("INSERT INTO audit.log (op, schema_name, table_name, actor) VALUES ('MERGE', 's', 't', 'a')")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
}

/// audit.tracked, without what differs by database.
async fn tracked(client: &Client) -> Vec<String> {
    strings(
        client,
        "SELECT (to_jsonb(t) - 'tracked_at')::text FROM audit.tracked t ORDER BY 1",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tracking_survives_pg_dump_and_pg_restore() {
    let (db, owner) = log_with(
        "robust_dump",
        "CREATE SCHEMA shop; \
             CREATE TABLE shop.orders (id int PRIMARY KEY, status text, card text, updated_at timestamptz); \
             CREATE TABLE shop.items (a int, b text, qty int, PRIMARY KEY (a, b)); \
             SELECT audit.track('shop.orders', \"ignore\" => ARRAY['updated_at'], redact => ARRAY['card'], \
                                \"when\" => $$NEW.status <> 'draft'$$); \
             SELECT audit.track('shop.items', \"only\" => ARRAY['qty']); \
             INSERT INTO shop.orders VALUES (1, 'paid', '4111', now());",
    )
    .await;
    // shop.items' update trigger as the first step's track() made it; a re-install repairs it.
    owner
        .batch_execute(
            "DROP TRIGGER audit_log_update ON shop.items; \
             CREATE TRIGGER audit_log_update AFTER UPDATE OF a, b, qty ON shop.items FOR EACH ROW \
             WHEN (ROW(OLD.a, OLD.b, OLD.qty)::record *<> ROW(NEW.a, NEW.b, NEW.qty)::record) \
             EXECUTE FUNCTION audit.log_change('only', '{a,b,qty}', '{}', '{a,b}');",
        )
        .await
        .unwrap();
    let before = tracked(&owner).await;
    install_audit_log(&db);
    assert_eq!(
        tracked(&owner).await,
        before,
        "the repair keeps the options"
    );
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("db.dump");
    let out = db
        .cluster
        .client_command("pg_dump")
        .args(["-Fc", "-d", &db.name, "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestDb::new("robust_restored");
    let out = db
        .cluster
        .client_command("pg_restore")
        .args(["--exit-on-error", "-d", &restored.name])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = restored.client().await;
    assert_eq!(tracked(&client).await, tracked(&owner).await);
    assert_eq!(tracked(&client).await.len(), 2);
    client
        .batch_execute(
            "INSERT INTO shop.orders VALUES (2, 'draft', '5500', now()), (3, 'new', '3400', now()); \
             UPDATE shop.orders SET updated_at = now(); \
             UPDATE shop.orders SET card = '0000' WHERE id = 1; \
             INSERT INTO shop.items VALUES (1, 'x', 5); UPDATE shop.items SET qty = 6; \
             BEGIN; SELECT audit.pause('restored'); DELETE FROM shop.items; COMMIT;",
        )
        .await
        .expect("the restored database writes, pauses and logs");
    let rows = strings(
        &client,
        "SELECT concat_ws(' ', op, schema_name || '.' || table_name, key::text, new_row::text, \
                              old_values::text) \
             FROM audit.log ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        [
            // The row logged before the dump, restored with the log.
            r#"INSERT shop.orders {"id": 1} {"id": 1, "card": "[redacted]", "status": "paid"}"#,
            r#"INSERT shop.orders {"id": 3} {"id": 3, "card": "[redacted]", "status": "new"}"#,
            r#"UPDATE shop.orders {"id": 1} {"id": 1, "card": "[redacted]", "status": "paid"} {"card": "[redacted]"}"#,
            r#"INSERT shop.items {"a": 1, "b": "x"} {"a": 1, "b": "x", "qty": 5}"#,
            r#"UPDATE shop.items {"a": 1, "b": "x"} {"a": 1, "b": "x", "qty": 6} {"qty": 5}"#,
            "PAUSE",
        ]
    );
    // The log is in the restored publication, so the stream sees it.
    let published: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables \
             WHERE pubname = 'users_audit_pub' AND schemaname = 'audit' AND tablename = 'log'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_transaction_lands_in_one_day() {
    let (db, out, client) = streamed_log("robust_midnight").await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders');",
        )
        .await
        .unwrap();
    // One transaction, statement by statement; in the middle the session's time zone moves
    // across the date line (UTC+14 to UTC-11: always another date), as a transaction that runs
    // over midnight moves the date.
    client
        .batch_execute("SET TimeZone = 'Pacific/Kiritimati'")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let start: String = client
        .query_one(
            "SELECT (now() AT TIME ZONE (SELECT time_zone FROM audit.log_settings))::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute("INSERT INTO orders VALUES (1, 'a')", &[])
        .await
        .unwrap();
    client
        .execute("UPDATE orders SET status = 'b'", &[])
        .await
        .unwrap();
    client
        .batch_execute("SET LOCAL TimeZone = 'Pacific/Pago_Pago'")
        .await
        .unwrap();
    client
        .execute("INSERT INTO orders VALUES (2, 'c')", &[])
        .await
        .unwrap();
    client
        .execute("DELETE FROM orders WHERE id = 1", &[])
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    client.batch_execute("RESET TimeZone").await.unwrap();

    let changed = strings(
        &client,
        "SELECT changed_at::text FROM audit.log ORDER BY id",
    )
    .await;
    let statements: i64 = client
        .query_one("SELECT count(DISTINCT statement_at) FROM audit.log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(statements, 4, "four statements, at four times");
    assert_eq!(
        changed,
        vec![start.clone(); 4],
        "every row of the transaction has its start, in the log's zone (not the session's)"
    );
    let start = chrono::NaiveDateTime::parse_from_str(&start, "%Y-%m-%d %H:%M:%S%.f").unwrap();

    catch_up(&db, out.path());
    let files: Vec<audit_tail::layout::StreamFile> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| audit_tail::layout::parse(e.unwrap().file_name().to_str()?))
        .filter(|f| f.schema == "audit" && f.table == "log")
        .collect();
    assert_eq!(files.len(), 1, "one transaction, one day's file: {files:?}");
    assert_eq!(
        files[0].day,
        start.date(),
        "the day of the transaction's start"
    );
    let text = std::fs::read_to_string(out.path().join(audit_tail::layout::file_name(
        "audit",
        "log",
        start.date(),
        1,
    )))
    .unwrap();
    assert_eq!(text.lines().count(), 5, "header and four rows:\n{text}");
}
