//! The shared vocabulary: servers, logins, mailbox jobs, checkpoints and outcomes.
//!
//! Everything here that derives `Serialize` is safe to put in a queue, a table or a report:
//! passwords live in [`Secret`] fields marked `#[serde(skip)]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// How the TCP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (port 993).
    #[default]
    Tls,
    /// Plain TCP upgraded with STARTTLS (port 143).
    Starttls,
    /// No encryption at all: only when configured explicitly.
    Plain,
}

impl Security {
    pub fn parse(value: &str) -> Option<Security> {
        match value.trim().to_ascii_lowercase().as_str() {
            "tls" | "ssl" | "imaps" => Some(Security::Tls),
            "starttls" => Some(Security::Starttls),
            "plain" | "none" => Some(Security::Plain),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Security::Tls => 993,
            Security::Starttls | Security::Plain => 143,
        }
    }
}

/// One IMAP server as the engine connects to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Extra CA certificates (PEM) trusted for this server, e.g. a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Explicit per-endpoint opt-out of certificate verification (self-signed servers).
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

/// How to authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    /// `LOGIN user password`: the user string is sent verbatim (admin forms such as
    /// `user*admin` or `Domain/Admin/User` work this way).
    #[default]
    Login,
    /// `AUTHENTICATE PLAIN` with an authorization identity (`authz`) when one is set.
    Plain,
}

/// Credentials for one side of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The string sent as the login (authentication identity for AUTHENTICATE PLAIN).
    pub user: String,
    /// The authorization identity: the mailbox to act as, when an admin logs in for a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<String>,
    #[serde(default)]
    pub mechanism: AuthMechanism,
    /// Never serialized: filled in from the CSV (local) or the secret store (Lambda).
    #[serde(skip)]
    pub password: Secret,
}

/// One side of a job: where and as whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub server: ServerSpec,
    pub login: Login,
}

/// One mailbox to migrate: one valid CSV row with the batch settings applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxJob {
    /// 1-based data row in the CSV (the header is row 0), for messages a user can act on.
    pub row: usize,
    /// The key of this mailbox in the state: the destination mailbox, unique in a batch.
    pub mailbox: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// Source folder root (Exchange's UserRoot), e.g. `/users/alberta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_root: Option<String>,
}

/// Which folders to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FolderStrategy {
    /// Every selectable folder.
    #[default]
    All,
    /// Every folder but Junk and Trash.
    Standard,
}

/// Engine settings that apply to every mailbox of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOptions {
    pub folders: FolderStrategy,
    /// Glob patterns on source folder names (`/`-separated, decoded); empty means all.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Source folder name (decoded, `/`-separated) -> destination name (`/`-separated).
    pub folder_map: BTreeMap<String, String>,
    /// Only messages with an INTERNALDATE on or after this day (`YYYY-MM-DD`).
    pub since: Option<chrono::NaiveDate>,
    /// Larger messages are skipped and reported.
    pub max_message_size: u64,
    /// Skip messages whose (Message-ID, size) already exist in the destination folder.
    pub skip_duplicates: bool,
    /// Use LITERAL+/LITERAL- pipelined APPEND where the destination offers it.
    pub pipelining: bool,
    /// Bound on body bytes held in memory per mailbox at once.
    pub batch_bytes: u64,
    /// Bound on messages fetched per round trip.
    pub batch_messages: usize,
    /// Personal-namespace prefix of each side (`INBOX.` on cPanel/Courier); `None` detects
    /// it from the folder list, `Some("")` forces none.
    #[serde(default)]
    pub source_prefix: Option<String>,
    #[serde(default)]
    pub destination_prefix: Option<String>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            folders: FolderStrategy::All,
            include: Vec::new(),
            exclude: Vec::new(),
            folder_map: BTreeMap::new(),
            since: None,
            max_message_size: 35 * 1024 * 1024,
            skip_duplicates: true,
            pipelining: true,
            batch_bytes: 8 * 1024 * 1024,
            batch_messages: 200,
            source_prefix: None,
            destination_prefix: None,
        }
    }
}

/// Progress of one source folder, saved after every confirmed batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCheckpoint {
    /// Source folder name as the server spells it (raw, modified UTF-7).
    pub source_folder: String,
    /// Destination folder name as the server spells it.
    pub destination_folder: String,
    pub uid_validity: u32,
    /// Every source UID up to this one is copied, skipped or recorded.
    pub last_uid: u32,
    /// Source UIDNEXT when the folder was last completed: unchanged means nothing new.
    pub uid_next: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_modseq: Option<u64>,
    /// UIDs whose APPEND was sent but not confirmed: reconciled against the destination
    /// before anything else is copied, so a cut-off batch never lands twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<(u32, u32)>,
    pub counts: FolderCounts,
    /// True when the last pass reached the end of the folder.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verdict>,
}

/// Message tallies, cumulative over every pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCounts {
    pub copied: u64,
    pub skipped_duplicate: u64,
    pub skipped_too_big: u64,
    pub skipped_by_date: u64,
    pub refused: u64,
    pub bytes: u64,
}

impl FolderCounts {
    pub fn add(&mut self, other: &FolderCounts) {
        self.copied += other.copied;
        self.skipped_duplicate += other.skipped_duplicate;
        self.skipped_too_big += other.skipped_too_big;
        self.skipped_by_date += other.skipped_by_date;
        self.refused += other.refused;
        self.bytes += other.bytes;
    }
}

/// The verification of one folder after copying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    pub source_messages: u64,
    pub destination_messages: u64,
    /// Source messages deliberately not copied (too big, refused, before `since`).
    pub not_copied: u64,
    pub detail: String,
}

/// Why a message is not in the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    TooBig,
    Refused,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooBig => "too_big",
            SkipReason::Refused => "refused",
        }
    }
}

/// A message listed in the report instead of copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMessage {
    /// Source folder (decoded, for people).
    pub folder: String,
    pub uid: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub reason: SkipReason,
    /// The server's reply, or why mailhaul skipped it.
    pub detail: String,
}

/// Final state of a mailbox in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxStatus {
    Pending,
    Running,
    /// Everything copied (or listed in the report with its reason).
    Done,
    /// Some folders copied, the run stopped before the end (interrupted).
    Partial,
    Failed,
}

impl MailboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxStatus::Pending => "pending",
            MailboxStatus::Running => "running",
            MailboxStatus::Done => "done",
            MailboxStatus::Partial => "partial",
            MailboxStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<MailboxStatus> {
        Some(match value {
            "pending" => MailboxStatus::Pending,
            "running" => MailboxStatus::Running,
            "done" => MailboxStatus::Done,
            "partial" => MailboxStatus::Partial,
            "failed" => MailboxStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, MailboxStatus::Done | MailboxStatus::Failed)
    }
}
