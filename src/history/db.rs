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

/// The query of the rows of `trail` matching `condition` (SQL over its columns), in the files'
/// order (by day, then id), each column as text, and the trail's columns. The order names `t.id`,
/// not `id`: the output column `id` is text, and "10" sorts before "6".
async fn select_sql(
    client: &Client,
    trail: Trail,
    condition: &str,
) -> Result<(String, Vec<String>), HistoryError> {
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
    let sql = format!(
        "SELECT {} FROM {} t WHERE {condition} ORDER BY t.changed_at::date, t.id",
        list.join(", "),
        relation(trail)
    );
    Ok((sql, columns))
}

fn relation(trail: Trail) -> &'static str {
    match trail {
        Trail::Users => "users_audit",
        Trail::Log => "audit.log",
    }
}

/// The rows of `trail` matching `condition` (parameters `params`), all read at once: for the few
/// rows of one record.
async fn select(
    client: &Client,
    trail: Trail,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, HistoryError> {
    let (sql, columns) = select_sql(client, trail, condition).await?;
    let rows = client
        .query(&sql, params)
        .await
        .map_err(sql_error("could not read the trail from the database"))?;
    let columns: Rc<[String]> = columns.into();
    let file: Rc<Path> = Rc::from(Path::new(relation(trail)));
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

/// Rows fetched per round trip by a cursor: about 1 MB of rows of a usual table; a round trip
/// costs well under a millisecond next to them.
const FETCH_ROWS: usize = 1_000;

/// The rows of a query read through a server-side cursor, FETCH_ROWS at a time, so that an
/// answer of millions of rows holds one chunk in memory. The cursors of one question share one
/// read-only REPEATABLE READ transaction (begin()), so that the trails are read at one moment.
pub struct Cursor<'a> {
    client: &'a Client,
    trail: Trail,
    name: String,
    columns: Rc<[String]>,
    file: Rc<Path>,
    chunk: std::collections::VecDeque<Row>,
    done: bool,
    line: usize,
}

/// Opens the transaction the cursors of one question live in.
pub async fn begin(client: &Client) -> Result<(), HistoryError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(sql_error("could not begin a read-only transaction"))
}

/// Ends the transaction of begin().
pub async fn end(client: &Client) -> Result<(), HistoryError> {
    client
        .batch_execute("COMMIT")
        .await
        .map_err(sql_error("could not end the read-only transaction"))
}

impl<'a> Cursor<'a> {
    async fn open(
        client: &'a Client,
        trail: Trail,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Cursor<'a>, HistoryError> {
        let (sql, columns) = select_sql(client, trail, condition).await?;
        let name = format!("audit_tail_{}", relation(trail).replace('.', "_"));
        client
            .execute(
                &format!("DECLARE {name} NO SCROLL CURSOR FOR {sql}"),
                params,
            )
            .await
            .map_err(sql_error("could not read the trail from the database"))?;
        Ok(Cursor {
            client,
            trail,
            name,
            columns: columns.into(),
            file: Rc::from(Path::new(relation(trail))),
            chunk: Default::default(),
            done: false,
            line: 0,
        })
    }

    pub async fn next_row(&mut self) -> Result<Option<Row>, HistoryError> {
        if self.chunk.is_empty() && !self.done {
            self.fetch().await?;
        }
        Ok(self.chunk.pop_front())
    }

    /// The next chunk; `done` once the server has no more. The rows come back as text (the
    /// simple protocol), which the query already made every column.
    async fn fetch(&mut self) -> Result<(), HistoryError> {
        let messages = self
            .client
            .simple_query(&format!("FETCH {FETCH_ROWS} FROM {}", self.name))
            .await
            .map_err(sql_error("could not read the trail from the database"))?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = message {
                self.line += 1;
                self.chunk.push_back(Row {
                    trail: self.trail,
                    columns: self.columns.clone(),
                    fields: (0..self.columns.len())
                        .map(|c| r.get(c).map(str::to_string))
                        .collect(),
                    file: self.file.clone(),
                    line: self.line,
                    offset: None,
                });
            }
        }
        self.done = self.chunk.len() < FETCH_ROWS;
        Ok(())
    }
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

/// Whether `target` is tracked now: it has audit.track()'s triggers (read from pg_trigger, which
/// every role may read, where audit.tracked may be closed to the role asking).
pub async fn is_tracked(client: &Client, target: &Target) -> Result<bool, HistoryError> {
    let Target::Log { schema, table } = target else {
        return Ok(true);
    };
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND NOT g.tgisinternal \
             AND g.tgname IN ('audit_log_insert', 'audit_log_update', 'audit_log_update_key', \
                              'audit_log_delete', 'audit_log_truncate'))",
            &[schema, table],
        )
        .await
        .map_err(sql_error("could not read the tracked tables' triggers"))?;
    Ok(row.get(0))
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

/// The rows of `trail` that may match `filter` (the filter is applied again on them), all read:
/// `--both` keeps them to compare.
pub async fn filtered_rows(
    client: &Client,
    trail: Trail,
    filter: &Filter,
) -> Result<Vec<Row>, HistoryError> {
    let (condition, params) = filter_condition(trail, filter);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    select(client, trail, &condition, &refs).await
}

/// The rows of `trail` that may match `filter`, through a cursor (inside begin()'s transaction).
pub async fn filtered_cursor<'a>(
    client: &'a Client,
    trail: Trail,
    filter: &Filter,
) -> Result<Cursor<'a>, HistoryError> {
    let (condition, params) = filter_condition(trail, filter);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    Cursor::open(client, trail, &condition, &refs).await
}

/// The SQL condition of `filter` on `trail`'s columns, and its parameters ($1, $2, ...).
fn filter_condition(trail: Trail, filter: &Filter) -> (String, Vec<String>) {
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
    (conditions.join(" AND "), params)
}
