//! What `status` says of the generic log: the tables it tracks and its storage (the day
//! partitions that exist and are due, rows left in DEFAULT, what retention would drop).

use std::fmt::Write as _;

use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::sql;

/// The tables audit.log tracks (the view audit.tracked of sql/audit_log.sql), or that the log is
/// not installed in this database.
pub(super) async fn tracked(client: &Client) -> Value {
    let installed = client
        .query_one("SELECT to_regclass('audit.tracked') IS NOT NULL", &[])
        .await;
    match installed {
        Err(e) => return json!({"error": sql::describe(&e)}),
        Ok(row) if !row.get::<_, bool>(0) => {
            return json!({"installed": false,
                "note": "the generic log is not installed in this database (audit-tail setup, or \
                         sql/audit_log.sql after sql/install.sql, installs it)"});
        }
        Ok(_) => {}
    }
    let rows = client
        .query(
            "SELECT \"table\", \"key\", \"only\", \"ignore\", redact, \"when\" \
             FROM audit.tracked ORDER BY schema_name, table_name",
            &[],
        )
        .await;
    match rows {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => json!({
            "installed": true, "visible": false,
            "note": format!("audit.tracked is not readable by this role ({}): run sql/audit_log.sql \
                             again, which grants it to audit_tail, or run status as its owner",
                            sql::describe(&e)),
        }),
        Err(e) => json!({"installed": true, "error": sql::describe(&e)}),
        Ok(rows) => json!({
            "installed": true, "visible": true,
            "tables": rows.iter().map(|r| json!({
                "table": r.get::<_, String>(0), "key": r.get::<_, Vec<String>>(1),
                "only": r.get::<_, Option<Vec<String>>>(2),
                "ignore": r.get::<_, Option<Vec<String>>>(3),
                "redact": r.get::<_, Option<Vec<String>>>(4),
                "when": r.get::<_, Option<String>>(5),
            })).collect::<Vec<_>>(),
        }),
    }
}

