//! The copy function: one SQS job → lease the mailbox → take a source-host connection slot →
//! a time-boxed engine pass → checkpoint → continue, back off, or finish the mailbox.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use mailhaul_common::engine::{copy_mailbox, survey_mailbox, CountedProgress, ProgressSink, TimeBox};
use mailhaul_common::error::CopyError;
use mailhaul_common::lifecycle::{next_step, Limits, Next, PassEnd, Tries};
use mailhaul_common::model::{FolderCounts, FolderShare, MailboxStatus};
use mailhaul_common::ports::{CheckpointStore, MailboxRecord, StoreError};
use mailhaul_common::Secret;
use tracing::{error, info, info_span, warn, Instrument};

use crate::adapters::MAX_DELAY_SECONDS;
use crate::config::Services;
use crate::messages::{pair_key, FinalizeMessage, JobMessage, MailboxCompleted, Part, SecretChunk, MAILBOX_COMPLETED};
use crate::ports::{OutMessage, PortError};

/// What one delivery of a job did.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// The mailbox is copied and verified.
    Done,
    /// The mailbox failed for good (bad password, refused folder...).
    Failed { reason: String },
    /// The time box ran out: a continuation job is queued.
    Continued,
    /// The server throttled: the job is queued again after `delay_seconds`.
    Throttled { delay_seconds: u32 },
    /// Another delivery holds the mailbox, or the source host has no free connection:
    /// the job is queued again after a delay.
    Busy { what: String },
    /// An old duplicate of a pass already done, or a mailbox already final: dropped.
    Stale,
    /// The mailbox is big: it is now copied in parts, each a job of its own.
    Split { parts: usize },
}

/// A transient failure: the message goes back to the queue (a batch item failure).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("unreadable job message: {0}")]
    BadMessage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{0}")]
    Copy(String),
}

/// The Lambda handler: each record is processed on its own; transient failures are reported
/// as batch item failures so only they return to the queue.
pub async fn handle(svc: &Services, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = usable_deadline(event.context.deadline(), SystemTime::now(), svc.config.deadline_fallback);
    let mut response = SqsBatchResponse::default();
    for message in event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        let span = info_span!("job", message_id = %id);
        match process_message(svc, &message, deadline).instrument(span).await {
            Ok(outcome) => info!(message_id = %id, outcome = ?outcome, "job handled"),
            Err(e) => {
                error!(message_id = %id, error = %e, "job failed; it returns to the queue");
                response.add_failure(id);
            }
        }
    }
    Ok(response)
}

fn epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Handles one delivery of a job.
pub async fn process_message(
    svc: &Services,
    message: &SqsMessage,
    deadline: SystemTime,
) -> Result<JobOutcome, JobError> {
    let body = message.body.as_deref().ok_or_else(|| JobError::BadMessage("no body".into()))?;
    let job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
    let receive_count: u32 =
        message.attributes.get("ApproximateReceiveCount").and_then(|v| v.parse().ok()).unwrap_or(1);
    let owner = format!("{}/{}", message.message_id.as_deref().unwrap_or("-"), uuid::Uuid::new_v4());
    // Held past the deadline so a slow checkpoint write cannot be overtaken; a pass still
    // marked after that crashed (the sweeper re-drives it).
    let until = epoch(deadline) + svc.config.lease_grace.as_secs() as i64;
    // A part of a split mailbox has a lease of its own: the parts run side by side.
    let mailbox = job.unit();
    let span = info_span!("mailbox", batch = %job.batch, mailbox = %mailbox, seq = job.seq);
    async {
        if !svc.table.acquire_lease(&mailbox, &owner, until).await? {
            requeue(svc, &job, svc.config.busy_delay_seconds).await?;
            return Ok(JobOutcome::Busy { what: "another delivery is copying this mailbox".into() });
        }
        let result =
            with_lease(svc, &job, &owner, until, receive_count, message.receipt_handle.as_deref(), deadline).await;
        if let Err(e) = svc.table.release_lease(&mailbox, &owner).await {
            warn!(error = %e, "could not release the mailbox lease; it expires by itself");
        }
        result
    }
    .instrument(span)
    .await
}

fn source_host(job: &JobMessage) -> String {
    let s = &job.job.source.server;
    format!("{}:{}", s.host.to_ascii_lowercase(), s.port)
}

