//! `mailhaul run`, `status` and `report`: the local runner on embedded (SQLite) state.
//!
//! Every valid row runs on a worker pool; a second run resumes what was cut off and is a
//! delta pass for what finished. Passwords come from the CSV at run time and stay in memory.
//! One run at a time per state file: a run holds an OS lock on `<state>.lock` until it ends.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use mailhaul_common::batch::validate_batch;
use mailhaul_common::engine::{copy_mailbox, CountedProgress, TimeBox};
use mailhaul_common::lifecycle::{next_step, Limits, Next, PassEnd, Tries};
use mailhaul_common::model::{FolderStrategy, MailboxJob, MailboxStatus, Security, SplitRule};
use mailhaul_common::ports::{BatchMeta, BatchStore, MailboxRecord};
use mailhaul_common::report::build_report;
use mailhaul_common::settings::{parse_size, Settings};
use mailhaul_common::sqlite::SqliteStore;
use tokio::sync::{watch, Semaphore};

use crate::progress::Progress;
use crate::{EXIT_CANNOT_RUN, EXIT_DONE, EXIT_DONE_MESSAGES_LEFT, EXIT_SOME_FAILED};

/// Retries of a mailbox after a transient error (connection lost, throttled) in one run.
const MAX_ATTEMPTS: u32 = 6;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The batch CSV (Exchange, TrekMail or full form).
    pub csv: PathBuf,
    /// Batch settings (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State file (default: `<csv name>.mailhaul.sqlite` next to the CSV).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(long, default_value = "mailhaul-report")]
    pub report_dir: PathBuf,
    /// Mailboxes copied at once (default 4, or `workers` in the config).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long)]
    pub source_preset: Option<String>,
    #[arg(long)]
    pub source_host: Option<String>,
    #[arg(long)]
    pub source_port: Option<u16>,
    /// tls, starttls or plain.
    #[arg(long)]
    pub source_security: Option<String>,
    #[arg(long)]
    pub destination_host: Option<String>,
    #[arg(long)]
    pub destination_port: Option<u16>,
    #[arg(long)]
    pub destination_security: Option<String>,
    /// all, or standard (skips Junk and Trash).
    #[arg(long)]
    pub folders: Option<String>,
    /// Only messages since this day (YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<chrono::NaiveDate>,
    /// Larger messages are skipped and reported (e.g. 35MB).
    #[arg(long)]
    pub max_message_size: Option<String>,
    /// Copy messages even when the destination folder already holds them.
    #[arg(long)]
    pub no_skip_duplicates: bool,
    /// One APPEND round trip at a time, even where the server offers LITERAL+.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Stop cleanly after this many seconds (checkpointed; run again to resume).
    #[arg(long)]
    pub time_limit: Option<u64>,
}

/// Settings from the file (or defaults), with admin passwords from the environment.
pub fn load_settings(config: Option<&Path>) -> anyhow::Result<Settings> {
    let mut settings = match config {
        Some(path) => Settings::load(path).with_context(|| format!("settings {}", path.display()))?,
        None => Settings::default(),
    };
    settings.resolve_secrets(|name| std::env::var(name).ok())?;
    Ok(settings)
}

fn apply_flags(settings: &mut Settings, args: &RunArgs) -> anyhow::Result<()> {
    let security = |value: &Option<String>, flag: &str| -> anyhow::Result<Option<Security>> {
        value
            .as_deref()
            .map(|v| Security::parse(v).with_context(|| format!("--{flag} {v:?}: use tls, starttls or plain")))
            .transpose()
    };
    if let Some(preset) = &args.source_preset {
        settings.source.preset = Some(preset.clone());
    }
    settings.source.host = args.source_host.clone().or(settings.source.host.take());
    settings.source.port = args.source_port.or(settings.source.port);
    settings.source.security = security(&args.source_security, "source-security")?.or(settings.source.security);
    settings.destination.host = args.destination_host.clone().or(settings.destination.host.take());
    settings.destination.port = args.destination_port.or(settings.destination.port);
    settings.destination.security =
        security(&args.destination_security, "destination-security")?.or(settings.destination.security);
    if let Some(workers) = args.workers {
        settings.workers = workers.max(1);
    }
    if let Some(folders) = &args.folders {
        settings.copy.folders = match folders.as_str() {
            "all" => FolderStrategy::All,
            "standard" => FolderStrategy::Standard,
            other => anyhow::bail!("--folders {other:?}: use all or standard"),
        };
    }
    if let Some(since) = args.since {
        settings.copy.since = Some(since);
    }
    if let Some(size) = &args.max_message_size {
        settings.copy.max_message_size =
            parse_size(size).with_context(|| format!("--max-message-size {size:?}: use bytes or e.g. 35MB"))?;
    }
    if args.no_skip_duplicates {
        settings.copy.skip_duplicates = false;
    }
    if args.no_pipelining {
        settings.copy.pipelining = false;
    }
    Ok(())
}

fn default_state_path(csv: &Path) -> PathBuf {
    let stem = csv.file_stem().and_then(|s| s.to_str()).unwrap_or("batch");
    csv.with_file_name(format!("{stem}.mailhaul.sqlite"))
}

