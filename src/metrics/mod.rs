//! Prometheus metrics (`--metrics ADDR`): what the stream did, for dashboards and alerts.
//!
//! Beside the flow: the stages report what happened through one-line hooks, and a thread of its
//! own serves `/metrics` in the text format (src/metrics/server.rs), so a scrape is answered even
//! while the stream's task is blocked in an fsync. Without `--metrics` nothing is installed and
//! every hook is a test of one `OnceLock`.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: typed metric families,
//! no global recorder behind macros, and a dependency tree of three small crates. The listener is
//! a plain `std::net::TcpListener` (a scrape is one GET; hyper would add a dozen crates for it).
//!
//! # The API
//!
//! ```ignore
//! // Once, in main, before streaming: binds ADDR (an error is exit 2) and starts serving the
//! // figures of that command (src/metrics/register.rs).
//! let metrics = audit_tail::metrics::install("127.0.0.1:9187".parse()?, Role::Stream)?;
//! // Anywhere after: `get()` is None when --metrics was not given.
//! if let Some(m) = audit_tail::metrics::get() { m.reconnected(); }
//! // A command's own figure, registered with one call (the archive's pending messages):
//! // (registered already when the command's set has it: the same gauge is returned)
//! let pending = m.gauge("archive_pending_messages", "messages delivered and not yet acknowledged");
//! pending.set(42);
//! ```
//!
//! A sink reports its rows as they are accepted and counts them once durable: `row` per row,
//! `commit` at the end of each transaction, `durable` when everything committed is durable,
//! `rewound` when what was not durable is forgotten (it comes again). Bytes: `bytes_written`
//! (a sink that knows them), or `files_opened`/`files_made_durable` (the file sink, from the
//! checkpoint's file lengths). The stream's progress reports each sink's durable position
//! (`sink_position`) whenever it asks the sinks for it. A sink that becomes durable later than it
//! accepts (JetStream) reports each row with its bytes (`row_bytes`) and each transaction with
//! its end position (`commit_at`), and its rows count once its durable position passes them.
//!
//! Each command registers only the figures it has (`Role`, src/metrics/register.rs): an archive
//! shows no slot or replication gauge a stream's alert rule could fire on. Every name starts
//! with `audit_tail_`; units are in the names; docs/operations.md ("Metrics and alerts") lists
//! them with alert rules, one rule group per command.

pub mod backlog;
mod figures;
mod register;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::capture::Table;
use crate::checkpoint::Checkpoint;
use crate::error::Kind;
use crate::lsn::{Lsn, PgTimestamp};

use figures::Figures;

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// `--metrics ADDR` could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "could not listen on {addr} for --metrics: {source} (is another process using it? give \
         another address)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the metrics thread: {0}")]
    Thread(std::io::Error),
    #[error("metrics are already being served")]
    Twice,
}

/// The command whose figures are served: each registers only what it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `stream`: the slot, the server's WAL, the sinks.
    Stream,
    /// `archive`: its files, JetStream's pending messages, NATS reconnects.
    Archive,
}

/// Binds `addr`, serves `/metrics` there from a thread of its own, and installs `role`'s metrics
/// for `get()`. Call once, before streaming starts.
pub fn install(addr: SocketAddr, role: Role) -> Result<&'static Metrics, MetricsError> {
    if GLOBAL.get().is_some() {
        return Err(MetricsError::Twice);
    }
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    // With port 0 the system picks one: say which.
    let bound = listener.local_addr().unwrap_or(addr);
    let metrics = GLOBAL.get_or_init(|| Metrics::for_role(role));
    server::spawn(listener, metrics).map_err(MetricsError::Thread)?;
    tracing::info!(url = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
    Ok(metrics)
}

