//! The sweeper, run by the finalize function every 5 minutes (an EventBridge schedule): it
//! re-drives mailboxes whose pass crashed (its lease ran out and the pass is still marked in
//! the table), fails a mailbox after too many crashed passes, and queues the finalize message
//! of batches whose mailboxes are all final (their finisher died before it could), so every
//! batch ends and its secrets are deleted. It also tends the batches' delta schedules
//! ([`crate::schedule`]).

use chrono::Utc;
use mailhaul_common::model::MailboxStatus;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Services;
use crate::copy::{complete_split, finish, JobError};
use crate::messages::JobMessage;
use crate::ports::OutMessage;
use crate::schedule::Tended;

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepOutcome {
    /// Batches looked at.
    pub batches: usize,
    /// `batch/mailbox` whose crashed pass was queued again.
    pub redriven: Vec<String>,
    /// `batch/mailbox` failed after too many crashed passes.
    pub failed: Vec<String>,
    /// Batches whose finalize message was queued.
    pub finalized: Vec<String>,
    /// Delta batches started by a batch's `[schedule]`.
    #[serde(default)]
    pub deltas_started: Vec<String>,
    /// Batches whose delta schedule ended (their passwords deleted).
    #[serde(default)]
    pub schedules_ended: Vec<String>,
    /// `batch/mailbox` split in parts, finished here: its last part's finisher died first.
    #[serde(default)]
    pub completed_splits: Vec<String>,
}

/// One sweep over every watched batch, then over every delta schedule.
pub async fn sweep(svc: &Services) -> Result<SweepOutcome, JobError> {
    let mut outcome = watched(svc).await?;
    for schedule in svc.table.live_schedules().await? {
        match crate::schedule::tend(svc, &schedule, Utc::now().timestamp()).await? {
            Tended::Waiting => {}
            Tended::Started(delta) => outcome.deltas_started.push(delta),
            Tended::Ended => outcome.schedules_ended.push(schedule.batch),
        }
    }
    Ok(outcome)
}

async fn watched(svc: &Services) -> Result<SweepOutcome, JobError> {
    let mut outcome = SweepOutcome::default();
    for batch in svc.table.watched_batches().await? {
        outcome.batches += 1;
        let Some(state) = svc.table.batch_state(&batch).await? else { continue };
        if state.state == "completed" || state.done + state.failed >= state.total {
            // Completed but not announced, or all final but never finalized.
            if !state.announced {
                queue_finalize(svc, &batch).await?;
                outcome.finalized.push(batch.clone());
            }
            continue;
        }
        if state.state != "running" {
            continue;
        }
        let now = Utc::now().timestamp();
        // Mailboxes and the parts of split ones alike.
        for item in svc.table.units(&batch).await? {
            if item.is_split() && item.parts.is_some_and(|n| item.parts_final >= n) && !item.record.status.is_final() {
                // Every part is final but the last one's finisher died before the mailbox.
                complete_split(svc, &batch, &item.record.mailbox).await?;
                outcome.completed_splits.push(format!("{batch}/{}", item.record.mailbox));
                continue;
            }
            let Some(until) = item.pass_until.filter(|u| *u < now) else { continue };
            if item.record.status.is_final() {
                continue;
            }
            let name = format!("{batch}/{}", item.record.mailbox);
            let Some(body) = item.job.as_deref() else {
                warn!(mailbox = %name, "crashed pass but no job stored: left to SQS redelivery");
                continue;
            };
            let mut job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
            job.seq = item.seq;
            // Each step before the one that clears the mark, so a sweep that dies half-way is
            // repeated by the next one (a duplicate job message is dropped as stale).
            let crashes = item.crashes + 1;
            if crashes >= svc.config.max_crashed_passes {
                let mut record = item.record;
                let (reason, hint) = crate::dead_letter::crashed(crashes, record.error.take());
                finish(svc, &job, &mut record, MailboxStatus::Failed, Some(reason), Some(hint)).await?;
                svc.table.count_crash(&batch, &job.unit(), until).await?;
                warn!(mailbox = %name, crashes, "crashed too often: failed");
                outcome.failed.push(name);
            } else {
                let body = serde_json::to_string(&job).map_err(|e| JobError::BadMessage(e.to_string()))?;
                svc.queue.send(&svc.config.jobs_queue_url, vec![OutMessage { body, delay_seconds: 0 }]).await?;
                if svc.table.count_crash(&batch, &job.unit(), until).await?.is_none() {
                    continue;
                }
                info!(mailbox = %name, seq = job.seq, crashes, "crashed pass re-driven");
                outcome.redriven.push(name);
            }
        }
    }
    Ok(outcome)
}

async fn queue_finalize(svc: &Services, batch: &str) -> Result<(), JobError> {
    let body = serde_json::to_string(&crate::messages::FinalizeMessage { batch: batch.to_string() })
        .map_err(|e| JobError::BadMessage(e.to_string()))?;
    svc.queue.send(&svc.config.finalize_queue_url, vec![OutMessage { body, delay_seconds: 0 }]).await?;
    Ok(())
}
