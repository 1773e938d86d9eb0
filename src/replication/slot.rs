//! Before streaming: check the server, the publication and the slot over an ordinary SQL
//! connection, creating the slot when it is missing, and build the START_REPLICATION command.
//! Every failure says what to do.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::sql::SqlError;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "wal_level is {0}, and logical replication needs logical: set wal_level = logical in postgresql.conf and restart the server"
    )]
    WalLevel(String),
    #[error(
        "publication \"{publication}\" does not exist in database \"{database}\": run sql/install.sql (or audit-tail setup) there first, or pass --publication"
    )]
    NoPublication {
        publication: String,
        database: String,
    },
    #[error(
        "publication \"{0}\" does not publish inserts of users_audit, so no audit row would reach the stream: ALTER PUBLICATION \"{0}\" ADD TABLE users_audit (sql/install.sql does), or pass the --publication that does; rows committed while it was out of the publication are only in the nightly export (audit-tail verify lists them)"
    )]
    NotPublishingAudit(String),
    #[error("slot name {0:?} is invalid: use 1 to 63 lower-case letters, digits and underscores")]
    SlotName(String),
    #[error(
        "replication slot \"{slot}\" uses {found}, not a logical pgoutput slot: pass another --slot, or drop it with audit-tail drop-slot"
    )]
    WrongSlot { slot: String, found: String },
    #[error(
        "replication slot \"{slot}\" belongs to database \"{found}\", not \"{database}\": pass another --slot or connect to \"{found}\""
    )]
    SlotDatabase {
        slot: String,
        found: String,
        database: String,
    },
    #[error(
        "replication slot \"{0}\" was invalidated (the server removed WAL it still needed, see max_slot_wal_keep_size): rows committed meanwhile are lost to the stream; drop the slot, move the out-dir aside and start afresh"
    )]
    Invalidated(String),
    #[error(
        "replication slot \"{slot}\" does not exist, but {out_dir} holds a stream up to {lsn}: the slot was dropped, so rows committed since are not in the stream; recreate it only after moving the out-dir aside (the new stream starts at the slot's creation)"
    )]
    SlotDropped {
        slot: String,
        out_dir: String,
        lsn: Lsn,
    },
    #[error("replication slot \"{0}\" is in use by another connection (pid {1})")]
    SlotActive(String, i32),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl PreflightError {
    /// Whether waiting can fix it (a slot still held by a connection that just died).
    pub fn is_transient(&self) -> bool {
        match self {
            PreflightError::SlotActive(..) => true,
            PreflightError::Sql(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// PostgreSQL's rule for slot names (ReplicationSlotValidateName).
pub fn validate_slot_name(name: &str) -> Result<(), PreflightError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(PreflightError::SlotName(name.to_string()))
    }
}

/// Checks wal_level, the publication and the slot; creates the slot when it is missing and the
/// out-dir holds no stream yet (`durable` is zero). `out_dir` is for messages.
pub async fn preflight(
    client: &Client,
    slot: &str,
    publication: &str,
    durable: Lsn,
    out_dir: &str,
) -> Result<(), PreflightError> {
    validate_slot_name(slot)?;
    let sql = |context: &'static str| move |e| SqlError::new(context, e);
    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql("could not read wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(PreflightError::WalLevel(wal_level));
    }
    let row = client
        .query_one(
            "SELECT current_database()::text, EXISTS (SELECT FROM pg_publication WHERE pubname = $1), \
             EXISTS (SELECT FROM pg_publication p JOIN pg_publication_tables t USING (pubname) \
                     WHERE p.pubname = $1 AND p.pubinsert AND t.tablename = 'users_audit')",
            &[&publication],
        )
        .await
        .map_err(sql("could not look up the publication"))?;
    let (database, exists, audited): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists {
        return Err(PreflightError::NoPublication {
            publication: publication.to_string(),
            database,
        });
    }
    if !audited {
        return Err(PreflightError::NotPublishingAudit(publication.to_string()));
    }
    let found = client
        .query_opt(
            "SELECT slot_type::text, coalesce(plugin::text, ''), coalesce(database::text, ''), \
             active, coalesce(active_pid, 0), coalesce(wal_status, '') \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("could not look up the replication slot"))?;
    let Some(row) = found else {
        if durable != Lsn::ZERO {
            return Err(PreflightError::SlotDropped {
                slot: slot.to_string(),
                out_dir: out_dir.to_string(),
                lsn: durable,
            });
        }
        let lsn: String = client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .map_err(sql("could not create the replication slot"))?
            .get(0);
        tracing::info!(slot, %lsn, "created replication slot; the stream starts here");
        return Ok(());
    };
    let (slot_type, plugin, slot_db): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let (active, pid, wal_status): (bool, i32, String) = (row.get(3), row.get(4), row.get(5));
    if slot_type != "logical" || plugin != "pgoutput" {
        return Err(PreflightError::WrongSlot {
            slot: slot.to_string(),
            found: format!("{slot_type} {plugin}").trim().to_string(),
        });
    }
    if slot_db != database {
        return Err(PreflightError::SlotDatabase {
            slot: slot.to_string(),
            found: slot_db,
            database,
        });
    }
    if wal_status == "lost" {
        return Err(PreflightError::Invalidated(slot.to_string()));
    }
    if active {
        return Err(PreflightError::SlotActive(slot.to_string(), pid));
    }
    Ok(())
}

/// `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1', publication_names '"pub"')`.
pub fn start_replication_command(slot: &str, start: Lsn, publication: &str) -> String {
    let ident = format!("\"{}\"", publication.replace('"', "\"\""));
    let literal = format!("'{}'", ident.replace('\'', "''"));
    format!(
        "START_REPLICATION SLOT \"{}\" LOGICAL {start} (proto_version '1', publication_names {literal})",
        slot.replace('"', "\"\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_slot_name("audit_tail_2").is_ok());
        for bad in ["", "Audit", "a-b", "a b", "ä", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn start_command_quotes_names() {
        assert_eq!(
            start_replication_command("audit_tail", Lsn(0x1_0000_0020), "users_audit_pub"),
            "START_REPLICATION SLOT \"audit_tail\" LOGICAL 1/20 (proto_version '1', publication_names '\"users_audit_pub\"')"
        );
        assert_eq!(
            start_replication_command("s", Lsn(0), "it's \"odd\""),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"it''s \"\"odd\"\"\"')"
        );
    }
}
