//! Progress while the stream catches up on a backlog: every few seconds, how far behind the
//! server it is (WAL bytes), how fast it catches up and when it should be done. On a terminal a
//! progress bar (indicatif) shows it; otherwise (a service, a pipe) plain log lines on stderr.
//!
//! Beside the loop of src/stream/session.rs, which reports each commit (`committed`) and calls
//! `tick` with its periodic checks. The stream is catching up while transactions keep arriving
//! (the last one within two report periods) that had committed on the server more than
//! `CATCHING_UP` before they arrived, and the server's WAL (as the coverage sampler last saw it,
//! src/coverage.rs) is ahead of them. An idle stream is not behind, however old its last commit. The decisions are the pure
//! `Tracker`, tested without a server or a clock.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::coverage::Sampler;
use crate::lsn::{Lsn, PgTimestamp};

/// A commit older than this when received means the stream is behind.
pub const CATCHING_UP: Duration = Duration::from_secs(5);
/// Reports come at most this often (more often with a shorter `--status-interval`, since the
/// server's position is sampled that often).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One report: how far behind, how fast, how long still.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// The server's WAL position minus the last commit received, in bytes.
    pub behind: u64,
    /// Bytes of WAL per second caught up since the last report.
    pub rate: f64,
    /// `behind / rate`; None while nothing moved.
    pub eta: Option<Duration>,
    /// Where the backlog began and where the server is: the bar's scale.
    pub start: Lsn,
    pub position: Lsn,
    pub server: Lsn,
}

/// What `Tracker::tick` decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tick {
    Nothing,
    Report(Report),
    /// The backlog that was being reported is drained.
    CaughtUp,
}

/// The pure part: positions and times in, reports out.
#[derive(Debug)]
pub struct Tracker {
    every: Duration,
    /// The last commit received: its end position, when it arrived, and how old it was then.
    last: Option<(Lsn, Instant, Duration)>,
    /// The last report (or the start of the backlog): when, and the position then.
    mark: Option<(Instant, Lsn)>,
    start: Lsn,
    reported: bool,
}

impl Tracker {
    pub fn new(status_interval: Duration) -> Tracker {
        Tracker {
            every: status_interval.min(REPORT_EVERY),
            last: None,
            mark: None,
            start: Lsn(0),
            reported: false,
        }
    }

    /// A transaction that committed at `commit_time` arrived at `now` (wall clock `wall`), up to
    /// `end_lsn`.
    pub fn committed(
        &mut self,
        commit_time: PgTimestamp,
        end_lsn: Lsn,
        now: Instant,
        wall: PgTimestamp,
    ) {
        let age = wall.0.saturating_sub(commit_time.0).max(0) as u64;
        self.last = Some((end_lsn, now, Duration::from_micros(age)));
    }

    /// At `now`, with the server's WAL last seen at `server`.
    pub fn tick(&mut self, now: Instant, server: Option<Lsn>) -> Tick {
        let Some((position, arrived, age)) = self.last else {
            return Tick::Nothing;
        };
        let behind = server.map_or(0, |s| s.0.saturating_sub(position.0));
        let arriving = now.saturating_duration_since(arrived) <= 2 * self.every;
        let catching_up = arriving && age > CATCHING_UP && behind > 0;
        if !catching_up {
            self.mark = None;
            return if std::mem::take(&mut self.reported) {
                Tick::CaughtUp
            } else {
                Tick::Nothing
            };
        }
        let Some((since, from)) = self.mark else {
            // The backlog begins: the first report comes once a rate can be measured.
            self.mark = Some((now, position));
            self.start = position;
            return Tick::Nothing;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed < self.every {
            return Tick::Nothing;
        }
        self.mark = Some((now, position));
        self.reported = true;
        let rate = position.0.saturating_sub(from.0) as f64 / elapsed.as_secs_f64();
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(behind as f64 / rate));
        Tick::Report(Report {
            behind,
            rate,
            eta,
            start: self.start,
            position,
            server: server.unwrap_or(position),
        })
    }
}

/// The tracker and where its reports go: a bar on a terminal, log lines otherwise.
pub struct Backlog {
    tracker: Tracker,
    terminal: bool,
    bar: Option<ProgressBar>,
    /// The checks run every few messages: look at the clock's answer only this often.
    next_check: Instant,
}

impl Backlog {
    pub fn new(status_interval: Duration) -> Backlog {
        Backlog {
            tracker: Tracker::new(status_interval),
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            next_check: Instant::now(),
        }
    }