async fn requeue(svc: &Services, job: &JobMessage, delay_seconds: u32) -> Result<(), JobError> {
    let body = serde_json::to_string(job).map_err(|e| JobError::BadMessage(e.to_string()))?;
    svc.queue
        .send(
            &svc.config.jobs_queue_url,
            vec![OutMessage { body, delay_seconds: delay_seconds.min(MAX_DELAY_SECONDS) }],
        )
        .await?;
    Ok(())
}

/// Queues the next pass, then moves the mailbox's pass number. In that order: a crash in
/// between leaves a next-pass message that is not stale (the number did not move), and a
/// duplicate it may make is dropped as stale once either of them moves the number on.
async fn next_pass(svc: &Services, job: &JobMessage, delay_seconds: u32, throttled: bool) -> Result<(), JobError> {
    let mut next = job.clone();
    next.seq += 1;
    requeue(svc, &next, delay_seconds).await?;
    svc.table.advance_seq(&job.batch, &job.unit(), next.seq, throttled).await?;
    Ok(())
}

async fn with_lease(
    svc: &Services,
    job: &JobMessage,
    owner: &str,
    until: i64,
    receive_count: u32,
    receipt_handle: Option<&str>,
    deadline: SystemTime,
) -> Result<JobOutcome, JobError> {
    let Some(item) = svc.table.mailbox_item(&job.batch, &job.unit()).await? else {
        warn!("no such mailbox in the batch: dropped");
        return Ok(JobOutcome::Stale);
    };
    if item.record.status.is_final() {
        // Its finisher may have died before the next step (the mailbox of a part, the
        // batch's finalize): check again.
        match job.part {
            Some(_) => complete_split(svc, &job.batch, &job.job.mailbox).await?,
            None => maybe_finalize(svc, &job.batch).await?,
        }
        return Ok(JobOutcome::Stale);
    }
    if item.seq > job.seq {
        return Ok(JobOutcome::Stale);
    }
    if item.is_split() {
        // Split by a pass that died before it ended: its parts are queued (again).
        return send_parts(svc, job).await;
    }
    // A mailbox a first pass did not finish is surveyed once: big ones are split.
    let survey = job.part.is_none()
        && item.parts.is_none()
        && item.record.passes >= 1
        && job.split.above_bytes > 0
        && job.split.max_parts > 1;
    let mut record = item.record;
    let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
    let budget = remaining.saturating_sub(svc.config.safety_margin);
    if budget.is_zero() || budget < svc.config.min_pass {
        // Every pass would end before copying anything: a configuration error, said once.
        let reason = format!(
            "the copy function's time box leaves {:.1} s to copy after the {} s safety margin ({:.1} s left of the invocation): too short to copy anything",
            budget.as_secs_f64(),
            svc.config.safety_margin.as_secs(),
            remaining.as_secs_f64()
        );
        let hint = format!(
            "raise the copy function's Timeout (900 s is the most) or lower MAILHAUL_SAFETY_MARGIN_SECONDS so at least {} s remain, then upload the failed rows again",
            svc.config.min_pass.as_secs().max(1)
        );
        error!(reason = %reason, "time box too short: mailbox failed");
        finish(svc, job, &mut record, MailboxStatus::Failed, Some(reason.clone()), Some(hint)).await?;
        return Ok(JobOutcome::Failed { reason });
    }
    let host = source_host(job);
    let Some(slot) = svc.table.acquire_slot(&host, job.max_connections_per_source_host, owner, until).await? else {
        requeue(svc, job, svc.config.busy_delay_seconds).await?;
        return Ok(JobOutcome::Busy {
            what: format!("all {} connection slots of {host} are in use", job.max_connections_per_source_host),
        });
    };
    // More pairs of connections, one slot each, as far as the host has free slots now: a big
    // mailbox then goes connections_per_mailbox wide (its idle pairs help append a big folder).
    let mut slots = vec![(slot, owner.to_string())];
    for pair in 1..job.options.connections_per_mailbox {
        let holder = format!("{owner}#pair{pair}");
        match svc.table.acquire_slot(&host, job.max_connections_per_source_host, &holder, until).await? {
            Some(slot) => slots.push((slot, holder)),
            None => break,
        }
    }
    let result =
        copy_pass(svc, job, &mut record, (receive_count, receipt_handle), until, budget, (slots.len(), survey)).await;
    for (slot, holder) in &slots {
        if let Err(e) = svc.table.release_slot(&host, *slot, holder).await {
            warn!(error = %e, "could not release the connection slot; it expires by itself");
        }
    }
    result
}

