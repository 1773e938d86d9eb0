//! `audit-tail demo`: the reference scenario on a throwaway cluster, end to end.
//!
//! Starts a cluster (crate::cluster), installs sql/install.sql into its cron database so the
//! nightly job is scheduled too, applies sql/demo_data.sql, prints the audit rows, runs the export
//! the nightly job would run and prints the CSV file the server wrote. Everything is removed at
//! the end.

use std::io::Write;

use crate::Error;
use crate::cluster::Cluster;
use crate::sink::text;
use crate::sql::{self, SqlError};

/// Runs the demo, writing what a user should see to `out`.
pub async fn run(out: &mut impl Write) -> Result<(), Error> {
    tracing::info!("starting a throwaway PostgreSQL cluster");
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .map_err(|e| Error::Internal(format!("cluster start-up task failed: {e}")))??;
    tracing::info!(socket = %cluster.socket_dir().display(), port = cluster.port(), "cluster running");
    let export_dir = cluster.server_writable_dir("exports")?;

    let client = sql::connect(&cluster.config("postgres")).await?;
    sql::install(&client, export_dir.to_str()).await?;
    tracing::info!("installed sql/install.sql; applying the reference scenario sql/demo_data.sql");
    client
        .batch_execute(sql::DEMO_DATA_SQL)
        .await
        .map_err(|e| SqlError::new("sql/demo_data.sql failed", e))?;

    writeln!(
        out,
        "The audit trail after sql/demo_data.sql (users_audit):"
    )?;
    let columns = audit_columns(&client).await?;
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let rows = client
        .query(
            "SELECT ARRAY[id::text, user_id::text, changed_at::text, changed_by, field_changed, \
             old_value, new_value] FROM users_audit ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("could not read users_audit", e))?;
    for row in &rows {
        let values: Vec<Option<String>> = row.get(0);
        let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        writeln!(
            out,
            "  {}",
            text::format_row("users_audit", &names, &values)
        )?;
    }

    let job = client
        .query_opt(
            "SELECT schedule, command FROM cron.job WHERE jobname = 'export-daily-audit-data'",
            &[],
        )
        .await;
    if let Ok(Some(job)) = job {
        let (schedule, command): (String, String) = (job.get(0), job.get(1));
        writeln!(
            out,
            "\nThe nightly job (pg_cron, GMT): {schedule}  {command}"
        )?;
    }

    let path: String = client
        .query_one("SELECT export_todays_audit_data()", &[])
        .await
        .map_err(|e| SqlError::new("export_todays_audit_data() failed", e))?
        .get(0);
    let csv = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: format!("could not read the export file {path}"),
        source,
    })?;
    writeln!(
        out,
        "\nThe export the job writes (export_todays_audit_data() → {path}):"
    )?;
    out.write_all(csv.as_bytes())?;
    out.flush()?;

    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| Error::Internal(format!("cluster clean-up task failed: {e}")))?;
    tracing::info!("throwaway cluster stopped and removed");
    Ok(())
}

async fn audit_columns(client: &tokio_postgres::Client) -> Result<Vec<String>, SqlError> {
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'users_audit'::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("could not read the columns of users_audit", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
