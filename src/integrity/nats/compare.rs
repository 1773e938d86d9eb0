//! `verify --integrity --nats`: the digests JetStream holds against the out-dir's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::{SEQ_HEADER, stream_name, subject};
use crate::integrity::{IntegrityError, IntegrityReport, chain};
use crate::sink::nats::NatsConfig;

/// A digest as JetStream holds it: the first message of its sequence number, and whether
/// later ones say something else.
#[derive(Debug, Default)]
pub struct Published {
    pub text: String,
    pub stream_seq: u64,
    pub others: Vec<u64>,
}

/// How long `verify` tries to reach NATS before giving up.
const VERIFY_CONNECT: Duration = Duration::from_secs(20);

/// Every digest on `database`'s subject, by sequence number.
pub async fn published(
    config: &NatsConfig,
    database: &str,
) -> Result<BTreeMap<u64, Published>, IntegrityError> {
    let unreachable = |reason: String| IntegrityError::NatsRead {
        url: config.url.clone(),
        reason,
    };
    let deadline = Instant::now() + VERIFY_CONNECT;
    let client = config
        .connect(Default::default(), &|| Instant::now() > deadline)
        .await?
        .ok_or_else(|| unreachable(format!("no answer in {VERIFY_CONNECT:?}")))?;
    let js = jetstream::new(client);
    let subject = subject(config, database);
    let mut found: BTreeMap<u64, Published> = BTreeMap::new();
    let stream = match js.get_stream(stream_name(config)).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(found);
        }
        Err(e) => return Err(unreachable(e.to_string())),
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut consumer = consumer;
    let mut left = consumer
        .info()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .num_pending;
    while left > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(500) as usize)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unreachable(e.to_string()))?;
            got += 1;
            let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let seq = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SEQ_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let Some(seq) = seq else {
                tracing::warn!(stream_seq, %subject, "a message without a digest sequence number on the digests' subject; ignored");
                continue;
            };
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            match found.get_mut(&seq) {
                Some(first) if first.text != text => first.others.push(stream_seq),
                Some(_) => {}
                None => {
                    found.insert(
                        seq,
                        Published {
                            text,
                            stream_seq,
                            others: Vec::new(),
                        },
                    );
                }
            }
        }
        if got == 0 {
            return Err(unreachable(format!(
                "JetStream announced {left} more digests but sent none"
            )));
        }
        left = left.saturating_sub(got);
    }
    Ok(found)
}

