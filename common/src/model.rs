//! The shared vocabulary: servers, logins, mailbox jobs, checkpoints and outcomes.
//!
//! Everything here that derives `Serialize` is safe to put in a queue, a table or a report:
//! passwords live in [`Secret`] fields marked `#[serde(skip)]`.

use std::collections::{BTreeMap, BTreeSet};
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

/// Whether to ask a server for COMPRESS=DEFLATE (RFC 4978) after login.
///
/// `auto` by default (the server not on loopback). Measured (bench/RESULTS.md, 50 ms RTT):
/// through links of 20 Mbit/s each way the copy took 40 s with COMPRESS, 60 s without; at
/// 100 Mbit/s they were even; with no bandwidth limit it was slower (deflating costs CPU on
/// both ends, and this 2-core machine ran both servers too). Real migrations cross links that
/// many mailboxes share, so bandwidth is what runs short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    /// On when the server offers it and is not on loopback (where bandwidth costs nothing
    /// and deflating only spends CPU).
    #[default]
    Auto,
    /// On whenever the server offers it.
    On,
    /// Never.
    Off,
}

impl Compress {
    /// Whether to send COMPRESS DEFLATE to a server that offers it, at this peer address.
    pub fn wanted(self, peer_is_loopback: bool) -> bool {
        match self {
            Compress::Auto => !peer_is_loopback,
            Compress::On => true,
            Compress::Off => false,
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
    /// COMPRESS=DEFLATE where the server offers it.
    #[serde(default)]
    pub compress: Compress,
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
    /// `AUTHENTICATE XOAUTH2` with a bearer token (Microsoft 365, Gmail).
    Xoauth2,
    /// `AUTHENTICATE OAUTHBEARER` (RFC 7628) with a bearer token.
    Oauthbearer,
}

impl AuthMechanism {
    /// True for the mechanisms that sign in with an OAuth2 token.
    pub fn is_oauth2(self) -> bool {
        matches!(self, AuthMechanism::Xoauth2 | AuthMechanism::Oauthbearer)
    }

    /// The SASL name.
    pub fn sasl_name(self) -> &'static str {
        match self {
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Xoauth2 => "XOAUTH2",
            AuthMechanism::Oauthbearer => "OAUTHBEARER",
        }
    }
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
    /// Never serialized: filled in from the CSV (local) or the secret store (Lambda). With
    /// OAuth2, the credential the tokens are obtained with (client secret, service-account key,
    /// certificate and key), never a token.
    #[serde(skip)]
    pub password: Secret,
    /// Where this side's tokens come from, for the OAuth2 mechanisms. Names its secret, never
    /// holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<crate::oauth2::OAuth2Config>,
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

/// A Gmail message with several labels is in several label folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GmailLabels {
    /// Copied into each label folder (as Exchange's IMAP migration does).
    #[default]
    All,
    /// Copied once, into its first label folder (INBOX first, then in LIST order).
    First,
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
    /// Send each batch as one MULTIAPPEND (RFC 3502) where the destination offers it.
    #[serde(default = "yes")]
    pub multiappend: bool,
    /// Folders of one mailbox copied at once, each on its own pair of connections (counted
    /// in the per-host connection caps).
    #[serde(default = "one")]
    pub connections_per_mailbox: usize,
    /// Delta passes apply flag changes made on the source to the messages mailhaul copied.
    #[serde(default = "yes")]
    pub sync_flags: bool,
    /// Verify again, on every delta pass, folders that nothing changed since their last
    /// verified pass (off: they keep that verdict and cost one command each).
    #[serde(default)]
    pub reverify_unchanged: bool,
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
    /// Folders of other users' and shared namespaces (NAMESPACE) that the source account can
    /// see: `None` (default) lists them in the report as not copied; `Some("Shared")` copies
    /// them under that destination folder (`Shared/Other Users/bob/Archive`).
    #[serde(default)]
    pub shared_folders: Option<String>,
    /// On a source with an All Mail folder (Gmail): a message in several label folders is
    /// copied into each (`all`, default) or only into the first (`first`).
    #[serde(default)]
    pub gmail_labels: GmailLabels,
    /// A folder a pass completed with at least this many messages is opened (EXAMINE) at
    /// once by delta passes, not asked STATUS first: a big changed folder is opened once.
    #[serde(default = "big_folder_messages")]
    pub big_folder_messages: u64,
    /// Set by the runner, not a setting: this call copies only these source folders (one part
    /// of a mailbox split across copy functions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<FolderShare>,
}

/// The source folders (raw names) one part of a split mailbox copies. Every destination
/// folder has one writer: folders that go into the same destination folder are in one part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderShare {
    Only(BTreeSet<String>),
    /// Every folder but these (the first part: it also takes folders that appear later).
    AllBut(BTreeSet<String>),
    /// One UID range of one big folder; the folder's other ranges are other parts'.
    Range(UidRange),
}

