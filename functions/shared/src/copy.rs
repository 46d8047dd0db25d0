//! The copy function: one SQS job → lease the mailbox → take a source-host connection slot →
//! a time-boxed engine pass → checkpoint → continue, back off, or finish the mailbox.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use mailhaul_common::engine::{copy_mailbox, CopyStatus, ProgressSink, TimeBox};
use mailhaul_common::error::CopyError;
use mailhaul_common::model::{FolderCounts, MailboxStatus};
use mailhaul_common::ports::{CheckpointStore, MailboxRecord, StoreError};
use mailhaul_common::Secret;
use tracing::{error, info, info_span, warn, Instrument};

use crate::adapters::MAX_DELAY_SECONDS;
use crate::config::Services;
use crate::messages::{FinalizeMessage, JobMessage, MailboxCompleted, SecretChunk, MAILBOX_COMPLETED};
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
    let deadline = event.context.deadline();
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
    // Held past the deadline by a minute so a slow checkpoint write cannot be overtaken.
    let until = epoch(deadline) + 60;
    let mailbox = job.job.mailbox.clone();
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

/// Queues the next pass, once: only the delivery that moves the mailbox's pass number does.
async fn next_pass(svc: &Services, job: &JobMessage, delay_seconds: u32) -> Result<(), JobError> {
    if svc.table.advance_seq(&job.batch, &job.job.mailbox, job.seq).await? {
        let mut next = job.clone();
        next.seq += 1;
        requeue(svc, &next, delay_seconds).await?;
    }
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
    let Some((mut record, seq)) = svc.table.mailbox_item(&job.batch, &job.job.mailbox).await? else {
        warn!("no such mailbox in the batch: dropped");
        return Ok(JobOutcome::Stale);
    };
    if record.status.is_final() || seq > job.seq {
        return Ok(JobOutcome::Stale);
    }
    let host = source_host(job);
    let Some(slot) = svc.table.acquire_slot(&host, job.max_connections_per_source_host, owner, until).await? else {
        requeue(svc, job, svc.config.busy_delay_seconds).await?;
        return Ok(JobOutcome::Busy {
            what: format!("all {} connection slots of {host} are in use", job.max_connections_per_source_host),
        });
    };
    let result = copy_pass(svc, job, &mut record, receive_count, receipt_handle, deadline).await;
    if let Err(e) = svc.table.release_slot(&host, slot, owner).await {
        warn!(error = %e, "could not release the connection slot; it expires by itself");
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

async fn fill_passwords(svc: &Services, job: &mut JobMessage) -> Result<bool, JobError> {
    let Some(secret) = svc.secrets.get(&job.secret).await? else { return Ok(false) };
    let chunk: SecretChunk = serde_json::from_str(secret.expose())
        .map_err(|_| JobError::Copy(format!("secret {} is not readable", job.secret)))?;
    let Some(p) = chunk.get(&job.job.mailbox) else { return Ok(false) };
    job.job.source.login.password = Secret::new(p.source.clone());
    job.job.destination.login.password = Secret::new(p.destination.clone());
    Ok(true)
}

async fn copy_pass(
    svc: &Services,
    job: &JobMessage,
    record: &mut MailboxRecord,
    receive_count: u32,
    receipt_handle: Option<&str>,
    deadline: SystemTime,
) -> Result<JobOutcome, JobError> {
    let mut job_with_passwords = job.clone();
    if !fill_passwords(svc, &mut job_with_passwords).await? {
        let reason = format!("the passwords of {} are no longer in Secrets Manager ({})", job.job.mailbox, job.secret);
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
    let checkpoints = svc.table.checkpoints(&job.batch);
    let batch_store = svc.table.batch_store(&job.batch);
    record.status = MailboxStatus::Running;
    record.started_at.get_or_insert_with(Utc::now);
    mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;

    let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
    let budget = remaining.saturating_sub(svc.config.safety_margin);
    let mut timebox = TimeBox::unlimited();
    timebox.deadline = Some(tokio::time::Instant::now() + budget);
    let started = Instant::now();
    // Boxed: the engine's future is deep enough to overflow the compiler's layout recursion.
    let result =
        Box::pin(copy_mailbox(&job_with_passwords.job, &job.options, &checkpoints, &LogProgress, &timebox)).await;
    drop(job_with_passwords);
    record.seconds += started.elapsed().as_secs_f64();
    record.passes += 1;

    match result {
        Ok(outcome) if outcome.status == CopyStatus::Done => {
            record.error = None;
            record.hint = None;
            finish(svc, job, record, MailboxStatus::Done, None, None).await?;
            Ok(JobOutcome::Done)
        }
        Ok(_) => {
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            next_pass(svc, job, 0).await?;
            Ok(JobOutcome::Continued)
        }
        Err(e @ CopyError::Throttled { .. }) => {
            let delay = e
                .retry_after()
                .map(|d| d.as_secs().clamp(1, MAX_DELAY_SECONDS as u64) as u32)
                .unwrap_or(svc.config.throttle_delay_seconds);
            warn!(error = %e, delay, "throttled: queued again instead of sleeping on paid time");
            record.error = Some(e.to_string());
            record.hint = Some(e.hint());
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            next_pass(svc, job, delay).await?;
            Ok(JobOutcome::Throttled { delay_seconds: delay })
        }
        Err(e) if e.is_retryable() => {
            if receive_count >= svc.config.max_receive_count {
                // Last delivery: the job goes to the dead-letter queue, the mailbox is failed.
                let reason = format!("{e} (gave up after {receive_count} tries)");
                finish(svc, job, record, MailboxStatus::Failed, Some(reason), Some(e.hint())).await?;
                return Err(JobError::Copy(e.to_string()));
            }
            record.error = Some(e.to_string());
            record.hint = Some(e.hint());
            mailhaul_common::ports::BatchStore::put_mailbox(&batch_store, record).await?;
            if let Some(handle) = receipt_handle {
                // Sooner than the queue's visibility timeout (6 × 15 min).
                svc.queue.retry_after(&svc.config.jobs_queue_url, handle, svc.config.retry_delay_seconds).await?;
            }
            Err(JobError::Copy(e.to_string()))
        }
        Err(e) => {
            let reason = e.to_string();
            finish(svc, job, record, MailboxStatus::Failed, Some(reason.clone()), Some(e.hint())).await?;
            Ok(JobOutcome::Failed { reason })
        }
    }
}

/// Makes the mailbox final (once), counts it in the batch, announces it, and when it was the
/// last one, queues the batch's finalize message (once).
pub async fn finish(
    svc: &Services,
    job: &JobMessage,
    record: &mut MailboxRecord,
    status: MailboxStatus,
    error: Option<String>,
    hint: Option<String>,
) -> Result<(), JobError> {
    let checkpoints = svc.table.checkpoints(&job.batch);
    let mut totals = FolderCounts::default();
    for c in checkpoints.load_folders(&job.job.mailbox).await? {
        totals.add(&c.counts);
    }
    record.status = status;
    record.error = error;
    record.hint = hint;
    record.finished_at = Some(Utc::now());
    if !svc.table.finish_mailbox(&job.batch, record, totals.copied, totals.bytes).await? {
        return Ok(());
    }
    svc.table.release_mailbox(&job.job.mailbox, &job.batch).await?;
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
    maybe_finalize(svc, &job.batch).await
}

async fn maybe_finalize(svc: &Services, batch: &str) -> Result<(), JobError> {
    let Some(state) = svc.table.batch_state(batch).await? else { return Ok(()) };
    if state.done + state.failed >= state.total && svc.table.claim_finalize(batch).await? {
        let body = serde_json::to_string(&FinalizeMessage { batch: batch.to_string() })
            .map_err(|e| JobError::BadMessage(e.to_string()))?;
        svc.queue.send(&svc.config.finalize_queue_url, vec![OutMessage { body, delay_seconds: 0 }]).await?;
        info!(batch, done = state.done, failed = state.failed, "last mailbox final: finalize queued");
    }
    Ok(())
}

/// Time left before `deadline`, for logs and tests.
pub fn remaining(deadline: SystemTime) -> Duration {
    deadline.duration_since(SystemTime::now()).unwrap_or_default()
}
