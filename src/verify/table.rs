//! The audited table verify compares: schema, name, key, columns in order and the read-only
//! function whose rows are the export of a day. From the catalog when verify has a database; from
//! the nightly file's header and the reference table's defaults when it has only a file.

use std::path::Path;

use tokio_postgres::Client;

use super::VerifyError;
use crate::sql::SqlError;

/// The reference table, as sql/install.sql creates it.
pub const REFERENCE_TABLE: &str = "users_audit";
/// Its key, and the column whose date is a row's day (also the stream's: src/capture).
pub const REFERENCE_KEY: &str = "id";
pub const DAY_COLUMN: &str = "changed_at";

/// The generic log of sql/audit_log.sql, and its read-only export function.
pub const LOG_SCHEMA: &str = "audit";
pub const LOG_TABLE: &str = "log";
/// Columns only audit.log has: a nightly file with all of them is the log's export.
const LOG_ONLY_COLUMNS: [&str; 3] = ["op", "new_row", "changed_columns"];

/// An audited table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDesc {
    pub schema: String,
    pub name: String,
    /// The primary key's columns, in key order. verify compares by one integer key.
    pub key: Vec<String>,
    /// The table's columns now, in order: the export's header.
    pub columns: Vec<String>,
    /// `schema.table_rows(date)`, the day's rows (None when read from a file).
    pub export: Option<String>,
}