impl FolderShare {
    pub fn includes(&self, source_raw: &str) -> bool {
        match self {
            FolderShare::Only(folders) => folders.contains(source_raw),
            FolderShare::AllBut(folders) => !folders.contains(source_raw),
            FolderShare::Range(range) => range.folder == source_raw,
        }
    }

    pub fn range(&self) -> Option<&UidRange> {
        match self {
            FolderShare::Range(range) => Some(range),
            _ => None,
        }
    }
}

/// Source UIDs `from..=to` of one folder, copied by one part of a split mailbox while other
/// parts copy the folder's other ranges into the same destination folder. The range keeps
/// its own checkpoint (`checkpoint_key`); the folder's ledger is shared (the ranges' UIDs
/// are disjoint), and every read of the checkpoints folds the ranges back into the folder's
/// ([`fold_ranges`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    /// Source folder, raw.
    pub folder: String,
    pub from: u32,
    /// `u32::MAX` for the top range: it also takes what arrives during the split.
    pub to: u32,
    /// Which split of the folder made it (1 for the first): a folder checkpoint counts the
    /// ranges of the splits up to its `splits_folded`, never twice.
    pub split: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        (self.from..=self.to).contains(&uid)
    }

    /// The UID set of the range from `after + 1` on, for UID FETCH.
    pub fn uid_set_after(&self, after: u32) -> String {
        let first = after.saturating_add(1).max(self.from);
        if self.to == u32::MAX {
            format!("{first}:*")
        } else {
            format!("{first}:{}", self.to)
        }
    }

    /// The checkpoint's key: the folder's name, the split and the range's start, apart by a
    /// control character no folder name has.
    pub fn checkpoint_key(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.folder, self.split, self.from)
    }
}

/// The checkpoints as saved → one per folder: the checkpoints of UID ranges are folded into
/// their folder's, split by split (a range not final yet leaves the folder incomplete from
/// its first unsettled UID: the ledger knows what above it is settled, so nothing is copied
/// twice). Reads of a store go through this; only a range's own part sees its checkpoint.
pub fn fold_ranges(saved: Vec<FolderCheckpoint>) -> Vec<FolderCheckpoint> {
    let (ranges, mut folders): (Vec<_>, Vec<_>) = saved.into_iter().partition(|c| c.range.is_some());
    if ranges.is_empty() {
        return folders;
    }
    let mut by_split: BTreeMap<(String, u32), Vec<FolderCheckpoint>> = BTreeMap::new();
    for range_cp in ranges {
        let range = range_cp.range.clone().expect("partitioned");
        by_split.entry((range.folder, range.split)).or_default().push(range_cp);
    }
    for ((folder, split), mut ranges) in by_split {
        let index = match folders.iter().position(|f| f.source_folder == folder) {
            Some(index) => index,
            None => {
                // The folder's first pass never reached it: the ranges are all there is.
                let first = &ranges[0];
                folders.push(FolderCheckpoint {
                    source_folder: folder.clone(),
                    destination_folder: first.destination_folder.clone(),
                    uid_validity: first.uid_validity,
                    ..FolderCheckpoint::default()
                });
                folders.len() - 1
            }
        };
        let whole = &mut folders[index];
        if split <= whole.splits_folded {
            continue;
        }
        ranges.retain(|r| r.uid_validity == whole.uid_validity || whole.uid_validity == 0);
        ranges.sort_by_key(|r| r.range.as_ref().map_or(0, |r| r.from));
        fold_split(whole, &ranges, split);
    }
    folders.sort_by(|a, b| a.source_folder.cmp(&b.source_folder));
    folders
}

