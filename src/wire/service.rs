//! Connection services (`service=name`, `PGSERVICE`) from pg_service.conf, as libpq reads them:
//! the user's file (`PGSERVICEFILE`, else `~/.pg_service.conf`) first, then the system's
//! (`PGSYSCONFDIR/pg_service.conf`, else the sysconfdir Debian's libpq is built with,
//! /etc/postgresql-common). The first file that defines the service is the only one used. Its
//! settings fill in what the connection string leaves out, before the environment.
//!
//! Format: `[name]` starts a service; `key=value` lines (the value runs to the end of the line,
//! without quoting) belong to it; `#` comments and blank lines are skipped.

use std::path::{Path, PathBuf};

use super::conninfo;

/// Debian's libpq reads the system file here (`pg_config --sysconfdir`).
const SYSCONFDIR: &str = "/etc/postgresql-common";

/// The settings of service `name`, or an error that says where it was looked for.
pub(crate) fn settings(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let user_file = env("PGSERVICEFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pg_service.conf")));
    let system_file = Path::new(&env("PGSYSCONFDIR").unwrap_or_else(|| SYSCONFDIR.into()))
        .join("pg_service.conf");
    let mut looked = Vec::new();
    for file in user_file.into_iter().chain([system_file]) {
        looked.push(file.display().to_string());
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Some(found) = parse(&text, name).map_err(|e| format!("{}: {e}", file.display()))? {
            return Ok(found);
        }
    }
    Err(format!(
        "definition of service \"{name}\" not found (looked in {})",
        looked.join(" and ")
    ))
}

/// The settings of service `name` in a pg_service.conf text; None when it is not defined there.
pub(crate) fn parse(text: &str, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let Some(section) = section.strip_suffix(']') else {
                return Err(format!("line {}: a section needs a closing ]", n + 1));
            };
            if found.is_some() {
                break;
            }
            inside = section == name;
            if inside {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected key=value", n + 1));
        };
        let key = key.trim();
        if key == "service" {
            return Err(format!(
                "line {}: nested service specifications are not supported",
                n + 1
            ));
        }
        if !conninfo::KEYS.contains(&key) {
            return Err(format!("line {}: unknown connection option {key:?}", n + 1));
        }
        if let Some(settings) = found.as_mut() {
            settings.push((key.to_string(), value.trim_start().to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_its_own_section_only() {
        let text = "# comment\n[other]\nhost=elsewhere\n\n[app]\nhost=db.example.com\nport = 6432\n\
                    dbname=app db\n[after]\nuser=x\n";
        let found = parse(text, "app").unwrap().unwrap();
        assert_eq!(
            found,
            vec![
                ("host".into(), "db.example.com".into()),
                ("port".into(), "6432".into()),
                ("dbname".into(), "app db".into()),
            ]
        );
        assert_eq!(parse(text, "missing").unwrap(), None);
    }

    #[test]
    fn malformed_files_say_which_line() {
        for (text, error) in [
            ("[app\nhost=x\n", "line 1"),
            ("[app]\nhost\n", "line 2"),
            ("[app]\nservice=other\n", "nested"),
            ("[app]\nbogus=1\n", "unknown connection option"),
        ] {
            let e = parse(text, "app").unwrap_err();
            assert!(e.contains(error), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_user_file_comes_before_the_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.conf");
        let sys = dir.path().join("pg_service.conf");
        std::fs::write(&user, "[a]\nhost=user-host\n").unwrap();
        std::fs::write(&sys, "[a]\nhost=sys-host\n[b]\nhost=sys-b\n").unwrap();
        let (user, sysdir) = (user.display().to_string(), dir.path().display().to_string());
        let env = move |k: &str| match k {
            "PGSERVICEFILE" => Some(user.clone()),
            "PGSYSCONFDIR" => Some(sysdir.clone()),
            _ => None,
        };
        assert_eq!(settings("a", &env).unwrap()[0].1, "user-host");
        assert_eq!(settings("b", &env).unwrap()[0].1, "sys-b");
        let e = settings("c", &env).unwrap_err();
        assert!(e.contains("definition of service \"c\" not found"), "{e}");
    }
}