/// Logs folder progress as batches are confirmed.
struct LogProgress;
impl ProgressSink for LogProgress {
    fn copied(&self, mailbox: &str, folder: &str, messages: u64, bytes: u64) {
        info!(mailbox, folder, messages, bytes, "copied");
    }
}

/// Fills the job's passwords from its secret chunk and, for a login the CSV gave no password
/// (a master user), from the side's admin secret. `Err(reason)` inside: the mailbox cannot run.
async fn fill_passwords(svc: &Services, job: &mut JobMessage) -> Result<Result<(), String>, JobError> {
    let gone = || format!("the passwords of {} are no longer in Secrets Manager ({})", job.job.mailbox, job.secret);
    let Some(secret) = svc.secrets.get(&job.secret).await? else { return Ok(Err(gone())) };
    let chunk: SecretChunk = serde_json::from_str(secret.expose())
        .map_err(|_| JobError::Copy(format!("secret {} is not readable", job.secret)))?;
    let Some(p) = chunk.get(&job.job.mailbox) else { return Ok(Err(gone())) };
    let (mut source, mut destination) = (Secret::new(p.source.clone()), Secret::new(p.destination.clone()));
    drop(chunk);
    for (side, password, admin) in [
        ("source", &mut source, &job.source_admin_secret),
        ("destination", &mut destination, &job.destination_admin_secret),
    ] {
        if let (true, Some(name)) = (password.is_empty(), admin) {
            match svc.secrets.get(name).await? {
                Some(value) if !value.is_empty() => *password = value,
                _ => {
                    return Ok(Err(format!(
                        "the {side} admin password secret {name} does not exist or is empty: create it in Secrets Manager, then upload the failed rows again"
                    )))
                }
            }
        }
    }
    job.job.source.login.password = source;
    job.job.destination.login.password = destination;
    Ok(Ok(()))
}

/// The OAuth2 credential of each side that signs in with tokens, from the Secrets Manager
/// secret its settings name (`aws_secret`), else the function's environment. `Ok(Err(reason))`
/// when it is not there: the mailbox fails, nothing is retried.
async fn fill_oauth2_credentials(svc: &Services, job: &mut JobMessage) -> Result<Result<(), String>, JobError> {
    for (side, login) in [("source", &mut job.job.source.login), ("destination", &mut job.job.destination.login)] {
        let Some(config) = login.oauth2.clone() else { continue };
        let credential = match &config.aws_secret {
            Some(name) => match svc.secrets.get(name).await? {
                Some(secret) if !secret.is_empty() => secret,
                _ => return Ok(Err(format!(
                    "the {side} OAuth2 credential is not in Secrets Manager: secret {name} (aws_secret in [{side}.oauth2]) does not exist or is empty"
                ))),
            },
            None => match config.local_credential(side, |var| std::env::var(var).ok()) {
                Ok(Some(secret)) => secret,
                Ok(None) => return Ok(Err(format!("[{side}.oauth2] names no credential"))),
                Err(reason) => return Ok(Err(reason)),
            },
        };
        login.password = credential;
    }
    Ok(Ok(()))
}

