//! `track`, `untrack` and `tracked`: the generic log's SQL API (sql/audit_log.sql) from the
//! command line.
//!
//! Beside the flow, like `setup`: one ordinary SQL connection calls audit.track(),
//! audit.untrack() or reads the view audit.tracked. The server decides everything (which tables
//! can be tracked, which column names exist) and its refusals reach the user in its own words,
//! through `SqlError`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::sql::{self, SqlError};
use crate::wire::ConnParams;

/// The options of a tracked table, as track() takes them and the view audit.tracked shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Audit only these columns (and the key).
    pub only: Option<Vec<String>>,
    /// Do not audit these columns: an UPDATE of them alone writes nothing.
    pub ignore: Option<Vec<String>>,
    /// Their values never reach the log, only that they changed.
    pub redact: Option<Vec<String>>,
    /// A trigger WHEN condition, such as `NEW.status <> 'draft'`.
    pub when: Option<String>,
}

/// One row of audit.tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// `schema.table`, each part quoted when it needs to be.
    pub table: String,
    /// The columns that name a row in the log: the primary key (or replica identity index).
    pub key: Vec<String>,
    pub options: Options,
}

/// Calls audit.track(table, only, ignore, redact, when): tracks `table` (`schema.table`, or a
/// name the server's search_path finds), replacing the options of an earlier track.
pub async fn track(params: &ConnParams, table: &str, options: &Options) -> Result<(), SqlError> {
    let client = sql::connect_params(params).await?;
    client
        .execute(
            "SELECT audit.track($1::text::regclass, $2, $3, $4, $5)",
            &[
                &table,
                &options.only,
                &options.ignore,
                &options.redact,
                &options.when,
            ],
        )
        .await
        .map_err(|e| SqlError::new(format!("could not track {table}"), e))?;
    Ok(())
}

/// Calls audit.untrack(table); returns whether the table was tracked.
pub async fn untrack(params: &ConnParams, table: &str) -> Result<bool, SqlError> {
    let client = sql::connect_params(params).await?;
    let row = client
        .query_one("SELECT audit.untrack($1::text::regclass)", &[&table])
        .await
        .map_err(|e| SqlError::new(format!("could not untrack {table}"), e))?;
    Ok(row.get(0))
}

/// The rows of audit.tracked, by table name.
pub async fn tracked(params: &ConnParams) -> Result<Vec<Tracked>, SqlError> {
    let client = sql::connect_params(params).await?;
    let rows = client
        .query(
            "SELECT \"table\", \"key\", \"only\", \"ignore\", redact, \"when\" \
             FROM audit.tracked ORDER BY schema_name, table_name",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("could not read audit.tracked", e))?;
    Ok(rows
        .iter()
        .map(|r| Tracked {
            table: r.get(0),
            key: r.get(1),
            options: Options {
                only: r.get(2),
                ignore: r.get(3),
                redact: r.get(4),
                when: r.get(5),
            },
        })
        .collect())
}

/// One line per table: `shop.orders  key id  ignore updated_at  redact card  when ...`.
pub fn render_text(tables: &[Tracked]) -> String {
    if tables.is_empty() {
        return "no table is tracked (audit-tail track SCHEMA.TABLE starts one)\n".to_string();
    }
    let mut text = String::new();
    for t in tables {
        let _ = write!(text, "{}  key {}", t.table, t.key.join(","));
        let lists = [
            ("only", &t.options.only),
            ("ignore", &t.options.ignore),
            ("redact", &t.options.redact),
        ];
        for (name, list) in lists {
            if let Some(list) = list {
                let _ = write!(text, "  {name} {}", list.join(","));
            }
        }
        if let Some(when) = &t.options.when {
            let _ = write!(text, "  when {when}");
        }
        text.push('\n');
    }
    text
}

/// A JSON array of `{"table", "key", "only", "ignore", "redact", "when"}`.
pub fn render_json(tables: &[Tracked]) -> String {
    let list: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "table": t.table, "key": t.key, "only": t.options.only,
                "ignore": t.options.ignore, "redact": t.options.redact, "when": t.options.when,
            })
        })
        .collect();
    format!("{}\n", Value::Array(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_each_option_given_and_says_when_nothing_is_tracked() {
        assert!(render_text(&[]).starts_with("no table is tracked"));
        let t = Tracked {
            table: "shop.orders".into(),
            key: vec!["a".into(), "b".into()],
            options: Options {
                ignore: Some(vec!["updated_at".into()]),
                when: Some("NEW.x".into()),
                ..Options::default()
            },
        };
        assert_eq!(
            render_text(&[t]),
            "shop.orders  key a,b  ignore updated_at  when NEW.x\n"
        );
    }
}
