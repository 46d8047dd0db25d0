//! Jobs that reached the jobs queue's dead-letter queue: the copy function crashed, ran out of
//! time or memory, or failed transiently on every delivery. Each such mailbox is marked failed
//! with the reason and counted, so its batch still completes (the last one queues finalize).

use aws_lambda_events::event::sqs::SqsMessage;
use mailhaul_common::model::MailboxStatus;
use tracing::{info, info_span, Instrument};

use crate::config::Services;
use crate::copy::{complete_split, finish, maybe_finalize, JobError};
use crate::messages::JobMessage;

/// What became of one dead-lettered job.
#[derive(Clone, Debug, PartialEq)]
pub enum DeadLetterOutcome {
    /// The mailbox was running and is now failed (and counted in its batch).
    Failed { reason: String },
    /// The mailbox is already final (the copy function failed it on its last delivery), or a
    /// later pass of it exists (this was an old duplicate): nothing to do.
    Stale,
}

/// Whether a queue message body is a copy job (rather than a finalize message): jobs carry
/// a `job` object. The finalize function receives both kinds.
pub fn is_job(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.get("job").is_some_and(|j| j.is_object()))
}

/// Reason and hint of a mailbox failed because the copy function died on it `times` times;
/// `last` is the last transient error a pass saved, if one got that far.
pub fn crashed(times: u32, last: Option<String>) -> (String, String) {
    let reason = match last {
        Some(last) => {
            format!("the copy function crashed or timed out {times} times on this mailbox (last error: {last})")
        }
        None => format!("the copy function crashed or timed out {times} times on this mailbox"),
    };
    let hint = "see the copy function's logs for this mailbox; a very large message or folder may need more CopyMemorySize, then retry the row from failed.csv";
    (reason, hint.to_string())
}

/// Marks the dead-lettered job's mailbox failed, unless it is already final or has moved on.
pub async fn process_dead_letter(svc: &Services, message: &SqsMessage) -> Result<DeadLetterOutcome, JobError> {
    let body = message.body.as_deref().ok_or_else(|| JobError::BadMessage("no body".into()))?;
    let job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
    let span = info_span!("dead_letter", batch = %job.batch, mailbox = %job.unit(), seq = job.seq);
    async {
        let Some(item) = svc.table.mailbox_item(&job.batch, &job.unit()).await? else {
            info!("no such mailbox in the batch: dropped");
            return Ok(DeadLetterOutcome::Stale);
        };
        if item.record.status.is_final() {
            // Its finisher may have died before the next step (the mailbox of a part, the
            // batch's finalize): check again.
            match job.part {
                Some(_) => complete_split(svc, &job.batch, &job.job.mailbox).await?,
                None => maybe_finalize(svc, &job.batch).await?,
            }
            return Ok(DeadLetterOutcome::Stale);
        }
        if item.is_split() {
            // Its parts copy it (their own jobs); this pass of the whole ended long ago.
            return Ok(DeadLetterOutcome::Stale);
        }
        if item.seq > job.seq {
            return Ok(DeadLetterOutcome::Stale);
        }
        let mut record = item.record;
        let (reason, hint) = crashed(svc.config.max_receive_count, record.error.take());
        finish(svc, &job, &mut record, MailboxStatus::Failed, Some(reason.clone()), Some(hint)).await?;
        info!(reason = %reason, "dead-lettered mailbox marked failed");
        Ok(DeadLetterOutcome::Failed { reason })
    }
    .instrument(span)
    .await
}
