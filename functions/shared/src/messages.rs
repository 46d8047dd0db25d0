//! What travels on the queues and the event bus. None of it carries a password:
//! `MailboxJob` skips them when serialized, and the secrets are named, not copied.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mailhaul_common::model::{CopyOptions, MailboxJob, SplitRule};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One mailbox to copy (a pass of it): the body of a jobs-queue message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobMessage {
    pub batch: String,
    /// Pass number of this mailbox; a message older than the mailbox's current pass is a
    /// stale duplicate and is dropped.
    pub seq: u32,
    pub job: MailboxJob,
    pub options: CopyOptions,
    /// Name of the secret holding this mailbox's passwords.
    pub secret: String,
    /// Cap on connections to the job's source host across all copy functions.
    pub max_connections_per_source_host: usize,
    /// Secrets holding the source / destination admin (master user) password, for logins
    /// the CSV gave no password of their own (the Exchange and TrekMail forms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_admin_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_admin_secret: Option<String>,
    /// When this mailbox is split across copy functions.
    #[serde(default)]
    pub split: SplitRule,
    /// Set on the jobs of a split mailbox's parts (their folders are in `options.share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

/// Which part of a split mailbox a job copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 0-based; part 0 also takes folders that appear after the split.
    pub index: usize,
    pub of: usize,
}

impl JobMessage {
    /// What the job holds in the table (its item, lease and pass number): the mailbox, or
    /// one part of it.
    pub fn unit(&self) -> String {
        match self.part {
            Some(part) => part_unit(&self.job.mailbox, part),
            None => self.job.mailbox.clone(),
        }
    }
}

/// The table name of one part of a split mailbox: the mailbox (a destination login) with
/// ` (part 2 of 3)` after it, which no real login ends with.
pub fn part_unit(mailbox: &str, part: Part) -> String {
    format!("{mailbox} (part {} of {})", part.index + 1, part.of)
}

/// What starts the names of a split mailbox's parts.
pub fn parts_prefix(mailbox: &str) -> String {
    format!("{mailbox} (part ")
}

/// "Every mailbox of this batch is final": the body of a finalize-queue message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizeMessage {
    pub batch: String,
}

/// The passwords of one mailbox as stored in a secret chunk (`{mailbox: passwords}`).
/// No `Debug`: nothing may print it.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct StoredPasswords {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

/// A secret chunk: the passwords of several mailboxes, under the 64 KB limit.
pub type SecretChunk = BTreeMap<String, StoredPasswords>;

/// Event detail-type: a CSV was refused.
pub const BATCH_REJECTED: &str = "BatchRejected";
/// Event detail-type: one mailbox reached done or failed.
pub const MAILBOX_COMPLETED: &str = "MailboxCompleted";
/// Event detail-type: every mailbox of a batch is final and the reports are written.
pub const BATCH_COMPLETED: &str = "BatchCompleted";

/// Event detail-type: a batch's delta schedule ended (cut-over reached or stopped) and its
/// passwords were deleted.
pub const DELTA_SCHEDULE_ENDED: &str = "DeltaScheduleEnded";

/// Detail of `DeltaScheduleEnded`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaScheduleEnded {
    pub batch: String,
    /// Delta passes the schedule started.
    pub deltas: u64,
    /// `stopped` (mailhaul submit --stop) or `until` (the cut-over time was reached).
    pub reason: String,
}

/// Detail of `BatchRejected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRejected {
    pub batch: String,
    /// `s3://bucket/incoming/...csv`
    pub csv: String,
    /// Number of errors found.
    pub errors: usize,
    /// The first few problems, as `row N, column: message`.
    pub problems: Vec<String>,
    pub report_json: String,
    pub report_txt: String,
}

/// Detail of `MailboxCompleted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MailboxCompleted {
    pub batch: String,
    pub mailbox: String,
    pub row: usize,
    /// `done` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub hint: Option<String>,
    pub messages_copied: u64,
    pub bytes_copied: u64,
    pub seconds: f64,
    pub passes: u32,
}

/// Detail of `BatchCompleted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchCompleted {
    pub batch: String,
    /// For a delta pass: the batch whose rows it copies again (only what is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_of: Option<String>,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub messages_copied: u64,
    pub bytes_copied: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub report_csv: String,
    pub report_json: String,
    /// `s3://` address of report.html, the report for people.
    #[serde(default)]
    pub report_html: String,
    /// A presigned HTTPS link to report.html: a browser opens it without AWS credentials.
    #[serde(default)]
    pub report_link: String,
    /// When `report_link` stops working (the stack's ReportLinkSeconds from finalizing).
    #[serde(default)]
    pub report_link_expires_at: DateTime<Utc>,
    pub failed_csv: String,
    /// For a batch with delta passes scheduled (`[schedule]`): when the next one starts; its
    /// passwords stay in Secrets Manager until the schedule ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_delta_at: Option<DateTime<Utc>>,
}

/// The batch id of an uploaded CSV: its file name (sanitized) and a digest of key and
/// content, so the same object delivered or uploaded twice is the same batch, and an edited
/// file is a new one. `mailhaul submit` computes it the same way to print it.
pub fn batch_id(key: &str, content: &[u8]) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    let stem = name.strip_suffix(".csv").or_else(|| name.strip_suffix(".CSV")).unwrap_or(name);
    let mut clean: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    if clean.is_empty() {
        clean.push_str("batch");
    }
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(content);
    let digest = hex::encode(h.finalize());
    format!("{clean}-{}", &digest[..10])
}

/// The key of a mailbox pair (source server + login, destination server + login): checkpoints
/// and the ledger live under it, so any later batch with the same pair is a delta pass.
pub fn pair_key(job: &MailboxJob) -> String {
    let mut h = Sha256::new();
    for side in [&job.source, &job.destination] {
        h.update(side.server.host.to_ascii_lowercase().as_bytes());
        h.update([0]);
        h.update(side.server.port.to_be_bytes());
        h.update(side.login.user.as_bytes());
        h.update([0]);
        h.update(side.login.authz.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
    }
    h.update(job.user_root.as_deref().unwrap_or("").as_bytes());
    hex::encode(h.finalize())[..32].to_string()
}

/// The id of a delta pass: the same file uploaded again after its batch `batch` completed.
/// `upload` tells the uploads apart (the S3 event's sequencer), so a retried invocation of
/// one upload makes one batch.
pub fn delta_batch_id(batch: &str, upload: &str) -> String {
    let digest = hex::encode(Sha256::digest(upload.as_bytes()));
    format!("{batch}-delta-{}", &digest[..8])
}

/// Decodes an S3 event key: URL-encoded, with `+` for spaces.
pub fn decode_s3_key(raw: &str) -> String {
    let plus = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_keys_are_decoded() {
        assert_eq!(decode_s3_key("incoming/sales+team%2Bq3.csv"), "incoming/sales team+q3.csv");
        assert_eq!(decode_s3_key("incoming%2Fbatch.csv"), "incoming/batch.csv");
        assert_eq!(decode_s3_key("incoming/Migr%C3%A9.csv"), "incoming/Migré.csv");
    }

    #[test]
    fn batch_id_is_stable_and_content_sensitive() {
        let a = batch_id("incoming/Sales Team.csv", b"x");
        assert_eq!(a, batch_id("incoming/Sales Team.csv", b"x"));
        assert!(a.starts_with("sales-team-"), "{a}");
        assert_ne!(a, batch_id("incoming/Sales Team.csv", b"y"));
        assert_ne!(a, batch_id("incoming/other.csv", b"x"));
        assert_eq!(batch_id("incoming/.csv", b"").split('-').next(), Some("batch"));
    }
}
