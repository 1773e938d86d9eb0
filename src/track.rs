//! `track`, `untrack` and `tracked`: the generic log's SQL API (sql/audit_log.sql) from the
//! command line.
//!
//! Beside the flow, like `setup`: one ordinary SQL connection calls audit.track(),
//! audit.untrack() or reads the view audit.tracked. The server decides everything (which tables
//! can be tracked, which column names exist) and its refusals reach the user in its own words,
//! through `SqlError`. Two refusals get words of ours: a database where the log is not installed
//! (run setup there), and a table name whose unquoted parts the server folded to lower case
//! while the catalog has them in mixed case (we show the quoted name to use).

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
    /// Statement-level triggers over transition tables (for tables written by big statements);
    /// false: row-level triggers, cheapest for one-row statements.
    pub bulk: bool,
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

/// Why `track`, `untrack` or `tracked` could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The database has no audit.log: `setup` was not run there (or ran against another one).
    #[error(
        "the generic log (audit.log) is not installed in database \"{dbname}\" on the {target}: run `audit-tail setup --dsn ...` \
         against this database first (it applies sql/install.sql and sql/audit_log.sql)"
    )]
    NotInstalled { dbname: String, target: String },
    /// The name given does not exist as written, but does with other letter case.
    #[error(
        "{source}; unquoted names are folded to lower case: to name {}, quote it as in \
         audit-tail {command} '{}'", .matches.join(" or "), .matches[0]
    )]
    Case {
        command: &'static str,
        /// The tables whose names equal the one given but for case, quoted as they must be.
        matches: Vec<String>,
        source: SqlError,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// Connects and checks that the generic log is installed in that database.
async fn connect_installed(params: &ConnParams) -> Result<tokio_postgres::Client, TrackError> {
    let client = sql::connect_params(params).await?;
    let installed: bool = client
        .query_one(
            "SELECT to_regclass('audit.log') IS NOT NULL \
                    AND to_regclass('audit.tracked') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("could not look for audit.log", e))?
        .get(0);
    if !installed {
        return Err(TrackError::NotInstalled {
            dbname: params.dbname.clone(),
            target: params.target(),
        });
    }
    Ok(client)
}

/// SQLSTATEs of a name that does not exist: the schema (3F000) or the table (42P01).
const NO_SUCH_NAME: [&str; 2] = ["3F000", "42P01"];

/// When `error` says that `table` does not exist, the tables whose name matches it but for letter
/// case, quoted (`"Sales"."OrderLine"`): the server folded an unquoted mixed-case name. The
/// lookup never hides the server's error: when it fails, or finds nothing, the error stays.
async fn case_hint(
    client: &tokio_postgres::Client,
    command: &'static str,
    table: &str,
    error: SqlError,
) -> TrackError {
    if !error.code().is_some_and(|c| NO_SUCH_NAME.contains(&c)) {
        return TrackError::Sql(error);
    }
    // parse_ident folds unquoted parts as the server did; compare each part without case, and
    // keep only the tables that differ from it in case (not one of the same name elsewhere).
    let found = client
        .query(
            "WITH p AS (SELECT parse_ident($1, false) AS parts) \
             SELECT format('%I.%I', n.nspname, c.relname) \
             FROM p, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND lower(c.relname) = lower(parts[cardinality(parts)]) \
               AND (cardinality(parts) = 1 OR lower(n.nspname) = lower(parts[cardinality(parts) - 1])) \
               AND (c.relname <> parts[cardinality(parts)] \
                    OR (cardinality(parts) > 1 AND n.nspname <> parts[cardinality(parts) - 1])) \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1 LIMIT 5",
            &[&table],
        )
        .await;
    match found {
        Ok(rows) if !rows.is_empty() => TrackError::Case {
            command,
            matches: rows.iter().map(|r| r.get(0)).collect(),
            source: error,
        },
        _ => TrackError::Sql(error),
    }
}

/// Calls audit.track(table, only, ignore, redact, when, bulk): tracks `table` (`schema.table`, or a
/// name the server's search_path finds), replacing the options of an earlier track.
pub async fn track(params: &ConnParams, table: &str, options: &Options) -> Result<(), TrackError> {
    let client = connect_installed(params).await?;
    let result = client
        .execute(
            "SELECT audit.track($1::text::regclass, $2, $3, $4, $5, $6)",
            &[
                &table,
                &options.only,
                &options.ignore,
                &options.redact,
                &options.when,
                &options.bulk,
            ],
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let error = SqlError::new(format!("could not track {table}"), e);
            Err(case_hint(&client, "track", table, error).await)
        }
    }
}

/// Calls audit.untrack(table); returns whether the table was tracked.
pub async fn untrack(params: &ConnParams, table: &str) -> Result<bool, TrackError> {
    let client = connect_installed(params).await?;
    match client
        .query_one("SELECT audit.untrack($1::text::regclass)", &[&table])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(e) => {
            let error = SqlError::new(format!("could not untrack {table}"), e);
            Err(case_hint(&client, "untrack", table, error).await)
        }
    }
}

/// The rows of audit.tracked, by table name.
pub async fn tracked(params: &ConnParams) -> Result<Vec<Tracked>, TrackError> {
    let client = connect_installed(params).await?;
    let rows = client
        .query(
            "SELECT \"table\", \"key\", \"only\", \"ignore\", redact, \"when\", bulk \
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
                bulk: r.get(6),
            },
        })
        .collect())
}

/// One line per table: `shop.orders  key id  ignore updated_at  redact card  when ...`, and
/// `  bulk` for a table tracked with statement-level triggers.
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
        if t.options.bulk {
            text.push_str("  bulk");
        }
        text.push('\n');
    }
    text
}

/// A JSON array of `{"table", "key", "only", "ignore", "redact", "when", "bulk"}`.
pub fn render_json(tables: &[Tracked]) -> String {
    let list: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "table": t.table, "key": t.key, "only": t.options.only,
                "ignore": t.options.ignore, "redact": t.options.redact, "when": t.options.when,
                "bulk": t.options.bulk,
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
        let bulk = Tracked {
            table: "shop.events".into(),
            key: vec!["id".into()],
            options: Options {
                bulk: true,
                ..Options::default()
            },
        };
        assert_eq!(render_text(&[bulk]), "shop.events  key id  bulk\n");
    }
}