async fn copy_pass(
    svc: &Services,
    job: &JobMessage,
    record: &mut MailboxRecord,
    (receive_count, receipt_handle): (u32, Option<&str>),
    until: i64,
    budget: Duration,
    (pairs, survey): (usize, bool),
) -> Result<JobOutcome, JobError> {
    // Whatever comes before the copy (the survey) is taken from the same time box.
    let deadline = tokio::time::Instant::now() + budget;
    let mut job_with_passwords = job.clone();
    if let Err(reason) = fill_passwords(svc, &mut job_with_passwords).await? {
        finish(
            svc,
            job,
            record,
            MailboxStatus::Failed,
            Some(reason.clone()),
            Some("upload the CSV again to retry this mailbox".into()),
        )
        .await?;
        return Ok(JobOutcome::Failed { reason });
    }
    if let Err(reason) = fill_oauth2_credentials(svc, &mut job_with_passwords).await? {
        let hint = "create the secret (its name must start with the stack's OAuth2SecretPrefix) or fix aws_secret in the batch settings, then upload the CSV again".to_string();
        finish(svc, job, record, MailboxStatus::Failed, Some(reason.clone()), Some(hint)).await?;
        return Ok(JobOutcome::Failed { reason });
    }
    // Checkpoints and ledger of the mailbox pair: a later batch of the same pair is a delta.
    let checkpoints = svc.table.pair_checkpoints(&job.job.mailbox, &pair_key(&job.job));
    if record.passes == 0 && job.part.is_none() {
        // What earlier batches copied, so this batch counts only its own messages.
        let mut before = FolderCounts::default();
        for c in checkpoints.load_folders(&job.job.mailbox).await? {
            before.add(&c.counts);
        }
        svc.table.set_baseline(&job.batch, &job.job.mailbox, before.copied, before.bytes).await?;
    }
    let batch_store = svc.table.batch_store(&job.batch);
    record.status = MailboxStatus::Running;
    record.started_at.get_or_insert_with(Utc::now);
    mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
    svc.table.begin_pass(&job.batch, &job.unit(), until).await?;
    let config = &svc.config;
    let limits = Limits {
        max_attempts: config.max_receive_count,
        time_boxed: true,
        retry_delay: Some(Duration::from_secs(config.retry_delay_seconds.into())),
        max_throttled_passes: config.max_throttled_passes,
        max_throttled: config.max_throttled,
        throttle_delay: Duration::from_secs(config.throttle_delay_seconds.into()),
        split: job.split,
    };
    if survey {
        let surveyed =
            tokio::time::timeout_at(deadline, survey_mailbox(&job_with_passwords.job, &job.options, &checkpoints));
        match surveyed.await {
            Ok(Ok(survey)) => match next_step(PassEnd::Surveyed(&survey), Tries::default(), &limits) {
                Next::Split(shares) => match split(svc, job, record, shares).await? {
                    Some(split) => return Ok(split),
                    None => svc.table.keep_whole(&job.batch, &job.job.mailbox).await?,
                },
                _ => svc.table.keep_whole(&job.batch, &job.job.mailbox).await?,
            },
            // The pass meets the same trouble and deals with it; the next one asks again.
            Ok(Err(e)) => warn!(error = %e, "could not survey the mailbox for a split"),
            // A survey longer than a pass is not tried again: the mailbox stays whole.
            Err(_) => {
                warn!("the survey for a split took the whole pass: the mailbox is copied whole");
                svc.table.keep_whole(&job.batch, &job.job.mailbox).await?;
            }
        }
    }

    let mut timebox = TimeBox::unlimited();
    timebox.deadline = Some(deadline);
    let started = Instant::now();
    // One host slot is held per pair of connections.
    let options = mailhaul_common::model::CopyOptions { connections_per_mailbox: pairs, ..job.options.clone() };
    // Boxed: the engine's future is deep enough to overflow the compiler's layout recursion.
    let counted = CountedProgress::new(&LogProgress);
    let result = Box::pin(copy_mailbox(&job_with_passwords.job, &options, &checkpoints, &counted, &timebox)).await;
    drop(job_with_passwords);
    record.seconds += started.elapsed().as_secs_f64();
    record.passes += 1;

    // What comes next is the shared rule book's (the local runner uses the same).
    let mut tries = Tries { attempt: receive_count, progressed: counted.copied() > 0, ..Tries::default() };
    if let Err(CopyError::Throttled { .. }) = &result {
        let (passes, since) = svc.table.count_throttled(&job.batch, &job.unit()).await?;
        tries.throttled_passes = passes;
        tries.throttled_for = Duration::from_secs((Utc::now().timestamp() - since).max(0) as u64);
    }
    let end = match &result {
        Ok(outcome) => PassEnd::Copied(outcome),
        Err(e) => PassEnd::Error(e),
    };
    let error = result.as_ref().err();
    match next_step(end, tries, &limits) {
        Next::Done => {
            record.error = None;
            record.hint = None;
            finish(svc, job, record, MailboxStatus::Done, None, None).await?;
            Ok(JobOutcome::Done)
        }
        // Stopped does not happen to a time-boxed runner nobody stops, nor Split to a pass;
        // continue regardless.
        Next::Continue | Next::Stopped { .. } | Next::Split(_) => {
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            next_pass(svc, job, 0, false).await?;
            Ok(JobOutcome::Continued)
        }
        Next::Throttled(delay) => {
            let delay = delay.as_secs().clamp(1, MAX_DELAY_SECONDS as u64) as u32;
            warn!(error = ?error, delay, passes = tries.throttled_passes, "throttled: queued again instead of sleeping on paid time");
            record.error = error.map(|e| e.to_string());
            record.hint = error.map(|e| e.hint());
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            next_pass(svc, job, delay, true).await?;
            Ok(JobOutcome::Throttled { delay_seconds: delay })
        }
        Next::Resume(delay) => {
            // A new pass (a new message, its receive count from 1): SQS would otherwise send
            // a mailbox that keeps getting further to the dead-letter queue.
            let delay = delay.as_secs().clamp(1, MAX_DELAY_SECONDS as u64) as u32;
            warn!(error = ?error, delay, copied = counted.copied(), "connection lost after copying: a new pass resumes");
            record.error = error.map(|e| e.to_string());
            record.hint = error.map(|e| e.hint());
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            next_pass(svc, job, delay, false).await?;
            Ok(JobOutcome::Continued)
        }
        Next::RetryAfter(delay) => {
            record.error = error.map(|e| e.to_string());
            record.hint = error.map(|e| e.hint());
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            // The pass ended: SQS redelivers this message (not a crash for the sweeper).
            svc.table.end_pass(&job.batch, &job.unit()).await?;
            if let Some(handle) = receipt_handle {
                // Sooner than the queue's visibility timeout (6 × 15 min).
                let seconds = delay.as_secs().clamp(1, MAX_DELAY_SECONDS as u64) as u32;
                svc.queue.retry_after(&config.jobs_queue_url, handle, seconds).await?;
            }
            Err(JobError::Copy(error.map(|e| e.to_string()).unwrap_or_default()))
        }
        Next::Failed { reason, hint, gave_up } => {
            warn!(%reason, "mailbox failed");
            finish(svc, job, record, MailboxStatus::Failed, Some(reason.clone()), Some(hint)).await?;
            if gave_up {
                // Last delivery: the job goes to the dead-letter queue.
                return Err(JobError::Copy(reason));
            }
            Ok(JobOutcome::Failed { reason })
        }
    }
}

