//! Operator commands beside the flow: `status` (the slot, the WAL it keeps, the checkpoint of an
//! out-dir with its sealed and open days, the last runs of the nightly export, the tables the
//! generic log tracks and its partitions: log.rs) and `drop-slot`
//! (an abandoned slot keeps WAL forever, so removing it is one command).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::checkpoint::Checkpoint;
use crate::sink::seal;
use crate::sql::{self, SqlError};
use crate::wire::ConnParams;

mod log;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("there is no replication slot \"{0}\" (audit-tail status lists what is there)")]
    NoSlot(String),
    #[error(
        "replication slot \"{0}\" is in use by process {1}: stop that consumer first, or pass --force to end its connection"
    )]
    Active(String, i32),
    #[error("replication slot \"{0}\" was still in use 10 s after its connection was ended")]
    StillActive(String),
}

/// `1536` → `1.5 kB`.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Everything `status` reports, as JSON (the text form is rendered from it).
pub async fn status(params: &ConnParams, slot: &str, out_dir: &Path) -> Result<Value, StatusError> {
    let client = sql::connect_params(params).await?;
    let row = client
        .query_opt(
            "SELECT active, active_pid, plugin::text, confirmed_flush_lsn::text, restart_lsn::text, \
             wal_status, (pg_current_wal_lsn() - restart_lsn)::bigint, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SqlError::new("could not read pg_replication_slots", e))?;
    let slot_json = match row {
        None => json!({"name": slot, "exists": false}),
        Some(r) => {
            let retained: Option<i64> = r.get(6);
            let behind: Option<i64> = r.get(7);
            json!({
                "name": slot, "exists": true,
                "active": r.get::<_, bool>(0), "active_pid": r.get::<_, Option<i32>>(1),
                "plugin": r.get::<_, Option<String>>(2),
                "confirmed_flush_lsn": r.get::<_, Option<String>>(3),
                "restart_lsn": r.get::<_, Option<String>>(4),
                "wal_status": r.get::<_, Option<String>>(5),
                "retained_wal_bytes": retained, "retained_wal": retained.map(human_bytes),
                "unacknowledged_bytes": behind, "unacknowledged": behind.map(human_bytes),
            })
        }
    };
    let checkpoint = match Checkpoint::load(out_dir) {
        Ok(Some(c)) => json!({
            "out_dir": out_dir.display().to_string(), "lsn": c.lsn.to_string(),
            "files": c.files.len(), "newest_file": c.files.keys().max(),
            "days": days(out_dir, &c),
        }),
        Ok(None) => json!({"out_dir": out_dir.display().to_string(), "lsn": null,
                           "note": "no audit-tail.state here: nothing streamed into this out-dir yet"}),
        Err(e) => json!({"out_dir": out_dir.display().to_string(), "error": e.to_string()}),
    };
    Ok(json!({
        "server": params.to_string(),
        "slot": slot_json,
        "checkpoint": checkpoint,
        "export_job": export_job(&client, params).await,
        "tracked": log::tracked(&client).await,
        "log_storage": log::storage(&client).await,
    }))
}

/// The out-dir's days: sealed ones from their manifests (with how many of their files are still
/// in the out-dir, the rest having been archived), open ones from the checkpoint.
fn days(out_dir: &Path, checkpoint: &Checkpoint) -> Value {
    let open: std::collections::BTreeSet<String> = checkpoint
        .files
        .keys()
        .filter_map(|name| crate::layout::day_of(name))
        .map(|day| day.format("%Y-%m-%d").to_string())
        .collect();
    let sealed = match seal::list(out_dir) {
        Ok(manifests) => manifests
            .iter()
            .map(|m| {
                json!({
                    "day": m.day.format("%Y-%m-%d").to_string(),
                    "files": m.files.len(),
                    "files_present": m.files.keys().filter(|n| out_dir.join(n).is_file()).count(),
                    "rows": m.files.values().map(|e| e.rows).sum::<u64>(),
                    "bytes": m.files.values().map(|e| e.len).sum::<u64>(),
                })
            })
            .collect(),
        Err(e) => return json!({"open": open, "error": e.to_string()}),
    };
    json!({"sealed": Value::Array(sealed), "open": open})
}

/// The last runs of this database's nightly export job, read in pg_cron's own database. The job is
/// the one that exports this database: by database, preferring install.sql's job names.
async fn export_job(client: &Client, params: &ConnParams) -> Value {
    let (role, database): (String, String) = match client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
    {
        Ok(row) => (row.get(0), row.get(1)),
        Err(e) => return json!({"error": sql::describe(&e)}),
    };
    let hidden = |why: String| {
        json!({"scheduled": false, "visible": false,
               "note": format!("not visible to role {role} ({why})")})
    };
    let cron_db: Option<String> = match client
        .query_one("SELECT current_setting('cron.database_name', true)", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            return hidden(
                "reading cron.database_name needs pg_read_all_settings; grant it or run status as the job's owner".into(),
            );
        }
        Err(e) => return json!({"error": sql::describe(&e)}),
    };
    let Some(cron_db) = cron_db else {
        return json!({"error": "pg_cron is not loaded on this server (shared_preload_libraries)"});
    };
    let mut cron_params = params.clone();
    cron_params.dbname = cron_db.clone();
    let cron = match sql::connect_params(&cron_params).await {
        Ok(c) => c,
        Err(e) => {
            return hidden(format!(
                "pg_cron keeps its jobs in database \"{cron_db}\", and connecting there failed: {e}"
            ));
        }
    };
    let own_name = format!("export-daily-audit-data-{database}");
    let runs = cron
        .query(
            "SELECT j.jobname, j.schedule, j.command, j.database, d.status, d.start_time::text, \
             d.end_time::text, d.return_message \
             FROM (SELECT * FROM cron.job WHERE database = $1 \
                   AND (jobname IN ('export-daily-audit-data', $2) \
                        OR command ~ 'export_(todays_)?audit_data') \
                   ORDER BY coalesce(jobname IN ('export-daily-audit-data', $2), false) DESC, jobid \
                   LIMIT 1) j \
             LEFT JOIN LATERAL (SELECT * FROM cron.job_run_details r WHERE r.jobid = j.jobid \
                                ORDER BY r.runid DESC LIMIT 5) d ON true",
            &[&database, &own_name],
        )
        .await;
    match runs {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => hidden(format!(
            "reading cron.job in database \"{cron_db}\" was refused: {}",
            sql::describe(&e)
        )),
        // pg_cron is loaded, but its extension (schema cron) was never created in its database.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => json!({"database": cron_db,
            "error": format!("pg_cron is loaded but its extension is not created in its database \
                \"{cron_db}\", so no job can be scheduled: run CREATE EXTENSION pg_cron; in \
                \"{cron_db}\" as a superuser, then schedule the export as audit-tail setup's \
                NOTICE says ({})", sql::describe(&e))}),
        Err(e) => json!({"database": cron_db, "error": sql::describe(&e)}),
        Ok(rows) if rows.is_empty() => json!({"database": cron_db, "scheduled": false,
            "note": format!("no export job for database {database} visible to role {role} \
                (pg_cron shows a role only its own jobs, a superuser all of them; \
                sql/install.sql's NOTICE says how to schedule it)")}),
        Ok(rows) => json!({
            "database": cron_db, "scheduled": true,
            "job_name": rows[0].get::<_, Option<String>>(0),
            "schedule": rows[0].get::<_, String>(1), "command": rows[0].get::<_, String>(2),
            "exports_database": rows[0].get::<_, String>(3),
            "last_runs": rows.iter().filter(|r| r.get::<_, Option<String>>(4).is_some()).map(|r| json!({
                "status": r.get::<_, Option<String>>(4), "start": r.get::<_, Option<String>>(5),
                "end": r.get::<_, Option<String>>(6), "message": r.get::<_, Option<String>>(7),
            })).collect::<Vec<_>>(),
        }),
    }
}

