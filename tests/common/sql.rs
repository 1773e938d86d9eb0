//! Small questions to the test's database that many test files ask: one value, one column, the
//! log's partition days, the server's clock, and psql runs whose NOTICEs the test reads.

use tokio_postgres::Client;

use super::TestDb;

/// The one text value `sql` returns (its first column of its one row).
pub async fn scalar(client: &Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The first column of every row `sql` returns, as text, in the order returned.
pub async fn strings(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// The days of the log's partitions (YYYY-MM-DD), in order.
pub async fn partition_days(client: &Client) -> Vec<String> {
    strings(client, "SELECT day::text FROM audit.log_days()").await
}

/// The server's clock now (clock_timestamp(), as text), to name a moment in `history --at`.
pub async fn server_now(client: &Client) -> String {
    scalar(client, "SELECT clock_timestamp()::text").await
}

/// Runs `sql` with psql (unaligned, tuples only, stopping on error) in the test's database:
/// whether it succeeded, its stderr (the NOTICEs) and its stdout.
pub fn psql_notices(db: &TestDb, sql: &str) -> (bool, String, String) {
    let out = db
        .cluster
        .client_command("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.name,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// `psql_notices` of a command that must succeed: its stderr (the NOTICEs) and its stdout.
pub fn psql_ok(db: &TestDb, sql: &str) -> (String, String) {
    let (ok, stderr, stdout) = psql_notices(db, sql);
    assert!(ok, "{sql}: {stderr}");
    (stderr, stdout)
}