    /// A transaction committed at `commit_time` was received, up to `end_lsn`.
    pub fn committed(&mut self, commit_time: PgTimestamp, end_lsn: Lsn) {
        self.tracker
            .committed(commit_time, end_lsn, Instant::now(), PgTimestamp::now());
    }

    /// Called with the loop's periodic checks; reports when due.
    pub fn tick(&mut self, sampler: &Sampler) {
        let now = Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + Duration::from_millis(250);
        let server = sampler.latest().map(|s| s.lsn);
        match self.tracker.tick(now, server) {
            Tick::Nothing => {}
            Tick::Report(report) if self.terminal => self.draw(&report),
            Tick::Report(r) => tracing::info!(
                behind = %bytes(r.behind as f64),
                rate = %format!("{}/s", bytes(r.rate)),
                eta = %r.eta.map_or("unknown".to_string(), duration),
                position = %r.position,
                server = %r.server,
                "catching up on a backlog"
            ),
            Tick::CaughtUp => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                tracing::info!("caught up with the server");
            }
        }
    }

    fn draw(&mut self, r: &Report) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("catching up {wide_bar} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        bar.set_length(r.server.0.saturating_sub(r.start.0).max(1));
        bar.set_position(r.position.0.saturating_sub(r.start.0));
        bar.set_message(format!(
            "{} behind, {}/s, done in {}",
            bytes(r.behind as f64),
            bytes(r.rate),
            r.eta.map_or("?".to_string(), duration)
        ));
    }
}

impl Drop for Backlog {
    /// A connection that ends mid-backlog (a reconnect, `--until`) leaves no bar behind.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// "12.3 MB": decimal units, one decimal.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut n = n.max(0.0);
    let mut unit = 0;
    while n >= 1000.0 && unit < UNITS.len() - 1 {
        n /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

/// "1h02m", "3m05s", "12s".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    #[test]
    fn reports_only_while_old_commits_arrive_and_the_server_is_ahead() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let wall = |s: i64| PgTimestamp(s * SEC);
        let mut t = Tracker::new(Duration::from_secs(10));
        assert_eq!(t.tick(at(0), Some(Lsn(0))), Tick::Nothing);
        // Fresh commits: live, nothing to report even with the server ahead.
        t.committed(wall(99), Lsn(1000), at(0), wall(100));
        assert_eq!(t.tick(at(0), Some(Lsn(9000))), Tick::Nothing);
        // Commits a minute old: a backlog; the first report after REPORT_EVERY.
        t.committed(wall(40), Lsn(2000), at(1), wall(101));
        assert_eq!(t.tick(at(1), Some(Lsn(12_000))), Tick::Nothing);
        t.committed(wall(41), Lsn(4000), at(3), wall(103));
        assert_eq!(t.tick(at(3), Some(Lsn(12_000))), Tick::Nothing);
        t.committed(wall(42), Lsn(7000), at(6), wall(106));
        let Tick::Report(r) = t.tick(at(6), Some(Lsn(12_000))) else {
            panic!("no report")
        };
        assert_eq!(r.behind, 5000);
        assert_eq!(r.rate, 1000.0);
        assert_eq!(r.eta, Some(Duration::from_secs(5)));
        assert_eq!(
            (r.start, r.position, r.server),
            (Lsn(2000), Lsn(7000), Lsn(12_000))
        );
        // Caught up: said once.
        t.committed(wall(107), Lsn(12_000), at(7), wall(107));
        assert_eq!(t.tick(at(7), Some(Lsn(12_000))), Tick::CaughtUp);
        assert_eq!(t.tick(at(8), Some(Lsn(12_000))), Tick::Nothing);
    }

    #[test]
    fn an_idle_stream_is_not_behind_however_old_its_last_commit() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(1));
        // The last transaction came old (the end of a backlog); then nothing for a minute while
        // other databases move the server's WAL on.
        t.committed(PgTimestamp(0), Lsn(100), t0, PgTimestamp(3600 * SEC));
        for s in [10, 20, 30, 60] {
            assert_eq!(
                t.tick(t0 + Duration::from_secs(s), Some(Lsn(100 * s))),
                Tick::Nothing
            );
        }
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(bytes(999.0), "999 B");
        assert_eq!(bytes(12_345_678.0), "12.3 MB");
        assert_eq!(duration(Duration::from_secs(12)), "12s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h02m");
    }
}