/// The status as text for people.
pub fn render_text(v: &Value) -> String {
    let mut t = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let _ = writeln!(t, "server:      {}", s(&v["server"]));
    let slot = &v["slot"];
    if slot["exists"] == true {
        let state = if slot["active"] == true {
            format!("active (pid {})", s(&slot["active_pid"]))
        } else {
            "inactive: no consumer is connected".into()
        };
        let _ = writeln!(
            t,
            "slot:        {} ({}), {state}",
            s(&slot["name"]),
            s(&slot["plugin"])
        );
        let _ = writeln!(
            t,
            "  confirmed: {}  (not yet acknowledged: {})",
            s(&slot["confirmed_flush_lsn"]),
            s(&slot["unacknowledged"])
        );
        let _ = writeln!(
            t,
            "  retained WAL: {} ({} bytes), wal_status {}",
            s(&slot["retained_wal"]),
            s(&slot["retained_wal_bytes"]),
            s(&slot["wal_status"])
        );
    } else {
        let _ = writeln!(t, "slot:        {} does not exist", s(&slot["name"]));
    }
    let c = &v["checkpoint"];
    match (&c["lsn"], &c["error"]) {
        (_, Value::String(e)) => {
            let _ = writeln!(t, "checkpoint:  {}: {e}", s(&c["out_dir"]));
        }
        (Value::String(lsn), _) => {
            let _ = writeln!(
                t,
                "checkpoint:  {} at {lsn}, {} open files, newest {}",
                s(&c["out_dir"]),
                s(&c["files"]),
                s(&c["newest_file"])
            );
            render_days(&mut t, &c["days"]);
        }
        _ => {
            let _ = writeln!(t, "checkpoint:  {}: {}", s(&c["out_dir"]), s(&c["note"]));
        }
    }
    let j = &v["export_job"];
    if let Value::String(e) = &j["error"] {
        let _ = writeln!(t, "export job:  {e}");
    } else if j["scheduled"] == true {
        let _ = writeln!(
            t,
            "export job:  {} {} (database {}, schedule in GMT)",
            s(&j["schedule"]),
            s(&j["command"]),
            s(&j["exports_database"])
        );
        for run in j["last_runs"].as_array().into_iter().flatten() {
            let _ = writeln!(
                t,
                "  {} {} {}",
                s(&run["start"]),
                s(&run["status"]),
                s(&run["message"])
            );
        }
    } else {
        let _ = writeln!(t, "export job:  {}", s(&j["note"]));
    }
    log::render_tracked(&mut t, &v["tracked"]);
    log::render_storage(&mut t, &v["log_storage"]);
    t
}