/// The lock file beside a state file: `state.sqlite` → `state.sqlite.lock`.
fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the state file for this process: an exclusive advisory lock (flock) on its sibling
/// lock file, which the OS releases when the process ends however it ends (`kill -9` too), so
/// a stale lock never blocks a later run. Two runs on one state file would copy the same
/// mailboxes twice. The lock file is left in place: deleting it would let a third run lock a
/// new file while the second still holds the old one. It holds the holder's pid, for the
/// message.
fn lock_state(state: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    let lock = lock_path(state);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .with_context(|| format!("cannot open the lock file {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock).ok().and_then(|text| text.trim().parse::<u32>().ok());
            let holder = holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
            anyhow::bail!(
                "the state file {} is in use by another mailhaul run{holder}: wait for it to finish or stop it, \
                 then run again (or give this run its own --state)",
                state.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock.display()));
        }
    }
    file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id())).ok();
    Ok(file)
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mut settings = load_settings(args.config.as_deref())?;
    if settings.schedule.is_some() {
        eprintln!("note: [schedule] repeats delta passes of batches on AWS; here, run `mailhaul run` again for each delta pass (from cron, say) until the cut-over");
    }
    apply_flags(&mut settings, &args)?;
    let bytes = std::fs::read(&args.csv).with_context(|| format!("cannot read {}", args.csv.display()))?;
    let batch = validate_batch(&bytes, &settings);
    if !batch.is_valid() {
        eprint!("{}", batch.render_table());
    }
    if batch.format.is_none() || batch.rows.is_empty() {
        eprintln!("mailhaul: nothing to run: fix the file-level problems above");
        return Ok(EXIT_CANNOT_RUN);
    }

    let state_path = args.state.clone().unwrap_or_else(|| default_state_path(&args.csv));
    // Held until this function returns: the whole run, report included.
    let _state_lock = lock_state(&state_path)?;
    let store = Arc::new(SqliteStore::open(&state_path)?);
    let batch_id = args.csv.file_stem().and_then(|s| s.to_str()).unwrap_or("batch").to_string();
    store
        .put_batch(&BatchMeta {
            id: batch_id,
            headers: batch.headers.clone(),
            total: batch.rows.len(),
            created_at: Utc::now(),
        })
        .await?;

    // Invalid rows are reported as failed and never stop the others.
    let mut keys_used = BTreeSet::new();
    let mut jobs: Vec<MailboxJob> = Vec::new();
    for row in &batch.rows {
        let key = if row.job.is_some() && keys_used.insert(row.mailbox.to_ascii_lowercase()) {
            row.mailbox.clone()
        } else if row.mailbox.is_empty() {
            // A row whose cells cannot be told apart shows none of them.
            format!("row {}", row.row)
        } else {
            format!("row {}: {}", row.row, row.mailbox)
        };
        let mut record = store
            .mailbox(&key)
            .await?
            .unwrap_or_else(|| MailboxRecord::pending(&key, row.row, &row.source_user, row.cells.clone()));
        record.cells = row.cells.clone();
        record.row = row.row;
        match &row.job {
            Some(job) => {
                let mut job = job.clone();
                job.mailbox = key;
                jobs.push(job);
                record.status = MailboxStatus::Pending;
                record.error = None;
                record.hint = None;
            }
            None => {
                let problems: Vec<String> = batch.errors_for(row.row).iter().map(|p| p.message.clone()).collect();
                record.status = MailboxStatus::Failed;
                record.error = Some(problems.join("; "));
                record.hint = Some("fix the row in failed.csv and run it again".into());
            }
        }
        store.put_mailbox(&record).await?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nmailhaul: stopping after the current batch (Ctrl-C again to kill)...");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let deadline = args.time_limit.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let timebox = TimeBox { deadline, stop: stop_rx };

    let progress = Arc::new(Progress::new());
    let workers = Arc::new(Semaphore::new(settings.workers.max(1)));
    let mut per_host: HashMap<String, Arc<Semaphore>> = HashMap::new();
    // Each mailbox holds one slot of its source host per pair of connections it opens.
    let host_cap = settings.max_connections_per_source_host.max(1);
    settings.copy.connections_per_mailbox = settings.copy.connections_per_mailbox.clamp(1, host_cap);
    let pairs = settings.copy.connections_per_mailbox as u32;
    let settings = Arc::new(settings);
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let host_slots = per_host
            .entry(job.source.server.host.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(host_cap)))
            .clone();
        let (workers, store, progress, settings, timebox) =
            (workers.clone(), store.clone(), progress.clone(), settings.clone(), timebox.clone());
        tasks.spawn(async move {
            let Ok(_worker) = workers.acquire_owned().await else { return Ok(()) };
            let Ok(_slots) = host_slots.acquire_many_owned(pairs).await else { return Ok(()) };
            run_mailbox(&job, &settings, &store, &progress, &timebox).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a worker crashed")??;
    }
    progress.finish();

    let report = build_report(store.as_ref(), store.as_ref()).await?;
    let written =
        report.write_dir(&args.report_dir).with_context(|| format!("cannot write {}", args.report_dir.display()))?;
    eprint!("{}", report.summary_table());
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    eprintln!("state: {}", state_path.display());
    let t = &report.totals;
    Ok(if report.mailboxes.iter().any(|m| m.status != MailboxStatus::Done) {
        EXIT_SOME_FAILED
    } else if t.refused + t.unreadable + t.skipped_too_big > 0 {
        EXIT_DONE_MESSAGES_LEFT
    } else {
        EXIT_DONE
    })
}

