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
    let single = values.len() == 1;
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(value) = value {
            encode_field(out, value, single);
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
