//! What `mailhaul submit`, `mailhaul status` and `mailhaul report` do against a deployed stack.

use std::path::{Path, PathBuf};

use mailhaul_common::ports::{MailboxRecord, StoreError};
use mailhaul_common::report::{build_report, BatchReport};

use crate::adapters::S3Objects;
use crate::config::s3_client;
use crate::dynamo::{BatchState, Schedule, Table};
use crate::messages::batch_id;
use crate::ports::{ObjectStore, PortError};

/// A CLI action against AWS failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a .csv file: give the batch CSV")]
    NotCsv(PathBuf),
    #[error("no batch {0} in the table: check the batch id printed by `mailhaul submit` and the --stack/--table")]
    NoBatch(String),
    #[error("no report for batch {0} yet: it is still running (see `mailhaul status`), or the id is wrong")]
    NoReport(String),
    #[error("batch {0} has no delta passes scheduled (or they ended, and its passwords with them): upload its CSV again to run a delta pass, with [schedule] delta_every and until in its settings to repeat it until the cut-over")]
    NoSchedule(String),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Uploads `csv` (and `settings`, as its sidecar, first) to `s3://bucket/incoming/` and returns
/// the batch id the upload function will give it.
pub async fn submit(
    sdk: &aws_config::SdkConfig,
    bucket: &str,
    csv: &Path,
    settings: Option<&Path>,
) -> Result<String, CliError> {
    let name = csv
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.to_ascii_lowercase().ends_with(".csv"))
        .ok_or_else(|| CliError::NotCsv(csv.into()))?;
    let bytes = std::fs::read(csv).map_err(|source| CliError::Read { path: csv.into(), source })?;
    let key = format!("incoming/{name}");
    let objects = S3Objects { client: s3_client(sdk) };
    if let Some(path) = settings {
        let text = std::fs::read(path).map_err(|source| CliError::Read { path: path.into(), source })?;
        let sidecar = format!("{}.toml", key.strip_suffix(".csv").or_else(|| key.strip_suffix(".CSV")).unwrap_or(&key));
        objects.put(bucket, &sidecar, text, "application/toml").await?;
    }
    let id = batch_id(&key, &bytes);
    objects.put(bucket, &key, bytes, "text/csv").await?;
    Ok(id)
}

/// A batch's progress as the table holds it.
#[derive(Clone, Debug)]
pub struct BatchStatus {
    pub state: BatchState,
    /// Ordered by CSV row.
    pub mailboxes: Vec<MailboxRecord>,
    /// The parts of mailboxes split across copy functions, after their mailbox's row.
    pub parts: Vec<MailboxRecord>,
}

/// Reads a batch's progress from the table.
pub async fn status(sdk: &aws_config::SdkConfig, table: &str, batch: &str) -> Result<BatchStatus, CliError> {
    let t = Table::new(aws_sdk_dynamodb::Client::new(sdk), table);
    let state = t.batch_state(batch).await?.ok_or_else(|| CliError::NoBatch(batch.into()))?;
    let (parts, mailboxes): (Vec<_>, Vec<_>) = t.units(batch).await?.into_iter().partition(|m| m.part_of.is_some());
    Ok(BatchStatus {
        state,
        mailboxes: mailboxes.into_iter().map(|m| m.record).collect(),
        parts: parts.into_iter().map(|m| m.record).collect(),
    })
}

/// What `mailhaul submit --delta` / `--stop` asks of a batch's delta schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleRequest {
    /// The next delta pass is due now (the sweeper starts it within 5 minutes).
    DeltaNow,
    /// No more delta passes; the sweeper deletes the passwords.
    Stop,
}

/// Applies `request` to the batch's delta schedule; returns the schedule as it now stands.
pub async fn schedule(
    sdk: &aws_config::SdkConfig,
    table: &str,
    batch: &str,
    request: ScheduleRequest,
) -> Result<Schedule, CliError> {
    let t = Table::new(aws_sdk_dynamodb::Client::new(sdk), table);
    t.batch_state(batch).await?.ok_or_else(|| CliError::NoBatch(batch.into()))?;
    let live = |s: &Schedule| s.state == "on" && chrono::Utc::now().timestamp() < s.until;
    match t.schedule(batch).await? {
        Some(s) if live(&s) => {}
        _ => return Err(CliError::NoSchedule(batch.into())),
    }
    match request {
        ScheduleRequest::DeltaNow => t.delta_now(batch).await?,
        ScheduleRequest::Stop => t.stop_schedule(batch).await?,
    };
    t.schedule(batch).await?.ok_or_else(|| CliError::NoSchedule(batch.into()))
}

/// The batch's report built live from the table (also while it runs), as a local run shows it.
pub async fn live_report(sdk: &aws_config::SdkConfig, table: &str, batch: &str) -> Result<BatchReport, CliError> {
    let t = Table::new(aws_sdk_dynamodb::Client::new(sdk), table);
    Ok(build_report(&t.batch_store(batch), &t.checkpoints(batch).await?).await?)
}

/// Downloads `reports/<batch>/` (report.html, report.csv, report.json, failed.csv, or the validation
/// report of a rejected file) into `dir`; returns the files written.
pub async fn download_report(
    sdk: &aws_config::SdkConfig,
    bucket: &str,
    batch: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, CliError> {
    let client = s3_client(sdk);
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write { path: dir.into(), source })?;
    let mut written = Vec::new();
    for name in ["report.html", "report.csv", "report.json", "failed.csv", "validation.json", "validation.txt"] {
        let path = dir.join(name);
        if download(&client, bucket, &format!("reports/{batch}/{name}"), &path).await? {
            written.push(path);
        }
    }
    if written.is_empty() {
        return Err(CliError::NoReport(batch.into()));
    }
    Ok(written)
}

/// `s3://bucket/key` written to `path` as it arrives (report.json of 50,000 mailboxes is
/// ~660 MB), through `<path>.part` renamed at the end so a cut-off download leaves no
/// half file under the real name. `Ok(false)`: no such object.
async fn download(client: &aws_sdk_s3::Client, bucket: &str, key: &str, path: &Path) -> Result<bool, CliError> {
    use tokio::io::AsyncWriteExt as _;
    let what = format!("s3://{bucket}/{key}");
    let s3_error = |detail: String| PortError::new("s3", "GetObject", format!("{what}: {detail}"));
    let mut body = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out.body,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(false),
        Err(e) => return Err(s3_error(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()).into()),
    };
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let write_error = |source| CliError::Write { path: part.clone(), source };
    let copied = async {
        let mut file = tokio::fs::File::create(&part).await.map_err(write_error)?;
        while let Some(chunk) = body.try_next().await.map_err(|e| s3_error(e.to_string()))? {
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)
    };
    if let Err(e) = copied.await {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, path).await.map_err(|source| CliError::Write { path: path.into(), source })?;
    Ok(true)
}