fn fold_split(whole: &mut FolderCheckpoint, ranges: &[FolderCheckpoint], split: u32) {
    // The first UID no range has settled everything up to: a missing range (never started)
    // or one not complete.
    // The ranges start where the folder's checkpoint stood at the split.
    let mut expected = whole.last_uid + 1;
    let mut settled_to = None;
    for r in ranges {
        let range = r.range.as_ref().expect("a range");
        if range.from > expected {
            settled_to = Some(expected - 1);
            break;
        }
        if !r.complete {
            settled_to = Some(r.last_uid.max(range.from - 1));
            break;
        }
        if range.to == u32::MAX {
            break;
        }
        expected = range.to + 1;
    }
    let top_done =
        settled_to.is_none() && ranges.last().is_some_and(|r| r.range.as_ref().is_some_and(|g| g.to == u32::MAX));
    if whole.uid_validity == 0 {
        whole.uid_validity = ranges.first().map_or(0, |r| r.uid_validity);
    }
    for r in ranges {
        whole.counts.add(&r.counts);
        if r.destination_uid_validity != 0 {
            whole.destination_uid_validity = r.destination_uid_validity;
        }
        if let Some((low, high)) = r.in_flight {
            whole.in_flight = Some(match whole.in_flight {
                Some((l, h)) => (l.min(low), h.max(high)),
                None => (low, high),
            });
            whole.fence = match (whole.fence, r.fence) {
                (Some((v, a)), Some((w, b))) if v == w => Some((v, a.min(b))),
                (None, fence) => fence,
                _ => None,
            };
        }
    }
    if top_done {
        let top = ranges.last().expect("not empty");
        whole.last_uid = whole.last_uid.max(top.last_uid);
        whole.uid_next = top.uid_next;
        whole.destination_uid_next = ranges.iter().map(|r| r.destination_uid_next).max().unwrap_or(0);
        whole.complete = whole.in_flight.is_none();
    } else {
        whole.last_uid = whole.last_uid.max(settled_to.unwrap_or(0));
        whole.complete = false;
    }
    // Flags were not synced during the split; the next pass compares them all.
    whole.highest_modseq = None;
    whole.verify = None;
    whole.splits_folded = split;
}

/// When the copy function splits a mailbox across functions: one whose folders still to copy
/// are estimated above `above_bytes` after its first pass becomes up to `max_parts` parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRule {
    /// 0: never split.
    pub above_bytes: u64,
    pub max_parts: usize,
}

impl Default for SplitRule {
    fn default() -> Self {
        // A Lambda pass copies a few GB in its 15 minutes: a part is worth a function when it
        // holds several passes' worth.
        SplitRule { above_bytes: 10 * 1024 * 1024 * 1024, max_parts: 8 }
    }
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
            multiappend: true,
            sync_flags: true,
            reverify_unchanged: false,
            connections_per_mailbox: 2,
            batch_bytes: 8 * 1024 * 1024,
            batch_messages: 200,
            source_prefix: None,
            destination_prefix: None,
            shared_folders: None,
            gmail_labels: GmailLabels::All,
            big_folder_messages: big_folder_messages(),
            share: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

fn big_folder_messages() -> u64 {
    10_000
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
    /// The destination folder's (UIDVALIDITY, UIDNEXT) before the in-flight batch was sent:
    /// anything of that batch that landed has a UID at or above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<(u32, u32)>,
    /// The destination folder's UIDVALIDITY the ledger's destination UIDs belong to.
    #[serde(default)]
    pub destination_uid_validity: u32,
    /// The destination's UIDNEXT when the folder was last completed: a delta pass only looks
    /// at destination messages from there on.
    #[serde(default)]
    pub destination_uid_next: u32,
    /// Times the source folder was rescanned because its UIDVALIDITY changed.
    #[serde(default)]
    pub rescans: u32,
    pub counts: FolderCounts,
    /// True when the last pass reached the end of the folder.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verdict>,
    /// Set for a folder that is listed but not copied, with why (another user's or a shared
    /// folder); such a checkpoint carries nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_copied: Option<String>,
    /// Why the destination folder's name differs from the source's (a character the
    /// destination refuses), for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed: Option<String>,
    /// Set on the checkpoint of one UID range of the folder (a split mailbox's part): its
    /// `source_folder` is then [`UidRange::checkpoint_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<UidRange>,
    /// The folder's splits into UID ranges counted in this checkpoint.
    #[serde(default)]
    pub splits_folded: u32,
}

impl FolderCheckpoint {
    /// The folder whose ledger this checkpoint counts (a range's is its folder's).
    pub fn ledger_folder(&self) -> &str {
        self.range.as_ref().map_or(&self.source_folder, |r| &r.folder)
    }
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
    /// Source messages the source server could not deliver (now; retried by the next pass).
    #[serde(default)]
    pub unreadable: u64,
    /// Destination messages whose flags were updated from the source by delta passes.
    #[serde(default)]
    pub flags_updated: u64,
    /// Gmail's All Mail: messages left to the label folders that hold them (copied there).
    #[serde(default)]
    pub in_label_folder: u64,
}

impl FolderCounts {
    /// Source messages this folder's passes have settled, however (about the folder's size).
    pub fn messages(&self) -> u64 {
        self.copied
            + self.skipped_duplicate
            + self.skipped_too_big
            + self.skipped_by_date
            + self.refused
            + self.in_label_folder
    }