/// Makes the job's mailbox final (once), counts it in the batch, announces it, and when the
/// batch is complete queues its finalize message. A mailbox already final is not counted
/// again, but the batch is still checked: its first finisher may have died before that step.
/// For a part of a split mailbox: makes the part final, and the mailbox once all parts are.
pub async fn finish(
    svc: &Services,
    job: &JobMessage,
    record: &mut MailboxRecord,
    status: MailboxStatus,
    error: Option<String>,
    hint: Option<String>,
) -> Result<(), JobError> {
    record.status = status;
    record.error = error;
    record.hint = hint;
    record.finished_at = Some(Utc::now());
    if job.part.is_some() {
        if svc.table.finish_part(&job.batch, &job.job.mailbox, record).await? {
            info!(status = status.as_str(), "part finished");
        }
        // Also when it was final before: the finisher may have died before this step.
        return complete_split(svc, &job.batch, &job.job.mailbox).await;
    }
    finish_whole(svc, job, record).await
}

/// Finishes a split mailbox once every part is final: done when all are, else failed with
/// the reasons of those that failed. Idempotent.
pub async fn complete_split(svc: &Services, batch: &str, mailbox: &str) -> Result<(), JobError> {
    let Some(item) = svc.table.mailbox_item(batch, mailbox).await? else { return Ok(()) };
    let (Some(parts), Some(body)) = (item.parts.filter(|_| item.is_split()), item.job.as_deref()) else {
        return Ok(());
    };
    if item.parts_final < parts {
        return Ok(());
    }
    let mut job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
    let mut record = item.record;
    let mut failures = Vec::new();
    let mut hint = None;
    let mut in_ranges = false;
    for part in svc.table.part_items(batch, mailbox).await? {
        record.passes += part.record.passes;
        record.seconds += part.record.seconds;
        in_ranges |= part
            .job
            .as_deref()
            .and_then(|body| serde_json::from_str::<JobMessage>(body).ok())
            .is_some_and(|part_job| part_job.options.share.is_some_and(|share| share.range().is_some()));
        if part.record.status == MailboxStatus::Failed {
            let at = part.record.mailbox.strip_prefix(mailbox).unwrap_or_default().trim().trim_matches(['(', ')']);
            failures.push(format!("{at}: {}", part.record.error.unwrap_or_default()));
            hint = hint.or(part.record.hint);
        }
    }
    if failures.is_empty() && in_ranges {
        // A folder copied in UID ranges is verified whole, now that no range is appending to
        // it: by one more pass of the mailbox (which finds it copied and only verifies).
        if svc.table.rejoin_split(batch, mailbox, parts, &record).await? {
            job.seq = item.seq;
            let body = serde_json::to_string(&job).map_err(|e| JobError::BadMessage(e.to_string()))?;
            svc.queue.send(&svc.config.jobs_queue_url, vec![OutMessage { body, delay_seconds: 0 }]).await?;
            info!(mailbox, "every part done: one pass of the whole mailbox verifies the folder copied in UID ranges");
        }
        return Ok(());
    }
    (record.status, record.error, record.hint) = if failures.is_empty() {
        (MailboxStatus::Done, None, None)
    } else {
        (MailboxStatus::Failed, Some(failures.join("; ")), hint)
    };
    record.finished_at = Some(Utc::now());
    finish_whole(svc, &job, &record).await
}

