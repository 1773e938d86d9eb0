//! The progress bar of a long scan: on stderr, shown once a scan has taken more than a second, and
//! only when stderr is a terminal (a pipe or a log file never gets one).

/// A progress bar on stderr, shown once a scan has taken more than a second and only when stderr
/// is a terminal.
pub struct Progress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    shown: bool,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::hidden(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left",
        ) {
            bar.set_style(style);
        }
        Progress {
            bar,
            started: std::time::Instant::now(),
            shown: false,
        }
    }

    pub fn at(&mut self, done: u64) {
        if !self.shown
            && self.started.elapsed() > std::time::Duration::from_secs(1)
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(done);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
