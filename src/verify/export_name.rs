//! The database a nightly export file is of, told by its name (sql/install.sql's export_name):
//! `verify --nightly FILE` refuses another database's export rather than report every row as
//! different.

use std::path::Path;

use super::VerifyError;

/// The database an export file's name says it is of: install.sql names a database's files
/// `users_audit_export_<database>_YYYYMMDD.csv` (and audit_log.sql `audit_log_export_<database>_...`)
/// when another database already exports to the same directory, the database's name with every
/// run of other characters than letters, digits, `_` and `-` made one `_`. None for the tutorial's
/// name without a database, and for any other name.
pub fn export_database_of(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".csv")?;
    let (rest, day) = stem.rsplit_once('_')?;
    if day.len() != 8 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ["users_audit_export_", "audit_log_export_"]
        .iter()
        .find_map(|prefix| rest.strip_prefix(prefix))
        .filter(|database| !database.is_empty())
}

/// `database` as install.sql puts it in an export file's name.
fn export_name_part(database: &str) -> String {
    let mut part = String::new();
    let mut in_run = false;
    for c in database.chars() {
        let kept = c.is_alphanumeric() || c == '_' || c == '-';
        if kept {
            part.push(c);
        } else if !in_run {
            part.push('_');
        }
        in_run = !kept;
    }
    part
}

/// Refuses a nightly file whose name says it is another database's export than the one the
/// out-dir's stream comes from: compared, every row would differ, and the report would not say why.
pub(super) fn check_database(path: &Path, database: &str) -> Result<(), VerifyError> {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    match export_database_of(file_name) {
        Some(named) if named != export_name_part(database) => Err(VerifyError::OtherDatabase {
            file: path.display().to_string(),
            named: named.to_string(),
            database: database.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_read_from_the_names_install_sql_gives() {
        assert_eq!(export_database_of("users_audit_export_20251021.csv"), None);
        assert_eq!(export_database_of("audit_log_export_20251021.csv"), None);
        assert_eq!(
            export_database_of("users_audit_export_shop_eu_20251021.csv"),
            Some("shop_eu")
        );
        assert_eq!(
            export_database_of("audit_log_export_shop_20251021.csv"),
            Some("shop")
        );
        assert_eq!(export_database_of("mine_20251021.csv"), None);
        assert_eq!(export_database_of("users_audit_export_shop_2025.csv"), None);
    }

    #[test]
    fn a_name_is_made_as_install_sql_makes_it() {
        assert_eq!(export_name_part("shop"), "shop");
        assert_eq!(export_name_part("a_ b"), "a__b");
        assert_eq!(export_name_part("my db.v2"), "my_db_v2");
        assert_eq!(export_name_part("x  !y"), "x_y");
    }

    #[test]
    fn another_database_s_export_is_refused_and_this_one_s_is_not() {
        let other = Path::new("/exports/users_audit_export_billing_20251021.csv");
        let err = check_database(other, "shop").unwrap_err().to_string();
        assert!(err.contains("database \"billing\""), "{err}");
        assert!(err.contains("of database \"shop\""), "{err}");
        assert!(
            check_database(Path::new("/e/users_audit_export_shop_20251021.csv"), "shop").is_ok()
        );
        assert!(check_database(Path::new("/e/users_audit_export_20251021.csv"), "shop").is_ok());
        assert!(
            check_database(
                Path::new("/e/users_audit_export_my_db_20251021.csv"),
                "my db"
            )
            .is_ok()
        );
    }
}
