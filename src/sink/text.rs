//! The `text` form of a row on stdout: one readable line, not a data format.
//!
//! Sits at the end of the flow beside the CSV files. For users_audit rows the line reads like a
//! sentence; any other table gets `table col=value ...`. NULL prints as NULL, text in quotes.

use std::fmt::Write;

/// One line (without newline) for a row of `table` whose columns are `names` and `values`.
pub fn format_row(table: &str, names: &[&str], values: &[Option<&str>]) -> String {
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i).copied())
    };
    let audit_columns = [
        "changed_at",
        "user_id",
        "field_changed",
        "old_value",
        "new_value",
        "changed_by",
    ];
    if table == "users_audit" && audit_columns.iter().all(|c| get(c).is_some()) {
        let at = get("changed_at").flatten().map(seconds).unwrap_or("NULL");
        return format!(
            "{at} user {user} {field}: {old} → {new} by {by}",
            user = get("user_id").flatten().unwrap_or("NULL"),
            field = get("field_changed").flatten().unwrap_or("NULL"),
            old = quoted(get("old_value").flatten()),
            new = quoted(get("new_value").flatten()),
            by = get("changed_by").flatten().unwrap_or("NULL"),
        );
    }
    let log_columns = [
        "changed_at",
        "op",
        "schema_name",
        "table_name",
        "key",
        "actor",
    ];
    if table == "log" && log_columns.iter().all(|c| get(c).is_some()) {
        return log_sentence(&get);
    }
    let mut line = table.to_string();
    for (name, value) in names.iter().zip(values) {
        let _ = write!(line, " {name}={}", quoted(*value));
    }
    line
}

/// An audit.log row: `2025-10-21 11:55:51 public.orders UPDATE {"id": 1} by alice: status, total
/// (reason: "refund")`; a switch row (PAUSE, RESUME) names no table.
fn log_sentence<'a>(get: &dyn Fn(&str) -> Option<Option<&'a str>>) -> String {
    let value = |name: &str| get(name).flatten();
    let at = value("changed_at").map(seconds).unwrap_or("NULL");
    let op = value("op").unwrap_or("NULL");
    let mut line = match (value("schema_name"), value("table_name")) {
        (Some(schema), Some(table)) => format!("{at} {schema}.{table} {op}"),
        _ => format!("{at} {op}"),
    };
    if let Some(key) = value("key") {
        let _ = write!(line, " {key}");
    }
    let _ = write!(line, " by {}", value("actor").unwrap_or("NULL"));
    // changed_columns is a text[] in PostgreSQL's text form: {status,total}.
    if let Some(columns) = value("changed_columns") {
        let columns = columns.trim_start_matches('{').trim_end_matches('}');
        let _ = write!(line, ": {}", columns.replace(',', ", "));
    }
    if let Some(reason) = value("reason") {
        let _ = write!(line, " (reason: {})", quoted(Some(reason)));
    }
    line.replace(['\n', '\r'], " ")
}

/// `2025-10-21 11:55:51.123456` → `2025-10-21 11:55:51`.
fn seconds(timestamp: &str) -> &str {
    timestamp.get(..19).unwrap_or(timestamp)
}

fn quoted(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_string(),
        Some(v) => format!("{v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The users_audit columns, in the CSV contract's order.
    const AUDIT: [&str; 7] = crate::verify::HEADER;

    #[test]
    fn audit_rows_read_as_a_sentence() {
        let values = [
            Some("1"),
            Some("1"),
            Some("2025-10-21 11:55:51.482913"),
            Some("alice"),
            Some("name"),
            Some("Иван Иванов"),
            Some("Иван Сидоров"),
        ];
        assert_eq!(
            format_row("users_audit", &AUDIT, &values),
            "2025-10-21 11:55:51 user 1 name: \"Иван Иванов\" → \"Иван Сидоров\" by alice"
        );
    }

    #[test]
    fn null_is_not_an_empty_string() {
        let values = [
            Some("2"),
            Some("3"),
            Some("2025-10-21 00:00:00"),
            Some("bob"),
            Some("email"),
            None,
            Some(""),
        ];
        assert_eq!(
            format_row("users_audit", &AUDIT, &values),
            "2025-10-21 00:00:00 user 3 email: NULL → \"\" by bob"
        );
    }

    #[test]
    fn log_rows_read_as_a_sentence() {
        let names = [
            "id",
            "changed_at",
            "op",
            "schema_name",
            "table_name",
            "key",
            "old_key",
            "new_row",
            "old_values",
            "changed_columns",
            "actor",
            "reason",
        ];
        let values = [
            Some("9"),
            Some("2025-10-21 11:55:51.482913"),
            Some("UPDATE"),
            Some("public"),
            Some("orders"),
            Some("{\"id\": 1}"),
            None,
            Some("{}"),
            Some("{}"),
            Some("{status,total}"),
            Some("alice"),
            Some("refund\nticket 7"),
        ];
        assert_eq!(
            format_row("log", &names, &values),
            "2025-10-21 11:55:51 public.orders UPDATE {\"id\": 1} by alice: status, total \
             (reason: \"refund\\nticket 7\")"
        );
        let insert = [
            Some("10"),
            Some("2025-10-21 11:55:52"),
            Some("INSERT"),
            Some("public"),
            Some("orders"),
            Some("{\"id\": 2}"),
            None,
            Some("{}"),
            None,
            None,
            Some("bob"),
            None,
        ];
        assert_eq!(
            format_row("log", &names, &insert),
            "2025-10-21 11:55:52 public.orders INSERT {\"id\": 2} by bob"
        );
    }

    #[test]
    fn control_characters_cannot_break_the_line() {
        let line = format_row("notes", &["id", "body"], &[Some("7"), Some("a\nb\"c")]);
        assert_eq!(line, "notes id=\"7\" body=\"a\\nb\\\"c\"");
    }
}
