//! The same questions asked of the database: audit.log and users_audit through their indexes
//! (sql/audit_log.sql's last block), rows returned as the files hold them (every column as its
//! text output, as COPY writes it), so that everything after the source is shared.

use std::path::Path;
use std::rc::Rc;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::HistoryError;
use super::filter::{Filter, Target};
use super::scan::{Row, Trail};
use crate::sql::SqlError;

fn sql_error(context: &str) -> impl FnOnce(tokio_postgres::Error) -> HistoryError + '_ {
    move |e| HistoryError::Sql(SqlError::new(context, e))
}

/// The columns of a trail's table, in order.
async fn columns(client: &Client, trail: Trail) -> Result<Vec<String>, HistoryError> {
    let relation = match trail {
        Trail::Users => "users_audit",
        Trail::Log => "audit.log",
    };
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&relation],
        )
        .await
        .map_err(sql_error(
            "could not read the columns of the trail (is sql/audit_log.sql installed?)",
        ))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rows of `trail` matching `condition` (SQL over its columns, parameters `params`), in the
/// files' order (by day, then id), each column as text. The order names `t.id`, not `id`: the
/// output column `id` is text, and "10" sorts before "6".
async fn select(
    client: &Client,
    trail: Trail,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, HistoryError> {
    let columns = columns(client, trail).await?;
    let list: Vec<String> = columns
        .iter()
        // The type's output function, as COPY writes it: a cast can differ (inet's `::text`
        // adds the mask, "127.0.0.1/32" where the files hold "127.0.0.1"). format() turns NULL
        // into '', so NULL stays NULL by hand.
        .map(|c| {
            let c = quote_ident(c);
            format!("CASE WHEN t.{c} IS NULL THEN NULL ELSE format('%s', t.{c}) END")
        })
        .collect();
    let relation = match trail {
        Trail::Users => "users_audit",
        Trail::Log => "audit.log",
    };
    let sql = format!(
        "SELECT {} FROM {relation} t WHERE {condition} ORDER BY t.changed_at::date, t.id",
        list.join(", ")
    );
    let rows = client
        .query(&sql, params)
        .await
        .map_err(sql_error("could not read the trail from the database"))?;
    let columns: Rc<[String]> = columns.into();
    let file: Rc<Path> = Rc::from(Path::new(relation));
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            trail,
            columns: columns.clone(),
            fields: (0..columns.len()).map(|c| r.get(c)).collect(),
            file: file.clone(),
            line: i + 1,
            offset: None,
        })
        .collect())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One key of `target` in audit.log (its columns and types), None when the log has no row of it.
pub async fn sample_key(client: &Client, target: &Target) -> Result<Option<String>, HistoryError> {
    let Target::Log { schema, table } = target else {
        return Ok(None);
    };
    let row = client
        .query_opt(
            "SELECT key::text FROM audit.log WHERE schema_name = $1 AND table_name = $2 \
             AND key IS NOT NULL LIMIT 1",
            &[schema, table],
        )
        .await
        .map_err(sql_error("could not read audit.log"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Every row of one record of an audit.log table (and the table's TRUNCATEs), through
/// log_record_idx and log_old_key_idx.
pub async fn record_rows(
    client: &Client,
    target: &Target,
    key: &str,
) -> Result<Vec<Row>, HistoryError> {
    let Target::Log { schema, table } = target else {
        unreachable!("users' rows come from users_rows")
    };
    select(
        client,
        Trail::Log,
        "schema_name = $1 AND table_name = $2 \
         AND (key = $3::text::jsonb OR key IS NULL OR old_key = $3::text::jsonb)",
        &[schema, table, &key],
    )
    .await
}

/// Every users_audit row of one user, through users_audit_user_id_idx.
pub async fn users_rows(client: &Client, id: i64) -> Result<Vec<Row>, HistoryError> {
    select(
        client,
        Trail::Users,
        "user_id = $1::text::bigint",
        &[&id.to_string()],
    )
    .await
}

/// The rows of `trail` that may match `filter` (the filter is applied again on them).
pub async fn filtered_rows(
    client: &Client,
    trail: Trail,
    filter: &Filter,
) -> Result<Vec<Row>, HistoryError> {
    let mut conditions = vec!["true".to_string()];
    let mut params: Vec<String> = Vec::new();
    let mut add = |conditions: &mut Vec<String>, sql: &str, value: String| {
        params.push(value);
        conditions.push(sql.replace('?', &format!("${}", params.len())));
    };
    let (actor, field) = match trail {
        Trail::Users => ("changed_by", "field_changed = ?"),
        Trail::Log => ("actor", "changed_columns @> ARRAY[?::text]"),
    };
    if let Some(a) = &filter.actor {
        add(&mut conditions, &format!("{actor} = ?"), a.clone());
    }
    if let Some(f) = &filter.field {
        add(&mut conditions, field, f.clone());
    }
    if let Some(s) = filter.since {
        add(
            &mut conditions,
            "changed_at >= ?::text::timestamp",
            s.to_string(),
        );
    }
    if let Some(u) = filter.until {
        add(
            &mut conditions,
            "changed_at <= ?::text::timestamp",
            u.to_string(),
        );
    }
    if trail == Trail::Log {
        if let Some(Target::Log { schema, table }) = &filter.target {
            add(&mut conditions, "schema_name = ?", schema.clone());
            add(&mut conditions, "table_name = ?", table.clone());
        }
        if let Some(op) = &filter.op {
            add(&mut conditions, "op = ?", op.clone());
        }
        if let Some(r) = &filter.request_id {
            add(&mut conditions, "request_id = ?", r.clone());
        }
        if let Some(r) = &filter.reason {
            add(&mut conditions, "strpos(reason, ?) > 0", r.clone());
        }
    }
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    select(client, trail, &conditions.join(" AND "), &refs).await
}
