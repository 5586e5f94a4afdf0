//! The command handlers, one file per group: `sync`, `status` and `trace`, `dead-letters`,
//! `replay`/`send-test`/`forget`, `check`; `run` is the daemon (`daemon.rs`). [`Command`] is
//! the one command enum: `main.rs` derives the command line from it.
//!
//! This is the edge where errors become messages and exit codes:
//! 0 ok · 78 configuration error (EX_CONFIG) · 1 runtime failure · 2 a delivery ended dead
//! in `sync --once` · 75 deliveries still pending after `sync --once` (EX_TEMPFAIL).

mod check;
mod dead_letters;
mod operator;
mod status;
mod sync;

use clap::Subcommand;
use std::path::Path;
use std::time::Duration;

use crate::config::Settings;
use crate::telemetry;
use crate::wiring::{self, WiringError};

pub const EXIT_OK: u8 = 0;
/// The command line was wrong (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_DEAD: u8 = 2;
pub const EXIT_TEMPFAIL: u8 = 75;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: pull sources and push targets on their schedules.
    Run,
    /// Validate the configuration (and with --connect, each target's credentials).
    Check {
        #[arg(long)]
        connect: bool,
    },
    /// One full cycle: pull every source, push every target until done, then exit.
    Sync {
        /// Run once and exit (what `sync` always does; the daemon is `run`). Accepted for
        /// scripts that spell it out.
        #[arg(long)]
        once: bool,
        /// How long to wait for retries that come due (e.g. `30s`, `0s`).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
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
    DeadLetters(DeadLetterCommand),
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
        wait: Duration,
    },
    /// Erase a person's data from the ledger (the CRMs keep their own copies).
    Forget {
        #[arg(long)]
        email: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `leadsync man | man -l -`.
    Man,
    /// Print the name this process would lease work under (`host:pid:nonce`); for tests and
    /// diagnosis. Needs no configuration.
    #[command(hide = true)]
    InstanceId,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
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

/// Run one command; returns the process exit code.
pub fn main(config_path: &Path, log_level: Option<&str>, command: Command) -> u8 {
    // Logging needs the config's telemetry section, but a config error must still be
    // reported: fall back to defaults when it cannot be read.
    let loaded = wiring::load_settings(config_path);
    let (format, level) = match &loaded {
        Ok(s) => (
            s.telemetry.log_format,
            log_level.unwrap_or(&s.telemetry.log_level).to_string(),
        ),
        Err(_) => (
            telemetry::LogFormat::Auto,
            log_level.unwrap_or("info").to_string(),
        ),
    };
    telemetry::init(format, &level);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return report(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report(WiringError::Runtime(e.into())),
    };
    match runtime.block_on(dispatch(loaded, command)) {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: WiringError) -> u8 {
    match e {
        WiringError::Config(msg) => {
            eprintln!("configuration error:\n{msg}");
            EXIT_CONFIG
        }
        WiringError::Runtime(err) => {
            tracing::error!(error = %format!("{err:#}"), "failed");
            eprintln!("error: {err:#}");
            EXIT_RUNTIME
        }
    }
}

/// Run `command`. Only the commands that talk to a CRM or a source build them (and resolve
/// their secrets); the others need the ledger alone.
async fn dispatch(settings: Settings, command: Command) -> Result<u8, WiringError> {
    let s = &settings;
    match command {
        Command::Run => crate::daemon::run(wiring::build(settings)?)
            .await
            .map(|()| EXIT_OK)
            .map_err(WiringError::Runtime),
        Command::Sync { once: _, wait } => sync::sync_once(&wiring::build(settings)?, wait).await,
        Command::SendTest { target, wait } => {
            operator::send_test(&wiring::build(settings)?, &target, wait).await
        }
        Command::Check { connect } => check::check(s, connect).await,
        Command::Status { json } => status::status(s, json).await,
        Command::Trace { lead, json } => status::trace(s, &lead, json).await,
        Command::DeadLetters(DeadLetterCommand::List { target, json }) => {
            dead_letters::list(s, target.as_deref(), json).await
        }
        Command::DeadLetters(DeadLetterCommand::Retry { target, lead }) => {
            dead_letters::retry(s, target, lead).await
        }
        Command::Replay { target, since } => operator::replay(s, &target, &since).await,
        Command::Forget { email } => operator::forget(s, &email).await,
        // Answered by `main.rs` before any configuration is read.
        Command::Completions { .. } | Command::Man | Command::InstanceId => Ok(EXIT_OK),
    }
}
