//! audit.log's storage: partitioned by day on changed_at, a DEFAULT partition, partitions made
//! ahead, the move of an unpartitioned log, and tamper resistance on every partition, against a
//! real throwaway PostgreSQL. Retention, the nightly job and status: audit_log_retention.rs.

mod common;

use common::install::both_scripts_notices;
use common::sql::{partition_days, scalar, strings};
use common::{TestDb, assert_files_equal, catch_up, install_audit_log, streamed_log};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// The table (partition) that holds each log row, by id.
async fn rows_by_partition(client: &Client) -> Vec<(i64, String)> {
    client
        .query(
            "SELECT id, tableoid::regclass::text FROM audit.log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_is_partitioned_by_day_with_days_ahead_and_a_default() {
    let db = TestDb::new("part_fresh");
    install_audit_log(&db);
    let client = db.client().await;
    let days = partition_days(&client).await;
    let want = strings(
        &client,
        "SELECT (current_date + n)::text FROM generate_series(-1, 7) AS n",
    )
    .await;
    assert_eq!(days, want, "yesterday, today and the next 7 days");
    assert_eq!(
        scalar(
            &client,
            "SELECT c.relkind::text || ' ' || p.pubviaroot::text FROM pg_class c, pg_publication p \
             WHERE c.oid = 'audit.log'::regclass AND p.pubname = 'users_audit_pub'"
        )
        .await,
        "p true"
    );
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders'); \
             INSERT INTO orders VALUES (1, 'new');",
        )
        .await
        .unwrap();
    let today = scalar(&client, "SELECT to_char(current_date, 'YYYYMMDD')").await;
    assert_eq!(
        rows_by_partition(&client).await,
        vec![(1, format!("audit.log_{today}"))],
        "today's row is in today's partition"
    );
    // A re-install changes nothing.
    let before = scalar(
        &client,
        "SELECT string_agg(c.oid::text || c.relname, ',' ORDER BY c.relname) FROM pg_class c \
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relname LIKE 'log%'",
    )
    .await;
    install_audit_log(&db);
    let after = scalar(
        &client,
        "SELECT string_agg(c.oid::text || c.relname, ',' ORDER BY c.relname) FROM pg_class c \
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relname LIKE 'log%'",
    )
    .await;
    assert_eq!(
        before, after,
        "a re-install keeps every table and partition"
    );
    // A table in the way of a day's partition (one detached by hand, say) is named, not clobbered.
    let err = client
        .batch_execute(
            "CREATE TABLE audit.log_20300101 (x int); SELECT audit.create_log_partition('2030-01-01')",
        )
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap();
    assert!(
        err.message()
            .contains("a table audit.log_20300101 exists and is not that partition"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("ATTACH PARTITION"), "{err:?}");
    // Partitioned-ness of the log does not make audit.track accept a partitioned user table.
    let err = client
        .batch_execute(
            "CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
             SELECT audit.track('events');",
        )
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("partitioned table"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_in_default_move_into_their_days_partition_with_their_ids() {
    let (db, out, client) = streamed_log("part_default").await;
    // A day far ahead has no partition: its rows land in DEFAULT, and the write does not fail.
    client
        .batch_execute(
            "INSERT INTO audit.log (changed_at, op, actor) VALUES \
                 ('2031-02-03 23:59:59.999999', 'PAUSE', 'a'), ('2031-02-04 00:00:00', 'PAUSE', 'b'); \
             INSERT INTO audit.log (op, actor) VALUES ('RESUME', 'c');",
        )
        .await
        .unwrap();
    catch_up(&db, out.path());
    let today = scalar(&client, "SELECT to_char(current_date, 'YYYYMMDD')").await;
    assert_eq!(
        rows_by_partition(&client).await,
        vec![
            (1, "audit.log_default".to_string()),
            (2, "audit.log_default".to_string()),
            (3, format!("audit.log_{today}")),
        ]
    );
    let made: bool = client
        .query_one("SELECT audit.create_log_partition('2031-02-03')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(made);
    // The nightly job's call makes the partition of every day left in DEFAULT.
    let made: i32 = client
        .query_one("SELECT audit.log_partitions()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 1, "the partition of 2031-02-04");
    assert_eq!(
        rows_by_partition(&client).await,
        vec![
            (1, "audit.log_20310203".to_string()),
            (2, "audit.log_20310204".to_string()),
            (3, format!("audit.log_{today}")),
        ]
    );
    assert_eq!(
        scalar(&client, "SELECT count(*)::text FROM audit.log_default").await,
        "0"
    );
    // The move is not streamed again: the stream's files still hold each row once.
    client
        .batch_execute("INSERT INTO audit.log (op, actor) VALUES ('RESUME', 'd')")
        .await
        .unwrap();
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal(&db, out.path(), "audit", "log").await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reinstall_moves_an_unpartitioned_log_keeping_rows_and_ids() {
    let db = TestDb::new("part_migrate");
    install_audit_log(&db);
    let out = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let reader = db.create_role("reader", "LOGIN");
    catch_up(&db, out.path());
    // audit.log as main installed it: one plain table, with rows of two days and ids with a gap.
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION users_audit_pub DROP TABLE audit.log; \
             DROP TABLE audit.log CASCADE; \
             CREATE TABLE audit.log ( \
                 id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 changed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
                 op TEXT NOT NULL CONSTRAINT log_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'PAUSE', 'RESUME')), \
                 schema_name TEXT, table_name TEXT, key JSONB, old_key JSONB, new_row JSONB, \
                 old_values JSONB, changed_columns TEXT[], \
                 statement_at TIMESTAMPTZ NOT NULL DEFAULT statement_timestamp(), \
                 txid BIGINT NOT NULL DEFAULT txid_current(), actor TEXT NOT NULL, reason TEXT, \
                 request_id TEXT, migration TEXT, context JSONB, application_name TEXT, client_addr INET, \
                 note TEXT DEFAULT 'kept'); \
             CREATE INDEX log_changed_at_idx ON audit.log (changed_at); \
             CREATE INDEX log_table_idx ON audit.log (schema_name, table_name, changed_at); \
             ALTER PUBLICATION users_audit_pub ADD TABLE audit.log; \
             GRANT USAGE ON SCHEMA audit TO \"{reader}\"; GRANT SELECT ON audit.log TO \"{reader}\"; \
             INSERT INTO audit.log (changed_at, op, actor) VALUES ('2024-02-29 12:00', 'PAUSE', 'a'); \
             SELECT nextval('audit.log_id_seq'); \
             INSERT INTO audit.log (op, actor) VALUES ('RESUME', 'c');"
        ))
        .await
        .unwrap();
    catch_up(&db, out.path());
    let before = scalar(
        &client,
        "SELECT string_agg(to_jsonb(l)::text, E'\\n' ORDER BY id) FROM audit.log l",
    )
    .await;
    let (notices, _) = both_scripts_notices(&db);
    assert!(
        notices.contains("audit.log is now partitioned by day: its 2 rows were moved"),
        "{notices}"
    );
    assert!(
        notices.contains(
            "export them again (the same rows into the same files): \
             SELECT audit.export_log(day) FROM audit.log_days() WHERE day < audit.log_today()"
        ),
        "days exported by the earlier version: how to let retention drop them: {notices}"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(to_jsonb(l)::text, E'\\n' ORDER BY id) FROM audit.log l"
        )
        .await,
        before,
        "every row, with its id"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT relkind::text FROM pg_class WHERE oid = 'audit.log'::regclass"
        )
        .await,
        "p"
    );
    assert!(
        partition_days(&client)
            .await
            .contains(&"2024-02-29".to_string())
    );
    client
        .batch_execute("INSERT INTO audit.log (op, actor) VALUES ('RESUME', 'd')")
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, "SELECT max(id)::text FROM audit.log").await,
        "4",
        "the identity goes on after the highest id"
    );
    assert_eq!(
        scalar(
            &db.client_as(&reader).await,
            "SELECT count(*)::text FROM audit.log"
        )
        .await,
        "3",
        "a SELECT grant of the old table is kept"
    );
    // A second re-install changes nothing and says nothing of a move.
    let (notices, _) = both_scripts_notices(&db);
    assert!(!notices.contains("now partitioned"), "{notices}");
    assert_eq!(
        scalar(&client, "SELECT count(*)::text FROM audit.log").await,
        "3"
    );
    // The stream saw the rows once, before and after the move.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal(&db, out.path(), "audit", "log").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_role_cannot_write_any_partition() {
    let db = TestDb::new("part_tamper");
    install_audit_log(&db);
    let owner = db.client().await;
    let app = db.create_role("app", "LOGIN");
    owner
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); \
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO \"{app}\"; \
             SELECT audit.track('orders'); GRANT USAGE ON SCHEMA audit TO \"{app}\"; \
             GRANT INSERT, DELETE ON audit.log_default TO \"{app}\";"
        ))
        .await
        .unwrap();
    // A write grant on a partition given by mistake is taken back by running the script again.
    install_audit_log(&db);
    let client = db.client_as(&app).await;
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'new')")
        .await
        .expect("the application's writes go on, and are logged");
    let today = scalar(&owner, "SELECT to_char(current_date, 'YYYYMMDD')").await;
    for part in [
        format!("audit.log_{today}"),
        "audit.log_default".to_string(),
    ] {
        for statement in [
            format!(
                "INSERT INTO {part} (id, changed_at, op, actor) VALUES (99, now(), 'PAUSE', 'z')"
            ),
            format!("UPDATE {part} SET actor = 'someone else'"),
            format!("DELETE FROM {part}"),
            format!("TRUNCATE {part}"),
            format!("ALTER TABLE {part} ADD COLUMN x int"),
            format!("DROP TABLE {part}"),
            format!("ALTER TABLE audit.log DETACH PARTITION {part}"),
        ] {
            let err = client.batch_execute(&statement).await.unwrap_err();
            let code = err.code().unwrap().clone();
            assert!(
                code == SqlState::INSUFFICIENT_PRIVILEGE,
                "{statement}: {err:?}"
            );
        }
    }
    for statement in [
        "SELECT audit.create_log_partition(current_date + 100)",
        "SELECT audit.log_partitions()",
    ] {
        let err = client.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err:?}"
        );
    }
    assert_eq!(
        scalar(&owner, "SELECT count(*)::text FROM audit.log").await,
        "1"
    );
}
