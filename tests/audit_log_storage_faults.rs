//! audit.log's storage where a new-user trial broke it: the session's TimeZone, retention of a
//! day re-created after it was dropped, grants, concurrent writers and readers, DateStyle and
//! REPEATABLE READ, against a real throwaway PostgreSQL (whose TimeZone is UTC).
//! The usual paths: audit_log_partitions.rs and audit_log_retention.rs.

mod common;

use common::{TestDb, assert_files_equal, catch_up, install_audit_log};
use tokio_postgres::Client;

async fn scalar(client: &Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The days of the log's partitions (YYYY-MM-DD), in order.
async fn partition_days(client: &Client) -> Vec<String> {
    client
        .query("SELECT day::text FROM audit.log_days()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Installs both scripts with psql from a session whose TimeZone is `pgtz` (libpq's PGTZ).
fn install_with_pgtz(db: &TestDb, pgtz: &str) {
    let out = db
        .cluster
        .client_command("psql")
        .env("PGTZ", pgtz)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &db.name, "-c"])
        .arg(db.set_export_dir())
        .arg("-f")
        .arg(common::repo_path("sql/install.sql"))
        .arg("-f")
        .arg(common::repo_path("sql/audit_log.sql"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_at_is_in_the_zone_fixed_at_install_whatever_the_session_sets() {
    let db = TestDb::new("store_zone");
    // The installer's own session is 14 hours ahead of the server: it decides nothing.
    install_with_pgtz(&db, "Pacific/Kiritimati");
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    let client = db.client().await;
    assert_eq!(
        scalar(&client, "SELECT time_zone FROM audit.log_settings").await,
        "UTC",
        "the server's TimeZone as configured"
    );
    let days = partition_days(&client).await;
    let want: Vec<String> = client
        .query(
            "SELECT ((now() AT TIME ZONE 'UTC')::date + n)::text FROM generate_series(-1, 7) AS n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(days, want, "yesterday, today and 7 days ahead, in UTC");
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT audit.track('orders')",
        )
        .await
        .unwrap();
    // Sessions far west and east of the server, one changing its zone midway.
    for sql in [
        "SET TimeZone = '<X>+110'; INSERT INTO orders VALUES (1, 'new')",
        "SET TimeZone = '<Y>-110'; INSERT INTO orders VALUES (2, 'new')",
        "BEGIN; SET LOCAL TimeZone = 'Pacific/Kiritimati'; UPDATE orders SET status = 'paid' WHERE id = 1; \
         SET LOCAL TimeZone = 'Pacific/Pago_Pago'; UPDATE orders SET status = 'paid' WHERE id = 2; COMMIT; \
         RESET TimeZone",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let today = scalar(
        &client,
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .await;
    assert_eq!(
        scalar(
            &client,
            "SELECT string_agg(DISTINCT tableoid::regclass::text, ',') || ' ' || \
                    bool_and(changed_at <= statement_at AT TIME ZONE 'UTC' \
                             AND changed_at > statement_at AT TIME ZONE 'UTC' - interval '1 minute') \
             FROM audit.log"
        )
        .await,
        format!("audit.log_{today} true"),
        "every row in today's partition (UTC), none in DEFAULT"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(DISTINCT changed_at)::text FROM audit.log WHERE op = 'UPDATE'"
        )
        .await,
        "1",
        "one transaction, one changed_at, whatever SET LOCAL TimeZone did midway"
    );
    // The stream's files follow changed_at: the rows are in today's file.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal(&db, out.path(), "audit", "log").await, 4);

    // Another zone chosen later applies to new rows at once; an unknown zone is refused.
    client
        .batch_execute(
            "UPDATE audit.log_settings SET time_zone = 'Pacific/Kiritimati'; \
             INSERT INTO orders VALUES (3, 'new')",
        )
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &client,
            "SELECT (statement_at AT TIME ZONE 'Pacific/Kiritimati' - changed_at \
                     BETWEEN interval '0' AND interval '1 minute')::text \
             FROM audit.log WHERE key = '{\"id\": 3}' AND op = 'INSERT'"
        )
        .await,
        "true",
        "changed_at in Kiritimati time"
    );
    let err = client
        .batch_execute("UPDATE audit.log_settings SET time_zone = 'Mars/Olympus_Mons'")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("time zone \"Mars/Olympus_Mons\" not recognized"),
        "{err:?}"
    );
    // A re-install keeps the zone chosen.
    install_audit_log(&db);
    assert_eq!(
        scalar(&client, "SELECT time_zone FROM audit.log_settings").await,
        "Pacific/Kiritimati"
    );
}
