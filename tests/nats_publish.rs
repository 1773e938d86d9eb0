//! `audit-tail stream --nats`: every row published once to a real JetStream server
//! (src/nats_server.rs), with its id and body, and not again on the next run.

mod common;
mod nats_support;

use nats_support::catch_up_with_nats;

use std::collections::HashSet;

use audit_tail::nats_server::{NatsServer, NatsServerOptions};
use common::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn rows_are_published_once_with_their_ids_and_bodies() {
    // awkward_changes has a 2.7 MB value: above NATS's default max_payload of 1 MB.
    let nats = NatsServer::start_with(NatsServerOptions {
        config: "max_payload: 8MB".into(),
        ..Default::default()
    })
    .expect("start nats-server");
    let db = TestDb::new("nats_publish");
    let out = tempfile::tempdir().unwrap();
    db.install();
    let client = db.client().await;
    // The first run creates the slot; the rows come after.
    catch_up_with_nats(&db, out.path(), &nats.url());
    common::awkward_changes(&client).await;
    catch_up_with_nats(&db, out.path(), &nats.url());

    let stored = nats_support::read_all(&nats.url(), "AUDIT").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM users_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len() as i64, rows, "one message per row");
    let ids: HashSet<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "every id is unique");
    for s in &stored {
        assert_eq!(s.subject, format!("audit.{}.public.users_audit", db.name));
        let lsn = s.body["commit_lsn"].as_str().unwrap();
        assert!(
            s.id.starts_with(&format!("{}:{lsn}:", db.name)),
            "id {} names the database and commit LSN {lsn}",
            s.id
        );
        assert_eq!(s.body["table"], "users_audit");
        assert!(s.body["columns"].as_array().unwrap().len() > 3);
    }
    // The bodies hold the table's values: every new_value of the table is in some body.
    let values: Vec<Option<String>> = client
        .query("SELECT new_value FROM users_audit ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let published: Vec<Option<String>> = stored
        .iter()
        .map(|s| s.body["row"]["new_value"].as_str().map(str::to_string))
        .collect();
    let mut a = values.clone();
    let mut b = published.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the bodies carry the rows' values");
    // Every transaction's last row carries its end LSN.
    let commits: HashSet<&str> = stored
        .iter()
        .map(|s| s.body["commit_lsn"].as_str().unwrap())
        .collect();
    let ends = stored.iter().filter(|s| s.end_lsn.is_some()).count();
    assert_eq!(ends, commits.len(), "one end mark per transaction");

    // A second run adds nothing, and more rows come once.
    catch_up_with_nats(&db, out.path(), &nats.url());
    assert_eq!(nats_support::count(&nats.url(), "AUDIT").await as i64, rows);
    client
        .execute("UPDATE users SET role = 'again'", &[])
        .await
        .unwrap();
    catch_up_with_nats(&db, out.path(), &nats.url());
    let rows2: i64 = client
        .query_one("SELECT count(*) FROM users_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows2 > rows);
    assert_eq!(
        nats_support::count(&nats.url(), "AUDIT").await as i64,
        rows2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_is_acknowledged_promptly_once_jetstream_has_acknowledged() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("nats_wake");
    let out = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, out.path(), &nats.url());
    db.psql("INSERT INTO users (name, role) SELECT 'u' || g, 'user' FROM generate_series(1, 50) g");
    // Status updates only each hour: the slot must move on the publish acknowledgements (the
    // files' own durable point comes before JetStream has acknowledged). The server's keepalives
    // while our flush position lags also lead there, so this does not isolate the wake-up.
    let _consumer = common::Consumer::spawn(
        &db,
        out.path(),
        &[
            "--format",
            "none",
            "--status-interval",
            "3600",
            "--nats",
            &nats.url(),
        ],
    );
    common::wait::streaming(&db, &db.name);
    // The position before the UPDATE, not after it: the cluster is shared with the other tests
    // of this file, whose WAL can follow our commit, and only a keepalive (every 30 s) would
    // take the slot past WAL of other databases. Past `before` is only our commit's end.
    let before = db.psql("SELECT pg_current_wal_lsn()").trim().to_string();
    db.psql("UPDATE users SET role = 'woken'");
    // Well before the server's own keepalive (half of wal_sender_timeout, 30 s) would ask.
    common::wait::until(
        "the slot to be acknowledged past the UPDATE",
        std::time::Duration::from_secs(10),
        || {
            db.psql(&format!(
                "SELECT confirmed_flush_lsn > '{before}'::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = '{}'",
                db.name
            ))
            .trim()
                == "t"
        },
    );
    let rows: u64 = db
        .psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(nats_support::count(&nats.url(), "AUDIT").await, rows);
}