    pub fn add(&mut self, other: &FolderCounts) {
        self.copied += other.copied;
        self.skipped_duplicate += other.skipped_duplicate;
        self.skipped_too_big += other.skipped_too_big;
        self.skipped_by_date += other.skipped_by_date;
        self.refused += other.refused;
        self.bytes += other.bytes;
        self.unreadable += other.unreadable;
        self.flags_updated += other.flags_updated;
        self.in_label_folder += other.in_label_folder;
    }

    /// Source messages not in the destination, each listed in the report with its reason.
    pub fn not_copied(&self) -> u64 {
        self.skipped_too_big + self.refused + self.unreadable
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
    /// The source server could not deliver the message (its words in the detail).
    Unreadable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooBig => "too_big",
            SkipReason::Refused => "refused",
            SkipReason::Unreadable => "unreadable",
        }
    }

    /// What to do about a message left out for this reason (shown next to it in report.html).
    pub fn hint(self) -> &'static str {
        match self {
            SkipReason::TooBig => "over [copy] max_message_size: raise the limit if the destination accepts larger messages and run again, or move the message by hand",
            SkipReason::Refused => "the destination refused it (its words are shown): fix what they name (size, quota, content) and run again, or move the message by hand",
            SkipReason::Unreadable => "the source server could not deliver it: run again (every pass tries it again); if it stays unreadable, repair the source mailbox (Dovecot: doveadm force-resync) or export the message by hand",
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

#[cfg(test)]
mod range_tests {
    use super::*;

    fn range_checkpoint(from: u32, to: u32, last_uid: u32, complete: bool, copied: u64) -> FolderCheckpoint {
        let range = UidRange { folder: "INBOX".into(), from, to, split: 1 };
        FolderCheckpoint {
            source_folder: range.checkpoint_key(),
            uid_validity: 7,
            last_uid,
            uid_next: last_uid + 1,
            complete,
            counts: FolderCounts { copied, ..FolderCounts::default() },
            range: Some(range),
            ..FolderCheckpoint::default()
        }
    }

    #[test]
    fn ranges_fold_into_their_folder_once_and_from_the_first_unsettled_uid() {
        let whole = FolderCheckpoint {
            source_folder: "INBOX".into(),
            uid_validity: 7,
            last_uid: 100,
            highest_modseq: Some(5),
            counts: FolderCounts { copied: 100, ..FolderCounts::default() },
            ..FolderCheckpoint::default()
        };
        let other = FolderCheckpoint { source_folder: "Sent".into(), complete: true, ..FolderCheckpoint::default() };
        let first = range_checkpoint(101, 400, 400, true, 300);
        let mut middle = range_checkpoint(401, 700, 550, false, 150);
        middle.in_flight = Some((551, 560));
        middle.fence = Some((9, 900));

        // The top range never saved: the folder stands at the middle one's last UID.
        let folded = fold_ranges(vec![whole.clone(), first.clone(), middle.clone(), other.clone()]);
        assert_eq!(folded.len(), 2);
        let inbox = &folded[0];
        assert_eq!(inbox.source_folder, "INBOX");
        assert_eq!((inbox.last_uid, inbox.complete), (550, false));
        assert_eq!((inbox.in_flight, inbox.fence), (Some((551, 560)), Some((9, 900))));
        assert_eq!(inbox.counts.copied, 550);
        assert_eq!((inbox.highest_modseq, inbox.splits_folded), (None, 1));
        assert_eq!(folded[1], other);

        // A missing range in the middle: the folder stands below it.
        let gap = fold_ranges(vec![whole.clone(), first.clone(), range_checkpoint(701, u32::MAX, 900, true, 200)]);
        assert_eq!((gap[0].last_uid, gap[0].complete), (400, false));

        // All done: complete up to the top range's last UID, its UIDNEXT.
        let mut middle_done = range_checkpoint(401, 700, 700, true, 300);
        middle_done.destination_uid_next = 800;
        let top = range_checkpoint(701, u32::MAX, 1200, true, 500);
        let done = fold_ranges(vec![whole.clone(), first.clone(), middle_done.clone(), top.clone()]);
        let inbox = &done[0];
        assert_eq!((inbox.last_uid, inbox.uid_next, inbox.complete), (1200, 1201, true));
        assert_eq!(inbox.counts.copied, 1200);
        assert_eq!(inbox.destination_uid_next, 800);

        // Saved folded (as the next whole pass does), the ranges are not counted again.
        let again = fold_ranges(vec![inbox.clone(), first, middle_done, top]);
        assert_eq!(again[0], *inbox);
    }
}
