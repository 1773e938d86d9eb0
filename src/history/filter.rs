//! Which records a question is about: the table, actor, operation, field, time window, reason
//! and request id of `log`, and the byte needles that let a scan skip every other record unparsed.

use chrono::NaiveDateTime;

use super::scan::{Row, Trail};

/// The table a question names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `users`, whose trail is users_audit.
    Users,
    /// A table tracked into audit.log.
    Log { schema: String, table: String },
}

impl Target {
    /// `users` (or `users_audit`) is the users trail; `schema.table` or `table` (schema public)
    /// a table of audit.log. Names are read as PostgreSQL reads them (and as `track` takes and
    /// `tracked` prints them): unquoted folded to lower case, `"Quoted"` exactly.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "{text:?} is not a table: give TABLE or SCHEMA.TABLE, such as public.orders, \
                 users or 'app.\"Orders\"' (quote a name that has capitals, as `tracked` prints it)"
            )
        };
        let parts = identifiers(text).ok_or_else(bad)?;
        let (schema, table) = match parts.as_slice() {
            [table] => ("public".to_string(), table.clone()),
            [schema, table] => (schema.clone(), table.clone()),
            _ => return Err(bad()),
        };
        if schema.is_empty() || table.is_empty() {
            return Err(bad());
        }
        if schema == "public" && (table == "users" || table == "users_audit") {
            return Ok(Target::Users);
        }
        Ok(Target::Log { schema, table })
    }

    pub fn trail(&self) -> Trail {
        match self {
            Target::Users => Trail::Users,
            Target::Log { .. } => Trail::Log,
        }
    }

    /// Whether an audit.log row is of this table.
    pub fn holds(&self, row: &Row) -> bool {
        match self {
            Target::Users => row.trail == Trail::Users,
            Target::Log { schema, table } => {
                row.trail == Trail::Log
                    && row.get("schema_name") == Some(schema.as_str())
                    && row.get("table_name") == Some(table.as_str())
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Users => f.write_str("users"),
            Target::Log { schema, table } => {
                write!(f, "{}.{}", display_ident(schema), display_ident(table))
            }
        }
    }
}

/// The dot-separated identifiers of `text` as PostgreSQL reads them; None when a quote is not
/// closed or a part is empty.
fn identifiers(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// A name as `tracked` prints it: bare when PostgreSQL would read it back unchanged.
fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The filters of `log` (all optional, all must hold).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub target: Option<Target>,
    pub actor: Option<String>,
    /// INSERT, UPDATE, DELETE or TRUNCATE.
    pub op: Option<String>,
    pub field: Option<String>,
    pub since: Option<NaiveDateTime>,
    pub until: Option<NaiveDateTime>,
    /// A part of the reason.
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl Filter {
    /// The trails the filter can match rows of.
    pub fn trails(&self) -> Vec<Trail> {
        match &self.target {
            Some(target) => vec![target.trail()],
            None if self.reason.is_some() || self.request_id.is_some() => vec![Trail::Log],
            None if self.op.as_deref().is_some_and(|op| op != "UPDATE") => vec![Trail::Log],
            None => vec![Trail::Users, Trail::Log],
        }
    }

    pub fn matches(&self, row: &Row) -> bool {
        if !self.target.as_ref().is_none_or(|t| t.holds(row)) || !self.in_window(row) {
            return false;
        }
        match row.trail {
            Trail::Users => {
                self.reason.is_none()
                    && self.request_id.is_none()
                    && self.op.as_deref().is_none_or(|op| op == "UPDATE")
                    && eq(&self.actor, row.get("changed_by"))
                    && eq(&self.field, row.get("field_changed"))
            }
            Trail::Log => {
                eq(&self.actor, row.get("actor"))
                    && eq(&self.op, row.get("op"))
                    && eq(&self.request_id, row.get("request_id"))
                    && self.reason.as_deref().is_none_or(|part| {
                        row.get("reason")
                            .is_some_and(|reason| reason.contains(part))
                    })
                    && self.field.as_deref().is_none_or(|field| {
                        row.get("changed_columns")
                            .is_some_and(|cols| text_array(cols).iter().any(|c| c == field))
                    })
            }
        }
    }

    /// Whether the row's change is within --since and --until (both inclusive).
    pub fn in_window(&self, row: &Row) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(at) = row.changed_at() else {
            return false;
        };
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at <= u)
    }

    /// One needle every matching record of `trail` holds (none: read every record): the most
    /// selective filter's value, as it appears in the file's bytes (quotes doubled).
    pub fn needles(&self, trail: Trail, columns: &[String]) -> Vec<Vec<u8>> {
        let pick = [
            self.request_id.as_deref().filter(|_| trail == Trail::Log),
            self.actor.as_deref(),
            self.reason.as_deref().filter(|_| trail == Trail::Log),
            self.field.as_deref(),
        ]
        .into_iter()
        .flatten()
        .next();
        if let Some(value) = pick {
            return vec![csv_bytes(value)];
        }
        match &self.target {
            Some(Target::Log { schema, table }) => vec![table_needle(schema, table, columns)],
            _ => Vec::new(),
        }
    }
}

