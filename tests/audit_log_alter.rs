//! ALTER TABLE of a tracked table (sql/audit_log.sql's event trigger audit_retrack_altered): the
//! table is tracked again with its options when its key or columns change, and a change that
//! would leave it untrackable (no key, a redacted column renamed away) is refused.

mod common;

use common::log_with;
use tokio_postgres::Client;

async fn last_row(client: &Client) -> (String, String, Option<String>) {
    let row = client
        .query_one(
            "SELECT op, key::text, new_row::text FROM audit.log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_column_and_a_new_key_are_tracked_with_the_options() {
    let (_db, client) = log_with(
        "alter_retrack",
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text); \
             SELECT audit.track('t', \"ignore\" => ARRAY['b'], \"when\" => 'true'); \
             INSERT INTO t VALUES (1, 'a', 'b'); \
             ALTER TABLE t DISABLE TRIGGER audit_log_delete; \
             ALTER TABLE t ADD COLUMN c text; \
             UPDATE t SET c = 'new column';",
    )
    .await;
    // The UPDATE OF list of the row-level trigger now names c.
    let (op, key, new_row) = last_row(&client).await;
    assert_eq!(op, "UPDATE");
    assert_eq!(key, r#"{"id": 1}"#);
    assert_eq!(
        new_row.as_deref(),
        Some(r#"{"a": "a", "c": "new column", "id": 1}"#)
    );
    // The disabled trigger stayed disabled.
    let enabled: String = client
        .query_one(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 't'::regclass \
             AND tgname = 'audit_log_delete'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enabled, "D");
    // A new key, in one statement: each row is named by it.
    client
        .batch_execute(
            "ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id, a); \
             INSERT INTO t VALUES (2, 'x', 'y', 'z');",
        )
        .await
        .unwrap();
    let (op, key, _) = last_row(&client).await;
    assert_eq!(
        (op.as_str(), key.as_str()),
        ("INSERT", r#"{"a": "x", "id": 2}"#)
    );
    let options: (Vec<String>, Option<Vec<String>>, Option<String>) = client
        .query_one(
            "SELECT key, \"ignore\", \"when\" FROM audit.tracked WHERE table_name = 't'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        options,
        (
            vec!["id".to_string(), "a".to_string()],
            Some(vec!["b".to_string()]),
            Some("true".to_string())
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_key_or_renaming_a_redacted_column_is_refused() {
    let (_db, client) = log_with(
        "alter_refused",
        "CREATE TABLE t (id int PRIMARY KEY, card text); \
             SELECT audit.track('t', redact => ARRAY['card']);",
    )
    .await;
    for (alter, words) in [
        (
            "ALTER TABLE t DROP CONSTRAINT t_pkey",
            "leaves the tracked table public.t without a primary key",
        ),
        (
            "ALTER TABLE t RENAME COLUMN card TO card_number",
            "drops or renames the redacted column(s) card",
        ),
    ] {
        let err = client.batch_execute(alter).await.unwrap_err();
        let db_err = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{alter}: {err}"));
        assert!(db_err.message().contains(words), "{alter}: {db_err:?}");
        assert!(
            db_err.hint().unwrap().contains("audit.untrack"),
            "{db_err:?}"
        );
    }
    // Nothing changed: the key and the column are there, and the value stays redacted.
    client
        .batch_execute("INSERT INTO t VALUES (1, '4111')")
        .await
        .unwrap();
    let (_, key, new_row) = last_row(&client).await;
    assert_eq!(key, r#"{"id": 1}"#);
    assert_eq!(
        new_row.as_deref(),
        Some(r#"{"id": 1, "card": "[redacted]"}"#)
    );
}

/// A table tracked with bulk => true stays on the statement-level path after ALTER TABLE, and its
/// triggers' column arguments (track() works them out, no statement reads the catalog) follow the
/// new column and the new key.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_table_keeps_its_path_and_sees_its_new_columns() {
    let (_db, client) = log_with(
        "alter_bulk",
        "CREATE TABLE t (id int PRIMARY KEY, a text); \
             SELECT audit.track('t', bulk => true); \
             INSERT INTO t VALUES (1, 'a'); \
             ALTER TABLE t ADD COLUMN c text; \
             UPDATE t SET c = 'new column';",
    )
    .await;
    let changed: Vec<String> = client
        .query_one(
            "SELECT changed_columns FROM audit.log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, ["c"]);
    client
        .batch_execute(
            "ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id, a); \
             INSERT INTO t VALUES (2, 'x', 'z');",
        )
        .await
        .unwrap();
    let (op, key, new_row) = last_row(&client).await;
    assert_eq!(
        (op.as_str(), key.as_str()),
        ("INSERT", r#"{"a": "x", "id": 2}"#)
    );
    assert_eq!(new_row.as_deref(), Some(r#"{"a": "x", "c": "z", "id": 2}"#));
    let (bulk, statement_level): (bool, i64) = client
        .query_one(
            "SELECT (SELECT bulk FROM audit.tracked WHERE table_name = 't'), \
                    (SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass \
                     AND tgname IN ('audit_log_insert', 'audit_log_update', 'audit_log_delete') \
                     AND tgtype & 1 = 0)",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((bulk, statement_level), (true, 3));
}
