//! `mailhaul`: validate a batch CSV, run it locally on embedded state, and read its state.

mod progress;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Move many mailboxes from one IMAP server to another.
#[derive(Parser)]
#[command(name = "mailhaul", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Check a batch CSV (and with --check, every server in it) without copying anything.
    Validate {
        csv: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also log in to every server of every row and count its folders and messages.
        #[arg(long)]
        check: bool,
    },
    /// Migrate every valid row of a batch CSV on this machine. Run it again to resume or
    /// for a delta pass.
    Run(run::RunArgs),
    /// Show the progress of a local batch from its state file.
    Status {
        /// State file (default: next to the CSV, `<name>.mailhaul.sqlite`).
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write report.csv, report.json and failed.csv from a state file.
    Report {
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "mailhaul-report")]
        report_dir: PathBuf,
    },
}

/// Exit codes: 0 every mailbox done, 1 some failed, 2 could not run.
pub const EXIT_DONE: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 1;
pub const EXIT_CANNOT_RUN: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILHAUL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mailhaul: cannot start: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate { csv, config, json, check } => validate::validate(&csv, config.as_deref(), json, check).await,
            Command::Run(args) => run::run(args).await,
            Command::Status { state, json } => run::status(&state, json).await,
            Command::Report { state, report_dir } => run::report(&state, &report_dir).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mailhaul: {e:#}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}
