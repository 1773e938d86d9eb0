mod common;
use common::{TestDb, catch_up, install_audit_log};

#[tokio::test(flavor = "multi_thread")]
async fn docs_scratch() {
    let db = TestDb::new("hist_docs");
    install_audit_log(&db);
    let out = std::path::Path::new("/tmp/h14/docs-out");
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    catch_up(&db, out);
    let client = db.client().await;
    let sleep = || std::thread::sleep(std::time::Duration::from_millis(1100));
    client.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric); SELECT audit.track('public.orders'); INSERT INTO users (id, name, email, role) VALUES (3, 'Ann', 'ann@example.com', 'staff')").await.unwrap();
    client.batch_execute("BEGIN; SET LOCAL audit.actor = 'alice@example.com'; SET LOCAL audit.request_id = 'req-7f3a'; INSERT INTO orders VALUES (42, 'new', 99.50), (43, 'new', 12); COMMIT;").await.unwrap();
    sleep();
    client.batch_execute("BEGIN; SET LOCAL audit.actor = 'bob@example.com'; SET LOCAL audit.reason = 'refund, ticket 4711'; UPDATE orders SET status = 'refunded', total = 0 WHERE id = 42; UPDATE users SET role = 'admin' WHERE id = 3; COMMIT;").await.unwrap();
    sleep();
    client.batch_execute("BEGIN; SET LOCAL audit.actor = 'bob@example.com'; UPDATE orders SET id = 142 WHERE id = 42; UPDATE users SET email = 'ann@corp.example' WHERE id = 3; COMMIT;").await.unwrap();
    sleep();
    client.batch_execute("BEGIN; SET LOCAL audit.actor = 'mallory'; UPDATE orders SET total = total + 1; UPDATE orders SET total = total + 1; UPDATE orders SET total = total + 1; DELETE FROM orders WHERE id = 43; COMMIT;").await.unwrap();
    catch_up(&db, out);
    let times = client
        .query("SELECT changed_at::text FROM audit.log ORDER BY id", &[])
        .await
        .unwrap();
    for t in times {
        eprintln!("T {}", t.get::<_, String>(0));
    }
    eprintln!("DSN {}", db.cluster.conninfo(&db.name));
    std::thread::sleep(std::time::Duration::from_secs(1200));
}
