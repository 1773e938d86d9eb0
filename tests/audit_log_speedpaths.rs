//! The statement-level triggers of a table tracked with bulk => true (audit.log_changes(), over
//! the statement's transition tables) record exactly what the row-level path (audit.log_change(),
//! the default, and the path of a table tracked with a when condition) records for the same
//! statements: bulk statements, composite keys, key changes and swaps, NULL against '', no-op and
//! ignore-only updates, every option. And a when condition that is NULL for a row audits it.

mod common;

use common::{TestDb, install_audit_log, log_with};
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

/// Tracks `s` with bulk => true and `r` by default (row-level) or with a when condition that is
/// always true (`r_extra`), with the same options; runs STATEMENTS on both; returns both tables'
/// log rows.
async fn both_paths(db: &TestDb, options: &str, r_extra: &str) -> (Vec<String>, Vec<String>) {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS s, r; TRUNCATE audit.log; \
             CREATE TABLE s (a int, b text, v text, n int, card text, stamp timestamptz, \
                             PRIMARY KEY (a, b) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TABLE r (a int, b text, v text, n int, card text, stamp timestamptz, \
                             PRIMARY KEY (a, b) DEFERRABLE INITIALLY DEFERRED); \
             SELECT audit.track('s'{options}, bulk => true); \
             SELECT audit.track('r'{options}{r_extra});"
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
    for (options, r_extra) in [
        ("", ""),
        ("", ", \"when\" => 'true'"),
        (
            ", \"ignore\" => ARRAY['stamp'], redact => ARRAY['card']",
            "",
        ),
        (
            ", \"only\" => ARRAY['v', 'card'], redact => ARRAY['card']",
            ", \"when\" => 'true'",
        ),
    ] {
        let (s, r) = both_paths(&db, options, r_extra).await;
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

/// The row-level path is the default: every trigger of a table tracked without bulk is a row
/// trigger (but TRUNCATE's), and audit.tracked says which path each table has.
#[tokio::test(flavor = "multi_thread")]
async fn row_level_is_the_default_and_tracked_shows_bulk() {
    let (_db, client) = log_with(
        "speedpaths_default",
        "CREATE TABLE plain (id int PRIMARY KEY, v text); \
             CREATE TABLE big (id int PRIMARY KEY, v text); \
             SELECT audit.track('plain'); SELECT audit.track('big', bulk => true);",
    )
    .await;
    let statement_level: Vec<(String, i64)> = client
        .query(
            "SELECT tgrelid::regclass::text, \
                    count(*) FILTER (WHERE tgtype & 1 = 0 AND tgname <> 'audit_log_truncate') \
             FROM pg_trigger WHERE tgrelid IN ('plain'::regclass, 'big'::regclass) \
               AND NOT tgisinternal GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        statement_level,
        [("big".to_string(), 3), ("plain".to_string(), 0)]
    );
    let shown: Vec<(String, bool)> = client
        .query("SELECT \"table\", bulk FROM audit.tracked ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        shown,
        [
            ("public.big".to_string(), true),
            ("public.plain".to_string(), false)
        ]
    );
    let both = client
        .batch_execute("SELECT audit.track('plain', bulk => true, \"when\" => 'true')")
        .await
        .unwrap_err();
    assert!(
        format!("{both:?}").contains("give bulk or when, not both"),
        "{both:?}"
    );
}

/// A when condition that is NULL for a row (NEW.st <> 'draft' with st NULL) audits the row: only
/// a false condition skips it.
#[tokio::test(flavor = "multi_thread")]
async fn a_when_condition_that_is_null_audits_the_row() {
    let (_db, client) = log_with(
        "speedpaths_when_null",
        "CREATE TABLE docs (id int PRIMARY KEY, st text); \
             SELECT audit.track('docs', \"when\" => 'NEW.st <> ''draft'''); \
             INSERT INTO docs VALUES (1, 'draft'), (2, NULL), (3, 'final'); \
             UPDATE docs SET st = NULL WHERE id = 3; \
             UPDATE docs SET st = 'draft' WHERE id = 2;",
    )
    .await;
    let logged: Vec<(String, String)> = client
        .query(
            "SELECT op, key ->> 'id' FROM audit.log WHERE table_name = 'docs' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [("INSERT", "2"), ("INSERT", "3"), ("UPDATE", "3")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(logged, expected);
}