/// The installed metrics; None without `--metrics`.
pub fn get() -> Option<&'static Metrics> {
    GLOBAL.get()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkTable {
    sink: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Every figure, and the registry that names them; see the module documentation.
pub struct Metrics {
    registry: Mutex<Registry>,
    rows: Family<SinkTable, Counter>,
    bytes: Family<SinkTable, Counter>,
    transactions: Counter,
    latency: Histogram,
    confirmed: Gauge,
    server: Gauge,
    lag: Gauge,
    last_commit: Gauge<f64, AtomicU64>,
    since_commit: Gauge<f64, AtomicU64>,
    reconnects: Counter,
    errors: Family<KindLabel, Counter>,
    streaming: Gauge,
    sink_durable: Family<SinkLabel, Gauge>,
    sink_behind: Family<SinkLabel, Gauge>,
    pending: Gauge,
    since_write: Gauge<f64, AtomicU64>,
    /// Gauges registered by name (`gauge`), so asking twice returns the same one.
    named: Mutex<BTreeMap<String, Gauge>>,
    /// When no commit was seen yet, silence counts from here.
    started: Instant,
    /// The last commit's time, µs since the Unix epoch (0: none yet).
    last_commit_us: AtomicI64,
    /// When a sink last committed a transaction, µs after `started` (0: none yet).
    last_write_us: AtomicU64,
    figures: Mutex<Figures>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The stream's figures in a registry of their own (`install` makes the process's one).
    pub fn new() -> Metrics {
        Metrics::for_role(Role::Stream)
    }

    /// `role`'s figures in a registry of their own.
    pub fn for_role(role: Role) -> Metrics {
        let mut registry = Registry::with_prefix("audit_tail");
        let m = Metrics {
            rows: Family::default(),
            bytes: Family::default(),
            transactions: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            confirmed: Gauge::default(),
            server: Gauge::default(),
            lag: Gauge::default(),
            last_commit: Gauge::default(),
            since_commit: Gauge::default(),
            reconnects: Counter::default(),
            errors: Family::default(),
            streaming: Gauge::default(),
            sink_durable: Family::default(),
            sink_behind: Family::default(),
            pending: Gauge::default(),
            since_write: Gauge::default(),
            named: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            last_commit_us: AtomicI64::new(0),
            last_write_us: AtomicU64::new(0),
            figures: Mutex::new(Figures::default()),
            registry: Mutex::new(Registry::default()),
        };
        register::register(&m, &mut registry, role);
        if role == Role::Archive {
            m.names()
                .insert(register::PENDING.into(), m.pending.clone());
        }
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    /// Registers a gauge of a command's own under `audit_tail_<name>` and returns it: set it
    /// whenever the figure changes. A name registered already (by the command's set, or an
    /// earlier call) gives the same gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let mut names = self.names();
        if let Some(gauge) = names.get(name) {
            return gauge.clone();
        }
        let gauge = Gauge::default();
        self.registry().register(name, help, gauge.clone());
        names.insert(name.to_string(), gauge.clone());
        gauge
    }

    fn names(&self) -> MutexGuard<'_, BTreeMap<String, Gauge>> {
        self.named.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a counter of a command's own, shown as `audit_tail_<name>_total`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.registry().register(name, help, counter.clone());
        counter
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn figures(&self) -> MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exposition in the OpenMetrics text format, as of now.
    pub fn render(&self) -> String {
        let since = match self.last_commit_us.load(Ordering::Relaxed) {
            0 => self.started.elapsed().as_secs_f64(),
            us => (chrono::Utc::now().timestamp_micros() - us).max(0) as f64 / 1e6,
        };
        self.since_commit.set(since);
        let elapsed = self.started.elapsed().as_micros() as u64;
        let last_write = self.last_write_us.load(Ordering::Relaxed);
        self.since_write
            .set(elapsed.saturating_sub(last_write) as f64 / 1e6);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry());
        text
    }

    /// A row of `table` was accepted by `sink`; counted once durable.
    pub fn row(&self, sink: &'static str, table: &Arc<Table>) {
        self.figures().row(sink, table);
    }

    /// The rows `sink` accepted since its last commit form a complete transaction.
    pub fn commit(&self, sink: &'static str) {
        self.figures().commit(sink);
        self.wrote();
    }

    /// A row of `table` of `bytes` was accepted by `sink`, a sink that becomes durable later
    /// (`commit_at`, `sink_position`).
    pub fn row_bytes(&self, sink: &'static str, table: &Arc<Table>, bytes: u64) {
        self.figures().row_bytes(sink, table, bytes);
    }

    /// The rows `sink` accepted since its last commit form a transaction that ends at `end`:
    /// they count once `sink_position` says `sink` is durable up to there.
    pub fn commit_at(&self, sink: &'static str, end: Lsn) {
        self.figures().commit_at(sink, end);
    }

    /// A new connection gives `sink` everything from `resume` on: what it holds below is
    /// counted, what it was given past it is forgotten (it comes again).
    pub fn resumed(&self, sink: &'static str, resume: Lsn) {
        let counted = self.figures().resumed(sink, resume);
        self.count(sink, counted);
    }

    fn count(&self, sink: &str, tables: Vec<(String, u64, u64)>) {
        for (table, rows, bytes) in tables {
            self.rows_written(sink, &table, rows);
            self.bytes_written(sink, &table, bytes);
        }
    }

    /// A transaction was written (the archive's silence counts from the last).
    fn wrote(&self) {
        let us = (self.started.elapsed().as_micros() as u64).max(1);
        self.last_write_us.store(us, Ordering::Relaxed);
    }

    /// Everything `sink` committed is durable: its rows are counted.
    pub fn durable(&self, sink: &'static str) {
        for (table, rows) in self.figures().durable(sink) {
            self.rows_written(sink, &table, rows);
        }
    }

    /// `sink` forgot what was not durable (it is sent again).
    pub fn rewound(&self, sink: &'static str) {
        self.figures().rewound(sink);
    }

    /// Adds `rows` durable rows of `table` (`schema.table`) to `sink`'s count.
    pub fn rows_written(&self, sink: &str, table: &str, rows: u64) {
        self.rows.get_or_create(&label(sink, table)).inc_by(rows);
    }

    /// Adds `bytes` durable bytes of `table` (`schema.table`) to `sink`'s count.
    pub fn bytes_written(&self, sink: &str, table: &str, bytes: u64) {
        self.bytes.get_or_create(&label(sink, table)).inc_by(bytes);
    }

    /// The file sink's durable checkpoint when it opened: the lengths bytes are counted from.
    pub fn files_opened(&self, checkpoint: &Checkpoint) {
        self.figures().files_opened(checkpoint);
    }

    /// The file sink made everything committed durable with `checkpoint`: its rows are counted,
    /// and the growth of each file as bytes.
    pub fn files_made_durable(&self, checkpoint: &Checkpoint) {
        self.durable("files");
        for (table, bytes) in self.figures().files_durable(checkpoint) {
            self.bytes_written("files", &table, bytes);
        }
    }

    /// A transaction committed on the server at `commit_time` was received.
    pub fn transaction(&self, commit_time: PgTimestamp) {
        self.transactions.inc();
        // The protocol's clock counts from 2000-01-01, 946,684,800 s after the Unix epoch.
        let us = commit_time.0.saturating_add(946_684_800_000_000);
        self.last_commit_us.store(us, Ordering::Relaxed);
        self.last_commit.set(us as f64 / 1e6);
    }

    /// Transactions committed at these times (with their rows) became durable at `now`.
    pub fn made_durable(&self, commits: &[(PgTimestamp, u64)], now: PgTimestamp) {
        for (commit_time, _) in commits {
            let us = now.0.saturating_sub(commit_time.0).max(0);
            self.latency.observe(us as f64 / 1e6);
        }
    }

    /// `flushed` was sent to the server as durable: the slot's confirmed position.
    pub fn confirmed(&self, flushed: Lsn) {
        self.confirmed.set(flushed.0 as i64);
        self.server.set(self.server.get().max(flushed.0 as i64));
        self.update_lag();
    }

    /// The server's WAL was at `lsn` (a sample). Never below the confirmed position: the slot
    /// cannot be confirmed past the server's WAL, so an older sample is known to be behind.
    pub fn server_position(&self, lsn: Lsn) {
        self.server.set(
            (lsn.0 as i64)
                .max(self.confirmed.get())
                .max(self.server.get()),
        );
        self.update_lag();
    }

    fn update_lag(&self) {
        self.lag
            .set((self.server.get() - self.confirmed.get()).max(0));
    }

    /// `sink` holds everything up to `durable`, and the stream gave every sink everything up to
    /// `given`: the sink is `given - durable` bytes behind (none when it is ahead, as the files
    /// are of a JetStream resuming from further back).
    pub fn sink_position(&self, sink: &'static str, durable: Lsn, given: Lsn) {
        let label = SinkLabel { sink };
        self.sink_durable
            .get_or_create(&label)
            .set(durable.0 as i64);
        self.sink_behind
            .get_or_create(&label)
            .set(given.0.saturating_sub(durable.0) as i64);
        let counted = self.figures().durable_at(sink, durable);
        self.count(sink, counted);
    }

    /// The connection was lost and is being made again.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// An error of `kind` ended a connection or the program.
    pub fn error(&self, kind: Kind) {
        let kind = match kind {
            Kind::Transient => register::KINDS[0],
            Kind::Refused => register::KINDS[1],
            Kind::Setup => register::KINDS[2],
            Kind::Data => register::KINDS[3],
            Kind::Io => register::KINDS[4],
            Kind::Usage => register::KINDS[5],
            Kind::Internal => register::KINDS[6],
        };
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Whether a replication connection streams now.
    pub fn streaming(&self, on: bool) {
        self.streaming.set(i64::from(on));
    }
}

/// A connection of the stream ended with `error` (None: the stream is done): it is counted by
/// kind, and as a reconnect when the stream goes on.
pub fn record_end(error: Option<&crate::stream::StreamError>) {
    let Some(m) = get() else { return };
    m.streaming(false);
    if let Some(e) = error {
        let kind = crate::error::kind(e);
        m.error(kind);
        if kind.is_retried() {
            m.reconnected();
        }
    }
}

fn label(sink: &str, table: &str) -> SinkTable {
    SinkTable {
        sink: sink.to_string(),
        table: table.to_string(),
    }
}

#[cfg(test)]
mod tests;
