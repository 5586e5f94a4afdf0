//! The `leadsync` command line: parse arguments, then hand over to [`leadsync::commands`].

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use leadsync::commands::{self, Command};

#[derive(Parser)]
#[command(
    name = "leadsync",
    version,
    about = "Moves Microsoft marketplace leads into your CRMs, once each"
)]
struct Cli {
    /// The main configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "LEADSYNC_CONFIG",
        default_value = "/etc/leadsync/leadsync.toml"
    )]
    config: PathBuf,
    /// Log level for leadsync's own code (trace, debug, info, warn, error); overrides
    /// `telemetry.log_level`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(commands::main(
        &cli.config,
        cli.log_level.as_deref(),
        cli.command,
    ))
}