impl TableDesc {
    /// The table `REFERENCE_TABLE` as the catalog describes it: the one on the role's search_path,
    /// else the only one in the database.
    pub async fn from_catalog(client: &Client, database: &str) -> Result<TableDesc, VerifyError> {
        let sql_err = |e| SqlError::new("could not describe users_audit from the catalog", e);
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                   array(SELECT attname::text FROM pg_attribute \
                         WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum), \
                   array(SELECT a.attname::text FROM pg_index i \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                         WHERE i.indrelid = c.oid AND i.indisprimary \
                         ORDER BY array_position(i.indkey::int2[], a.attnum)), \
                   CASE WHEN to_regprocedure(format('%I.%I(date)', n.nspname, c.relname || '_rows')) \
                        IS NOT NULL THEN format('%I.%I', n.nspname, c.relname || '_rows') END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND c.relkind IN ('r', 'p') \
                 ORDER BY c.oid = to_regclass(quote_ident($1)) DESC NULLS LAST, n.nspname",
                &[&REFERENCE_TABLE],
            )
            .await
            .map_err(sql_err)?;
        let on_path = client
            .query_one(
                "SELECT to_regclass(quote_ident($1)) IS NOT NULL",
                &[&REFERENCE_TABLE],
            )
            .await
            .map_err(sql_err)?
            .get::<_, bool>(0);
        let row = match rows.as_slice() {
            [] => {
                return Err(VerifyError::NoTable {
                    database: database.to_string(),
                    why: format!("there is no table {REFERENCE_TABLE}"),
                });
            }
            [row] => row,
            [row, ..] if on_path => row,
            more => {
                let schemas: Vec<String> = more.iter().map(|r| r.get(0)).collect();
                return Err(VerifyError::NoTable {
                    database: database.to_string(),
                    why: format!(
                        "{REFERENCE_TABLE} is in schemas {} and none is on the role's \
                         search_path; set it (ALTER ROLE ... IN DATABASE ... SET search_path = ...) \
                         to the one audit-tail streams",
                        schemas.join(", ")
                    ),
                });
            }
        };
        let desc = TableDesc {
            schema: row.get(0),
            name: row.get(1),
            columns: row.get(2),
            key: row.get(3),
            export: row.get(4),
        };
        if desc.export.is_none() {
            return Err(VerifyError::NoExportFunction {
                function: format!("{}.{}_rows(date)", desc.schema, desc.name),
                database: database.to_string(),
            });
        }
        if desc.key.len() != 1 {
            return Err(VerifyError::NoTable {
                database: database.to_string(),
                why: format!(
                    "verify compares rows by one integer key, and {}.{} has {}",
                    desc.schema,
                    desc.name,
                    if desc.key.is_empty() {
                        "no primary key".to_string()
                    } else {
                        format!("the key ({})", desc.key.join(", "))
                    }
                ),
            });
        }
        Ok(desc)
    }

    /// The generic log, audit.log, when the database has it (sql/audit_log.sql installed): its
    /// columns now, key id, export audit.log_rows(date).
    pub async fn log_from_catalog(
        client: &Client,
        database: &str,
    ) -> Result<Option<TableDesc>, VerifyError> {
        let sql_err = |e| SqlError::new("could not describe audit.log from the catalog", e);
        let row = client
            .query_opt(
                "SELECT array(SELECT attname::text FROM pg_attribute \
                   WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum), \
                   to_regprocedure(format('%I.%I(date)', $1::text, $2::text || '_rows')) IS NOT NULL \
                 FROM pg_class c \
                 WHERE c.oid = to_regclass(format('%I.%I', $1::text, $2::text))",
                &[&LOG_SCHEMA, &LOG_TABLE],
            )
            .await
            .map_err(sql_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        if !row.get::<_, bool>(1) {
            return Err(VerifyError::NoExportFunction {
                function: format!("{LOG_SCHEMA}.{LOG_TABLE}_rows(date)"),
                database: database.to_string(),
            });
        }
        Ok(Some(TableDesc {
            schema: LOG_SCHEMA.to_string(),
            name: LOG_TABLE.to_string(),
            key: vec![REFERENCE_KEY.to_string()],
            columns: row.get(0),
            export: Some(format!("{LOG_SCHEMA}.{LOG_TABLE}_rows")),
        }))
    }

    /// For `--nightly FILE` without a database: the columns are the file's header, the rest are
    /// the reference table's defaults (name users_audit, key id). The schema is the one whose
    /// files of users_audit are in `out_dir` when there is exactly one, else public.
    pub fn from_header(header: Vec<String>, out_dir: &Path) -> TableDesc {
        let schemas = crate::layout::schemas_of(out_dir, REFERENCE_TABLE).unwrap_or_default();
        let schema = match schemas.as_slice() {
            [one] => one.clone(),
            _ => "public".to_string(),
        };
        TableDesc {
            schema,
            name: REFERENCE_TABLE.to_string(),
            key: vec![REFERENCE_KEY.to_string()],
            columns: header,
            export: None,
        }
    }

    /// For `--nightly FILE`: the table whose export the file is, told by its header. A header
    /// with the log's own columns (op, new_row, changed_columns: audit.export_log's file,
    /// `audit_log_export_YYYYMMDD.csv`) is audit.log, key id; any other is users_audit
    /// (`from_header`). The columns are filled in once the file is read.
    pub fn of_nightly_file(
        path: &Path,
        name: &str,
        out_dir: &Path,
    ) -> Result<TableDesc, VerifyError> {
        let file = std::fs::File::open(path).map_err(|source| VerifyError::Read {
            file: name.to_string(),
            source,
        })?;
        let header = super::csv_read::Reader::new(std::io::BufReader::new(file))
            .next_record()
            .map_err(|source| VerifyError::Csv {
                file: name.to_string(),
                source,
            })?;
        let columns: Vec<String> = header.as_ref().map(super::names).unwrap_or_default();
        if LOG_ONLY_COLUMNS
            .iter()
            .all(|c| columns.iter().any(|h| h == c))
        {
            return Ok(TableDesc {
                schema: LOG_SCHEMA.to_string(),
                name: LOG_TABLE.to_string(),
                key: vec![REFERENCE_KEY.to_string()],
                columns: Vec::new(),
                export: None,
            });
        }
        Ok(TableDesc::from_header(Vec::new(), out_dir))
    }

    /// The key column's name.
    pub fn key_column(&self) -> &str {
        self.key.first().map_or(REFERENCE_KEY, String::as_str)
    }

    /// The query whose COPY is the export of `day` (a date verify parsed, so safe to inline:
    /// COPY takes no parameters).
    pub(super) fn export_query(&self, day: chrono::NaiveDate) -> Option<String> {
        let function = self.export.as_ref()?;
        Some(format!(
            "COPY (SELECT * FROM {function}('{}'::date)) TO STDOUT WITH (FORMAT csv, HEADER, ENCODING 'UTF8')",
            day.format("%Y-%m-%d")
        ))
    }
}
