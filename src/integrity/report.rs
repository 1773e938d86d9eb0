//! What `verify --integrity` found: breaks (tampering, exit 1), stretches not yet covered by a
//! digest (not tampering), and notes (key rotations).

use std::fmt::Write;
use std::path::PathBuf;

/// One break of the chain or of a file against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// A stream file's name, or a path inside out-dir (`audit-tail.digests/00000007.digest`).
    pub place: String,
    /// The line of `place` where it begins, when known.
    pub line: Option<u64>,
    pub what: String,
}

/// Rows of a file after its last digest: the next digest will cover them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    pub file: String,
    /// The first line no digest covers.
    pub from_line: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct IntegrityReport {
    pub out_dir: PathBuf,
    pub digests: usize,
    pub keys: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    pub breaks: Vec<Break>,
    pub uncovered: Vec<Uncovered>,
    pub notes: Vec<String>,
}

impl IntegrityReport {
    /// Whether nothing was found broken (rows not yet covered are not a break).
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }

    pub(crate) fn broken(
        &mut self,
        place: impl Into<String>,
        line: Option<u64>,
        what: impl Into<String>,
    ) {
        self.breaks.push(Break {
            place: place.into(),
            line,
            what: what.into(),
        });
    }

    /// The report for people: one line per finding, then the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for b in &self.breaks {
            let line = b.line.map(|l| format!(" line {l}")).unwrap_or_default();
            let _ = writeln!(out, "BROKEN {}{line}: {}", b.place, b.what);
        }
        for u in &self.uncovered {
            let _ = writeln!(
                out,
                "not yet covered {} line {}: {} bytes after the last digest of the file (the stream's next digest covers them; not a break)",
                u.file, u.from_line, u.bytes
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        let keys = if self.keys.is_empty() {
            "no key".to_string()
        } else {
            self.keys.join(", ")
        };
        let _ = writeln!(
            out,
            "{}: {} digests (signed by {keys}), {} files, {} bytes checked in {}",
            if self.intact() { "intact" } else { "BROKEN" },
            self.digests,
            self.files,
            self.bytes,
            self.out_dir.display()
        );
        if !self.intact() {
            let _ = writeln!(
                out,
                "{} breaks: the files or digests above were changed after the stream wrote them; restore them from a copy (see docs/security.md)",
                self.breaks.len()
            );
        }
        out
    }
}
