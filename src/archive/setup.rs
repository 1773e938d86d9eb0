//! What the archive settles before and around its rows: its state file, the filter (given, or
//! derived from the stream's first message), the one database an out-dir holds, and saying when
//! nothing matches the filter yet.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind, stream::Stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::state::{self, State};
use super::{Archive, ArchiveConfig, ArchiveError};
use crate::sink::nats::message::token;

/// How often a new out-dir without `--nats-filter` looks for the stream's first message.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// At most this many of the stream's subjects are named when the filter matches none.
const SUBJECTS_SHOWN: usize = 10;

static SAID_NOTHING_MATCHES: AtomicBool = AtomicBool::new(false);

/// The state of `dir` (locked by the files), made and stored when it has none; and `dir` opened
/// to fsync renames.
pub fn load_state(dir: &Path) -> Result<(State, std::fs::File), ArchiveError> {
    let handle = std::fs::File::open(dir).map_err(|source| state::StateError::Io {
        action: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    let state = match State::load(dir)? {
        Some(state) => state,
        None => {
            let state = State::new()?;
            state.store(dir, &handle)?;
            state
        }
    };
    Ok((state, handle))
}

impl Archive {
    pub(super) fn store_state(&self) -> Result<(), ArchiveError> {
        Ok(self.state.store(&self.out_dir, &self.dir_handle)?)
    }

    /// The subjects this out-dir archives: recorded on first use and the same ever after. None
    /// when stopped while waiting for a first message.
    pub(super) async fn filter(
        &mut self,
        config: &ArchiveConfig,
        stream: &Stream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<String>, ArchiveError> {
        let filter = match (&self.state.filter, &config.filter) {
            (Some(recorded), Some(given)) if recorded != given => {
                return Err(ArchiveError::FilterChanged {
                    given: given.clone(),
                    recorded: recorded.clone(),
                    out_dir: self.out_dir.display().to_string(),
                });
            }
            (Some(recorded), _) => recorded.clone(),
            (None, Some(given)) => {
                self.state.filter = Some(given.clone());
                self.store_state()?;
                given.clone()
            }
            (None, None) => {
                // One database per out-dir: the stream's first row names it.
                let all = config.nats.stream_subjects();
                let Some(first) = self.first_message(stream, &all, shutdown).await? else {
                    return Ok(None);
                };
                let prefix = &config.nats.subject_prefix;
                let database = first
                    .headers
                    .get("Nats-Msg-Id")
                    .and_then(|id| state::database_of(id.as_str()).map(str::to_string));
                let db_token = first
                    .subject
                    .strip_prefix(prefix.as_str())
                    .and_then(|s| s.strip_prefix('.'))
                    .and_then(|s| s.split('.').next())
                    .filter(|t| !t.is_empty());
                let (Some(database), Some(db_token)) = (database, db_token) else {
                    return Err(ArchiveError::Foreign(
                        crate::sink::nats::message::ForeignMessage {
                            what: format!("{} (stream sequence {})", first.subject, first.sequence),
                            why: "it names no database (no Nats-Msg-Id header or subject \
                                  <prefix>.<database>.<schema>.<table>)"
                                .into(),
                        },
                    ));
                };
                let filter = format!("{prefix}.{db_token}.>");
                tracing::info!(%database, %filter,
                    "no --nats-filter: this out-dir archives the database of the stream's first \
                     row; archive any other database into an out-dir of its own, with \
                     --nats-filter {prefix}.<database>.> and its own --nats-consumer");
                self.state.filter = Some(filter.clone());
                self.state.database = Some(database);
                self.store_state()?;
                filter
            }
        };
        if self.state.sequence.is_none() && !SAID_NOTHING_MATCHES.load(Ordering::Relaxed) {
            self.say_if_nothing_matches(stream, &filter).await;
        }
        Ok(Some(filter))
    }

    /// The stream's first message under `subject`, waiting for one (saying so once).
    async fn first_message(
        &self,
        stream: &Stream,
        subject: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<jetstream::message::StreamMessage>, ArchiveError> {
        loop {
            match stream.get_first_raw_message_by_subject(subject, 1).await {
                Ok(message) => return Ok(Some(message)),
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                    if !SAID_NOTHING_MATCHES.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%subject, "the stream holds no row yet; waiting for the first \
                            one, whose database this out-dir will archive");
                    }
                }
                Err(e) => return Err(ArchiveError::Link(e.to_string())),
            }
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = super::stopped(shutdown) => return Ok(None),
            }
        }
    }

    /// Says once when `filter` matches nothing in the stream yet, and which subjects it holds.
    async fn say_if_nothing_matches(&self, stream: &Stream, filter: &str) {
        match stream.get_first_raw_message_by_subject(filter, 1).await {
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {}
            _ => return,
        }
        SAID_NOTHING_MATCHES.store(true, Ordering::Relaxed);
        let mut held = Vec::new();
        if let Ok(subjects) = stream.info_with_subjects(">").await {
            let mut subjects = subjects.take(SUBJECTS_SHOWN + 1);
            while let Some(Ok((subject, _))) = subjects.next().await {
                held.push(subject);
            }
        }
        held.sort();
        let more = if held.len() > SUBJECTS_SHOWN {
            held.truncate(SUBJECTS_SHOWN);
            ", ..."
        } else {
            ""
        };
        let held = if held.is_empty() {
            "none".to_string()
        } else {
            format!("{}{more}", held.join(", "))
        };
        tracing::warn!(%filter, stream_holds = %held,
            "nothing in the stream matches --nats-filter yet; waiting for rows (check the filter \
             against the subjects the stream holds)");
    }

    /// Refuses a row of another database than the out-dir's, before it is written; records the
    /// database at the first row.
    pub(super) fn check_database(
        &mut self,
        message: &jetstream::Message,
        prefix: &str,
    ) -> Result<(), ArchiveError> {
        // The common case in a comparison of bytes: the subject names our database.
        if let Some(ours) = &self.subject_start
            && message.subject.as_str().starts_with(ours.as_str())
        {
            return Ok(());
        }
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string());
        let Some(theirs) = id.as_deref().and_then(state::database_of) else {
            return Ok(()); // not a row: `take` says what it is
        };
        match &self.state.database {
            Some(ours) if ours == theirs => {}
            Some(ours) => {
                return Err(ArchiveError::OtherDatabase {
                    subject: message.subject.to_string(),
                    sequence: message.info().map_or(0, |i| i.stream_sequence),
                    theirs: theirs.to_string(),
                    ours: ours.clone(),
                    filter: self.state.filter.clone().unwrap_or_default(),
                });
            }
            None => {
                tracing::info!(
                    database = theirs,
                    "this out-dir archives this database's rows"
                );
                self.state.database = Some(theirs.to_string());
                self.store_state()?;
            }
        }
        self.subject_start = Some(format!("{prefix}.{}.", token(theirs)));
        Ok(())
    }
}
