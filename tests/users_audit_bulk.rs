//! users_audit on UPDATEs of many rows (sql/install.sql's log_user_changes(), which logs such a
//! statement in one INSERT ... SELECT paired by id): the rows of users_audit (ids, fields, values,
//! order) equal those of the plain row-level trigger it replaced, for bulk updates, NULL against
//! '', several statements in a transaction, and UPDATEs that change ids (each row then logged
//! from its own OLD and NEW), with users.id's key checked at once or deferred.

mod common;

use common::TestDb;

/// The row-level trigger as it was before the bulk path, writing to users_audit_ref: the
/// reference, fired by the same statements on the same rows in the same order.
const PLAIN_ROW_TRIGGER: &str = "\
CREATE TABLE users_audit_ref (id SERIAL PRIMARY KEY, user_id BIGINT, \
    changed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, changed_by TEXT, field_changed TEXT, \
    old_value TEXT, new_value TEXT); \
CREATE FUNCTION log_user_changes_ref() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
SET search_path FROM CURRENT AS $$ \
DECLARE actor TEXT := coalesce(nullif(current_setting('audit.actor', true), ''), session_user); \
BEGIN \
    IF NEW.name::text IS DISTINCT FROM OLD.name::text THEN \
        INSERT INTO users_audit_ref (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'name', OLD.name::text, NEW.name::text); END IF; \
    IF NEW.email::text IS DISTINCT FROM OLD.email::text THEN \
        INSERT INTO users_audit_ref (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'email', OLD.email::text, NEW.email::text); END IF; \
    IF NEW.role::text IS DISTINCT FROM OLD.role::text THEN \
        INSERT INTO users_audit_ref (user_id, changed_by, field_changed, old_value, new_value) \
        VALUES (NEW.id, actor, 'role', OLD.role::text, NEW.role::text); END IF; \
    RETURN NULL; \
END $$; \
CREATE TRIGGER users_audit_ref_trigger AFTER UPDATE ON users FOR EACH ROW \
WHEN (OLD.name::text IS DISTINCT FROM NEW.name::text OR OLD.email::text IS DISTINCT FROM NEW.email::text \
      OR OLD.role::text IS DISTINCT FROM NEW.role::text) \
EXECUTE FUNCTION log_user_changes_ref();";

const STATEMENTS: &[&str] = &[
    "INSERT INTO users (id, name, email, role) SELECT g, 'user' || g, \
     CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '' ELSE g || '@x' END, 'member' \
     FROM generate_series(1, 400) g",
    // Bulk: some rows change one field, some several, some none; NULL <-> ''.
    "UPDATE users SET email = CASE WHEN email IS NULL THEN '' WHEN email = '' THEN NULL ELSE email END, \
     role = CASE WHEN id % 5 = 0 THEN 'admin' ELSE role END",
    "UPDATE users SET updated_at = updated_at",
    // Several statements in one transaction, a single-row one between bulk ones.
    "BEGIN; SET LOCAL audit.actor = 'alice'; \
     UPDATE users SET name = upper(name) WHERE id <= 200; \
     UPDATE users SET role = 'owner' WHERE id = 7; \
     UPDATE users SET name = lower(name), role = 'guest' WHERE id % 7 = 0; COMMIT",
    // Ids change: each row is logged with its new id and its own old and new values.
    "UPDATE users SET id = id + 1000, name = name || '!' WHERE id % 2 = 0",
    "BEGIN; UPDATE users SET id = id + 5000, role = 'moved' WHERE id > 1000 AND id % 4 = 0; \
     UPDATE users SET email = 'e' || id WHERE id < 100; COMMIT",
];

/// `table` (users_audit or users_audit_ref) as (id, user_id, changed_by, field_changed,
/// old_value, new_value) text rows.
fn audit_rows(db: &TestDb, table: &str) -> String {
    db.psql(&format!(
        "SELECT string_agg(format('%s|%s|%s|%s|%s|%s', id, user_id, changed_by, field_changed, \
                                  coalesce(quote_literal(old_value), 'NULL'), \
                                  coalesce(quote_literal(new_value), 'NULL')), E'\\n' ORDER BY id) \
         FROM {table}"
    ))
}

/// Asserts `ours` equals `reference`, showing the first lines that differ.
fn assert_same(ours: &str, reference: &str) {
    let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), reference.lines().collect());
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        let window = |v: &[&str]| v[i.min(v.len())..(i + 5).min(v.len())].join("\n");
        panic!(
            "users_audit differs from line {i} ({} against {} rows):\nours:\n{}\nrow-level trigger:\n{}",
            a.len(),
            b.len(),
            window(&a),
            window(&b)
        );
    }
}

/// users_audit and users_audit_ref after STATEMENTS and `extra`.
fn run(test: &str, users_ddl: Option<&str>, extra: &[&str]) -> (String, String) {
    let db = TestDb::new(test);
    if let Some(ddl) = users_ddl {
        db.psql(ddl);
    }
    db.install();
    db.psql(PLAIN_ROW_TRIGGER);
    for statement in STATEMENTS.iter().chain(extra) {
        db.psql(statement);
    }
    (
        audit_rows(&db, "users_audit"),
        audit_rows(&db, "users_audit_ref"),
    )
}

#[test]
fn bulk_updates_log_the_rows_the_row_level_trigger_logged() {
    let (ours, reference) = run("bulk", None, &[]);
    assert!(ours.lines().count() > 900, "{} rows", ours.lines().count());
    assert_same(&ours, &reference);
}

#[test]
fn id_swaps_under_a_deferred_key_are_logged_row_by_row() {
    // A deferred key lets one UPDATE swap ids, which a pairing by id would get wrong.
    let users = "CREATE TABLE users (id SERIAL PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, \
                 name TEXT, email TEXT, role TEXT, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)";
    let swap = &[
        "UPDATE users SET id = CASE id WHEN 1 THEN 3 WHEN 3 THEN 1 END, \
                  name = name || ' swapped' WHERE id IN (1, 3)",
    ];
    let (ours, reference) = run("swap", Some(users), swap);
    // Row 3 (USER3) now has id 1: its change is logged under id 1 with its own old name.
    assert!(
        ours.lines()
            .any(|l| l.split('|').nth(1) == Some("1")
                && l.ends_with("|name|'USER3'|'USER3 swapped'")),
        "{ours}"
    );
    assert_same(&ours, &reference);
}