/// Largest part job: under SQS's 256 KB message (and DynamoDB's 400 KB item), which a part
/// of a mailbox with thousands of folders, listing them, could pass.
const MAX_PART_JOB_BYTES: usize = 200 * 1024;

/// Splits the mailbox into parts: their items (with the split mark, in one transaction),
/// then their jobs, then the mailbox's pass ends. A crash anywhere in between leaves the
/// mailbox's pass marked: the sweeper re-drives it and [`send_parts`] queues them again.
/// `None` when the parts' jobs would be too big to queue: the mailbox stays whole.
async fn split(
    svc: &Services,
    job: &JobMessage,
    record: &MailboxRecord,
    shares: Vec<FolderShare>,
) -> Result<Option<JobOutcome>, JobError> {
    let of = shares.len();
    let mut parts = Vec::new();
    for (index, share) in shares.into_iter().enumerate() {
        let mut part_job = job.clone();
        part_job.seq = 0;
        part_job.part = Some(Part { index, of });
        part_job.options.share = Some(share);
        let unit = part_job.unit();
        let part_record = MailboxRecord::pending(&unit, record.row, &record.source_user, Vec::new());
        let body = serde_json::to_string(&part_job).map_err(|e| JobError::BadMessage(e.to_string()))?;
        if body.len() > MAX_PART_JOB_BYTES {
            warn!(bytes = body.len(), "too many folders to list in a part's job: the mailbox is copied whole");
            return Ok(None);
        }
        parts.push((unit, part_record, body));
    }
    if svc.table.split_mailbox(&job.batch, &job.job.mailbox, &parts).await? {
        info!(parts = of, "big mailbox: copied in parts, side by side");
    }
    send_parts(svc, job).await.map(Some)
}

/// Queues the job of every part not final yet at its current pass, then ends the mailbox's
/// own pass. A part already running drops the duplicate (busy, then stale).
async fn send_parts(svc: &Services, job: &JobMessage) -> Result<JobOutcome, JobError> {
    let parts = svc.table.part_items(&job.batch, &job.job.mailbox).await?;
    let mut messages = Vec::new();
    for part in &parts {
        let Some(body) = part.job.as_deref().filter(|_| !part.record.status.is_final()) else { continue };
        let mut part_job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
        part_job.seq = part.seq;
        let body = serde_json::to_string(&part_job).map_err(|e| JobError::BadMessage(e.to_string()))?;
        messages.push(OutMessage { body, delay_seconds: 0 });
    }
    svc.queue.send(&svc.config.jobs_queue_url, messages).await?;
    svc.table.advance_seq(&job.batch, &job.job.mailbox, job.seq + 1, false).await?;
    Ok(JobOutcome::Split { parts: parts.len() })
}

