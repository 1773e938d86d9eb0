//! How the stream's files are named and found: the one place that knows the layout of an out-dir.
//!
//! Beside the flow: the file sink (src/sink/files.rs) names the files it writes here, and
//! `verify`, `demo` and the tests find them here. A table's rows of day D go to
//! `[schema.]table_stream_YYYYMMDD.csv`, the schema left out for `public`; when the table's
//! columns change during the day its rows go on in `..._YYYYMMDD-2.csv`, then `-3`, and so on
//! (the part number). Schema and table names may hold any character: `[A-Za-z0-9_]` is kept, every
//! other byte is percent-encoded (`%2F`), so the first `.` separates the schema and a name never
//! makes a path.

use std::io;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

/// One stream file's name, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFile {
    pub schema: String,
    pub table: String,
    pub day: NaiveDate,
    /// 1 for `..._YYYYMMDD.csv`, N for `..._YYYYMMDD-N.csv`.
    pub part: u32,
}

impl StreamFile {
    /// The file's name in the out-dir.
    pub fn name(&self) -> String {
        file_name(&self.schema, &self.table, self.day, self.part)
    }
}

/// `users_audit_stream_20251021` for public.users_audit on 2025-10-21, `app.users_audit_stream_...`
/// in schema app: the name of the day's files without part and extension.
pub fn base_name(schema: &str, table: &str, day: NaiveDate) -> String {
    let name = if schema == "public" {
        file_safe(table)
    } else {
        format!("{}.{}", file_safe(schema), file_safe(table))
    };
    format!("{name}_stream_{}", day.format("%Y%m%d"))
}

/// The name of part `part` of the files of `base` (from `base_name`).
pub fn part_name(base: &str, part: u32) -> String {
    if part <= 1 {
        format!("{base}.csv")
    } else {
        format!("{base}-{part}.csv")
    }
}

/// The name of part `part` of the files of `schema.table` and `day`.
pub fn file_name(schema: &str, table: &str, day: NaiveDate, part: u32) -> String {
    part_name(&base_name(schema, table, day), part)
}

/// Reads a stream file's name back; None for any other name, and for one audit-tail would not
/// have written (the name made again from what was read must be the same).
pub fn parse(name: &str) -> Option<StreamFile> {
    let stem = name.strip_suffix(".csv")?;
    let (prefix, rest) = stem.rsplit_once("_stream_")?;
    let (date, part) = match rest.split_once('-') {
        Some((date, part)) => (date, part.parse().ok().filter(|&p| p >= 2)?),
        None => (rest, 1),
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day = NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
    let (schema, table) = match prefix.split_once('.') {
        Some((schema, table)) => (decode(schema)?, decode(table)?),
        None => ("public".to_string(), decode(prefix)?),
    };
    let file = StreamFile {
        schema,
        table,
        day,
        part,
    };
    (file.name() == name).then_some(file)
}

/// The day of a stream file's name (`users_audit_stream_20251021-2.csv`: 2025-10-21); None for
/// any other name.
pub fn day_of(name: &str) -> Option<NaiveDate> {
    parse(name).map(|file| file.day)
}

/// Whether `name` is the name of a stream file.
pub fn is_stream_file(name: &str) -> bool {
    parse(name).is_some()
}

/// The stream files in `dir`, in no particular order. A missing `dir` has none.
pub fn list(dir: &Path) -> io::Result<Vec<StreamFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(file) = entry.file_name().to_str().and_then(parse) {
            files.push(file);
        }
    }
    Ok(files)
}

/// The files of `schema.table` and `day` in `dir`, in part order.
pub fn day_files(
    dir: &Path,
    schema: &str,
    table: &str,
    day: NaiveDate,
) -> io::Result<Vec<PathBuf>> {
    let mut parts: Vec<u32> = list(dir)?
        .into_iter()
        .filter(|f| f.day == day && f.schema == schema && f.table == table)
        .map(|f| f.part)
        .collect();
    parts.sort_unstable();
    Ok(parts
        .into_iter()
        .map(|part| dir.join(file_name(schema, table, day, part)))
        .collect())
}

/// The schemas in which a table named `table` has files in `dir`, sorted.
pub fn schemas_of(dir: &Path, table: &str) -> io::Result<Vec<String>> {
    let mut schemas: Vec<String> = list(dir)?
        .into_iter()
        .filter(|f| f.table == table)
        .map(|f| f.schema)
        .collect();
    schemas.sort();
    schemas.dedup();
    Ok(schemas)
}

/// Keeps [A-Za-z0-9_], percent-encodes every other byte.
fn file_safe(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of `file_safe`; None for text it would not have written.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 10, 21).unwrap()
    }

    #[test]
    fn names_read_back_to_their_table_day_and_part() {
        for (schema, table, part, name) in [
            (
                "public",
                "users_audit",
                1,
                "users_audit_stream_20251021.csv",
            ),
            (
                "public",
                "users_audit",
                2,
                "users_audit_stream_20251021-2.csv",
            ),
            (
                "app",
                "users_audit",
                1,
                "app.users_audit_stream_20251021.csv",
            ),
            (
                "sales",
                "Orders/2",
                12,
                "sales.Orders%2F2_stream_20251021-12.csv",
            ),
            ("public", "x_stream_y", 1, "x_stream_y_stream_20251021.csv"),
            ("my.schema", "t", 1, "my%2Eschema.t_stream_20251021.csv"),
        ] {
            assert_eq!(file_name(schema, table, day(), part), name);
            let file = parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                file,
                StreamFile {
                    schema: schema.into(),
                    table: table.into(),
                    day: day(),
                    part,
                }
            );
        }
    }

    #[test]
    fn other_names_are_not_stream_files() {
        for name in [
            "audit-tail.state",
            "users_audit_stream_20251021.csv.tmp",
            "users_audit_stream_2025102.csv",
            "users_audit_stream_20251321.csv",
            "users_audit_stream_20251021-1.csv",
            "users_audit_stream_20251021-02.csv",
            "users_audit_stream_20251021-x.csv",
            "public.users_audit_stream_20251021.csv",
            "a%2fb_stream_20251021.csv",
            "a%2_stream_20251021.csv",
            "_stream_20251021.csv",
            "notes_stream_draft.csv",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
    }

    #[test]
    fn the_files_of_a_day_are_listed_in_part_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "users_audit_stream_20251021-10.csv",
            "users_audit_stream_20251021-2.csv",
            "users_audit_stream_20251021.csv",
            "users_audit_stream_20251022.csv",
            "app.users_audit_stream_20251021.csv",
            "users_audit_stream_20251021.csv.bak",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = day_files(dir.path(), "public", "users_audit", day())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "users_audit_stream_20251021.csv",
                "users_audit_stream_20251021-2.csv",
                "users_audit_stream_20251021-10.csv"
            ]
        );
        assert_eq!(
            schemas_of(dir.path(), "users_audit").unwrap(),
            ["app", "public"]
        );
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }
}
