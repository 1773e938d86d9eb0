//! What JetStream holds of this database's rows, as an epoch of the publisher reads it on
//! connecting: the last row of ours, and whether the server lost rows it had acknowledged.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::NatsError;
use super::message::{self, Position};
use super::publisher::RowAt;

/// The highest position JetStream acknowledged, across epochs.
#[derive(Default, Debug, Clone, Copy)]
pub struct Acked {
    pub row: Option<RowAt>,
    pub sequence: u64,
}

/// Whether JetStream lost rows it had acknowledged (says so loudly if it did): it holds our
/// rows up to `last` and its last stream sequence is `sequence`.
pub fn check_nothing_lost(acked: &Acked, last: Option<&Position>, sequence: u64) -> bool {
    let holds = last.map(|p| (p.commit_lsn, p.index));
    let lost_sequence = sequence < acked.sequence;
    // Our last row gone while the stream's sequence did not go back: expired (max age) or
    // purged, not lost by the server.
    let lost_row = holds.is_some() && holds < acked.row;
    if !(lost_sequence || lost_row) {
        return false;
    }
    let show = |r: Option<RowAt>| match r {
        Some((lsn, index)) => format!("row {index} of the transaction at {lsn}"),
        None => "no row".to_string(),
    };
    crate::metrics::get().inspect(|m| m.error(crate::error::Kind::Data));
    tracing::error!(
        holds = %show(holds), acknowledged = %show(acked.row),
        stream_sequence = sequence, acknowledged_sequence = acked.sequence,
        "JetStream lost messages it had acknowledged: it holds this database's rows up to {} \
         (stream sequence {sequence}) but had acknowledged up to {} (sequence {}). The rows \
         between will not be published again, since the slot has moved past them: copy them \
         from the --out-dir files or the nightly export if the JetStream copy must be complete, \
         and check the NATS server (a machine crash before JetStream synced its files, a \
         stream deleted and made again); publishing goes on after what JetStream holds",
        show(holds),
        show(acked.row),
        acked.sequence
    );
    true
}

/// The position of the last message under `filter`, read through an ephemeral consumer that
/// starts at the last matching message, with the system identifier of the server its row came
/// from (`None`: no such header, published by an older version).
pub async fn last_position(
    stream: &jetstream::stream::Stream,
    filter: &str,
    name: &str,
) -> Result<(Option<Position>, Option<u64>), NatsError> {
    let err = |e: &dyn std::fmt::Display| NatsError::Stream {
        stream: name.to_string(),
        reason: format!("could not read the last message published: {e}"),
    };
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::Last,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let pending = consumer.info().await.map_err(|e| err(&e))?.num_pending;
    if pending == 0 {
        return Ok((None, None));
    }
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| err(&e))?;
    let Some(message) = batch.next().await else {
        return Ok((None, None));
    };
    let message = message.map_err(|e| err(&e))?;
    let what = format!("on {}", message.subject);
    let position = message::position(message.headers.as_ref(), &what).map_err(|e| err(&e))?;
    Ok((Some(position), message::system_id(message.headers.as_ref())))
}

/// Refuses a last row of ours that another PostgreSQL cluster published: its database has the
/// same name, so both publish to the same subjects and each would skip the other's rows.
pub fn check_same_system(
    config: &super::NatsConfig,
    database: &str,
    ours: u64,
    theirs: Option<u64>,
) -> Result<(), NatsError> {
    match theirs {
        Some(theirs) if theirs != ours => Err(NatsError::OtherSystem {
            stream: config.stream.clone(),
            subjects: format!("{}.{}.>", config.subject_prefix, message::token(database)),
            database: database.to_string(),
            ours,
            theirs,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Lsn, PgTimestamp};

    fn at(lsn: u64, index: u64) -> Position {
        Position {
            commit_lsn: Lsn(lsn),
            commit_time: PgTimestamp(0),
            index,
            end_lsn: None,
        }
    }

    #[test]
    fn acknowledged_rows_missing_on_a_rewind_are_a_loss_and_expired_ones_are_not() {
        let acked = Acked {
            row: Some((Lsn(200), 3)),
            sequence: 40,
        };
        assert!(!check_nothing_lost(&Acked::default(), None, 0));
        assert!(!check_nothing_lost(&acked, Some(&at(200, 3)), 40));
        assert!(!check_nothing_lost(&acked, Some(&at(300, 0)), 41));
        assert!(
            check_nothing_lost(&acked, Some(&at(200, 2)), 40),
            "our last row is below the acknowledged one"
        );
        assert!(
            check_nothing_lost(&acked, Some(&at(200, 3)), 39),
            "the stream's sequence went back"
        );
        assert!(check_nothing_lost(&acked, None, 12), "stream made again");
        assert!(
            !check_nothing_lost(&acked, None, 40),
            "all of ours expired (max age): the sequence stayed"
        );
    }
}
