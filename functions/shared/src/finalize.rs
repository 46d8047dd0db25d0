//! The finalize function: a batch whose mailboxes are all final → reports in S3, its secrets
//! deleted, `BatchCompleted` on the bus and a notice on the topic. It also drains the jobs
//! dead-letter queue (see [`crate::dead_letter`]), which can make a batch final.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use tracing::{error, info, warn};

use crate::config::Services;
use crate::dead_letter::{is_job, process_dead_letter};
use crate::messages::{BatchCompleted, FinalizeMessage, BATCH_COMPLETED};
use crate::ports::PortError;

/// Why a batch could not be finalized (the message returns to the queue).
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("unreadable finalize message: {0}")]
    BadMessage(String),
    #[error("MAILHAUL_BUCKET is not set: the finalize function needs the stack's bucket")]
    NoBucket,
    #[error(transparent)]
    Store(#[from] mailhaul_common::ports::StoreError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("writing the report: {0}")]
    Report(#[from] std::io::Error),
}

/// The Lambda handler.
pub async fn handle(svc: &Services, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let mut response = SqsBatchResponse::default();
    for message in event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        // The same function drains the jobs dead-letter queue: a job there fails its mailbox.
        if message.body.as_deref().is_some_and(is_job) {
            match process_dead_letter(svc, &message).await {
                Ok(outcome) => info!(message_id = %id, outcome = ?outcome, "dead-lettered job handled"),
                Err(e) => {
                    error!(message_id = %id, error = %e, "dead-lettered job not handled; it returns to the queue");
                    response.add_failure(id);
                }
            }
            continue;
        }
        let result = match message.body.as_deref().map(serde_json::from_str::<FinalizeMessage>) {
            Some(Ok(m)) => finalize_batch(svc, &m.batch).await,
            Some(Err(e)) => Err(FinalizeError::BadMessage(e.to_string())),
            None => Err(FinalizeError::BadMessage("no body".into())),
        };
        match result {
            Ok(Some(done)) => info!(batch = %done.batch, done = done.done, failed = done.failed, "batch completed"),
            Ok(None) => info!(message_id = %id, "batch already completed"),
            Err(e) => {
                error!(message_id = %id, error = %e, "finalize failed; it returns to the queue");
                response.add_failure(id);
            }
        }
    }
    Ok(response)
}

/// Longer than the finalize function's timeout: a batch completed this long ago and still not
/// announced lost its announcer, and the next finalize message (from the sweeper) announces it.
pub const ANNOUNCE_AT_MOST_SECONDS: i64 = 1200;

