//! The archive's durable consumer: only a cursor. It is made again on every connect to deliver
//! from the sequence after the out-dir's last (src/archive/state.rs), never from its own
//! acknowledged floor, and it carries the out-dir's id in its description, so that a second
//! archive given the same `--nats-consumer` for another out-dir is refused instead of deleting
//! the first one's consumer and starting mid-stream.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream::Stream};

use super::ArchiveError;

/// The start of a description we write: `audit-tail archive <id> <host>:<out-dir>`.
const TAG: &str = "audit-tail archive ";
/// A consumer some process is reading: its pull requests are counted this many times, this far
/// apart (longer than a fetch's expiry, so a request of a process that just died is seen at
/// most twice).
const SAMPLES: u32 = 5;
const SAMPLE_EVERY: Duration = Duration::from_millis(120);

/// This out-dir, as its consumer's description names it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub id: String,
    pub description: String,
}

impl Owner {
    pub fn new(id: &str, out_dir: &std::path::Path) -> Owner {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let dir = std::path::absolute(out_dir).unwrap_or_else(|_| out_dir.to_path_buf());
        Owner {
            id: id.to_string(),
            description: format!("{TAG}{id} {host}:{}", dir.display()),
        }
    }
}

/// The out-dir id a consumer's description names; None for one made otherwise (by an older
/// audit-tail, or by hand).
fn owner_id(description: Option<&str>) -> Option<&str> {
    description?.strip_prefix(TAG)?.split(' ').next()
}

/// Whose consumer `info` is, as words for an error.
fn whose(info: &consumer::Info) -> String {
    match info.config.description.as_deref() {
        Some(d) if owner_id(Some(d)).is_some() => format!("it is the archive's \"{d}\""),
        _ => "it was made by an older audit-tail or by hand".into(),
    }
}

/// The durable consumer `name`, made (again) to deliver `filter`'s messages from stream
/// sequence `start` (1: from the first). Refused when it belongs to another out-dir or (when
/// `ask_busy`) another process is reading it.
pub async fn open(
    stream: &Stream,
    name: &str,
    owner: &Owner,
    filter: &str,
    start: u64,
    ask_busy: bool,
) -> Result<consumer::PullConsumer, ArchiveError> {
    let link = |e: &dyn std::fmt::Display| ArchiveError::Link(e.to_string());
    let refuse = |why: String| ArchiveError::Consumer {
        name: name.to_string(),
        ours: owner.description.clone(),
        why,
    };
    match stream.consumer_info(name).await {
        Ok(info) => {
            let theirs = owner_id(info.config.description.as_deref());
            if theirs.is_some_and(|id| id != owner.id) {
                return Err(refuse(format!(
                    "it belongs to another out-dir: {} (if that out-dir is gone for good, such \
                     as a machine rebuilt, remove the consumer first: nats consumer rm {} {name})",
                    whose(&info),
                    stream.cached_info().config.name
                )));
            }
            let mut busy = 0;
            for i in 0..if ask_busy { SAMPLES } else { 0 } {
                if i > 0 {
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
                let info = stream.consumer_info(name).await.map_err(|e| link(&e))?;
                if info.num_waiting > 0 {
                    busy += 1;
                }
            }
            if busy > SAMPLES / 2 {
                return Err(refuse(format!(
                    "another process is reading it right now (pull requests waiting); {}",
                    whose(&info)
                )));
            }
            if theirs.is_none() {
                tracing::info!(consumer = name, description = ?info.config.description,
                    "taking over a consumer made by an older audit-tail; it now names this out-dir");
            }
            match stream.delete_consumer(name).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(link(&e)),
            }
        }
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => return Err(link(&e)),
    }
    let deliver_policy = match start {
        0 | 1 => consumer::DeliverPolicy::All,
        start => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
    };
    tracing::info!(consumer = name, %filter, from_sequence = start.max(1), "reading JetStream");
    let made = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_string()),
            description: Some(owner.description.clone()),
            filter_subject: filter.to_string(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(300),
            max_ack_pending: -1,
            ..Default::default()
        })
        .await;
    match made {
        Ok(consumer) => Ok(consumer),
        Err(e) => {
            // Another archive may have made it between our look and our create.
            if let Ok(info) = stream.consumer_info(name).await
                && owner_id(info.config.description.as_deref()) != Some(&owner.id)
            {
                return Err(refuse(format!(
                    "another archive made it at the same moment: {}",
                    whose(&info)
                )));
            }
            Err(link(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_names_its_out_dirs_id() {
        let owner = Owner::new("00ff", std::path::Path::new("/srv/archive"));
        assert!(owner.description.starts_with("audit-tail archive 00ff "));
        assert!(owner.description.ends_with(":/srv/archive"));
        assert_eq!(owner_id(Some(&owner.description)), Some("00ff"));
        assert_eq!(owner_id(Some("made by hand")), None);
        assert_eq!(owner_id(None), None);
    }
}
