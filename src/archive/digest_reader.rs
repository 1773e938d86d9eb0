//! The task reading the stream's digests from JetStream for the archive (`digests.rs`): a
//! durable consumer of its own (`<--nats-consumer>-digests`), made again on every session to
//! deliver from the first digest not acknowledged, as the rows' consumer is; each message goes
//! over a channel, so the archive's row path never waits for a digest.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::integrity::nats::stream_name;
use crate::sink::nats::NatsConfig;

/// How often the reader looks for the digests' stream while there is none.
const LOOK_AGAIN: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The subject of the digests of the rows `filter` archives: `<prefix>-digests.<database>` when
/// it names one database (`<prefix>.<database>.>`), else every database's, of which the archive
/// takes the first it sees.
pub fn subject_for(nats: &NatsConfig, filter: Option<&str>) -> String {
    let database = filter
        .and_then(|f| f.strip_prefix(nats.subject_prefix.as_str()))
        .and_then(|f| f.strip_prefix('.'))
        .and_then(|f| f.strip_suffix(".>"))
        .filter(|d| !d.is_empty() && !d.contains(['.', '*', '>']));
    match database {
        Some(db) => format!("{}-digests.{db}", nats.subject_prefix),
        None => format!("{}-digests.*", nats.subject_prefix),
    }
}

/// The task reading the digests' subject, ended when dropped.
pub struct Reader {
    task: tokio::task::JoinHandle<()>,
    pub messages: mpsc::UnboundedReceiver<jetstream::Message>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    pub fn start(
        js: jetstream::Context,
        nats: NatsConfig,
        durable: String,
        subject: String,
    ) -> Reader {
        let (tx, messages) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut wait = RETRY_FIRST;
            let mut said_none = false;
            loop {
                match read(&js, &nats, &durable, &subject, &tx, &mut said_none).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot read the stream's digests from JetStream yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        });
        Reader { task, messages }
    }
}

/// Reads the digests until the archive stops listening (Ok) or NATS fails (Err).
async fn read(
    js: &jetstream::Context,
    nats: &NatsConfig,
    durable: &str,
    subject: &str,
    tx: &mpsc::UnboundedSender<jetstream::Message>,
    said_none: &mut bool,
) -> Result<(), String> {
    let name = stream_name(nats);
    let stream = loop {
        match js.get_stream(&name).await {
            Ok(stream) => break stream,
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                if !*said_none {
                    tracing::info!(stream = %name,
                        "no digests in JetStream (the stream does not run with --signing-key): the archive writes none until it does");
                    *said_none = true;
                }
                if tx.is_closed() {
                    return Ok(());
                }
                tokio::time::sleep(LOOK_AGAIN).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // Delivered again from the first digest not acknowledged (not yet written), as the rows are.
    let floor = match stream.get_consumer::<consumer::pull::Config>(durable).await {
        Ok(mut existing) => {
            let floor = existing
                .info()
                .await
                .map_err(|e| e.to_string())?
                .ack_floor
                .stream_sequence;
            stream
                .delete_consumer(durable)
                .await
                .map_err(|e| e.to_string())?;
            floor
        }
        Err(e) if e.to_string().contains("not found") => 0,
        Err(e) => return Err(e.to_string()),
    };
    tracing::info!(consumer = %durable, %subject, from_sequence = floor + 1, "reading the stream's digests");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(300),
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        if tx.send(message).is_err() {
            return Ok(());
        }
    }
    Err("the digests' consumer ended".into())
}
