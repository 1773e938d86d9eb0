//! Command-line arguments (clap). Clap's types end here: commands get plain values.

use clap::{Parser, Subcommand};

/// A PostgreSQL audit trail with a live second copy.
#[derive(Debug, Parser)]
#[command(name = "audit-tail", version, about, long_about = None)]
pub struct Cli {
    /// More log detail on stderr (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reference scenario on a throwaway local PostgreSQL: prints the audit rows and the
    /// nightly export's CSV, then removes the cluster. Needs only an installed PostgreSQL server.
    Demo,
}