/// `tracked:     public.orders (key id; ignore updated_at), shop.invoices (key id)`, or why not.
pub(super) fn render_tracked(t: &mut String, v: &Value) {
    let list = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let line = match (&v["error"], &v["tables"]) {
        (Value::String(e), _) => e.clone(),
        (_, Value::Array(tables)) if tables.is_empty() => {
            "none (audit-tail track SCHEMA.TABLE starts one)".to_string()
        }
        (_, Value::Array(tables)) => tables
            .iter()
            .map(|table| {
                let mut parts = vec![format!("key {}", list(&table["key"]).unwrap_or_default())];
                for option in ["only", "ignore", "redact"] {
                    if let Some(cols) = list(&table[option]) {
                        parts.push(format!("{option} {cols}"));
                    }
                }
                if let Some(when) = table["when"].as_str() {
                    parts.push(format!("when {when}"));
                }
                format!(
                    "{} ({})",
                    table["table"].as_str().unwrap_or("-"),
                    parts.join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => v["note"].as_str().unwrap_or("-").to_string(),
    };
    let _ = writeln!(t, "tracked:     {line}");
}

/// The log's storage from audit.log_storage() (sql/audit_log.sql): its day partitions, the days
/// due, the rows in DEFAULT and what retention would do; or why it cannot be read.
pub(super) async fn storage(client: &Client) -> Value {
    let installed = client
        .query_one(
            "SELECT to_regclass('audit.log') IS NOT NULL, \
                    to_regprocedure('audit.log_storage()') IS NOT NULL",
            &[],
        )
        .await;
    match installed {
        Err(e) => return json!({"error": sql::describe(&e)}),
        Ok(row) if !row.get::<_, bool>(0) => return json!({"installed": false}),
        Ok(row) if !row.get::<_, bool>(1) => {
            return json!({"installed": true,
                "note": "this audit.log is not partitioned by day yet: run sql/audit_log.sql \
                         again (audit-tail setup), which moves its rows into day partitions"});
        }
        Ok(_) => {}
    }
    match client
        .query_one("SELECT audit.log_storage()::text", &[])
        .await
    {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => json!({
            "installed": true,
            "note": format!("audit.log_storage() is not executable by this role ({}): run \
                             sql/audit_log.sql again, which grants it to audit_tail, or run status \
                             as its owner", sql::describe(&e)),
        }),
        Err(e) => json!({"installed": true, "error": sql::describe(&e)}),
        Ok(row) => {
            let mut v: Value = serde_json::from_str(row.get::<_, &str>(0))
                .unwrap_or_else(|e| json!({"error": format!("audit.log_storage() returned {e}")}));
            v["installed"] = json!(true);
            if v["default_rows"].as_i64().unwrap_or(0) > 0 {
                tracing::warn!(
                    rows = v["default_rows"].as_i64(),
                    "audit.log_default holds rows: run SELECT audit.log_partitions() as the log's owner"
                );
            }
            v
        }
    }
}

/// What retention would do, as a sentence: the days it would drop, the old days it would keep
/// (with why), or that no day is old enough yet.
fn retention_sentence(dropped: &[String], kept: &[String]) -> String {
    match (dropped.is_empty(), kept.is_empty()) {
        (true, true) => "no day is older than that yet, so nothing would be dropped".to_string(),
        (false, true) => format!("would drop {}", dropped.join(", ")),
        (true, false) => format!("would drop no day; would keep {}", kept.join(", ")),
        (false, false) => format!(
            "would drop {}; would keep {}",
            dropped.join(", "),
            kept.join(", ")
        ),
    }
}

/// `log partitions: 8 days (2026-11-25 .. 2026-12-02), 7 ahead; due: none`, then a line each for
/// DEFAULT's rows (a warning) and retention.
pub(super) fn render_storage(t: &mut String, v: &Value) {
    let days = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    if let Some(e) = v["error"].as_str() {
        let _ = writeln!(t, "log partitions: {e}");
        return;
    }
    if v["installed"] != true {
        return;
    }
    if let Some(note) = v["note"].as_str() {
        let _ = writeln!(t, "log partitions: {note}");
        return;
    }
    let parts = days(&v["partitions"]);
    let range = match (parts.first(), parts.last()) {
        (Some(first), Some(last)) => format!("{} days ({first} .. {last})", parts.len()),
        _ => "none".to_string(),
    };
    let due = days(&v["due"]);
    let due = if due.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (run SELECT audit.log_partitions() as the log's owner, or let the nightly job)",
            due.join(", ")
        )
    };
    let _ = writeln!(
        t,
        "log partitions: {range}, {} days ahead; due: {due}",
        v["days_ahead"]
    );
    let default_rows = v["default_rows"].as_i64().unwrap_or(0);
    if default_rows > 0 {
        let _ = writeln!(
            t,
            "  WARNING: audit.log_default holds {default_rows} rows (of {}): days without a partition; \
             run SELECT audit.log_partitions() as the log's owner, which moves them into theirs",
            days(&v["default_days"]).join(", ")
        );
    }
    match (v["retention"].as_str(), v["retention_plan"].as_array()) {
        (Some(keep), Some(plan)) => {
            let verdict = |drop: bool| {
                plan.iter()
                    .filter(|d| d["drop"] == drop)
                    .map(|d| {
                        let day = d["day"].as_str().unwrap_or("-");
                        if drop {
                            day.to_string()
                        } else {
                            format!("{day} ({})", d["why"].as_str().unwrap_or("-"))
                        }
                    })
                    .collect::<Vec<_>>()
            };
            let (dropped, kept) = (verdict(true), verdict(false));
            let _ = writeln!(
                t,
                "  retention {keep}: {}",
                retention_sentence(&dropped, &kept)
            );
        }
        _ => {
            let _ = writeln!(
                t,
                "  retention: not set, every day is kept (UPDATE audit.log_settings SET retention = '90 days')"
            );
        }
    }
}
