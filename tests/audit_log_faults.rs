//! Crash safety of the generic log, by crashing: a kill -9 loop of the consumer while an
//! application inserts, updates and deletes rows of two tracked tables (one with a composite
//! key), then the stream's audit.log files are checked against the table row by row: every row
//! exactly once, none missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, TestDb, catch_up, install_audit_log};

/// Mixed single-row and multi-row writes to `orders` and `lines` until `stop`.
fn spawn_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let config = db.cluster.config(&db.name);
    tokio::spawn(async move {
        let mut rng = Rng::from_env_or_clock("log writer");
        let client = audit_tail::sql::connect(&config).await.unwrap();
        let mut transactions = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = 1 + rng.below(300);
            let sql = match rng.below(6) {
                0 => format!(
                    "BEGIN; SET LOCAL audit.actor = 'writer'; \
                     INSERT INTO orders VALUES ({id}, 'new', {}) ON CONFLICT (id) DO NOTHING; \
                     INSERT INTO lines VALUES ({id}, 1, 'x'), ({id}, 2, 'y') ON CONFLICT DO NOTHING; COMMIT;",
                    rng.below(1000)
                ),
                1 => format!("DELETE FROM orders WHERE id = {id}"),
                2 => format!("DELETE FROM lines WHERE order_id = {id}"),
                // A multi-row statement: many log rows in one transaction.
                3 => format!(
                    "UPDATE orders SET total = total + 1 WHERE id <= {}",
                    rng.below(200)
                ),
                _ => format!(
                    "UPDATE orders SET status = 's{}' WHERE id = {id}; \
                     UPDATE lines SET what = 'w{}' WHERE order_id = {id}",
                    rng.below(100),
                    rng.below(100)
                ),
            };
            if client.batch_execute(&sql).await.is_err() {
                break;
            }
            transactions += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        transactions
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_tracked_tables_change_loses_and_doubles_nothing() {
    let db = TestDb::new("log_kill9");
    install_audit_log(&db);
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric); \
         CREATE TABLE lines (order_id int, n int, what text, PRIMARY KEY (order_id, n)); \
         INSERT INTO orders SELECT g, 'seed', g FROM generate_series(1, 200) g; \
         SELECT audit.track('orders'); SELECT audit.track('lines');",
    );
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());
    let mut rng = Rng::from_env_or_clock("log kill9");
    let seed = rng.seed;
    common::kill_9_loop(&db, out.path(), &mut rng, 15, 400);
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 30,
        "the writer ran only {transactions} transactions (seed {seed})"
    );
    let rows = common::assert_exactly_once_after_kills(db, out.path(), "audit", "log", seed).await;
    assert!(
        rows > 500,
        "only {rows} log rows were compared (seed {seed})"
    );
}
