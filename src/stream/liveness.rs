//! Keeping the connection alive and noticing when it is not: a status update goes to the server
//! at least every `--status-interval` (well inside wal_sender_timeout), always asking for a
//! reply; a connection that stays silent for `SILENT_INTERVALS` of them is dead (a stalled
//! network path, a frozen server) and is replaced. Idle keepalive positions are confirmed at
//! most every `IDLE_ACK_INTERVAL`. Pure, with the clock passed in.

use std::time::Duration;

use tokio::time::Instant;

/// The default of `--status-interval`.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Status intervals without a byte from the server after which the connection is replaced.
pub const SILENT_INTERVALS: u32 = 3;
/// Idle keepalive positions are made durable at most this often.
pub const IDLE_ACK_INTERVAL: Duration = Duration::from_secs(1);

/// The clocks of one connection; see the module documentation.
#[derive(Debug)]
pub struct Liveness {
    status_interval: Duration,
    last_status: Instant,
    last_received: Instant,
    last_idle_ack: Instant,
}

impl Liveness {
    /// A connection that started streaming at `now`.
    pub fn new(status_interval: Duration, now: Instant) -> Liveness {
        Liveness {
            status_interval,
            last_status: now,
            last_received: now,
            last_idle_ack: now,
        }
    }

    /// How often a status goes out: more often while waiting for `--until`, since each reply
    /// tells the server's position.
    fn status_every(&self, waiting_for_until: bool) -> Duration {
        if waiting_for_until {
            IDLE_ACK_INTERVAL.min(self.status_interval)
        } else {
            self.status_interval
        }
    }

    /// When the next status update is due.
    pub fn status_at(&self, waiting_for_until: bool) -> Instant {
        self.last_status + self.status_every(waiting_for_until)
    }

    pub fn status_due(&self, now: Instant, waiting_for_until: bool) -> bool {
        now >= self.status_at(waiting_for_until)
    }

    pub fn status_sent(&mut self, now: Instant) {
        self.last_status = now;
    }

    /// Something arrived from the server.
    pub fn received(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// How long the server has been silent, if that is long enough to give the connection up.
    pub fn silent(&self, now: Instant) -> Option<Duration> {
        let limit = self.status_interval * SILENT_INTERVALS;
        (now.saturating_duration_since(self.last_received) >= limit).then_some(limit)
    }

    /// Whether an idle keepalive position may be confirmed now.
    pub fn idle_ack_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_idle_ack) >= IDLE_ACK_INTERVAL
    }

    pub fn idle_acked(&mut self, now: Instant) {
        self.last_idle_ack = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_status_goes_out_every_status_interval_and_each_second_for_until() {
        let t0 = Instant::now();
        let mut live = Liveness::new(10 * S, t0);
        assert!(!live.status_due(t0 + 9 * S, false));
        assert!(live.status_due(t0 + 10 * S, false));
        assert!(live.status_due(t0 + S, true), "waiting for --until");
        live.status_sent(t0 + 10 * S);
        assert_eq!(live.status_at(false), t0 + 20 * S);
        // An interval shorter than the --until cadence is kept as it is.
        let fast = Liveness::new(S / 2, t0);
        assert_eq!(fast.status_at(true), t0 + S / 2);
    }

    #[test]
    fn a_connection_silent_for_three_intervals_is_given_up() {
        let t0 = Instant::now();
        let mut live = Liveness::new(2 * S, t0);
        assert_eq!(live.silent(t0 + 5 * S), None);
        assert_eq!(live.silent(t0 + 6 * S), Some(6 * S));
        // Statuses sent do not count: only what arrives from the server does.
        live.status_sent(t0 + 5 * S);
        assert_eq!(live.silent(t0 + 6 * S), Some(6 * S));
        live.received(t0 + 5 * S);
        assert_eq!(live.silent(t0 + 10 * S), None);
        assert_eq!(live.silent(t0 + 11 * S), Some(6 * S));
    }

    #[test]
    fn idle_positions_are_confirmed_at_most_each_second() {
        let t0 = Instant::now();
        let mut live = Liveness::new(10 * S, t0);
        assert!(!live.idle_ack_due(t0 + S / 2));
        assert!(live.idle_ack_due(t0 + S));
        live.idle_acked(t0 + S);
        assert!(!live.idle_ack_due(t0 + S + S / 2));
    }
}
