//! Before streaming: check the server, the publication and the slot over an ordinary SQL
//! connection, creating the slot when it is missing, check that the out-dir belongs to this
//! server, database and slot and that the slot is not ahead of it, and build the
//! START_REPLICATION command. Every failure says what to do.

use tokio_postgres::Client;

use crate::checkpoint::Identity;
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
    #[error(
        "replication slot \"{slot}\" has confirmed up to {confirmed}, ahead of the checkpoint of \
         {out_dir} at {checkpoint}: another out-dir streamed from this slot (or the state file was \
         restored from an older copy), and the server would skip every transaction in between, so \
         its rows would be missing from these files. Either give this stream a slot and out-dir \
         of its own (--slot NAME --out-dir DIR: a new stream that starts now, this out-dir keeps \
         what it has), or pass --accept-gap to go on from {confirmed} with the gap \
         {checkpoint}..{confirmed} recorded in {out_dir}/audit-tail.gaps, where verify reports it (the \
         rows are in the nightly export). One slot per out-dir: --slot and --out-dir go together"
    )]
    SlotAhead {
        slot: String,
        out_dir: String,
        checkpoint: Lsn,
        confirmed: Lsn,
    },
    #[error(
        "{out_dir} holds the stream of another server (system identifier {recorded}, database \
         \"{database}\", slot \"{slot}\"), and this server's system identifier is {found}: point \
         --dsn at the server the out-dir came from; if this server is to be streamed (a database \
         restored into another cluster, a new server), start a new stream with another --out-dir, \
         and keep the old one for the rows streamed before"
    )]
    OtherServer {
        out_dir: String,
        recorded: u64,
        database: String,
        slot: String,
        found: u64,
    },
    #[error(
        "{out_dir} holds the stream of database \"{recorded}\", not of \"{found}\": connect to \
         \"{recorded}\" (--dsn), or give database \"{found}\" an --out-dir and --slot of its own"
    )]
    OtherDatabase {
        out_dir: String,
        recorded: String,
        found: String,
    },
    #[error(
        "{out_dir} was streamed from replication slot \"{recorded}\", not \"{found}\": pass \
         --slot {recorded}, or give slot \"{found}\" an --out-dir of its own (a slot and an \
         out-dir go together)"
    )]
    OtherSlot {
        out_dir: String,
        recorded: String,
        found: String,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
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

/// The server and database `client` is connected to, with `slot`: what an out-dir records.
pub async fn identify(client: &Client, slot: &str) -> Result<Identity, PreflightError> {
    let row = client
        .query_one(
            "SELECT system_identifier, current_database()::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("could not read the server's system identifier", e))?;
    Ok(Identity {
        // int8 in SQL, unsigned in the server (and in IDENTIFY_SYSTEM and pg_controldata).
        system_id: row.get::<_, i64>(0) as u64,
        database: row.get(1),
        slot: slot.to_string(),
    })
}

/// Refuses an out-dir recorded for another server, database or slot than `found`. An out-dir
/// without a record (new, or written before records were kept) passes: it adopts `found`.
pub fn check_identity(
    recorded: Option<&Identity>,
    found: &Identity,
    out_dir: &str,
) -> Result<(), PreflightError> {
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let out_dir = out_dir.to_string();
    if recorded.system_id != found.system_id {
        return Err(PreflightError::OtherServer {
            out_dir,
            recorded: recorded.system_id,
            database: recorded.database.clone(),
            slot: recorded.slot.clone(),
            found: found.system_id,
        });
    }
    if recorded.database != found.database {
        return Err(PreflightError::OtherDatabase {
            out_dir,
            recorded: recorded.database.clone(),
            found: found.database.clone(),
        });
    }
    if recorded.slot != found.slot {
        return Err(PreflightError::OtherSlot {
            out_dir,
            recorded: recorded.slot.clone(),
            found: found.slot.clone(),
        });
    }
    Ok(())
}

/// The slot as pre-flight found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFound {
    /// It was missing and is created now, consistent `at` this position: transactions that
    /// commit after it are streamed; those committed before it (also while the creation waited
    /// for the transactions running when it began) are not, by PostgreSQL's design.
    Created { at: Lsn },
    /// It exists, with this confirmed_flush_lsn (None before it ever became consistent).
    Existing { confirmed: Option<Lsn> },
}

impl SlotFound {
    /// Where the server starts sending when asked for `requested`: transactions committing
    /// after the larger of it and the slot's confirmed position (None when unknown: a slot that
    /// never became consistent).
    pub fn streams_from(self, requested: Lsn) -> Option<Lsn> {
        match self {
            SlotFound::Created { at } => Some(requested.max(at)),
            SlotFound::Existing {
                confirmed: Some(confirmed),
            } => Some(requested.max(confirmed)),
            SlotFound::Existing { confirmed: None } => {
                (requested != Lsn::ZERO).then_some(requested)
            }
        }
    }
}

/// How the out-dir goes on from the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The slot is not ahead of the checkpoint: nothing is skipped.
    Continue,
    /// A new out-dir (nothing streamed yet) on a slot already used up to `confirmed`: it starts
    /// there, and rows committed before are not in it.
    NewOutDir { confirmed: Lsn },
    /// Accepted with --accept-gap: transactions after `from` up to `to` are not in the files.
    Gap { from: Lsn, to: Lsn },
}

