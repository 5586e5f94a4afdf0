//! The `leadsync` command line: parse arguments, then hand over to [`leadsync::app`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use leadsync::app::{self, Command, DeadLetterCommand};

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
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: pull sources and push targets on their schedules.
    Run,
    /// Validate the configuration (and with --connect, each target's credentials).
    Check {
        #[arg(long)]
        connect: bool,
    },
    /// One full cycle: pull every source, push every target until done, then exit.
    Sync {
        /// Required: run once and exit (the daemon is `run`).
        #[arg(long, required = true)]
        once: bool,
        /// How long to wait for retries that come due (e.g. `30s`, `0s`).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Per target: pending, delivered, dead, oldest pending age.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// One lead's path through every target.
    Trace {
        lead: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliveries that failed for good.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetters),
    /// Deliver again what a target already has, for leads staged since a date.
    Replay {
        #[arg(long)]
        target: String,
        /// RFC 3339 time or a date (YYYY-MM-DD, UTC midnight).
        #[arg(long)]
        since: String,
    },
    /// Send a marked test lead to one target end to end; exits non-zero unless it arrives.
    SendTest {
        #[arg(long)]
        target: String,
        /// How long to wait for it to arrive.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Erase a person's data from the ledger (the CRMs keep their own copies).
    Forget {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum DeadLetters {
    /// List dead deliveries with the CRM's reason.
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put dead deliveries back in the queue (all, or by target and/or lead).
    Retry {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        lead: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Cmd::Run => Command::Run,
        Cmd::Check { connect } => Command::Check { connect },
        Cmd::Sync { once: _, wait } => Command::SyncOnce { wait },
        Cmd::Status { json } => Command::Status { json },
        Cmd::Trace { lead, json } => Command::Trace { lead, json },
        Cmd::DeadLetters(DeadLetters::List { target, json }) => {
            Command::DeadLetters(DeadLetterCommand::List { target, json })
        }
        Cmd::DeadLetters(DeadLetters::Retry { target, lead }) => {
            Command::DeadLetters(DeadLetterCommand::Retry { target, lead })
        }
        Cmd::Replay { target, since } => Command::Replay { target, since },
        Cmd::SendTest { target, wait } => Command::SendTest { target, wait },
        Cmd::Forget { email } => Command::Forget { email },
    };
    ExitCode::from(app::main(&cli.config, cli.log_level.as_deref(), command))
}
