//! `audit-tail demo`: the whole story on a throwaway cluster, in under a minute.
//!
//! 1. starts a cluster (crate::cluster) and installs sql/install.sql into its cron database, so
//!    the nightly job is scheduled too;
//! 2. starts streaming (crate::stream) into a temporary out-dir;
//! 3. applies sql/demo_data.sql, whose six audit rows appear live on stdout;
//! 4. runs the export the nightly job runs and prints the CSV file the server wrote;
//! 5. verifies the export against the live stream (crate::verify);
//! 6. tracks another table (sql/audit_log.sql) and shows its changes arriving live;
//! 7. removes everything, or with `--keep` leaves it running until Ctrl-C.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::Error;
use crate::cluster::Cluster;
use crate::sink::stdout::Format;
use crate::sql::{self, SqlError};
use crate::stream::{self, StreamConfig};
use crate::verify::{self, Nightly, ReportFormat};
use crate::wire::ConnParams;

const SLOT: &str = "audit_tail_demo";

/// Runs the demo, writing what a user should see to stdout.
pub async fn run(keep: bool) -> Result<(), Error> {
    let mut out = std::io::stdout();
    tracing::info!("starting a throwaway PostgreSQL cluster");
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .map_err(|e| Error::Internal(format!("cluster start-up task failed: {e}")))??;
    let export_dir = cluster.server_writable_dir("exports")?;
    let client = sql::connect(&cluster.config("postgres")).await?;
    sql::install(&client, export_dir.to_str()).await?;
    writeln!(
        out,
        "1. A throwaway PostgreSQL is running with sql/install.sql installed."
    )?;
    if let Ok(Some(job)) = client
        .query_opt("SELECT schedule || '  ' || command FROM cron.job WHERE jobname = 'export-daily-audit-data'", &[])
        .await
    {
        let job: String = job.get(0);
        writeln!(out, "   Nightly job (pg_cron, GMT): {job}")?;
    }

    let out_dir = tempfile::Builder::new()
        .prefix("audit-tail-demo-stream-")
        .tempdir()
        .map_err(|source| Error::Io {
            context: "could not create the demo's out-dir".into(),
            source,
        })?;
    let config = StreamConfig {
        conn: ConnParams::resolve(Some(&cluster.conninfo("postgres")), &|_| None)?,
        slot: SLOT.into(),
        publication: "users_audit_pub".into(),
        out_dir: Some(out_dir.path().to_path_buf()),
        format: Format::Text,
        until: None,
        status_interval: stream::STATUS_INTERVAL,
        cells: Default::default(),
        accept_gap: false,
        signing_key: None,
        digest_interval: crate::integrity::writer::DIGEST_INTERVAL,
        nats: None,
    };
    let (stop, shutdown) = watch::channel(false);
    let streaming = tokio::spawn(stream::run(config, shutdown, std::io::stdout()));
    wait_for_slot(&client).await?;
    writeln!(
        out,
        "2. audit-tail stream is tailing the publication into {}.",
        out_dir.path().display()
    )?;
    writeln!(
        out,
        "3. Applying sql/demo_data.sql; the audit rows arrive live:"
    )?;
    out.flush()?;
    client
        .batch_execute(sql::DEMO_DATA_SQL)
        .await
        .map_err(|e| SqlError::new("sql/demo_data.sql failed", e))?;
    let today: String = client
        .query_one("SELECT current_date::text", &[])
        .await
        .map_err(|e| SqlError::new("could not read current_date", e))?
        .get(0);
    let date = today
        .parse()
        .map_err(|e| Error::Internal(format!("server date {today}: {e}")))?;
    let stream_file =
        out_dir
            .path()
            .join(crate::layout::file_name("public", "users_audit", date, 1));
    wait_for_lines(&stream_file, 7).await?;

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
        "4. The nightly export, export_todays_audit_data() → {path}:"
    )?;
    out.write_all(csv.as_bytes())?;

    let report = verify::verify(date, &Nightly::File(path.into()), out_dir.path()).await?;
    writeln!(out, "5. audit-tail verify --date {today}:")?;
    out.write_all(report.render(ReportFormat::Text).as_bytes())?;
    out.flush()?;

    track_a_table(&client, &mut out, out_dir.path(), date).await?;

    if keep {
        writeln!(
            out,
            "\nStill running. Change users and watch the stream above, until Ctrl-C:\n  \
             psql \"{}\" -c \"UPDATE users SET role = 'auditor' WHERE id = 2\"",
            cluster.conninfo("postgres")
        )?;
        out.flush()?;
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(true);
    streaming
        .await
        .map_err(|e| Error::Internal(format!("stream task failed: {e}")))??;
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| Error::Internal(format!("cluster clean-up task failed: {e}")))?;
    writeln!(out, "7. Cleaned up: the cluster and the files are gone.")?;
    if !report.agrees() {
        return Err(Error::Internal(
            "the demo's export and stream differ".into(),
        ));
    }
    Ok(())
}

/// The stream must hold its slot before the scenario runs, or the rows would predate the slot.
async fn wait_for_slot(client: &tokio_postgres::Client) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .map_err(|e| SqlError::new("could not read pg_replication_slots", e))?
            .is_some_and(|row| row.get::<_, bool>(0));
        if active {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(
                "the stream did not start within 20 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Step 6: one command audits any table (sql/audit_log.sql, installed by `setup` and here), with
/// who and why from the transaction, a redacted column, and the rows arriving live.
async fn track_a_table(
    client: &tokio_postgres::Client,
    out: &mut std::io::Stdout,
    out_dir: &std::path::Path,
    date: chrono::NaiveDate,
) -> Result<(), Error> {
    writeln!(
        out,
        "6. Any table: audit-tail track public.orders --redact card  (SQL: SELECT audit.track(...));\n   \
         its changes arrive live too, with who and why from SET LOCAL audit.actor / audit.reason:"
    )?;
    out.flush()?;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, card text); \
             SELECT audit.track('public.orders', redact => ARRAY['card']); \
             BEGIN; SET LOCAL audit.actor = 'shop@example.com'; SET LOCAL audit.reason = 'checkout'; \
             INSERT INTO orders VALUES (1, 'new', 42.00, '4111 1111 1111 1111'); COMMIT; \
             BEGIN; SET LOCAL audit.actor = 'support@example.com'; \
             SET LOCAL audit.reason = 'refund, ticket 88'; \
             UPDATE orders SET status = 'refunded', total = 0 WHERE id = 1; COMMIT;",
        )
        .await
        .map_err(|e| SqlError::new("the tracked-table step failed", e))?;
    let log_file = out_dir.join(crate::layout::file_name("audit", "log", date, 1));
    wait_for_lines(&log_file, 3).await
}

async fn wait_for_lines(path: &std::path::Path, lines: usize) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = std::fs::read(path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if count >= lines {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the stream wrote {count} of {lines} lines to {} within 20 s",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