/// `sealed days: 31 (2025-09-01 .. 2025-10-01), 28 of them archived` and `open days: ...`.
fn render_days(t: &mut String, days: &Value) {
    let sealed = days["sealed"].as_array().cloned().unwrap_or_default();
    let day = |d: Option<&Value>| d.and_then(|d| d["day"].as_str()).unwrap_or("-").to_string();
    if let Value::String(e) = &days["error"] {
        let _ = writeln!(t, "sealed days: {e}");
    } else if sealed.is_empty() {
        let _ = writeln!(t, "sealed days: none");
    } else {
        let archived = sealed
            .iter()
            .filter(|d| d["files_present"] != d["files"])
            .count();
        let _ = writeln!(
            t,
            "sealed days: {} ({} .. {}), {archived} of them with files moved away (archived)",
            sealed.len(),
            day(sealed.first()),
            day(sealed.last())
        );
    }
    let open: Vec<&str> = days["open"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let open = if open.is_empty() {
        "none".to_string()
    } else {
        open.join(", ")
    };
    let _ = writeln!(t, "open days:   {open}");
}

/// Drops `slot`; refuses while a consumer holds it unless `force`, which ends that connection.
pub async fn drop_slot(params: &ConnParams, slot: &str, force: bool) -> Result<(), StatusError> {
    let client = sql::connect_params(params).await?;
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SqlError::new("could not read pg_replication_slots", e))?
        .ok_or_else(|| StatusError::NoSlot(slot.to_string()))?;
    if let Some(pid) = row.get::<_, Option<i32>>(0) {
        if !force {
            return Err(StatusError::Active(slot.to_string(), pid));
        }
        client
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .map_err(|e| SqlError::new("could not end the slot's connection", e))?;
        let mut waited = Duration::ZERO;
        loop {
            let busy: bool = client
                .query_one("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .map_err(|e| SqlError::new("could not read pg_replication_slots", e))?
                .get(0);
            if !busy {
                break;
            }
            if waited >= Duration::from_secs(10) {
                return Err(StatusError::StillActive(slot.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| SqlError::new("could not drop the slot", e))?;
    Ok(())
}