/// [`finish`] for a whole mailbox whose record is final.
async fn finish_whole(svc: &Services, job: &JobMessage, record: &MailboxRecord) -> Result<(), JobError> {
    let checkpoints = svc.table.pair_checkpoints(&job.job.mailbox, &pair_key(&job.job));
    let mut totals = FolderCounts::default();
    for c in checkpoints.load_folders(&job.job.mailbox).await? {
        totals.add(&c.counts);
    }
    // This batch's own messages: the pair's counts minus what earlier batches copied.
    let (before, before_bytes) =
        svc.table.mailbox_item(&job.batch, &job.job.mailbox).await?.and_then(|m| m.baseline).unwrap_or((0, 0));
    totals.copied = totals.copied.saturating_sub(before);
    totals.bytes = totals.bytes.saturating_sub(before_bytes);
    let status = record.status;
    if svc.table.finish_mailbox(&job.batch, record, totals.copied, totals.bytes).await? {
        info!(status = status.as_str(), copied = totals.copied, bytes = totals.bytes, "mailbox finished");
        let detail = MailboxCompleted {
            batch: job.batch.clone(),
            mailbox: record.mailbox.clone(),
            row: record.row,
            status: status.as_str().to_string(),
            error: record.error.clone(),
            hint: record.hint.clone(),
            messages_copied: totals.copied,
            bytes_copied: totals.bytes,
            seconds: record.seconds,
            passes: record.passes,
        };
        match serde_json::to_value(&detail) {
            Ok(v) => {
                if let Err(e) = svc.notifier.event(MAILBOX_COMPLETED, &v).await {
                    // The mailbox is final already; a lost progress event must not copy it again.
                    warn!(error = %e, "MailboxCompleted event not delivered");
                }
            }
            Err(e) => warn!(error = %e, "MailboxCompleted event not serializable"),
        }
    }
    // Idempotent, so also done when a crash came between the final write and here.
    svc.table.release_mailbox(&job.job.mailbox, &job.batch).await?;
    maybe_finalize(svc, &job.batch).await
}

/// Queues the batch's finalize message when every mailbox is final. Finalizing is idempotent
/// (only the delivery that marks the batch completed announces it), so a second message,
/// from a redelivery or the sweeper, does no harm; a lost one is sent again by the sweeper.
pub async fn maybe_finalize(svc: &Services, batch: &str) -> Result<(), JobError> {
    let Some(state) = svc.table.batch_state(batch).await? else { return Ok(()) };
    if state.state != "completed" && state.done + state.failed >= state.total {
        let body = serde_json::to_string(&FinalizeMessage { batch: batch.to_string() })
            .map_err(|e| JobError::BadMessage(e.to_string()))?;
        svc.queue.send(&svc.config.finalize_queue_url, vec![OutMessage { body, delay_seconds: 0 }]).await?;
        info!(batch, done = state.done, failed = state.failed, "every mailbox final: finalize queued");
    }
    Ok(())
}

/// The invocation's deadline as sent, unless it was long past when the invocation arrived at
/// `now`: Lambda never does that, but cargo-lambda 1.9's `watch` sends a constant 600,000 ms
/// (1970), which would leave no time at all. Then the pass gets `fallback` from now.
pub fn usable_deadline(sent: SystemTime, now: SystemTime, fallback: Duration) -> SystemTime {
    match now.duration_since(sent) {
        Ok(late) if late > Duration::from_secs(60) => {
            tracing::warn!(
                fallback_seconds = fallback.as_secs(),
                "the runtime sent a deadline long past (a local emulator?): using MAILHAUL_DEADLINE_FALLBACK_SECONDS"
            );
            now + fallback
        }
        _ => sent,
    }
}

/// Time left before `deadline`, for logs and tests.
pub fn remaining(deadline: SystemTime) -> Duration {
    deadline.duration_since(SystemTime::now()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_long_past_is_replaced_by_the_fallback_a_real_one_is_kept() {
        let now = SystemTime::now();
        let fallback = Duration::from_secs(840);
        // cargo-lambda 1.9's constant Lambda-Runtime-Deadline-Ms: 600000.
        let emulator = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        assert_eq!(usable_deadline(emulator, now, fallback), now + fallback);
        let real = now + Duration::from_secs(300);
        assert_eq!(usable_deadline(real, now, fallback), real);
        // Just past (a slow start, a clock off by a little): kept, the pass then has no time.
        let just_past = now - Duration::from_secs(5);
        assert_eq!(usable_deadline(just_past, now, fallback), just_past);
    }
}
