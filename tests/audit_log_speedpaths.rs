//! The statement-level triggers of a tracked table (audit.log_changes(), over the statement's
//! transition tables) record exactly what the row-level path (audit.log_change(), the path of a
//! table tracked with a when condition) records for the same statements: bulk statements,
//! composite keys, key changes and swaps, NULL against '', no-op and ignore-only updates, every
//! option.

mod common;

use common::{TestDb, install_audit_log};
use tokio_postgres::Client;

/// The log rows of `table`, oldest first, as text, without what differs between two tables or
/// two runs (id, table name, times, txid, client address).
async fn rows_of(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT (to_jsonb(l) - 'id' - 'table_name' - 'changed_at' - 'statement_at' - 'txid' \
                     - 'client_addr')::text \
             FROM audit.log l WHERE table_name = $1 ORDER BY id",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The same statements against `s` (statement-level path) and `r` (row-level path); `{t}` in a
/// statement is the table.
const STATEMENTS: &[&str] = &[
    "INSERT INTO {t} SELECT g % 7, 'k' || (g / 7), CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '' \
     ELSE 'v' || g END, g, 'secret' || g, \
     timestamptz '2026-01-01 00:00+00' + g * interval '1 minute' FROM generate_series(1, 300) g",
    // A bulk update of some non-key columns, with NULL <-> '' changes and unchanged rows.
    "UPDATE {t} SET v = CASE WHEN v IS NULL THEN '' WHEN v = '' THEN NULL ELSE v END, \
     n = CASE WHEN a < 3 THEN n + 1 ELSE n END",
    // A no-op update and an update of the ignored / unaudited columns only.
    "UPDATE {t} SET v = v",
    "UPDATE {t} SET stamp = stamp + interval '1 day'",
    "UPDATE {t} SET card = card || 'x' WHERE a = 1",
    // Key changes: a shift, then a swap of two rows' keys in one statement (the deferred key
    // allows it).
    "UPDATE {t} SET a = a + 100 WHERE a = 6",
    "UPDATE {t} SET b = CASE b WHEN 'k1' THEN 'k2' ELSE 'k1' END, n = n * 2 \
     WHERE a = 2 AND b IN ('k1', 'k2')",
    // A SET naming a key column without changing it, beside real changes.
    "UPDATE {t} SET a = a, v = 'same key' WHERE a = 3",
    // One transaction of several statements, with actor and context.
    "BEGIN; SET LOCAL audit.actor = 'alice'; SET LOCAL audit.context = '{\"ticket\": 7}'; \
     UPDATE {t} SET n = -n WHERE a = 4; DELETE FROM {t} WHERE a = 5; \
     INSERT INTO {t} VALUES (5, 'new', NULL, 0, 'c', NULL); COMMIT",
    // One-row statements (their own path): a change, a no-op, a key change, a delete.
    "UPDATE {t} SET v = 'one', card = 'c1', stamp = NULL WHERE a = 0 AND b = 'k1'",
    "UPDATE {t} SET v = v WHERE a = 0 AND b = 'k1'",
    "UPDATE {t} SET a = 50 WHERE a = 0 AND b = 'k2'",
    "DELETE FROM {t} WHERE a = 0 AND b = 'k1'",
    "DELETE FROM {t} WHERE n % 2 = 0",
    "DELETE FROM {t}",
];

/// Tracks `s` without and `r` with a when condition that is always true, with the same
/// options; runs STATEMENTS on both; returns both tables' log rows.
async fn both_paths(db: &TestDb, options: &str) -> (Vec<String>, Vec<String>) {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS s, r; TRUNCATE audit.log; \
             CREATE TABLE s (a int, b text, v text, n int, card text, stamp timestamptz, \
                             PRIMARY KEY (a, b) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TABLE r (a int, b text, v text, n int, card text, stamp timestamptz, \
                             PRIMARY KEY (a, b) DEFERRABLE INITIALLY DEFERRED); \
             SELECT audit.track('s'{options}); \
             SELECT audit.track('r'{options}, \"when\" => 'true');"
        ))
        .await
        .unwrap();
    let kinds: Vec<(String, bool)> = client
        .query(
            "SELECT tgname::text, tgtype & 1 = 1 FROM pg_trigger \
             WHERE tgrelid = 's'::regclass AND NOT tgisinternal ORDER BY tgname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kinds: Vec<(&str, bool)> = kinds.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    assert_eq!(
        kinds,
        [
            ("audit_log_delete", false),
            ("audit_log_insert", false),
            ("audit_log_truncate", false),
            ("audit_log_update", false),
            ("audit_log_update_key", true),
        ],
        "statement-level INSERT, UPDATE and DELETE, row-level only for UPDATEs of the key"
    );
    for statement in STATEMENTS {
        for table in ["s", "r"] {
            client
                .batch_execute(&statement.replace("{t}", table))
                .await
                .unwrap_or_else(|e| panic!("{statement} on {table}: {e:?}"));
        }
    }
    (rows_of(&client, "s").await, rows_of(&client, "r").await)
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_level_paths_record_what_the_row_level_path_records() {
    let db = TestDb::new("speedpaths");
    install_audit_log(&db);
    for options in [
        "",
        ", \"ignore\" => ARRAY['stamp'], redact => ARRAY['card']",
        ", \"only\" => ARRAY['v', 'card'], redact => ARRAY['card']",
    ] {
        let (s, r) = both_paths(&db, options).await;
        assert!(s.len() > 600, "track('s'{options}): only {} rows", s.len());
        for (i, (a, b)) in s.iter().zip(&r).enumerate() {
            assert_eq!(a, b, "track('s'{options}): log row {i} differs");
        }
        assert_eq!(s.len(), r.len(), "track('s'{options})");
        // The key changes were recorded with their old key, the swap as two rows.
        assert!(
            s.iter().any(|row| row.contains("\"old_key\": {\"a\": 6")),
            "{options}: no old_key of the shift"
        );
        assert_eq!(
            s.iter()
                .filter(|row| row.contains("\"old_key\": {\"a\": 2"))
                .count(),
            2,
            "{options}: the swap"
        );
        if options.contains("redact") {
            assert!(
                !s.iter().any(|row| row.contains("secret")),
                "{options}: redacted"
            );
        }
    }
}