/// Writes the reports, deletes the secrets, marks the batch completed and announces it.
/// Idempotent: only the delivery that marks the batch completed announces it (or, if that
/// one died, a delivery more than [`ANNOUNCE_AT_MOST_SECONDS`] later). `None` when there
/// was nothing to announce.
pub async fn finalize_batch(svc: &Services, batch: &str) -> Result<Option<BatchCompleted>, FinalizeError> {
    let bucket = svc.config.bucket.clone().ok_or(FinalizeError::NoBucket)?;
    let Some(state) = svc.table.batch_state(batch).await? else {
        warn!(batch, "no such batch");
        return Ok(None);
    };
    let prefix = format!("reports/{batch}");
    let uri = |name: &str| format!("s3://{bucket}/{prefix}/{name}");
    // Read once: it decides about the passwords and is announced.
    let next_delta_at = crate::schedule::next_delta_at(svc, batch).await?;
    let finished_at = if state.state == "completed" {
        let finished_at = state.finished_at.unwrap_or_else(Utc::now);
        if state.announced || (Utc::now() - finished_at).num_seconds() < ANNOUNCE_AT_MOST_SECONDS {
            return Ok(None);
        }
        warn!(batch, "completed but never announced: announcing now");
        finished_at
    } else {
        if state.done + state.failed < state.total {
            warn!(batch, done = state.done, failed = state.failed, total = state.total, "not every mailbox is final");
            return Ok(None);
        }
        // A delta pass says so; its counts are the pair's cumulative checkpoint counts, as a
        // local delta run reports them.
        crate::report_upload::write_report(
            svc.objects.as_ref(),
            &bucket,
            &prefix,
            &svc.table.batch_store(batch),
            &svc.table.checkpoints(batch).await?,
            state.delta_of.clone(),
            crate::report_upload::PART_BYTES,
        )
        .await?;
        // With delta passes scheduled, the schedule deletes them when it ends.
        if next_delta_at.is_none() {
            for name in &state.secrets {
                svc.secrets.delete(name).await?;
            }
        }
        let finished_at = Utc::now();
        if !svc.table.complete_batch(batch, finished_at).await? {
            return Ok(None);
        }
        finished_at
    };
    let report_link =
        svc.objects.presigned_get(&bucket, &format!("{prefix}/report.html"), svc.config.report_link).await?;
    let detail = BatchCompleted {
        batch: batch.to_string(),
        delta_of: state.delta_of.clone(),
        total: state.total,
        done: state.done,
        failed: state.failed,
        messages_copied: state.messages_copied,
        bytes_copied: state.bytes_copied,
        created_at: state.meta.created_at,
        finished_at,
        duration_seconds: (finished_at - state.meta.created_at).num_milliseconds() as f64 / 1000.0,
        report_csv: uri("report.csv"),
        report_json: uri("report.json"),
        report_html: uri("report.html"),
        report_link,
        report_link_expires_at: Utc::now()
            + chrono::Duration::from_std(svc.config.report_link).unwrap_or(chrono::Duration::days(7)),
        failed_csv: uri("failed.csv"),
        next_delta_at,
    };
    let value = serde_json::to_value(&detail).map_err(|e| FinalizeError::BadMessage(e.to_string()))?;
    svc.notifier.event(BATCH_COMPLETED, &value).await?;
    let text = completion_notice(&detail);
    svc.notifier.notify(&format!("mailhaul: batch {batch} complete ({} failed)", detail.failed), &text).await?;
    svc.table.mark_announced(batch).await?;
    Ok(Some(detail))
}

/// The e-mail text of the notice: the counts, and the link a person clicks first.
fn completion_notice(d: &BatchCompleted) -> String {
    let pass = match &d.delta_of {
        Some(first) => format!(" (a delta pass after batch {first})"),
        None => String::new(),
    };
    format!(
        "mailhaul batch {batch}{pass} is complete: {done} of {total} mailboxes done, {failed} failed; \
         {messages} messages, {mb:.1} MB copied in {seconds:.0} s.\n\n\
         Report (opens in a browser; link valid until {expires} UTC):\n{link}\n\n\
         The same report as files: {html}, {json}, {csv}\n\
         Failed rows (fix and upload again): {failed_csv}\n",
        batch = d.batch,
        done = d.done,
        total = d.total,
        failed = d.failed,
        messages = d.messages_copied,
        mb = d.bytes_copied as f64 / 1e6,
        seconds = d.duration_seconds,
        expires = d.report_link_expires_at.format("%Y-%m-%d %H:%M"),
        link = d.report_link,
        html = d.report_html,
        json = d.report_json,
        csv = d.report_csv,
        failed_csv = d.failed_csv,
    ) + &match d.next_delta_at {
        Some(at) => format!(
            "\nThe next delta pass starts at {} UTC (mailhaul submit --delta {} starts one now; --stop ends them and deletes the passwords).\n",
            at.format("%Y-%m-%d %H:%M"),
            d.batch
        ),
        None => String::new(),
    }
}

/// The finalize function's entry point for any event: SQS records (finalize messages and
/// dead-lettered jobs) or the scheduled sweep (an EventBridge "Scheduled Event").
pub async fn handle_any(
    svc: &Services,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let (payload, context) = (event.payload, event.context);
    if payload.get("Records").is_some() {
        let sqs: SqsEvent = serde_json::from_value(payload)?;
        let response = handle(svc, LambdaEvent::new(sqs, context)).await?;
        return Ok(serde_json::to_value(response)?);
    }
    if payload.get("detail-type").and_then(|t| t.as_str()) == Some("Scheduled Event") {
        let outcome = crate::sweep::sweep(svc).await.map_err(|e| format!("sweep: {e}"))?;
        info!(outcome = ?outcome, "sweep done");
        return Ok(serde_json::to_value(outcome)?);
    }
    Err("the finalize function takes SQS records or a scheduled event".into())
}