/// One mailbox to the end: retries transient errors with backoff, never a failed login.
async fn run_mailbox(
    job: &MailboxJob,
    settings: &Settings,
    store: &SqliteStore,
    progress: &Progress,
    timebox: &TimeBox,
) -> anyhow::Result<()> {
    let mut record = store.mailbox(&job.mailbox).await?.context("mailbox record vanished")?;
    record.status = MailboxStatus::Running;
    record.started_at.get_or_insert_with(Utc::now);
    store.put_mailbox(&record).await?;
    let started = Instant::now();
    let limits = Limits {
        max_attempts: MAX_ATTEMPTS,
        time_boxed: false,
        retry_delay: None,
        max_throttled_passes: 0,
        max_throttled: Duration::ZERO,
        throttle_delay: Duration::from_secs(60),
        // One machine: its connection pairs already share the mailbox's folders.
        split: SplitRule { above_bytes: 0, max_parts: 1 },
    };
    let mut attempt = 0;
    let (status, error, hint) = loop {
        attempt += 1;
        let counted = CountedProgress::new(progress);
        let result = copy_mailbox(job, &settings.copy, store, &counted, timebox).await;
        let end = match &result {
            Ok(outcome) => PassEnd::Copied(outcome),
            Err(e) => PassEnd::Error(e),
        };
        let (stopping, progressed) = (*timebox.stop.borrow(), counted.copied() > 0);
        let tries = Tries { attempt, stopping, progressed, ..Tries::default() };
        match next_step(end, tries, &limits) {
            // A local pass has no deadline; should one ever end early, it is not done.
            Next::Continue | Next::Split(_) => {
                progress.mailbox_finished(&job.mailbox, "stopped, checkpoint saved: run again to resume");
                break (MailboxStatus::Partial, None, None);
            }
            Next::Done => {
                let copied = result.as_ref().map_or(0, |o| o.this_pass.copied);
                for (source, destination, why) in result.iter().flat_map(|o| &o.renamed) {
                    progress.line(&format!("{}: folder {source:?} copied as {destination:?}: {why}", job.mailbox));
                }
                progress.mailbox_finished(&job.mailbox, &format!("done, {copied} copied this pass, verified"));
                break (MailboxStatus::Done, None, None);
            }
            Next::Stopped { error, hint } => {
                progress.mailbox_finished(&job.mailbox, "stopped, checkpoint saved: run again to resume");
                break (MailboxStatus::Partial, Some(error), Some(hint));
            }
            Next::RetryAfter(wait) | Next::Throttled(wait) | Next::Resume(wait) => {
                let e = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
                let tries = if progressed {
                    // Copied something before the error: the tries start over.
                    attempt = 0;
                    format!("{} copied since the last try", counted.copied())
                } else {
                    format!("attempt {attempt}/{MAX_ATTEMPTS}")
                };
                progress.line(&format!("{}: {e}; retrying in {}s ({tries})", job.mailbox, wait.as_secs()));
                let mut stop = timebox.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            Next::Failed { reason, hint, .. } => {
                // A copy that does not verify is not done either (exit 1, in failed.csv).
                progress.mailbox_finished(&job.mailbox, &format!("FAILED: {reason}"));
                break (MailboxStatus::Failed, Some(reason), Some(hint));
            }
        }
    };
    record.status = status;
    record.error = error;
    record.hint = hint;
    record.seconds += started.elapsed().as_secs_f64();
    record.passes += 1;
    record.finished_at = Some(Utc::now());
    store.put_mailbox(&record).await?;
    Ok(())
}

/// Open an existing state file; never create one for `status` or `report`.
fn open_existing(state: &Path) -> anyhow::Result<SqliteStore> {
    anyhow::ensure!(
        state.is_file(),
        "no state file at {}: give the --state of a `mailhaul run` (default: <csv name>.mailhaul.sqlite next to the CSV)",
        state.display()
    );
    Ok(SqliteStore::open(state)?)
}

pub async fn status(state: &Path, json: bool) -> anyhow::Result<u8> {
    let store = open_existing(state)?;
    let report = build_report(&store, &store).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&report.to_json()));
    } else {
        eprint!("{}", report.summary_table());
    }
    Ok(EXIT_DONE)
}

pub async fn report(state: &Path, dir: &Path) -> anyhow::Result<u8> {
    let store = open_existing(state)?;
    let report = build_report(&store, &store).await?;
    for path in report.write_dir(dir)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(EXIT_DONE)
}
