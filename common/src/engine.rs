//! The copy engine: one mailbox, folder by folder, time-boxed and resumable.
//! (Interface fixed here first so runners can be written against it; body in progress.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{CopyOptions, FolderCounts, MailboxJob, Verdict};
use crate::ports::CheckpointStore;

/// When the engine must stop: a deadline (Lambda) and/or a stop signal (Ctrl-C).
#[derive(Clone, Debug)]
pub struct TimeBox {
    pub deadline: Option<tokio::time::Instant>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl TimeBox {
    /// No deadline and a stop signal that never fires.
    pub fn unlimited() -> TimeBox {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        TimeBox { deadline: None, stop: rx }
    }
}

/// Receives progress as batches are confirmed (progress bars, logs).
pub trait ProgressSink: Send + Sync {
    /// Totals to copy are known for a folder (messages and bytes past the checkpoint).
    fn planned(&self, _mailbox: &str, _folder: &str, _messages: u64, _bytes: u64) {}
    /// A batch of messages was confirmed by the destination.
    fn copied(&self, _mailbox: &str, _folder: &str, _messages: u64, _bytes: u64) {}
}

/// A sink that ignores everything.
pub struct NoProgress;
impl ProgressSink for NoProgress {}

/// How a call to [`copy_mailbox`] ended without error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyStatus {
    /// Every folder is copied and verified.
    Done,
    /// The deadline or the stop signal came first; checkpoints are saved: call again.
    MoreToDo,
}

/// The result of one call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MailboxOutcome {
    pub status: CopyStatus,
    /// What this call did (not cumulative).
    pub this_pass: FolderCounts,
    /// Per destination folder verdicts, filled when status is Done.
    pub verdicts: Vec<(String, Verdict)>,
    /// Folders renamed on the way (source, destination, why).
    pub renamed: Vec<(String, String, String)>,
    pub folders: usize,
}

/// Errors are [`crate::error::CopyError`]: ask `is_retryable()` and `retry_after()`.
pub async fn copy_mailbox(
    _job: &MailboxJob,
    _options: &CopyOptions,
    _store: &dyn CheckpointStore,
    _progress: &dyn ProgressSink,
    _timebox: &TimeBox,
) -> Result<MailboxOutcome, crate::error::CopyError> {
    let _ = Duration::from_secs(0);
    todo!("engine in progress")
}
