//! An epoch's publishing: core NATS publishes with a reply subject on one inbox subscription
//! per epoch (`<inbox>.<n>`), acknowledgements matched to publishes by `n`, one timer for the
//! oldest unacknowledged publish, and only `seq` and `error` read from each acknowledgement.
//! (async-nats's `jetstream::Context::publish` makes an inbox, a oneshot, a permit and a timer
//! per message and parses each acknowledgement into a JSON tree: most of the cost of
//! publishing.) The durable position moves past a mark only once every publish before it is
//! acknowledged, as before.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use async_nats::client::PublishErrorKind;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::holds::Acked;
use super::publisher::{ACK_TIMEOUT, Command, End, IN_FLIGHT, RowAt, Shared};
use crate::sink::FailureKind;

/// A publish awaiting its acknowledgement.
struct Sent {
    at: RowAt,
    at_time: Instant,
    /// The stream sequence, once acknowledged.
    sequence: Option<u64>,
}

/// What the acknowledgements of one epoch have reached.
#[derive(Default)]
struct Window {
    /// The number of `rows.front()`.
    first: u64,
    rows: VecDeque<Sent>,
    /// Marks with the number of publishes handed over before each.
    marks: VecDeque<(u64, crate::lsn::Lsn)>,
}

impl Window {
    fn next(&self) -> u64 {
        self.first + self.rows.len() as u64
    }

    /// Records the acknowledgement of publish `n`; moves `acked` and the durable position past
    /// what is acknowledged without a hole.
    fn ack(&mut self, n: u64, sequence: u64) {
        if let Some(sent) = n
            .checked_sub(self.first)
            .and_then(|i| self.rows.get_mut(i as usize))
        {
            sent.sequence = Some(sequence);
        }
    }

    fn settle(&mut self, acked: &mut Acked, shared: &Shared) {
        while let Some(Sent {
            sequence: Some(sequence),
            at,
            ..
        }) = self.rows.front()
        {
            acked.row = acked.row.max(Some(*at));
            acked.sequence = acked.sequence.max(*sequence);
            self.rows.pop_front();
            self.first += 1;
        }
        let mut moved = false;
        while let Some(&(before, lsn)) = self.marks.front()
            && before <= self.first
        {
            shared.durable.fetch_max(lsn.0, Ordering::AcqRel);
            self.marks.pop_front();
            moved = true;
        }
        if moved {
            shared.wake.notify_one();
        }
    }
}

/// What an acknowledgement says: only the fields we need, without a JSON tree.
#[derive(serde::Deserialize)]
struct Ack {
    seq: Option<u64>,
    error: Option<AckError>,
}

