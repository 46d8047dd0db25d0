//! `mailhaul`: validate a batch CSV, run it locally on embedded state, and read its state;
//! or submit it to a deployed AWS stack and follow it there.

#[cfg(feature = "aws")]
mod aws;
#[cfg(not(feature = "aws"))]
#[path = "aws_off.rs"]
mod aws;
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
    /// Upload a batch CSV to a deployed stack (s3://BUCKET/incoming/) and print its batch id;
    /// or, for a batch with delta passes scheduled ([schedule]), start the next one now
    /// (--delta BATCH) or end them (--stop BATCH).
    Submit {
        #[arg(required_unless_present_any = ["delta", "stop"], conflicts_with_all = ["delta", "stop"])]
        csv: Option<PathBuf>,
        /// The stack's bucket (its BucketName output).
        #[arg(long, env = "MAILHAUL_BUCKET")]
        bucket: Option<String>,
        /// The deployed stack's name: its bucket and table are read from its outputs.
        #[arg(long, env = "MAILHAUL_STACK")]
        stack: Option<String>,
        /// Batch settings (TOML, as for `run`), uploaded first as the CSV's sidecar.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start the next scheduled delta pass of BATCH now (within 5 minutes).
        #[arg(long, value_name = "BATCH", conflicts_with = "stop")]
        delta: Option<String>,
        /// End BATCH's scheduled delta passes; its passwords are deleted.
        #[arg(long, value_name = "BATCH")]
        stop: Option<String>,
        /// The stack's DynamoDB table (its TableName output), for --delta/--stop.
        #[arg(long, env = "MAILHAUL_TABLE")]
        table: Option<String>,
    },
    /// Show the progress of a batch: a local one from its state file (--state), or one
    /// running on AWS from the stack's table (BATCH --table).
    Status {
        /// Batch id printed by `mailhaul submit` (with --table).
        batch: Option<String>,
        /// State file of a local run (`<name>.mailhaul.sqlite` next to the CSV).
        #[arg(long, conflicts_with = "batch")]
        state: Option<PathBuf>,
        /// The stack's DynamoDB table (its TableName output).
        #[arg(long, env = "MAILHAUL_TABLE")]
        table: Option<String>,
        /// The deployed stack's name, instead of --table.
        #[arg(long, env = "MAILHAUL_STACK")]
        stack: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write report.html, report.csv, report.json and failed.csv: from a local state file (--state), or
    /// download them from the stack's bucket (BATCH --bucket).
    Report {
        /// Batch id printed by `mailhaul submit` (with --bucket).
        batch: Option<String>,
        #[arg(long, conflicts_with = "batch")]
        state: Option<PathBuf>,
        /// The stack's bucket (its BucketName output).
        #[arg(long, env = "MAILHAUL_BUCKET")]
        bucket: Option<String>,
        /// The deployed stack's name, instead of --bucket.
        #[arg(long, env = "MAILHAUL_STACK")]
        stack: Option<String>,
        #[arg(long, default_value = "mailhaul-report")]
        report_dir: PathBuf,
    },
}

/// Exit codes: 0 every mailbox done, 1 some failed, 2 could not run.
pub const EXIT_DONE: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 1;
pub const EXIT_CANNOT_RUN: u8 = 2;
/// Every mailbox done, but the report lists messages that could not be copied (refused by
/// the destination, unreadable on the source, over the size limit).
pub const EXIT_DONE_MESSAGES_LEFT: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // set_global_default, not init(): init() would also route the `log` crate into our output,
    // and async-imap logs every command it sends at trace level, LOGIN and its password included.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MAILHAUL_LOG").unwrap_or_else(|_| "warn".into()))
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
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
            Command::Submit { csv: Some(csv), bucket, stack, config, .. } => {
                match aws::stack_output(bucket, stack, aws::BUCKET).await {
                    Ok(bucket) => aws::submit(&csv, &bucket, config.as_deref()).await,
                    Err(e) => Err(e),
                }
            }
            Command::Submit { delta, stop, table, stack, .. } => {
                let (batch, stopping) = match (delta, stop) {
                    (Some(batch), _) => (batch, false),
                    (None, Some(batch)) => (batch, true),
                    (None, None) => unreachable!("clap requires a CSV, --delta or --stop"),
                };
                match aws::stack_output(table, stack, aws::TABLE).await {
                    Ok(table) => aws::schedule(&batch, &table, stopping).await,
                    Err(e) => Err(e),
                }
            }
            Command::Status { state: Some(state), json, .. } => run::status(&state, json).await,
            Command::Status { batch: Some(batch), table, stack, json, .. } if table.is_some() || stack.is_some() => {
                match aws::stack_output(table, stack, aws::TABLE).await {
                    Ok(table) => aws::status(&batch, &table, json).await,
                    Err(e) => Err(e),
                }
            }
            Command::Status { .. } => Err(anyhow::anyhow!(
                "status needs --state FILE (a local run) or BATCH with --table TABLE or --stack NAME (a batch on AWS; or set MAILHAUL_TABLE / MAILHAUL_STACK)"
            )),
            Command::Report { state: Some(state), report_dir, .. } => run::report(&state, &report_dir).await,
            Command::Report { batch: Some(batch), bucket, stack, report_dir, .. } if bucket.is_some() || stack.is_some() => {
                match aws::stack_output(bucket, stack, aws::BUCKET).await {
                    Ok(bucket) => aws::report(&batch, &bucket, &report_dir).await,
                    Err(e) => Err(e),
                }
            }
            Command::Report { .. } => Err(anyhow::anyhow!(
                "report needs --state FILE (a local run) or BATCH with --bucket BUCKET or --stack NAME (a batch on AWS; or set MAILHAUL_BUCKET / MAILHAUL_STACK)"
            )),
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
