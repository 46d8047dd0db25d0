//! Delta passes until the cut-over (`[schedule]` in the batch settings): the sweeper starts a
//! delta pass of a batch's rows every `delta_every` until `until`, one at a time, then deletes
//! the batch's passwords. `mailhaul submit --delta BATCH` makes the next pass due now,
//! `--stop BATCH` ends the schedule (the passwords go with the next sweep).
//!
//! Each step is repeated safely by the next sweep if one dies half-way: the delta batch's id
//! comes from the slot it fills, so a second try finds the same batch; the schedule moves on
//! only after its batch is queued.

use chrono::{DateTime, Utc};
use mailhaul_common::ports::{BatchMeta, MailboxRecord};
use tracing::info;

use crate::config::Services;
use crate::copy::JobError;
use crate::dynamo::{BatchState, Schedule};
use crate::messages::{delta_batch_id, DeltaScheduleEnded, JobMessage, DELTA_SCHEDULE_ENDED};
use crate::ports::OutMessage;
use crate::upload::{claim_all, queue_rows, QueuedRow};

/// When the batch's next scheduled delta pass starts; `None` when it has no live schedule
/// (none, stopped, ended, or past its cut-over): then its passwords are not kept for one.
pub async fn next_delta_at(
    svc: &Services,
    batch: &str,
) -> Result<Option<DateTime<Utc>>, mailhaul_common::ports::StoreError> {
    let now = Utc::now().timestamp();
    Ok(svc
        .table
        .schedule(batch)
        .await?
        .filter(|s| s.state == "on" && now < s.until)
        .and_then(|s| DateTime::from_timestamp(s.next_at.max(now), 0)))
}

/// What tending one schedule did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tended {
    /// Nothing due, or a pass of it still running.
    Waiting,
    /// This delta batch was started.
    Started(String),
    /// The schedule ended; its passwords are deleted.
    Ended,
}

/// One sweep's work on one schedule, as of `now` (epoch seconds).
pub async fn tend(svc: &Services, schedule: &Schedule, now: i64) -> Result<Tended, JobError> {
    let Some(first) = svc.table.batch_state(&schedule.batch).await? else { return Ok(Tended::Waiting) };
    // One pass at a time, and no password deleted under a running one.
    if first.state != "completed" {
        return Ok(Tended::Waiting);
    }
    if let Some(last) = &schedule.last_delta {
        if svc.table.batch_state(last).await?.is_some_and(|s| s.state != "completed") {
            return Ok(Tended::Waiting);
        }
    }
    if schedule.state != "on" || now >= schedule.until {
        for name in &first.secrets {
            svc.secrets.delete(name).await?;
        }
        // Announced before the schedule is marked ended: a sweep that dies in between
        // announces it again (at least once), rather than never.
        let reason = if schedule.state == "stopped" { "stopped" } else { "until" };
        let detail =
            DeltaScheduleEnded { batch: schedule.batch.clone(), deltas: schedule.deltas, reason: reason.to_string() };
        let value = serde_json::to_value(&detail).map_err(|e| JobError::BadMessage(e.to_string()))?;
        svc.notifier.event(DELTA_SCHEDULE_ENDED, &value).await?;
        let why =
            if reason == "stopped" { "stopped by mailhaul submit --stop" } else { "the cut-over time was reached" };
        svc.notifier
            .notify(
                &format!("mailhaul: delta passes of batch {} ended", schedule.batch),
                &format!(
                    "The delta passes of batch {} ended ({why}) after {} pass(es); its passwords are deleted from Secrets Manager.\nTo copy what arrived since, upload the CSV again.\n",
                    schedule.batch, schedule.deltas
                ),
            )
            .await?;
        svc.table.end_schedule(&schedule.batch).await?;
        info!(batch = %schedule.batch, deltas = schedule.deltas, reason, "delta schedule ended, passwords deleted");
        return Ok(Tended::Ended);
    }
    if now < schedule.next_at {
        return Ok(Tended::Waiting);
    }
    let delta = start_delta(svc, schedule, &first).await?;
    // Slots missed (a pass that ran long) are skipped, not caught up.
    let mut next = schedule.next_at + schedule.every;
    if next <= now {
        next = now + schedule.every;
    }
    if !svc.table.advance_schedule(&schedule.batch, schedule.next_at, next, &delta).await? {
        return Ok(Tended::Waiting); // another sweep got there first
    }
    info!(batch = %schedule.batch, delta = %delta, "scheduled delta pass started");
    Ok(Tended::Started(delta))
}

/// Queues a delta pass of the first batch's rows (with its passwords), as a batch of its own
/// (own report, `delta_of` in its events). A row refused in the first batch has no password
/// stored and is left out.
async fn start_delta(svc: &Services, schedule: &Schedule, first: &BatchState) -> Result<String, JobError> {
    let id = delta_batch_id(&schedule.batch, &format!("schedule-{}", schedule.next_at));
    let mut rows = Vec::new();
    for item in svc.table.mailbox_items(&schedule.batch).await? {
        let Some(body) = item.job.as_deref() else { continue };
        let mut job: JobMessage = serde_json::from_str(body).map_err(|e| JobError::BadMessage(e.to_string()))?;
        if job.secret.is_empty() {
            continue;
        }
        job.batch = id.clone();
        job.seq = 0;
        let r = &item.record;
        let body = serde_json::to_string(&job).map_err(|e| JobError::BadMessage(e.to_string()))?;
        rows.push(QueuedRow {
            record: MailboxRecord::pending(&r.mailbox, r.row, &r.source_user, r.cells.clone()),
            message: OutMessage { body, delay_seconds: 0 },
        });
    }
    let meta =
        BatchMeta { id: id.clone(), headers: first.meta.headers.clone(), total: rows.len(), created_at: Utc::now() };
    let created = svc.table.create_delta_batch(&meta, &first.source_key, Some(&schedule.batch)).await?;
    if !created && svc.table.batch_state(&id).await?.is_some_and(|s| s.state != "submitting") {
        return Ok(id); // queued by an earlier sweep that died before moving the schedule on
    }
    let mailboxes: Vec<String> = rows.iter().map(|r| r.record.mailbox.clone()).collect();
    let refused = claim_all(svc, &id, mailboxes.iter().map(String::as_str)).await.map_err(upload_error)?;
    queue_rows(svc, &id, rows, &refused).await.map_err(upload_error)?;
    Ok(id)
}

fn upload_error(e: crate::upload::UploadError) -> JobError {
    match e {
        crate::upload::UploadError::Port(p) => JobError::Port(p),
        crate::upload::UploadError::Store(s) => JobError::Store(s),
        crate::upload::UploadError::Other(o) => JobError::Copy(o),
    }
}