/// Decides whether the out-dir can go on from the slot. The slot is never ahead of a checkpoint
/// by the stream's own doing: the checkpoint is stored before its position is acknowledged, and a
/// server crash only moves the slot back. Ahead means someone else acknowledged, or the state
/// file is older than the last acknowledgement (restored from a backup).
pub fn resume(
    found: SlotFound,
    checkpoint: Lsn,
    has_files: bool,
    accept_gap: bool,
    slot: &str,
    out_dir: &str,
) -> Result<Resume, PreflightError> {
    let confirmed = match found {
        SlotFound::Existing {
            confirmed: Some(confirmed),
        } if confirmed > checkpoint => confirmed,
        _ => return Ok(Resume::Continue),
    };
    if checkpoint == Lsn::ZERO && !has_files {
        return Ok(Resume::NewOutDir { confirmed });
    }
    if accept_gap {
        return Ok(Resume::Gap {
            from: checkpoint,
            to: confirmed,
        });
    }
    Err(PreflightError::SlotAhead {
        slot: slot.to_string(),
        out_dir: out_dir.to_string(),
        checkpoint,
        confirmed,
    })
}

/// Checks wal_level, the publication and the slot; creates the slot when it is missing and the
/// out-dir holds no stream yet (`durable` is zero). `out_dir` is for messages.
pub async fn preflight(
    client: &Client,
    slot: &str,
    publication: &str,
    durable: Lsn,
    out_dir: &str,
) -> Result<SlotFound, PreflightError> {
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
             active, coalesce(active_pid, 0), coalesce(wal_status, ''), \
             coalesce(confirmed_flush_lsn::text, '') \
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
        // The server makes the slot consistent before it returns: it waits until every
        // transaction running now has ended, so a long transaction elsewhere holds this up.
        tracing::info!(
            slot,
            "creating the replication slot: waiting for the transactions running on the server \
             to end; rows committed before the slot is created are not streamed (they are in the \
             nightly export)"
        );
        // As a number: pg_lsn has no binary mapping in tokio-postgres, and this cannot fail.
        let at: i64 = client
            .query_one(
                "SELECT (lsn - '0/0'::pg_lsn)::int8 \
                 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .map_err(sql("could not create the replication slot"))?
            .get(0);
        let at = Lsn(at as u64);
        tracing::info!(
            slot, lsn = %at,
            "created the replication slot: transactions committing after {at} are streamed, \
             rows committed before are in the nightly export only"
        );
        return Ok(SlotFound::Created { at });
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
    let confirmed: String = row.get(6);
    Ok(SlotFound::Existing {
        confirmed: confirmed.parse().ok(),
    })
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
    fn only_a_slot_ahead_of_a_used_out_dir_is_a_gap() {
        let existing = |lsn: u64| SlotFound::Existing {
            confirmed: Some(Lsn(lsn)),
        };
        let go = |found, checkpoint, files, accept| {
            resume(found, Lsn(checkpoint), files, accept, "s", "/d")
        };
        assert_eq!(
            go(SlotFound::Created { at: Lsn(5) }, 0, false, false).unwrap(),
            Resume::Continue
        );
        // Behind (a server crash moves the slot back) or level: nothing is skipped.
        assert_eq!(go(existing(10), 20, true, false).unwrap(), Resume::Continue);
        assert_eq!(go(existing(20), 20, true, false).unwrap(), Resume::Continue);
        let never_consistent = SlotFound::Existing { confirmed: None };
        assert_eq!(
            go(never_consistent, 20, true, false).unwrap(),
            Resume::Continue
        );
        assert_eq!(
            go(existing(30), 0, false, false).unwrap(),
            Resume::NewOutDir { confirmed: Lsn(30) }
        );
        for (checkpoint, files) in [(20, false), (20, true), (0, true)] {
            let err = go(existing(30), checkpoint, files, false).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("0/1E") && text.contains(&Lsn(checkpoint).to_string()),
                "{text}"
            );
            assert!(!crate::error::kind(&err).is_retried());
            assert_eq!(
                go(existing(30), checkpoint, files, true).unwrap(),
                Resume::Gap {
                    from: Lsn(checkpoint),
                    to: Lsn(30)
                }
            );
        }
    }

    #[test]
    fn the_stream_starts_at_the_later_of_the_request_and_the_slot() {
        let created = SlotFound::Created { at: Lsn(30) };
        assert_eq!(created.streams_from(Lsn::ZERO), Some(Lsn(30)));
        assert_eq!(created.streams_from(Lsn(40)), Some(Lsn(40)));
        let existing = SlotFound::Existing {
            confirmed: Some(Lsn(30)),
        };
        assert_eq!(existing.streams_from(Lsn(20)), Some(Lsn(30)));
        assert_eq!(existing.streams_from(Lsn(40)), Some(Lsn(40)));
        let never = SlotFound::Existing { confirmed: None };
        assert_eq!(never.streams_from(Lsn::ZERO), None);
        assert_eq!(never.streams_from(Lsn(40)), Some(Lsn(40)));
    }

    #[test]
    fn an_out_dir_is_refused_for_another_server_database_or_slot() {
        let id = Identity {
            system_id: 7,
            database: "app".into(),
            slot: "s".into(),
        };
        assert!(check_identity(None, &id, "/d").is_ok());
        assert!(check_identity(Some(&id), &id, "/d").is_ok());
        let other = |f: fn(&mut Identity)| {
            let mut o = id.clone();
            f(&mut o);
            check_identity(Some(&id), &o, "/d").unwrap_err()
        };
        assert!(matches!(
            other(|o| o.system_id = 8),
            PreflightError::OtherServer {
                recorded: 7,
                found: 8,
                ..
            }
        ));
        assert!(matches!(
            other(|o| o.database = "b".into()),
            PreflightError::OtherDatabase { .. }
        ));
        let err = other(|o| o.slot = "t".into());
        assert!(err.to_string().contains("--slot s"), "{err}");
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
