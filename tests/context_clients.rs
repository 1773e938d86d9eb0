//! docs/context.md's recipes through a client library that is not ours: psycopg 3 (Python, from
//! PyPI, installed by scripts/install-deps) sets audit.actor, audit.reason, audit.request_id and
//! audit.context per transaction, and the rows in audit.log carry them; the next transaction of
//! the same connection, which sets nothing, gets session_user and no context.

mod common;

use std::process::Command;

use common::{TestDb, install_audit_log, repo_path};
use serde_json::{Value, json};

/// Fails the test, never skips it, when python3 or psycopg is missing.
fn require_psycopg() {
    let found = Command::new("python3")
        .args(["-c", "import psycopg"])
        .output();
    match found {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "psycopg (Python) is not installed: run scripts/install-deps\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("cannot run python3 ({e}): install python3, then run scripts/install-deps")
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_sets_actor_reason_request_id_and_context_per_transaction() {
    require_psycopg();
    let db = TestDb::new("ctx_psycopg");
    install_audit_log(&db);
    let app = db.create_role("app", "LOGIN");
    db.psql(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); \
         INSERT INTO orders VALUES (1, 'paid'); \
         SELECT audit.track('public.orders'); \
         GRANT SELECT, UPDATE ON orders TO \"{app}\";"
    ));

    // Over TCP as the application's own role, so client_addr and session_user are real.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={app} dbname={}",
        db.cluster.port(),
        db.name
    );
    let actor = "Ø'Brien \"ops\", alice@example.com";
    let reason = "refund; ticket 4711\nsecond line";
    let request_id = "9b2c6a1e-8f0d-4c1b-a7a5-3e2f1d0c9b8a";
    let context = r#"{"tenant": 7, "ip": "203.0.113.9", "tags": ["a", "b"]}"#;
    let out = Command::new("python3")
        .arg(repo_path("tests/clients/psycopg_context.py"))
        .args([&conninfo, actor, reason, request_id, context])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "tests/clients/psycopg_context.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = db.client().await;
    let rows: Vec<Value> = client
        .query(
            "SELECT json_build_object('status', new_row ->> 'status', 'actor', actor, \
                 'reason', reason, 'request_id', request_id, 'migration', migration, \
                 'context', context, 'application_name', application_name, \
                 'client_addr', host(client_addr))::text \
             FROM audit.log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    let context: Value = serde_json::from_str(context).unwrap();
    assert_eq!(
        rows,
        vec![
            json!({
                "status": "refunded", "actor": actor, "reason": reason,
                "request_id": request_id, "migration": null, "context": context,
                "application_name": "shop-web", "client_addr": "127.0.0.1",
            }),
            // The same connection, the next transaction: set_config(..., true) ended with the
            // first, so nothing leaked; the actor is the role that connected.
            json!({
                "status": "closed", "actor": app, "reason": null,
                "request_id": null, "migration": null, "context": null,
                "application_name": "shop-web", "client_addr": "127.0.0.1",
            }),
        ]
    );
}