fn eq(want: &Option<String>, have: Option<&str>) -> bool {
    want.as_deref().is_none_or(|w| have == Some(w))
}

/// `value` as it appears inside a CSV cell: quotes doubled (COPY quotes the whole cell when it
/// needs to, so this is a part of the cell either way).
pub fn csv_bytes(value: &str) -> Vec<u8> {
    value.replace('"', "\"\"").into_bytes()
}

/// `,public,orders,` when schema_name and table_name are neighbours holding plain names; else the
/// table's name alone.
pub fn table_needle(schema: &str, table: &str, columns: &[String]) -> Vec<u8> {
    let at = |name: &str| columns.iter().position(|c| c == name);
    let plain =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match (at("schema_name"), at("table_name")) {
        (Some(s), Some(t)) if s > 0 && t == s + 1 && plain(schema) && plain(table) => {
            format!(",{schema},{table},").into_bytes()
        }
        _ => csv_bytes(table),
    }
}

/// PostgreSQL's text form of a text[] (`{status,"a b","say \"hi\""}`) read back.
pub fn text_array(text: &str) -> Vec<String> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let mut items = Vec::new();
    let mut item = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for c in inner.chars() {
        any = true;
        match c {
            _ if escaped => {
                item.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    if any {
        items.push(item);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_their_trail() {
        assert_eq!(Target::parse("users").unwrap(), Target::Users);
        assert_eq!(Target::parse("public.users_audit").unwrap(), Target::Users);
        assert_eq!(
            Target::parse("orders").unwrap(),
            Target::Log {
                schema: "public".into(),
                table: "orders".into()
            }
        );
        assert_eq!(Target::parse("app.users").unwrap().to_string(), "app.users");
        // As PostgreSQL reads names, and as `tracked` prints them.
        let orders = Target::Log {
            schema: "Sales".into(),
            table: "Order Line".into(),
        };
        assert_eq!(Target::parse(r#""Sales"."Order Line""#).unwrap(), orders);
        assert_eq!(orders.to_string(), r#""Sales"."Order Line""#);
        assert_eq!(
            Target::parse("Public.Orders").unwrap().to_string(),
            "public.orders"
        );
        assert_eq!(
            Target::parse(r#"app."a.b""c""#).unwrap(),
            Target::Log {
                schema: "app".into(),
                table: r#"a.b"c"#.into()
            }
        );
        assert!(Target::parse(r#""open"#).is_err());
        assert!(Target::parse("a.b.c").is_err());
        assert!(Target::parse(".x").is_err());
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn text_arrays_read_back() {
        assert_eq!(text_array("{status,total}"), ["status", "total"]);
        assert_eq!(
            text_array("{\"a b\",\"say \\\"hi\\\"\",x}"),
            ["a b", "say \"hi\"", "x"]
        );
        assert!(text_array("{}").is_empty());
    }
}
