//! The finalize function: a batch whose mailboxes are all final → reports in S3, its secrets
//! deleted, `BatchCompleted` on the bus and a notice on the topic. It also drains the jobs
//! dead-letter queue (see [`crate::dead_letter`]), which can make a batch final.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use mailhaul_common::report::build_report;
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

/// Writes the reports, deletes the secrets and announces the batch. `None` when the batch
/// was already completed (a redelivered message).
pub async fn finalize_batch(svc: &Services, batch: &str) -> Result<Option<BatchCompleted>, FinalizeError> {
    let bucket = svc.config.bucket.clone().ok_or(FinalizeError::NoBucket)?;
    let Some(state) = svc.table.batch_state(batch).await? else {
        warn!(batch, "no such batch");
        return Ok(None);
    };
    if state.state == "completed" {
        return Ok(None);
    }
    let report = build_report(&svc.table.batch_store(batch), &svc.table.checkpoints(batch)).await?;
    let prefix = format!("reports/{batch}");
    let uri = |name: &str| format!("s3://{bucket}/{prefix}/{name}");
    svc.objects.put(&bucket, &format!("{prefix}/report.csv"), report.to_csv(), "text/csv; charset=utf-8").await?;
    svc.objects.put(&bucket, &format!("{prefix}/report.json"), report.to_json(), "application/json").await?;
    svc.objects.put(&bucket, &format!("{prefix}/failed.csv"), report.failed_csv(), "text/csv; charset=utf-8").await?;
    for name in &state.secrets {
        svc.secrets.delete(name).await?;
    }
    let finished_at = Utc::now();
    let detail = BatchCompleted {
        batch: batch.to_string(),
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
        failed_csv: uri("failed.csv"),
    };
    let value = serde_json::to_value(&detail).map_err(|e| FinalizeError::BadMessage(e.to_string()))?;
    svc.notifier.event(BATCH_COMPLETED, &value).await?;
    let text = format!(
        "mailhaul batch {batch} is complete: {} of {} mailboxes done, {} failed; {} messages, {} bytes copied in {:.0} s.\nReport: {}\nFailed rows (fix and upload again): {}\n",
        detail.done, detail.total, detail.failed, detail.messages_copied, detail.bytes_copied, detail.duration_seconds, detail.report_csv, detail.failed_csv
    );
    svc.notifier.notify(&format!("mailhaul: batch {batch} complete ({} failed)", detail.failed), &text).await?;
    if !svc.table.complete_batch(batch, finished_at).await? {
        return Ok(None);
    }
    Ok(Some(detail))
}
