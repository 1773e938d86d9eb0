//! A strict reader of COPY-style CSV records, for `verify`: it keeps NULL (an unquoted empty
//! field) apart from an empty string (`""`), which the `csv` crate cannot, and reports malformed
//! input with its line instead of guessing.

use std::io::{self, BufRead};

/// One field: None for NULL.
pub type Field = Option<Vec<u8>>;

/// One record: its first line, its bytes as written, and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub raw: Vec<u8>,
    pub fields: Vec<Field>,
}

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads records one at a time from a buffered reader.
pub struct Reader<R> {
    input: R,
    line: usize,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader { input, line: 1 }
    }

    /// The next record, or None at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<Record>, CsvError> {
        let start = self.line;
        let mut raw = Vec::new();
        // A record ends at a newline outside quotes; keep reading lines until it does.
        loop {
            let before = raw.len();
            if self.input.read_until(b'\n', &mut raw)? == 0 {
                if raw.is_empty() {
                    return Ok(None);
                }
                return Err(malformed(
                    start,
                    "the file ends in the middle of a record (a partial last line or an unclosed quote)",
                ));
            }
            if raw[before..].ends_with(b"\n") {
                self.line += 1;
            }
            if !raw.ends_with(b"\n") {
                continue;
            }
            if quotes_balanced(&raw) {
                break;
            }
        }
        let fields =
            parse_fields(&raw[..raw.len() - 1]).map_err(|reason| malformed(start, reason))?;
        Ok(Some(Record {
            line: start,
            raw,
            fields,
        }))
    }
}

fn quotes_balanced(raw: &[u8]) -> bool {
    raw.iter().filter(|&&b| b == b'"').count() % 2 == 0
}

fn malformed(line: usize, reason: &str) -> CsvError {
    CsvError::Malformed {
        line,
        reason: reason.to_string(),
    }
}

fn parse_fields(body: &[u8]) -> Result<Vec<Field>, &'static str> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if body.get(i) == Some(&b'"') {
            let mut value = Vec::new();
            i += 1;
            loop {
                match body.get(i) {
                    None => return Err("a quoted field is not closed"),
                    Some(b'"') if body.get(i + 1) == Some(&b'"') => {
                        value.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
            fields.push(Some(value));
            match body.get(i) {
                None => return Ok(fields),
                Some(b',') => i += 1,
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            let end = body[i..].iter().position(|&b| b == b',').map(|p| i + p);
            let value = &body[i..end.unwrap_or(body.len())];
            if value.contains(&b'"') {
                return Err("a quote inside an unquoted field");
            }
            fields.push(if value.is_empty() {
                None
            } else {
                Some(value.to_vec())
            });
            match end {
                None => return Ok(fields),
                Some(e) => i = e + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str) -> Result<Vec<Record>, CsvError> {
        let mut r = Reader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    fn s(v: &str) -> Field {
        Some(v.as_bytes().to_vec())
    }

    #[test]
    fn null_empty_quotes_and_newlines() {
        let recs = read_all("1,,\"\",\"a,b\"\n2,\"l1\nl2\",\"say \"\"hi\"\"\",x\n").unwrap();
        assert_eq!(recs[0].fields, vec![s("1"), None, s(""), s("a,b")]);
        assert_eq!(
            recs[1].fields,
            vec![s("2"), s("l1\nl2"), s("say \"hi\""), s("x")]
        );
        assert_eq!((recs[0].line, recs[1].line), (1, 2));
        assert_eq!(recs[1].raw, b"2,\"l1\nl2\",\"say \"\"hi\"\"\",x\n");
        assert_eq!(read_all("a\n\"b\"\n").unwrap()[1].line, 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

        /// Any bytes: records or a typed error, never a panic.
        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(
            proptest::sample::select(b"ab,\"\n\r1".to_vec()), 0..200)) {
            let mut r = Reader::new(&data[..]);
            while let Ok(Some(_)) = r.next_record() {}
        }

        /// What the encoder writes, the reader reads back, NULL and "" included.
        #[test]
        fn encoder_output_reads_back(rows in proptest::collection::vec(
            proptest::collection::vec(proptest::option::of("[a-z,\"\n\r .\\\\]{0,6}"), 1..5), 1..5)) {
            let mut bytes = Vec::new();
            for row in &rows {
                crate::sink::copy_csv::encode_row(&mut bytes, row.iter().map(|v| v.as_deref().map(str::as_bytes)));
            }
            let mut r = Reader::new(&bytes[..]);
            for row in &rows {
                let rec = r.next_record().unwrap().unwrap();
                let want: Vec<Field> = row.iter().map(|v| v.as_ref().map(|s| s.as_bytes().to_vec())).collect();
                // A single NULL column is an empty line, which reads as one NULL field.
                proptest::prop_assert_eq!(rec.fields, want);
            }
            proptest::prop_assert!(r.next_record().unwrap().is_none());
        }
    }

    #[test]
    fn malformed_input_names_its_line() {
        for (text, line) in [
            ("1,2\n3,\"open\n", 2),
            ("1,2\n3,4", 2),
            ("1,a\"b\n", 1),
            ("ok\n\"x\"y,1\n", 2),
        ] {
            match read_all(text) {
                Err(CsvError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
