//! What a question read, said on stderr when nothing matched (exit 1): which copy, and of the
//! files which ones, by day, so that "nothing" can be told from "looked in the wrong place".

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::scan::Trail;

/// Where one trail was read.
#[derive(Debug, Clone)]
pub enum Searched {
    Files {
        dir: PathBuf,
        trail: Trail,
        /// The first and last day of the files read, and how many files.
        days: Option<(NaiveDate, NaiveDate)>,
        count: usize,
        /// The days asked for (`--since`, `--until`, `--at`).
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    },
    Database(Trail),
}

impl Searched {
    pub fn files(
        dir: &Path,
        trail: Trail,
        files: &[(NaiveDate, PathBuf)],
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Searched {
        Searched::Files {
            dir: dir.to_path_buf(),
            trail,
            days: files.first().zip(files.last()).map(|(a, b)| (a.0, b.0)),
            count: files.len(),
            from,
            to,
        }
    }
}

fn trail_name(trail: Trail) -> &'static str {
    match trail {
        Trail::Users => "users_audit",
        Trail::Log => "audit.log",
    }
}

impl std::fmt::Display for Searched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Searched::Database(trail) => write!(f, "the database's {}", trail_name(*trail)),
            Searched::Files {
                dir,
                trail,
                days,
                count,
                from,
                to,
            } => {
                let name = trail_name(*trail);
                match days {
                    Some((first, last)) if first == last => write!(
                        f,
                        "{count} file{} of {name} in {} (day {first})",
                        if *count == 1 { "" } else { "s" },
                        dir.display()
                    ),
                    Some((first, last)) => write!(
                        f,
                        "{count} files of {name} in {} (days {first} to {last})",
                        dir.display()
                    ),
                    None => {
                        write!(f, "no file of {name} in {}", dir.display())?;
                        match (from, to) {
                            (Some(a), Some(b)) => write!(f, " for days {a} to {b}"),
                            (Some(a), None) => write!(f, " from day {a}"),
                            (None, Some(b)) => write!(f, " up to day {b}"),
                            (None, None) => Ok(()),
                        }
                    }
                }
            }
        }
    }
}

/// Several trails read: "A and B".
pub fn all(searched: &[Searched]) -> String {
    searched
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Says on stderr that nothing matched, what was asked and where it was looked for.
pub fn nothing_matched(what: &str, searched: &[Searched]) {
    tracing::info!("nothing matched: {what} in {}", all(searched));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    #[test]
    fn says_which_files_and_days() {
        let dir = Path::new("/out");
        let files = vec![
            (day(23), dir.join("a")),
            (day(24), dir.join("b")),
            (day(25), dir.join("c")),
        ];
        assert_eq!(
            Searched::files(dir, Trail::Users, &files, None, None).to_string(),
            "3 files of users_audit in /out (days 2026-11-23 to 2026-11-25)"
        );
        assert_eq!(
            Searched::files(dir, Trail::Log, &files[..1], None, None).to_string(),
            "1 file of audit.log in /out (day 2026-11-23)"
        );
        assert_eq!(
            Searched::files(dir, Trail::Log, &[], Some(day(1)), Some(day(2))).to_string(),
            "no file of audit.log in /out for days 2026-11-01 to 2026-11-02"
        );
        assert_eq!(
            all(&[
                Searched::Database(Trail::Log),
                Searched::Database(Trail::Users)
            ]),
            "the database's audit.log and the database's users_audit"
        );
    }
}