/// `verify --integrity --nats`: adds to `report` how the digests of `out_dir` compare with those
/// JetStream holds for the out-dir's database (as its state file names it).
pub async fn check(
    out_dir: &Path,
    config: &NatsConfig,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let checkpoint =
        crate::checkpoint::Checkpoint::load(out_dir).map_err(|e| IntegrityError::Io {
            action: "read the state file of",
            path: out_dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let Some(identity) = checkpoint.and_then(|c| c.identity) else {
        return Err(IntegrityError::NoDatabase(out_dir.to_path_buf()));
    };
    let found = published(config, &identity.database).await?;
    compare(
        out_dir,
        &subject(config, &identity.database),
        &found,
        report,
    )
}

/// Adds to `report` how the digests of `out_dir` compare with `published` (those of `subject`).
pub fn compare(
    out_dir: &Path,
    subject: &str,
    published: &BTreeMap<u64, Published>,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let (digests, _) = chain::list(out_dir)?;
    let on_disk: BTreeMap<u64, PathBuf> = digests.into_iter().collect();
    let place = |seq: u64| format!("{}/{}", chain::DIGESTS_DIR, chain::name(seq));
    let newest_published = published.keys().next_back().copied().unwrap_or(0);
    let newest_on_disk = on_disk.keys().next_back().copied().unwrap_or(0);
    if published.is_empty() && !on_disk.is_empty() {
        report.broken(
            place(newest_on_disk),
            None,
            format!(
                "JetStream holds none of the out-dir's digests on {subject}: the off-machine copy is gone, or this is not the server, --nats-subject-prefix or --nats-stream the stream published to"
            ),
        );
        return Ok(());
    }
    for (&seq, copy) in published {
        let reference = format!(
            "the copy in JetStream (stream sequence {})",
            copy.stream_seq
        );
        match on_disk.get(&seq) {
            None if seq > newest_on_disk => report.broken(
                place(seq),
                None,
                format!(
                    "removed: {reference} exists, but the out-dir's digests end at {newest_on_disk}: the newest digests were deleted (the rows they covered with them, most likely)"
                ),
            ),
            None => report.broken(
                place(seq),
                None,
                format!("removed: {reference} exists, but the out-dir has no such digest"),
            ),
            Some(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if text != copy.text {
                    report.broken(
                        place(seq),
                        Some(first_difference(&text, &copy.text)),
                        format!(
                            "replaced: it differs from {reference}; the chain was rebuilt from here, by someone holding the key or not"
                        ),
                    );
                }
            }
        }
        if !copy.others.is_empty() {
            report.broken(
                place(seq),
                None,
                format!(
                    "JetStream holds other digests with this number after the first (stream sequences {:?}): a chain rebuilt on the machine was published again",
                    copy.others
                ),
            );
        }
    }
    let lagging: Vec<u64> = on_disk
        .keys()
        .copied()
        .filter(|seq| !published.contains_key(seq))
        .collect();
    if let (Some(first), Some(last)) = (lagging.first(), lagging.last()) {
        let newer = lagging.iter().all(|&s| s > newest_published);
        report.notes.push(if newer {
            format!(
                "digests {first} to {last} are not yet published to JetStream ({subject}); the stream sends them when NATS answers (not a break)"
            )
        } else {
            format!(
                "digests {lagging:?} of the out-dir were never published to JetStream ({subject}) (not a break: the out-dir's chain checks them)"
            )
        });
    }
    report.notes.push(format!(
        "compared with {} digests in JetStream on {subject}",
        published.len()
    ));
    Ok(())
}

/// The first line where two texts differ (1-based).
fn first_difference(a: &str, b: &str) -> u64 {
    let mut line = 1;
    let (mut la, mut lb) = (a.lines(), b.lines());
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (None, None) => return line,
            _ => return line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(text: &str, stream_seq: u64) -> Published {
        Published {
            text: text.into(),
            stream_seq,
            others: Vec::new(),
        }
    }

    fn out_dir_with(digests: &[(u64, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(chain::DIGESTS_DIR)).unwrap();
        for (seq, text) in digests {
            std::fs::write(
                dir.path().join(chain::DIGESTS_DIR).join(chain::name(*seq)),
                text,
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn removed_replaced_and_lagging_digests_are_told_apart() {
        let dir = out_dir_with(&[(1, "a\n"), (2, "b\nx\n"), (4, "d\n"), (5, "e\n")]);
        let published: BTreeMap<u64, Published> = [
            (1, copy("a\n", 10)),
            (2, copy("b\ny\n", 11)),
            (3, copy("c\n", 12)),
            (4, copy("d\n", 13)),
        ]
        .into_iter()
        .collect();
        let mut report = IntegrityReport::default();
        compare(dir.path(), "audit-digests.db", &published, &mut report).unwrap();
        let places: Vec<(&str, Option<u64>)> = report
            .breaks
            .iter()
            .map(|b| (b.place.as_str(), b.line))
            .collect();
        assert_eq!(
            places,
            [
                ("audit-tail.digests/00000002.digest", Some(2)),
                ("audit-tail.digests/00000003.digest", None)
            ]
        );
        assert!(report.breaks[0].what.starts_with("replaced"));
        assert!(report.breaks[1].what.starts_with("removed"));
        assert!(
            report.notes[0].contains("digests 5 to 5 are not yet published"),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn the_newest_digests_deleted_are_a_break_and_an_empty_copy_too() {
        let dir = out_dir_with(&[(1, "a\n")]);
        let published: BTreeMap<u64, Published> = [
            (1, copy("a\n", 1)),
            (2, copy("b\n", 2)),
            (3, copy("c\n", 3)),
        ]
        .into_iter()
        .collect();
        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &published, &mut report).unwrap();
        assert_eq!(report.breaks.len(), 2, "{:?}", report.breaks);
        assert!(report.breaks[1].what.contains("digests end at 1"));

        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &BTreeMap::new(), &mut report).unwrap();
        assert!(!report.intact());

        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &[(1, copy("a\n", 1))].into(), &mut report).unwrap();
        assert!(report.intact(), "{:?}", report.breaks);

        // A rebuilt digest 1 published after the genuine one: the first is the reference.
        let mut first = copy("a\n", 1);
        first.others.push(7);
        let mut report = IntegrityReport::default();
        compare(dir.path(), "s", &[(1, first)].into(), &mut report).unwrap();
        assert_eq!(report.breaks.len(), 1, "{:?}", report.breaks);
        assert!(report.breaks[0].what.contains("stream sequences [7]"));
    }
}
