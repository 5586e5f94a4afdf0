//! The `leadsync` command line: parse arguments, then hand over to [`leadsync::commands`].
//! Usage errors exit 64 (EX_USAGE); 2 is taken by "a delivery ended dead".

use clap::{CommandFactory, Parser};
use std::path::PathBuf;
use std::process::ExitCode;

use leadsync::commands::{self, Command, EXIT_OK, EXIT_USAGE};

#[derive(Parser)]
#[command(
    name = "leadsync",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LEADSYNC_GIT_COMMIT"), ")"),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "leadsync",
                &mut std::io::stdout(),
            );
            ExitCode::from(EXIT_OK)
        }
        Command::Man => {
            let page = clap_mangen::Man::new(Cli::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::from(EXIT_OK),
                Err(e) => {
                    eprintln!("error: writing the manual page: {e}");
                    ExitCode::from(commands::EXIT_RUNTIME)
                }
            }
        }
        Command::InstanceId => {
            println!("{}", leadsync::identity::current().id);
            ExitCode::from(EXIT_OK)
        }
        command => ExitCode::from(commands::main(
            &cli.config,
            cli.log_level.as_deref(),
            command,
        )),
    }
}