#[derive(serde::Deserialize)]
struct AckError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes what comes until the connection fails or the stream rewinds.
pub async fn publish_loop(
    client: &async_nats::Client,
    shared: &Shared,
    rx: &mut tokio::sync::mpsc::Receiver<Command>,
    lost: &Notify,
    acked: &mut Acked,
) -> End {
    let inbox = client.new_inbox();
    let mut acks = match client.subscribe(format!("{inbox}.*")).await {
        Ok(acks) => acks,
        Err(e) => {
            shared.fail(
                FailureKind::Transient,
                format!("could not subscribe to JetStream's acknowledgements: {e}"),
            );
            return End::Failed;
        }
    };
    let prefix_len = inbox.len() + 1;
    let mut window = Window::default();
    // One waiter for the whole loop (a notification before its first poll is kept as a permit).
    let lost = lost.notified();
    tokio::pin!(lost);
    let far = || Instant::now() + ACK_TIMEOUT * 1000;
    loop {
        let deadline = window
            .rows
            .front()
            .map_or_else(far, |s| s.at_time + ACK_TIMEOUT);
        tokio::select! {
            biased;
            _ = &mut lost => {
                // No rewind yet: the other sinks go on, this one drops rows until connected
                // again (then it asks for the rewind that sends what JetStream lacks).
                shared.down.store(true, Ordering::Release);
                tracing::warn!(unacknowledged = window.rows.len(),
                    "the other sinks go on; the slot stays where JetStream holds the rows, and \
                     what it lacks is sent once NATS is back");
                return End::Lost;
            }
            message = acks.next() => {
                let Some(message) = message else {
                    shared.fail(FailureKind::Transient,
                        "the NATS connection closed while publishing".into());
                    return End::Failed;
                };
                let n = message.subject.get(prefix_len..).and_then(|n| n.parse::<u64>().ok());
                let Some(n) = n else { continue };
                if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    shared.fail(FailureKind::Fatal,
                        "no JetStream stream takes the subject published to: create the stream \
                         or check --nats-stream and --nats-subject-prefix".into());
                    return End::Failed;
                }
                match serde_json::from_slice::<Ack>(&message.payload) {
                    Ok(Ack { seq: Some(seq), error: None }) => window.ack(n, seq),
                    Ok(Ack { error: Some(e), .. }) => {
                        shared.fail(FailureKind::Fatal, format!(
                            "JetStream refused a publish: {} (code {}, error code {})",
                            e.description, e.code, e.err_code));
                        return End::Failed;
                    }
                    _ => {
                        shared.fail(FailureKind::Fatal, format!(
                            "JetStream answered a publish with something that is not an \
                             acknowledgement: {:?}",
                            String::from_utf8_lossy(&message.payload)));
                        return End::Failed;
                    }
                }
                window.settle(acked, shared);
            }
            _ = tokio::time::sleep_until(deadline), if !window.rows.is_empty() => {
                // A permission violation shows as a missing acknowledgement; the server said
                // why beside it.
                let server = shared.server_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match server {
                    Some(server) => shared.fail(FailureKind::Fatal, format!(
                        "the NATS server refused a publish: {server}: give the account \
                         permission to publish to the subject prefix, or pick another \
                         --nats-subject-prefix")),
                    None => shared.fail(FailureKind::Transient, format!(
                        "JetStream did not acknowledge a publish within {ACK_TIMEOUT:?}; NATS \
                         unreachable or slow")),
                }
                return End::Failed;
            }
            command = rx.recv(), if window.rows.len() < IN_FLIGHT => {
                let Some(command) = command else { return End::Over };
                match command {
                    Command::Rewind(done) => return End::Rewind(done),
                    Command::Mark(lsn) => {
                        window.marks.push_back((window.next(), lsn));
                        window.settle(acked, shared);
                    }
                    Command::Publish { subject, headers, payload, at } => {
                        let n = window.next();
                        let reply = format!("{inbox}.{n}");
                        match client.publish_with_reply_and_headers(subject, reply, headers, payload).await {
                            Ok(()) => window.rows.push_back(Sent { at, at_time: Instant::now(), sequence: None }),
                            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                                shared.fail(FailureKind::Fatal, format!(
                                    "a row is too large for the NATS server ({e}): raise \
                                     max_payload in the server's configuration (up to 64MB)"));
                                return End::Failed;
                            }
                            Err(e) => {
                                shared.fail(FailureKind::Transient, format!("could not publish to NATS: {e}"));
                                return End::Failed;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    #[test]
    fn a_mark_is_durable_only_once_every_publish_before_it_is_acknowledged() {
        let shared = Shared::default();
        let mut acked = Acked::default();
        let mut window = Window::default();
        let now = Instant::now();
        for i in 0..3 {
            window.rows.push_back(Sent {
                at: (Lsn(0x100), i),
                at_time: now,
                sequence: None,
            });
        }
        window.marks.push_back((2, Lsn(0x108)));
        window.marks.push_back((3, Lsn(0x110)));
        let durable = |s: &Shared| s.durable.load(Ordering::Acquire);
        // Out of order: publish 1 acknowledged before 0.
        window.ack(1, 11);
        window.settle(&mut acked, &shared);
        assert_eq!(durable(&shared), 0);
        assert_eq!(acked.row, None);
        window.ack(0, 10);
        window.settle(&mut acked, &shared);
        assert_eq!(durable(&shared), 0x108);
        assert_eq!((acked.row, acked.sequence), (Some((Lsn(0x100), 1)), 11));
        // An acknowledgement of a publish not (or no longer) in the window changes nothing.
        window.ack(7, 99);
        window.ack(0, 99);
        window.settle(&mut acked, &shared);
        assert_eq!(durable(&shared), 0x108);
        window.ack(2, 12);
        window.settle(&mut acked, &shared);
        assert_eq!(durable(&shared), 0x110);
        assert!(window.rows.is_empty() && window.marks.is_empty());
        assert_eq!(window.next(), 3);
    }
}
