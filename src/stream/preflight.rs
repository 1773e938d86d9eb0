//! Pre-flight before each connection, over the SQL connection: with files, the out-dir's claim
//! on the slot (its identity, a dropped slot, a slot ahead of its checkpoint and `--accept-gap`);
//! without files (`--no-files`), the same questions asked of JetStream's last row. Sits before
//! START_REPLICATION in the flow; `session` calls it.

use std::path::Path;
use std::time::SystemTime;

use chrono::{DateTime, NaiveDate, Utc};

use super::{StreamConfig, StreamError};
use crate::gaps::{self, Gap};
use crate::lsn::Lsn;
use crate::replication::slot::{self, PreflightError};
use crate::sink::files::StreamFiles;
use crate::sql::SqlError;
use crate::wire::WireError;

/// Pre-flight, and the out-dir's claim on the slot: refuses an out-dir of another server,
/// database or slot, and a slot ahead of the checkpoint unless `--accept-gap` (then the gap
/// is recorded before the checkpoint moves to the slot's position); records the identity of
/// an out-dir that has none yet. Returns the slot as pre-flight found it.
pub(super) async fn claim_out_dir(
    cfg: &StreamConfig,
    files: &mut StreamFiles,
    dir: &Path,
    last_moved: Option<SystemTime>,
    client: &tokio_postgres::Client,
) -> Result<slot::SlotFound, StreamError> {
    let out_dir = dir.display().to_string();
    let identity = slot::identify(client, &cfg.slot).await?;
    let checkpoint = files.durable();
    let adopt = checkpoint.identity.is_none();
    slot::check_identity(checkpoint.identity.as_ref(), &identity, &out_dir)?;
    let found = slot::preflight(
        client,
        &cfg.slot,
        &cfg.publication,
        files.durable_lsn(),
        &out_dir,
    )
    .await?;
    let checkpoint = files.durable();
    let resume = slot::resume(
        found,
        checkpoint.lsn,
        !checkpoint.files.is_empty(),
        cfg.accept_gap,
        &cfg.slot,
        &out_dir,
    )?;
    match resume {
        slot::Resume::Continue => {}
        slot::Resume::NewOutDir { confirmed } if adopt => {
            tracing::warn!(
                slot = %cfg.slot, %confirmed, out_dir,
                "this new out-dir starts at the position the existing replication slot was \
                 confirmed up to: rows committed before it are not in this out-dir (expected \
                 when the slot was just created for it; if another out-dir streamed from this \
                 slot, that out-dir will be refused from now on: give each out-dir a --slot \
                 of its own)"
            );
        }
        slot::Resume::NewOutDir { .. } => {}
        slot::Resume::Gap { from, to } => {
            let gap = gap(last_moved, client, from, to).await?;
            gaps::record(dir, &gap)?;
            tracing::warn!(
                %from, %to, first_day = %gap.first_day, last_day = %gap.last_day,
                "--accept-gap: transactions in this range are not in the files; recorded in {}",
                gaps::GAPS_FILE
            );
            files.skip_gap(to);
        }
    }
    if adopt {
        tracing::info!(
            system_id = identity.system_id, database = %identity.database, slot = %identity.slot,
            "recording which server, database and slot this out-dir streams"
        );
        files.set_identity(identity);
    }
    if !files.is_durable() {
        files.make_durable()?;
    }
    Ok(found)
}

/// The gap from the checkpoint at `from` to the slot's `to`, dated on the server's clock.
async fn gap(
    last_moved: Option<SystemTime>,
    client: &tokio_postgres::Client,
    from: Lsn,
    to: Lsn,
) -> Result<Gap, StreamError> {
    let recorded = Utc::now();
    let since: DateTime<Utc> = last_moved.map_or(recorded, DateTime::from);
    let row = client
        .query_one(
            "SELECT to_timestamp($1::float8)::date::text, current_date::text",
            &[&(since.timestamp_micros() as f64 / 1e6)],
        )
        .await
        .map_err(|e| SqlError::new("could not read the server's date", e))?;
    let day = |i: usize| {
        row.get::<_, String>(i)
            .parse::<NaiveDate>()
            .map_err(|e| WireError::Protocol(format!("the server's date is not a date: {e}")))
    };
    let (first_day, last_day) = (day(0)?, day(1)?);
    Ok(Gap {
        from,
        to,
        since,
        recorded,
        first_day: first_day.min(last_day),
        last_day,
    })
}

/// Pre-flight without files (`--no-files`): JetStream's last row of this database is where
/// the stream stands (`held`), so a dropped slot is refused as it is for an out-dir, and a slot
/// confirmed past it (rows JetStream does not get) is said.
pub(super) async fn without_files(
    cfg: &StreamConfig,
    held: Lsn,
    client: &tokio_postgres::Client,
) -> Result<slot::SlotFound, StreamError> {
    let stream = cfg.nats.as_ref().map_or("", |n| n.stream.as_str());
    let found = slot::preflight(client, &cfg.slot, &cfg.publication, held, stream)
        .await
        .map_err(|e| match e {
            PreflightError::SlotDropped { slot, lsn, .. } => StreamError::SlotDroppedUnderNats {
                slot,
                stream: stream.to_string(),
                lsn,
            },
            e => e.into(),
        })?;
    if let slot::SlotFound::Existing {
        confirmed: Some(confirmed),
    } = found
        && confirmed > held
    {
        if held == Lsn::ZERO {
            tracing::info!(slot = %cfg.slot, %confirmed, stream,
                "JetStream holds no row of this database yet: it gets every transaction \
                 committing after the slot's confirmed position");
        } else {
            tracing::warn!(slot = %cfg.slot, %held, %confirmed, stream,
                "the slot was confirmed past JetStream's last row of this database: rows \
                 committed in between are not in JetStream (another consumer acknowledged \
                 them on this slot); they are in the nightly export");
        }
    }
    Ok(found)
}
