//! The one CSV encoder: a row → the exact bytes `COPY ... TO STDOUT WITH (FORMAT csv)` writes.
//!
//! Every CSV writer of audit-tail (the rolling stream files, their header lines) goes through
//! here, and tests/stream_e2e.rs checks the result against the server's own COPY output.
//! The `csv` crate cannot be used for this: it cannot tell NULL (an empty field) from an empty
//! string (`""`), and it does not know COPY's rule for `\.` in a single-column row.
//!
//! COPY's rules (copyto.c, CopyAttributeOutCSV, with the default delimiter `,`, quote `"`,
//! escape `"` and NULL string ``): NULL is an empty unquoted field; a value is quoted when it
//! contains the delimiter, the quote, CR or LF, when it equals the NULL string (so `''` becomes
//! `""`), or when the row has a single column and the value is `\.`; a quote inside a quoted
//! value is doubled. Leading and trailing spaces are not quoted. Lines end with LF.

/// Appends one CSV line (with its LF) for `values` to `out`.
pub fn encode_row<'a>(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    encode_row_as(out, values, Cells::Exact);
}

/// How values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cells {
    /// Byte for byte as COPY writes them.
    #[default]
    Exact,
    /// `--safe-csv`: a value that a spreadsheet would run as a formula (it begins with `=`, `+`,
    /// `-`, `@`, TAB or CR) gets a leading `'`, which spreadsheets show as text. No longer
    /// byte-identical to COPY for such values; NULL, `""` and every other value are unchanged.
    Safe,
}

/// Whether a spreadsheet could take `value` for a formula.
pub fn formula_like(value: &[u8]) -> bool {
    matches!(
        value.first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    )
}

/// `encode_row` with the choice of `Cells`.
pub fn encode_row_as<'a>(
    out: &mut Vec<u8>,
    values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    cells: Cells,
) {
    let single = values.len() == 1;
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(value) = value {
            if cells == Cells::Safe && formula_like(value) {
                let mut guarded = Vec::with_capacity(value.len() + 1);
                guarded.push(b'\'');
                guarded.extend_from_slice(value);
                encode_field(out, &guarded, single);
            } else {
                encode_field(out, value, single);
            }
        }
    }
    out.push(b'\n');
}

/// Appends the header line: the column names, encoded like values.
pub fn encode_header<S: AsRef<str>>(out: &mut Vec<u8>, names: &[S]) {
    encode_row(out, names.iter().map(|n| Some(n.as_ref().as_bytes())));
}

fn encode_field(out: &mut Vec<u8>, value: &[u8], single_column: bool) {
    let needs_quotes = value.is_empty()
        || (single_column && value == b"\\.")
        || value
            .iter()
            .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[Option<&str>]) -> String {
        let mut out = Vec::new();
        encode_row(&mut out, values.iter().map(|v| v.map(str::as_bytes)));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn safe_cells_guard_formula_like_values_and_nothing_else() {
        let safe = |values: &[Option<&str>]| {
            let mut out = Vec::new();
            encode_row_as(
                &mut out,
                values.iter().map(|v| v.map(str::as_bytes)),
                Cells::Safe,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            safe(&[
                Some("=1+1"),
                Some("+x"),
                Some("-5"),
                Some("@a"),
                Some("\tb")
            ]),
            "'=1+1,'+x,'-5,'@a,'\tb\n"
        );
        // The guard goes inside the quotes when the value needs them.
        assert_eq!(
            safe(&[Some("=HYPERLINK(\"x\",\"y\")"), Some("\rcr")]),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\",\"'\rcr\"\n"
        );
        let plain = [None, Some(""), Some("a=b"), Some(" =x"), Some("Иван")];
        assert_eq!(safe(&plain), line(&plain));
    }

    #[test]
    fn null_is_empty_and_empty_string_is_quoted() {
        assert_eq!(line(&[None, Some(""), Some("x")]), ",\"\",x\n");
        assert_eq!(line(&[None]), "\n");
        assert_eq!(line(&[Some("")]), "\"\"\n");
    }

    #[test]
    fn delimiters_quotes_and_line_breaks_are_quoted() {
        assert_eq!(
            line(&[Some("a,b"), Some("say \"hi\"")]),
            "\"a,b\",\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(
            line(&[Some("l1\nl2"), Some("cr\r")]),
            "\"l1\nl2\",\"cr\r\"\n"
        );
    }

    #[test]
    fn spaces_backslashes_and_utf8_are_left_alone() {
        assert_eq!(
            line(&[Some("  padded  "), Some("a\\b"), Some("Иван")]),
            "  padded  ,a\\b,Иван\n"
        );
    }

    #[test]
    fn end_of_data_marker_is_quoted_only_alone_on_a_line() {
        assert_eq!(line(&[Some("\\.")]), "\"\\.\"\n");
        assert_eq!(line(&[Some("\\."), Some("x")]), "\\.,x\n");
    }

    #[test]
    fn header_uses_the_same_rules() {
        let mut out = Vec::new();
        encode_header(&mut out, &["id", "odd,name"]);
        assert_eq!(out, b"id,\"odd,name\"\n");
    }
}
