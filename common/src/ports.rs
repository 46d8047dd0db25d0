//! Ports: the small traits the engine and the runners talk to, so the same code runs on
//! embedded state (SQLite, `mailhaul run`) and on AWS (DynamoDB, SQS, S3, Secrets Manager).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ledger::Run;
use crate::model::{FolderCheckpoint, MailboxStatus, SkippedMessage};

/// A state store failed (disk, SQLite, DynamoDB). Always worth a retry by the caller.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(detail: impl std::fmt::Display) -> Self {
        StoreError(detail.to_string())
    }
}

/// Where the engine keeps per-folder progress of a mailbox.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Every checkpoint saved for this mailbox, UID ranges of split folders included.
    async fn load_saved(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, StoreError>;
    /// One checkpoint per folder: the saved ones with their UID ranges folded in.
    async fn load_folders(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, StoreError> {
        Ok(crate::model::fold_ranges(self.load_saved(mailbox).await?))
    }
    /// Insert or replace the checkpoint of `checkpoint.source_folder`.
    async fn save_folder(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<(), StoreError>;
    /// Record a message that is not copied; idempotent on (mailbox, folder, uid, reason).
    async fn record_skipped(&self, mailbox: &str, message: &SkippedMessage) -> Result<(), StoreError>;
    /// The recorded messages of a mailbox, ordered by folder then UID.
    async fn skipped(&self, mailbox: &str) -> Result<Vec<SkippedMessage>, StoreError>;
    /// Drop the record of a message that a later pass copied after all (`folder` as in
    /// [`SkippedMessage::folder`]).
    async fn forget_skipped(&self, mailbox: &str, folder: &str, uid: u32) -> Result<(), StoreError>;
    /// Append ledger runs of one source folder (`uid_validity` of the source). Runs recorded
    /// later replace earlier ones for the same UIDs.
    async fn record_ledger(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
        runs: &[Run],
    ) -> Result<(), StoreError>;
    /// Every run recorded for that folder and UIDVALIDITY, in the order recorded.
    async fn load_ledger(&self, mailbox: &str, folder: &str, uid_validity: u32) -> Result<Vec<Run>, StoreError>;
    /// A settled batch: its ledger runs and the folder's checkpoint counting them, both or
    /// neither (a kill between two writes would leave copied messages counted nowhere: the
    /// ledger says settled, so no later pass counts them). Stores that can, do it in one
    /// transaction; the default writes the runs, then the checkpoint.
    async fn record_batch(
        &self,
        mailbox: &str,
        uid_validity: u32,
        runs: &[Run],
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError> {
        self.record_ledger(mailbox, checkpoint.ledger_folder(), uid_validity, runs).await?;
        self.save_folder(mailbox, checkpoint).await
    }
}

/// The batch as a whole: one record per CSV row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub id: String,
    /// The CSV header as the user wrote it, to write failed.csv in the same form.
    pub headers: Vec<String>,
    pub total: usize,
    pub created_at: DateTime<Utc>,
}

/// One mailbox (CSV row) of a batch. No password in here, ever.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub mailbox: String,
    pub row: usize,
    pub source_user: String,
    /// The row's cells with every password cell empty, for failed.csv.
    pub cells: Vec<String>,
    pub status: MailboxStatus,
    pub error: Option<String>,
    /// What to do about `error`.
    pub hint: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds spent copying, summed over passes and continuations.
    pub seconds: f64,
    pub passes: u32,
}

impl MailboxRecord {
    /// A row that has not started yet.
    pub fn pending(mailbox: &str, row: usize, source_user: &str, cells: Vec<String>) -> MailboxRecord {
        MailboxRecord {
            mailbox: mailbox.to_string(),
            row,
            source_user: source_user.to_string(),
            cells,
            status: MailboxStatus::Pending,
            error: None,
            hint: None,
            started_at: None,
            finished_at: None,
            seconds: 0.0,
            passes: 0,
        }
    }
}

/// Batch-level state.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Create the batch or, when it exists, keep it (same id = same batch).
    async fn put_batch(&self, meta: &BatchMeta) -> Result<(), StoreError>;
    async fn batch(&self) -> Result<Option<BatchMeta>, StoreError>;
    /// Insert or replace a mailbox record.
    async fn put_mailbox(&self, record: &MailboxRecord) -> Result<(), StoreError>;
    async fn mailbox(&self, mailbox: &str) -> Result<Option<MailboxRecord>, StoreError>;
    /// All mailbox records ordered by CSV row.
    async fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError>;
}
