//! When to make commits durable (fsync the files, store the checkpoint): the batching policy of
//! the stream loop, pure, with the clock passed in.
//!
//! After a commit, durability follows as soon as no further message is already buffered, or at
//! the latest `FLUSH_DELAY` after the first commit not yet durable. While a backlog is drained
//! (the last commit is older than `CATCHING_UP` on the server's clock against ours), only the
//! delay counts: the rows are late anyway, and each durable point costs three syncs.

use std::time::Duration;

use tokio::time::Instant;

use crate::lsn::PgTimestamp;

/// The longest a committed row waits for its fsync under steady load.
pub const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// A commit older than this means a backlog is being drained.
pub const CATCHING_UP: Duration = Duration::from_secs(1);

/// The batching state; see the module documentation.
#[derive(Debug, Default)]
pub struct FlushPolicy {
    /// When the first commit (or other change) that is not yet durable arrived.
    pending_since: Option<Instant>,
    /// Whether the pending change wants a durable point at once (an idle position to confirm).
    urgent: bool,
    /// Whether the last transaction was late: a backlog is being drained.
    catching_up: bool,
}

impl FlushPolicy {
    /// A transaction committed at `commit_time` began (`now_pg`: our clock in the protocol's).
    pub fn began(&mut self, commit_time: PgTimestamp, now_pg: PgTimestamp) {
        self.catching_up = is_late(commit_time, now_pg);
    }

    /// A transaction committed: it waits for a durable point.
    pub fn committed(&mut self, commit_time: PgTimestamp, now_pg: PgTimestamp, now: Instant) {
        self.pending(now);
        self.catching_up = is_late(commit_time, now_pg);
    }

    /// Something other than a commit waits for a durable point (the covered stretch grew).
    pub fn pending(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// Something waits that should be made durable at the next check (an idle position).
    pub fn urgent(&mut self, now: Instant) {
        self.pending(now);
        self.urgent = true;
    }

    /// Whether a durable point is due at `now`, `buffered` saying whether another message is
    /// already in the read buffer.
    pub fn due(&self, now: Instant, buffered: bool) -> bool {
        let Some(since) = self.pending_since else {
            return false;
        };
        self.urgent
            || now.saturating_duration_since(since) >= FLUSH_DELAY
            || (!self.catching_up && !buffered)
    }

    /// When the loop must wake up for a durable point at the latest, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending_since.map(|since| {
            if self.urgent {
                since
            } else {
                since + FLUSH_DELAY
            }
        })
    }

    /// A durable point was made.
    pub fn flushed(&mut self) {
        self.pending_since = None;
        self.urgent = false;
    }
}

/// Whether a transaction committed at `commit_time` arrives as part of a backlog at `now`.
pub fn is_late(commit_time: PgTimestamp, now: PgTimestamp) -> bool {
    now.0.saturating_sub(commit_time.0) > CATCHING_UP.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;

    #[test]
    fn a_fresh_commit_is_made_durable_once_the_buffer_runs_dry() {
        let t0 = Instant::now();
        let now_pg = PgTimestamp(1_000_000 * MS);
        let mut policy = FlushPolicy::default();
        assert!(!policy.due(t0, false), "nothing pending");
        policy.began(PgTimestamp(now_pg.0 - 5 * MS), now_pg);
        policy.committed(PgTimestamp(now_pg.0 - 5 * MS), now_pg, t0);
        assert!(
            !policy.due(t0, true),
            "more messages are buffered: batch them"
        );
        assert!(policy.due(t0, false), "the buffer ran dry");
        policy.flushed();
        assert!(!policy.due(t0, false));
        assert_eq!(policy.deadline(), None);
    }

    #[test]
    fn the_batch_window_is_fifty_ms_after_the_first_pending_commit() {
        let t0 = Instant::now();
        let now_pg = PgTimestamp(1_000_000 * MS);
        let mut policy = FlushPolicy::default();
        policy.committed(now_pg, now_pg, t0);
        // A second commit later does not move the window.
        policy.committed(now_pg, now_pg, t0 + Duration::from_millis(30));
        assert_eq!(policy.deadline(), Some(t0 + FLUSH_DELAY));
        assert!(!policy.due(t0 + Duration::from_millis(49), true));
        assert!(policy.due(t0 + Duration::from_millis(50), true));
    }

    #[test]
    fn while_draining_a_backlog_fsyncs_are_batched_even_when_the_buffer_runs_dry() {
        let t0 = Instant::now();
        let now_pg = PgTimestamp(1_000_000 * MS);
        let old = PgTimestamp(now_pg.0 - 1001 * MS);
        let mut policy = FlushPolicy::default();
        policy.began(old, now_pg);
        policy.committed(old, now_pg, t0);
        assert!(!policy.due(t0, false), "a backlog: wait for the window");
        assert!(!policy.due(t0 + Duration::from_millis(49), false));
        assert!(policy.due(t0 + FLUSH_DELAY, false));
        // Once caught up (a commit of a second ago is not late), dry means durable at once.
        policy.flushed();
        let recent = PgTimestamp(now_pg.0 - 1000 * MS);
        policy.committed(recent, now_pg, t0);
        assert!(policy.due(t0, false));
    }

    #[test]
    fn an_idle_position_is_due_at_once() {
        let t0 = Instant::now();
        let mut policy = FlushPolicy::default();
        policy.began(PgTimestamp(0), PgTimestamp(10_000 * MS));
        policy.urgent(t0);
        assert!(policy.due(t0, true));
        assert_eq!(policy.deadline(), Some(t0));
    }

    #[test]
    fn extreme_commit_times_do_not_overflow() {
        assert!(is_late(PgTimestamp(i64::MIN), PgTimestamp(i64::MAX)));
        assert!(!is_late(PgTimestamp(i64::MAX), PgTimestamp(i64::MIN)));
    }
}
