//! The `audit-tail` binary: parse arguments, set up logging on stderr, run, pick the exit code.

use std::process::ExitCode;

use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use audit_tail::cli::{Cli, Command, ReportArg};
use audit_tail::sink::copy_csv::Cells;
use audit_tail::stream::StreamConfig;
use audit_tail::verify::{Nightly, ReportFormat};
use audit_tail::wire::ConnParams;
use audit_tail::{Error, error, sql};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("audit-tail: error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit-tail: error: {}", chain(&e));
            ExitCode::from(error::kind(&e).exit_code())
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, Error> {
    let env = |name: &str| std::env::var(name).ok();
    match command {
        Command::History {
            table,
            key,
            at,
            field,
            query: query_args,
        } => {
            let query = audit_tail::history::HistoryQuery {
                table,
                key,
                at,
                field,
                common: query_args.common()?,
            };
            let source = history_source(&query_args, &env).await?;
            let found =
                audit_tail::history::history(&query, &source, std::io::stdout().lock()).await?;
            Ok(found_code(found))
        }
        Command::Log {
            table,
            actor,
            op,
            field,
            reason,
            request_id,
            stats,
            by,
            min,
            query,
        } => {
            let filters = audit_tail::history::LogQuery {
                table,
                actor,
                op: op.map(|op| op.as_op().to_string()),
                field,
                reason,
                request_id,
                stats: stats.then(|| by.into_iter().map(Into::into).collect()),
                min,
            };
            let source = history_source(&query, &env).await?;
            let found = audit_tail::history::log(
                &filters,
                &query.common()?,
                &source,
                std::io::stdout().lock(),
            )
            .await?;
            Ok(found_code(found))
        }
        Command::Demo { keep } => {
            audit_tail::demo::run(keep).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            dsn,
            slot,
            out_dir,
            format,
        } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            let status = audit_tail::status::status(&params, &slot, &out_dir).await?;
            let text = match format {
                ReportArg::Text => audit_tail::status::render_text(&status),
                ReportArg::Json => format!("{status}\n"),
            };
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DropSlot { dsn, slot, force } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            audit_tail::status::drop_slot(&params, &slot, force).await?;
            println!("dropped replication slot \"{slot}\"");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let id = audit_tail::integrity::keygen(&out)?;
            println!(
                "wrote {} (secret, mode 0600) and {} (public); key id {id}",
                out.display(),
                audit_tail::integrity::keys::public_path(&out).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            integrity: true,
            public_key,
            since,
            until,
            out_dir,
            nats,
            ..
        } => {
            let keys = public_key
                .iter()
                .map(|p| audit_tail::integrity::load_public_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let scope = audit_tail::integrity::Scope { since, until };
            let mut report = audit_tail::integrity::walk(&out_dir, &keys, scope)?;
            if let Some(nats) = nats.config() {
                audit_tail::integrity::nats::check(&out_dir, &nats, &mut report).await?;
            }
            use std::io::Write;
            std::io::stdout().write_all(report.render().as_bytes())?;
            Ok(if report.intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify {
            date,
            nightly,
            out_dir,
            dsn,
            format,
            nats,
            ..
        } => {
            if nats.nats.is_some() {
                return Err(audit_tail::wire::params::ParamsError::Invalid(
                    "verify --nats compares digests: give it with --integrity --public-key PUB"
                        .into(),
                )
                .into());
            }
            let Some(date) = date else {
                return Err(Error::Internal(
                    "verify without --date nor --integrity".into(),
                ));
            };
            let nightly = match nightly {
                Some(file) => Nightly::File(file),
                None => Nightly::Database(Box::new(ConnParams::resolve(dsn.dsn.as_deref(), &env)?)),
            };
            let report = audit_tail::verify::verify(date, &nightly, &out_dir).await?;
            let format = match format {
                ReportArg::Text => ReportFormat::Text,
                ReportArg::Json => ReportFormat::Json,
            };
            use std::io::Write;
            std::io::stdout().write_all(report.render(format).as_bytes())?;
            // A difference is a failure of the day's check, exit 1 like any other failure that is
            // not the input's fault (docs/operations.md, "Exit codes").
            Ok(if report.agrees() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Track {
            table,
            only,
            ignore,
            redact,
            when,
            bulk,
            dsn,
        } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            let options = audit_tail::track::Options {
                only,
                ignore,
                redact,
                when,
                bulk,
            };
            audit_tail::track::track(&params, &table, &options).await?;
            println!("{table} is tracked: its changes are written to audit.log");
            Ok(ExitCode::SUCCESS)
        }
        Command::Untrack { table, dsn } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            if audit_tail::track::untrack(&params, &table).await? {
                println!("{table} is no longer tracked (its rows in audit.log stay)");
            } else {
                // Nothing matched: exit 1, like verify's differences (docs/operations.md).
                eprintln!(
                    "audit-tail: {table} is not tracked, nothing to untrack \
                     (audit-tail tracked lists the tracked tables)"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tracked { dsn, format } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            let tables = audit_tail::track::tracked(&params).await?;
            let text = match format {
                ReportArg::Text => audit_tail::track::render_text(&tables),
                ReportArg::Json => audit_tail::track::render_json(&tables),
            };
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Archive {
            out_dir,
            nats_consumer,
            nats_filter,
            safe_csv,
            metrics,
            nats,
            public_key,
        } => {
            let public_keys = public_key
                .iter()
                .map(|p| audit_tail::integrity::load_public_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(addr) = metrics {
                audit_tail::metrics::install(addr, audit_tail::metrics::Role::Archive)?;
            }
            let Some(nats) = nats.config() else {
                return Err(audit_tail::wire::params::ParamsError::Invalid(
                    "archive needs --nats URL: the JetStream server `stream --nats` publishes to"
                        .into(),
                )
                .into());
            };
            let config = audit_tail::archive::ArchiveConfig {
                nats,
                out_dir,
                cells: if safe_csv { Cells::Safe } else { Cells::Exact },
                consumer: nats_consumer,
                filter: nats_filter,
                public_keys,
            };
            audit_tail::archive::run(config, shutdown_on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup { dsn, export_dir } => {
            let params = ConnParams::resolve(dsn.dsn.as_deref(), &env)?;
            tracing::info!(server = %params, "applying sql/install.sql and sql/audit_log.sql");
            let client = sql::connect_params(&params).await?;
            sql::install(&client, export_dir.as_deref()).await?;
            tracing::info!("installed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Stream {
            dsn,
            slot,
            publication,
            out_dir,
            no_files,
            format,
            until,
            status_interval,
            safe_csv,
            accept_gap,
            signing_key,
            digest_interval,
            metrics,
            nats,
        } => {
            if let Some(addr) = metrics {
                audit_tail::metrics::install(addr, audit_tail::metrics::Role::Stream)?;
            }
            let config = StreamConfig {
                conn: ConnParams::resolve(dsn.dsn.as_deref(), &env)?,
                slot,
                publication,
                out_dir: (!no_files).then_some(out_dir),
                format: format.into(),
                until,
                status_interval: std::time::Duration::from_secs(status_interval),
                cells: if safe_csv { Cells::Safe } else { Cells::Exact },
                accept_gap,
                signing_key,
                digest_interval: std::time::Duration::from_secs(digest_interval),
                nats: nats.config(),
            };
            let shutdown = shutdown_on_signal();
            audit_tail::stream::run(config, shutdown, std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where `history` and `log` read: the files, unless --dsn or --both.
async fn history_source(
    query: &audit_tail::cli::QueryArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<audit_tail::history::Source, Error> {
    use audit_tail::history::Source;
    if query.dsn.is_none() && !query.both {
        return Ok(Source::Files);
    }
    let params = ConnParams::resolve(query.dsn.as_deref(), env)?;
    let client = sql::connect_params(&params).await?;
    Ok(if query.both {
        Source::Both(client)
    } else {
        Source::Database(client)
    })
}

/// 0 when a question found something, 1 when nothing matched.
fn found_code(found: bool) -> ExitCode {
    if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Turns true on SIGINT or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    // Installed before returning, not in the task: a signal that comes before the task first
    // runs (while connecting) must not kill the process.
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("could not install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the current write"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the current write"),
        }
        let _ = tx.send(true);
    });
    rx
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "audit_tail=info",
        1 => "audit_tail=debug",
        _ => "audit_tail=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The error and its causes, each once: "a: b: c".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
