//! The copy engine: one mailbox, folder by folder, time-boxed and resumable, exactly once.
//!
//! The source is only ever EXAMINEd and read with BODY.PEEK; nothing is stored, deleted or
//! expunged on either side. Every source message dealt with gets a ledger entry (see
//! [`crate::ledger`]): its destination UID from APPENDUID, or why it is not copied. Before a
//! batch is sent its UIDs are marked in flight together with a fence (the destination's
//! UIDNEXT); a cut-off batch is reconciled on resume against what arrived above the fence,
//! once the destination is quiet, so nothing lands twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{CopyError, Side};
use crate::folders::{self, DestinationLayout, FolderPlan, ListedFolder, Role};
use crate::imap::append::{self, AppendMessage, Appended, LiteralMode, MultiAppended};
use crate::imap::conn::{classify, throttle_hint};
use crate::imap::create::Created;
use crate::imap::fetch::{self, Completion, Fetched};
use crate::imap::namespace::{Kind as NamespaceKind, Namespace, Namespaces};
use crate::imap::{connect, Caps, Session};
use crate::ledger::{self, FolderLedger, Identified, Outcome, Run};
use crate::model::{
    CopyOptions, Endpoint, FolderCheckpoint, FolderCounts, GmailLabels, MailboxJob, SkipReason, SkippedMessage,
    UidRange, Verdict,
};
use crate::plan::{self, Action, MessageMeta};
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

/// Another sink, counting the messages confirmed on the way: whether a pass that ended in an
/// error got anywhere first.
pub struct CountedProgress<'a> {
    inner: &'a dyn ProgressSink,
    copied: std::sync::atomic::AtomicU64,
}

impl<'a> CountedProgress<'a> {
    pub fn new(inner: &'a dyn ProgressSink) -> Self {
        CountedProgress { inner, copied: Default::default() }
    }

    /// Messages confirmed by the destination so far.
    pub fn copied(&self) -> u64 {
        self.copied.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ProgressSink for CountedProgress<'_> {
    fn planned(&self, mailbox: &str, folder: &str, messages: u64, bytes: u64) {
        self.inner.planned(mailbox, folder, messages, bytes);
    }
    fn copied(&self, mailbox: &str, folder: &str, messages: u64, bytes: u64) {
        self.copied.fetch_add(messages, std::sync::atomic::Ordering::Relaxed);
        self.inner.copied(mailbox, folder, messages, bytes);
    }
}

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

/// The header fields that identify a message for duplicate detection.
const IDENTITY_FIELDS: &str = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)]";

/// How far past its deadline a call may run: the time to drop connections and return.
/// Everything saved is consistent at any point, so the copy is simply abandoned there.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// After a cut-off batch, the destination may still be storing what it received: wait until
/// its UIDNEXT stays the same for this long before reading it ...
const QUIET_FOR: Duration = Duration::from_millis(1500);
/// ... but not longer than this in all.
const QUIET_AT_MOST: Duration = Duration::from_secs(30);

/// Destination messages of unknown origin whose identity verification checks for duplicates.
const DUPLICATE_CHECK_LIMIT: usize = 200;

/// Copy one mailbox until done, the deadline, or the stop signal.
///
/// Errors: ask [`CopyError::is_retryable`]; checkpoints are saved before any error returns
/// so a retry resumes. The call returns by the deadline plus a second or two, whatever the
/// servers do: a batch still running then is abandoned and reconciled by the next call.
pub async fn copy_mailbox(
    job: &MailboxJob,
    options: &CopyOptions,
    store: &dyn CheckpointStore,
    progress: &dyn ProgressSink,
    timebox: &TimeBox,
) -> Result<MailboxOutcome, CopyError> {
    // A part copying one UID range of a folder keeps that range's checkpoint.
    let range_store = options.share.as_ref().and_then(|s| s.range()).map(|range| RangeStore { inner: store, range });
    let store: &dyn CheckpointStore = match &range_store {
        Some(range_store) => range_store,
        None => store,
    };
    let hard_stop = timebox.deadline.map(|d| d + DEADLINE_GRACE);
    let connected = Copier::connect(job, options, store, progress, timebox);
    let mut lead = match hard_stop {
        Some(at) => match tokio::time::timeout_at(at, connected).await {
            Ok(connected) => connected?,
            Err(_) => return Ok(MailboxOutcome::more_to_do(FolderCounts::default())),
        },
        None => connected.await?,
    };
    let mut helpers = Vec::new();
    let result = match hard_stop {
        Some(at) => match tokio::time::timeout_at(at, run_all(&mut lead, &mut helpers)).await {
            Ok(result) => result,
            Err(_) => {
                // Mid-command: the in-flight marks stay, the next call reconciles.
                tracing::info!(mailbox = %job.mailbox, "deadline reached mid-batch: abandoned, to be resumed");
                lead.abandoned = true;
                lead.outcome.status = CopyStatus::MoreToDo;
                Ok(())
            }
        },
        None => run_all(&mut lead, &mut helpers).await,
    };
    for helper in &helpers {
        lead.outcome.this_pass.add(&helper.outcome.this_pass);
    }
    // Be polite, but a failed LOGOUT changes nothing, and after an abandoned batch (a literal
    // half sent: LOGOUT would go out as part of the message) or a broken connection the
    // sessions are simply dropped.
    if !lead.abandoned && result.is_ok() {
        let polite = Duration::from_secs(5);
        let pairs = std::iter::once(&mut lead).chain(helpers.iter_mut()).filter(|c| !c.abandoned);
        futures::future::join_all(pairs.map(|copier| async move {
            let _ = tokio::time::timeout(polite, copier.source.logout()).await;
            let _ = tokio::time::timeout(polite, copier.destination.logout()).await;
        }))
        .await;
    }
    result.map(|()| lead.outcome)
}

/// One source folder as a decision to split the mailbox sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyedFolder {
    /// Raw names: the checkpoint key, and the folder it is copied into.
    pub source: String,
    pub destination: String,
    /// Messages in the source folder now.
    pub messages: u64,
    /// Messages its checkpoint has settled (copied, skipped or refused).
    pub settled: u64,
    pub complete: bool,
    /// Where a split into UID ranges would start: past the checkpoint's last UID, below the
    /// source's UIDNEXT (0: not said). A folder with a batch in flight is not split in ranges.
    #[serde(default)]
    pub last_uid: u32,
    #[serde(default)]
    pub uid_next: u32,
    #[serde(default)]
    pub in_flight: bool,
    /// Splits into UID ranges its checkpoint has counted: the next is one more.
    #[serde(default)]
    pub splits: u32,
}

/// What is left to copy of a mailbox, folder by folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    pub folders: Vec<SurveyedFolder>,
    /// The source keeps one message in several folders (Gmail's All Mail and labels): its
    /// folders depend on each other and are not split.
    pub labels_are_folders: bool,
    /// Mean size of the messages copied so far (0: none yet).
    pub mean_message_bytes: u64,
}

/// Lists the mailbox's folders as a pass would (and creates the missing destination folders)
/// and asks the source how many messages each holds: a STATUS per folder, all in one round
/// trip, nothing opened.
pub async fn survey_mailbox(
    job: &MailboxJob,
    options: &CopyOptions,
    store: &dyn CheckpointStore,
) -> Result<Survey, CopyError> {
    let timebox = TimeBox::unlimited();
    let options = CopyOptions { share: None, ..options.clone() };
    let mut copier = Copier::connect(job, &options, store, &NoProgress, &timebox).await?;
    let prepared = copier.prepare().await?;
    let checkpoints = checkpoints_by_folder(store, &job.mailbox).await?;
    let names: Vec<String> = prepared.plans.iter().map(|p| p.source_raw.clone()).collect();
    let counts = crate::imap::status::message_counts(&mut copier.source, &mut copier.source_tags, &names)
        .await
        .map_err(|detail| copier.lost(Side::Source, detail))?;
    let mut folders = Vec::new();
    let (mut copied, mut bytes) = (0, 0);
    for (plan, count) in prepared.plans.iter().zip(counts) {
        let checkpoint = checkpoints.get(&plan.source_raw);
        let counts = checkpoint.map(|c| c.counts).unwrap_or_default();
        copied += counts.copied;
        bytes += counts.bytes;
        folders.push(SurveyedFolder {
            source: plan.source_raw.clone(),
            destination: destination_of(plan, checkpoint, &prepared.layout, &prepared.existing),
            // Not counted (refused): no work the split can weigh; the first part takes it.
            messages: u64::from(count.map_or(0, |c| c.messages)),
            last_uid: checkpoint.map_or(0, |c| c.last_uid),
            uid_next: count.map_or(0, |c| c.uid_next),
            in_flight: checkpoint.is_some_and(|c| c.in_flight.is_some()),
            splits: checkpoint.map_or(0, |c| c.splits_folded),
            settled: counts.copied
                + counts.skipped_duplicate
                + counts.skipped_too_big
                + counts.skipped_by_date
                + counts.refused,
            complete: checkpoint.is_some_and(|c| c.complete),
        });
    }
    let polite = Duration::from_secs(5);
    let _ = tokio::time::timeout(polite, copier.source.logout()).await;
    let _ = tokio::time::timeout(polite, copier.destination.logout()).await;
    Ok(Survey {
        folders,
        labels_are_folders: prepared.has_all_mail,
        mean_message_bytes: bytes.checked_div(copied).unwrap_or(0),
    })
}

/// Plan with the lead's connections, copy folders on `connections_per_mailbox` pairs of
/// connections at once (each takes the next folder when done with one), verify with the lead.
async fn run_all<'a>(lead: &mut Copier<'a>, helpers: &mut Vec<Copier<'a>>) -> Result<(), CopyError> {
    let prepared = lead.prepare().await?;
    let checkpoints = checkpoints_by_folder(lead.store, &lead.job.mailbox).await?;
    // One pair per folder at most; a lone folder not copied whole yet gets them all, as
    // they help append its batches.
    let lone_to_copy = match prepared.plans.as_slice() {
        [only] => checkpoints.get(&only.source_raw).is_none_or(|c| !c.complete),
        _ => false,
    };
    let folders = if lone_to_copy { usize::MAX } else { prepared.plans.len() };
    let wanted = lead.options.connections_per_mailbox.min(folders).saturating_sub(1);
    let queue = std::sync::Mutex::new((0..prepared.plans.len()).collect::<VecDeque<_>>());
    let checkpoints = std::sync::Mutex::new(checkpoints);
    // The lead starts on the folders at once; the other pairs log in side by side meanwhile
    // (at 50 ms RTT a pair's TLS and login take most of a second) and join as they can.
    let (job, options, store, progress, timebox) = (lead.job, lead.options, lead.store, lead.progress, lead.timebox);
    let (prepared, queue, checkpoints) = (&prepared, &queue, &checkpoints);
    let others = async {
        let connected =
            futures::future::join_all((0..wanted).map(|_| Copier::connect(job, options, store, progress, timebox)))
                .await;
        for helper in connected {
            match helper {
                Ok(helper) => helpers.push(helper),
                // A server's per-user connection limit: go on with fewer.
                Err(e) => {
                    tracing::info!(mailbox = %job.mailbox, error = %e, "no further connection pair: copying with fewer")
                }
            }
        }
        futures::future::join_all(helpers.iter_mut().map(|helper| helper.work(prepared, queue, checkpoints))).await
    };
    let (lead_end, other_ends) = tokio::join!(lead.work(prepared, queue, checkpoints), others);
    let ends = std::iter::once(lead_end).chain(other_ends);
    let mut folder_errors = Vec::new();
    let mut time_up = false;
    for end in ends {
        let end = end?;
        folder_errors.extend(end.folder_errors);
        time_up |= end.time_up;
    }
    if time_up {
        return Ok(());
    }
    if !folder_errors.is_empty() {
        return Err(CopyError::Folder {
            side: Side::Destination,
            folder: format!("{} folder(s)", folder_errors.len()),
            detail: folder_errors.join("; "),
        });
    }
    if lead.options.share.as_ref().is_some_and(|s| s.range().is_some()) {
        // One UID range of a folder: the folder is verified whole by its next whole pass,
        // once every range is done (the others are still appending now).
        lead.outcome.status = CopyStatus::Done;
        return Ok(());
    }
    let unchanged: HashSet<String> =
        std::iter::once(&*lead).chain(helpers.iter()).flat_map(|c| c.unchanged.iter().cloned()).collect();
    // Each destination folder is verified by the pair that still has it open (no second open
    // of a big folder on either side), the others by each pair in turn; the pairs verify side
    // by side (at 50 ms RTT a folder costs a few round trips).
    let open: Vec<Option<String>> =
        std::iter::once(&*lead).chain(helpers.iter()).map(|c| c.destination_selected.clone()).collect();
    let saved = checkpoints_by_folder(lead.store, &lead.job.mailbox).await?;
    let mut in_turn = (0..open.len()).cycle();
    let owners: HashMap<String, usize> = destination_folders(&prepared.plans, &prepared.layout, &saved)
        .into_keys()
        .map(|destination| {
            let open_in = open.iter().position(|o| o.as_deref() == Some(destination.as_str()));
            let owner = open_in.or_else(|| in_turn.next()).unwrap_or(0);
            (destination, owner)
        })
        .collect();
    let verifier = |destination: &str| owners.get(destination).copied().unwrap_or(0);
    let (prepared, unchanged, verifier) = (&prepared, &unchanged, &verifier);
    let verified = futures::future::join_all(std::iter::once(&mut *lead).chain(helpers.iter_mut()).enumerate().map(
        |(index, copier)| {
            let mine = move |destination: &str| verifier(destination) == index;
            async move { copier.verify(&prepared.plans, &prepared.layout, unchanged, &mine).await }
        },
    ))
    .await;
    let mut verdicts = Vec::new();
    for part in verified {
        verdicts.extend(part?);
    }
    verdicts.sort_by(|a, b| a.0.cmp(&b.0));
    lead.outcome.verdicts = verdicts;
    lead.outcome.status = CopyStatus::Done;
    Ok(())
}

/// What planning found, shared by every connection pair of a mailbox.
struct Prepared {
    plans: Vec<FolderPlan>,
    layout: DestinationLayout,
    /// Destination folders (raw names), every planned one created by now.
    existing: BTreeSet<String>,
    /// The source's own folders that hold real messages (not All Mail or a view): a message of
    /// All Mail found in one of them is not copied again from All Mail.
    label_folders: Vec<String>,
    /// The source has an All Mail folder (Gmail): labels are folders.
    has_all_mail: bool,
    /// Each label folder's (UID, identity) list, read once per call and shared by the
    /// connection pairs: All Mail and, with `gmail_labels = "first"`, later label folders ask.
    label_listings: tokio::sync::Mutex<HashMap<String, Arc<LabelListing>>>,
    /// Label folders taken from the queue and not finished yet. All Mail is queued last and
    /// waits for them, so that it knows what they really copied.
    labels_in_progress: std::sync::atomic::AtomicUsize,
    /// A label folder's copy stopped short this call (deadline, lost connection): what it has
    /// not settled yet is not All Mail's to copy to Archive, so All Mail waits for a later call.
    labels_cut_short: std::sync::atomic::AtomicBool,
    /// Folders whose batches other connection pairs may help append.
    appending: std::sync::Mutex<Vec<Arc<Appending>>>,
    /// Folders taken from the queue and not finished: an idle pair waits for them, since
    /// one of them may yet offer batches to help with.
    copying: std::sync::atomic::AtomicUsize,
}

/// Counts a folder as being copied until dropped.
struct Copying<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Copying<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Copying(count)
    }
}

impl Drop for Copying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a label folder of a Gmail source holds.
struct LabelListing {
    uid_validity: u32,
    messages: Vec<(u32, String)>,
}

/// Counts a label folder as in progress until dropped, however its copy ends; one dropped
/// before [`LabelInProgress::ended`] marks the call's label folders as cut short.
struct LabelInProgress<'a> {
    prepared: &'a Prepared,
    ended: bool,
}

impl<'a> LabelInProgress<'a> {
    fn start(prepared: &'a Prepared) -> Self {
        prepared.labels_in_progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LabelInProgress { prepared, ended: false }
    }

    /// The folder's copy ended: done, or refused for good (its mail then goes to Archive).
    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for LabelInProgress<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.prepared.labels_cut_short.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.prepared.labels_in_progress.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How one connection pair's share of the folders ended.
struct WorkEnd {
    folder_errors: Vec<String>,
    time_up: bool,
}

impl MailboxOutcome {
    /// When some destination folder did not verify: which, and why. Such a mailbox is not
    /// done, whatever else went well.
    pub fn verification_failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .verdicts
            .iter()
            .filter(|(_, v)| !v.ok)
            .map(|(folder, v)| {
                let detail = if v.detail.is_empty() {
                    format!("{} in source, {} in destination", v.source_messages, v.destination_messages)
                } else {
                    v.detail.clone()
                };
                format!("{folder:?}: {detail}")
            })
            .collect();
        (!failed.is_empty())
            .then(|| format!("verification failed in {} folder(s): {}", failed.len(), failed.join("; ")))
    }

    /// What to do about a [`MailboxOutcome::verification_failure`].
    pub const VERIFICATION_HINT: &'static str =
        "run the mailbox again: a new pass copies what is missing and verifies again; \
        if it still fails, compare the folders named here in report.json";

    fn more_to_do(this_pass: FolderCounts) -> MailboxOutcome {
        MailboxOutcome {
            status: CopyStatus::MoreToDo,
            this_pass,
            verdicts: Vec::new(),
            renamed: Vec::new(),
            folders: 0,
        }
    }
}

fn label(server: &crate::model::ServerSpec) -> String {
    format!("{}:{}", server.host, server.port)
}

fn literal_mode(caps: &Caps, options: &CopyOptions) -> LiteralMode {
    match (options.pipelining, caps.literal_plus, caps.literal_minus) {
        (true, true, _) => LiteralMode::NonSync,
        (true, false, true) => LiteralMode::NonSyncSmall,
        _ => LiteralMode::Sync,
    }
}

struct Copier<'a> {
    job: &'a MailboxJob,
    options: &'a CopyOptions,
    store: &'a dyn CheckpointStore,
    progress: &'a dyn ProgressSink,
    timebox: &'a TimeBox,
    source: Session,
    destination: Session,
    literal_mode: LiteralMode,
    /// max_message_size, lowered to the destination's APPENDLIMIT.
    max_size: u64,
    /// A batch was abandoned mid-command: the sessions are in an unknown state.
    abandoned: bool,
    source_tags: u64,
    destination_tags: u64,
    /// The destination takes a whole batch in one APPEND (RFC 3502).
    multiappend: bool,
    /// The source has CONDSTORE (enabled): HIGHESTMODSEQ tells which flags changed.
    source_condstore: bool,
    /// The source announces X-GM-EXT-1.
    source_caps_gmail: bool,
    batches_confirmed: u64,
    started_in_time: bool,
    source_label: String,
    destination_label: String,
    /// The folder (raw name) each session has selected, if known: a STATUS on it first
    /// refreshes the view (Courier answers STATUS on the selected folder from a stale one).
    source_selected: Option<String>,
    destination_selected: Option<String>,
    /// Which side offers UNSELECT (RFC 3691): leaves the folder without CLOSE's expunge.
    source_unselect: bool,
    destination_unselect: bool,
    /// EXAMINE reported UIDNEXT so far. Once it does not (Courier), the source is asked
    /// `STATUS (UIDNEXT UIDVALIDITY)` before opening a folder, so an unchanged folder costs
    /// one command.
    source_examine_uidnext: bool,
    /// Each side's NAMESPACE reply, where it has one.
    source_namespaces: Option<Namespaces>,
    destination_namespaces: Option<Namespaces>,
    /// Filled as the call goes, so a call cut off by the deadline still reports its work.
    outcome: MailboxOutcome,
    /// Source folders (raw names) this call found unchanged since their last complete pass.
    unchanged: Vec<String>,
}

impl<'a> Copier<'a> {
    /// Connect and log in to both sides.
    async fn connect(
        job: &'a MailboxJob,
        options: &'a CopyOptions,
        store: &'a dyn CheckpointStore,
        progress: &'a dyn ProgressSink,
        timebox: &'a TimeBox,
    ) -> Result<Copier<'a>, CopyError> {
        let (mut source, source_caps) = connect(&job.source, Side::Source).await?;
        if source_caps.condstore {
            // EXAMINE then reports HIGHESTMODSEQ, recorded in the checkpoint. Read-only still.
            let label = label(&job.source.server);
            timed(source.run_command_and_check_ok("ENABLE CONDSTORE"))
                .await
                .map_err(|e| classify(e, Side::Source, &label))?;
        }
        let (destination, caps) = connect(&job.destination, Side::Destination).await?;
        Ok(Copier {
            job,
            options,
            store,
            progress,
            timebox,
            source,
            destination,
            literal_mode: literal_mode(&caps, options),
            // A message over the destination's APPENDLIMIT would only be refused: skip it as too big.
            max_size: caps.append_limit.map_or(options.max_message_size, |limit| limit.min(options.max_message_size)),
            abandoned: false,
            unchanged: Vec::new(),
            source_tags: 0,
            destination_tags: 0,
            multiappend: caps.multiappend && options.multiappend,
            source_condstore: source_caps.condstore,
            source_caps_gmail: source_caps.gmail(),
            batches_confirmed: 0,
            started_in_time: timebox.deadline.is_none_or(|d| tokio::time::Instant::now() < d),
            source_label: label(&job.source.server),
            destination_label: label(&job.destination.server),
            source_selected: None,
            destination_selected: None,
            source_unselect: source_caps.has("UNSELECT"),
            destination_unselect: caps.has("UNSELECT"),
            source_examine_uidnext: true,
            source_namespaces: source_caps.namespaces.clone(),
            destination_namespaces: caps.namespaces.clone(),
            outcome: MailboxOutcome::more_to_do(FolderCounts::default()),
        })
    }
}

/// Why a folder pass stopped early.
enum Stopped {
    TimeUp,
}

/// One source message's body and what goes with it in APPEND.
struct Body {
    body: Vec<u8>,
    flags: Vec<String>,
    internal_date: Option<String>,
}

/// The bodies of one batch, and the UIDs the source did not deliver (with why).
#[derive(Default)]
struct FetchedBatch {
    bodies: HashMap<u32, Body>,
    problems: Vec<(u32, Outcome, String)>,
}

impl Copier<'_> {
    /// The stop signal always counts. The deadline counts once this call has confirmed a
    /// batch (or if it had passed before the call began), so every call that starts in time
    /// makes progress even when connecting alone eats its time box.
    fn time_is_up(&self) -> bool {
        let deadline_passed = self.timebox.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        *self.timebox.stop.borrow() || (deadline_passed && (self.batches_confirmed > 0 || !self.started_in_time))
    }

    fn src_err(&self, e: async_imap::error::Error) -> CopyError {
        classify(e, Side::Source, &self.source_label)
    }

    fn dst_err(&self, e: async_imap::error::Error) -> CopyError {
        classify(e, Side::Destination, &self.destination_label)
    }

    /// A raw exchange (ours, not async-imap's) on `side` that could not finish.
    fn lost(&self, side: Side, detail: String) -> CopyError {
        let server = match side {
            Side::Source => self.source_label.clone(),
            Side::Destination => self.destination_label.clone(),
        };
        CopyError::ConnectionLost { side, server, detail }
    }

    /// List both sides, plan the folders and create every destination folder (before the
    /// connection pairs share out the folders, so none of them creates a parent twice).
    async fn prepare(&mut self) -> Result<Prepared, CopyError> {
        let reference = self.job.user_root.clone().unwrap_or_default();
        let source_folders = timed(list(&mut self.source, &reference)).await.map_err(|e| self.src_err(e))?;
        let destination_folders = timed(list(&mut self.destination, "")).await.map_err(|e| self.dst_err(e))?;
        // Where personal folders live and the delimiter: the setting, else NAMESPACE, else
        // guessed from LIST.
        let destination_ns = self.destination_namespaces.as_ref().and_then(Namespaces::personal_prefix);
        let prefix = match (&self.options.destination_prefix, destination_ns) {
            (None, Some(ns)) => namespace_levels(ns),
            (configured, _) => folders::prefix_levels(configured.as_deref(), &destination_folders),
        };
        let delimiter = destination_ns
            .and_then(|ns| ns.delimiter)
            .or_else(|| destination_folders.iter().find_map(|f| f.delimiter))
            .unwrap_or('/');
        let by_role = folders::roles_of(&destination_folders, prefix.first().map(String::as_str));
        let layout = DestinationLayout { delimiter, prefix, by_role };

        // Other users' and shared folders the source account sees are not its mail.
        let (source_folders, foreign): (Vec<ListedFolder>, Vec<ListedFolder>) =
            match (&self.source_namespaces, &self.job.user_root) {
                (Some(ns), None) => {
                    source_folders.into_iter().partition(|f| ns.kind_of(&f.raw) == NamespaceKind::Personal)
                }
                _ => (source_folders, Vec::new()),
            };
        // Folders of an INBOX-prefixed source (INBOX.Sent) are top-level folders in disguise.
        let source_ns = self.source_namespaces.as_ref().and_then(Namespaces::personal_prefix);
        let source_prefix = match (&self.options.source_prefix, source_ns) {
            (None, Some(ns)) => namespace_levels(ns),
            (configured, _) => folders::prefix_levels(configured.as_deref(), &source_folders),
        };
        let source_root = match (&self.job.user_root, source_prefix.first()) {
            (Some(root), _) => Some(root.clone()),
            (None, Some(prefix)) => Some(prefix.clone()),
            (None, None) => None,
        };
        let mut existing: BTreeSet<String> = destination_folders.iter().map(|f| f.raw.clone()).collect();
        let has_all_mail = source_folders.iter().any(|f| !f.noselect && f.roles.contains(&Role::All));
        if self.source_caps_gmail && !has_all_mail {
            tracing::warn!(mailbox = %self.job.mailbox, "{}", crate::inspect::ALL_MAIL_HIDDEN);
        }
        let (mut plans, excluded) =
            folders::plan_folders(&source_folders, &layout, self.options, source_root.as_deref());
        // The label folders All Mail defers to are those this run copies (not those excluded),
        // INBOX first, then in LIST order: the order `gmail_labels = "first"` goes by.
        let mut label_folders: Vec<String> =
            plans.iter().filter(|p| !p.all_mail).map(|p| p.source_raw.clone()).collect();
        label_folders.sort_by_key(|raw| !raw.eq_ignore_ascii_case("INBOX"));
        for skip in &excluded {
            tracing::info!(mailbox = %self.job.mailbox, folder = %skip.source_display, reason = %skip.reason, "folder not copied");
        }
        self.record_foreign(&foreign, &layout, &mut plans).await?;
        // One part of a split mailbox: the other folders are other functions' to copy.
        if let Some(share) = &self.options.share {
            plans.retain(|p| share.includes(&p.source_raw));
        }
        self.outcome.renamed = plans
            .iter()
            .filter_map(|p| p.renamed.clone().map(|why| (p.source_display.clone(), p.destination_display(), why)))
            .collect();
        self.outcome.folders = plans.len();
        let checkpoints = checkpoints_by_folder(self.store, &self.job.mailbox).await?;
        // Every missing destination folder, parents first, created in two round trips.
        let mut planned = existing.clone();
        let mut missing = Vec::new();
        for folder in &plans {
            let destination_raw = destination_of(folder, checkpoints.get(&folder.source_raw), &layout, &planned);
            for name in missing_levels(folder, &destination_raw, layout.delimiter, &planned) {
                planned.insert(name.clone());
                missing.push(name);
            }
        }
        let created = crate::imap::create::create_all(&mut self.destination, &mut self.destination_tags, &missing)
            .await
            .map_err(|detail| self.lost(Side::Destination, detail))?;
        for (name, created) in missing.into_iter().zip(created) {
            match created {
                Created::Exists => {
                    existing.insert(name);
                }
                // Reported when the folder's copy tries again (one CREATE at a time).
                Created::Refused(words) => {
                    tracing::info!(mailbox = %self.job.mailbox, folder = %name, %words, "CREATE refused");
                }
            }
        }
        // All Mail last: it defers to the label folders, which must have been copied first.
        plans.sort_by_key(|p| p.all_mail);
        Ok(Prepared {
            plans,
            layout,
            existing,
            label_folders,
            has_all_mail,
            label_listings: tokio::sync::Mutex::new(HashMap::new()),
            labels_in_progress: std::sync::atomic::AtomicUsize::new(0),
            labels_cut_short: std::sync::atomic::AtomicBool::new(false),
            appending: std::sync::Mutex::new(Vec::new()),
            copying: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A label folder's (UID, identity) list: read from the source once per call.
    async fn label_listing(&mut self, prepared: &Prepared, raw: &str) -> Result<Arc<LabelListing>, CopyError> {
        if let Some(listing) = prepared.label_listings.lock().await.get(raw) {
            return Ok(Arc::clone(listing));
        }
        let plan = FolderPlan {
            source_raw: raw.to_string(),
            source_display: crate::mutf7::decode(raw),
            destination: Vec::new(),
            renamed: None,
            all_mail: false,
        };
        let mailbox = self.examine_source(&plan).await?;
        let uid_validity = mailbox.uid_validity.unwrap_or(0);
        let messages = if mailbox.exists > 0 {
            let listing = self.source_metas(&plan, uid_validity, "1:*").await?;
            listing.metas.into_iter().map(|m| (m.uid, m.key)).collect()
        } else {
            Vec::new()
        };
        let listing = Arc::new(LabelListing { uid_validity, messages });
        prepared.label_listings.lock().await.insert(raw.to_string(), Arc::clone(&listing));
        Ok(listing)
    }

    /// Identities of every message in the label folders `folders` (`gmail_labels = "first"`:
    /// what an earlier label folder holds is copied there).
    async fn identities_in(&mut self, prepared: &Prepared, folders: &[String]) -> Result<HashSet<String>, CopyError> {
        let mut out = HashSet::new();
        for raw in folders {
            let listing = self.label_listing(prepared, raw).await?;
            out.extend(listing.messages.iter().map(|(_, key)| key.clone()));
        }
        Ok(out)
    }

    /// Identities of the messages the label folders have settled (copied, found already
    /// there, or reported): All Mail leaves those to them and copies the rest to Archive,
    /// including the mail of a label folder whose copy failed.
    async fn settled_in_label_folders(&mut self, prepared: &Prepared) -> Result<HashSet<String>, CopyError> {
        let mut out = HashSet::new();
        for raw in &prepared.label_folders {
            let listing = self.label_listing(prepared, raw).await?;
            let recorded = self.store.load_ledger(&self.job.mailbox, raw, listing.uid_validity).await?;
            let ledger = FolderLedger::from_recorded(recorded);
            // Settled by the folder itself: not left to yet another label folder (with
            // gmail_labels = "first"), which could have failed for good.
            let own = |uid: u32| matches!(ledger.get(uid), Some((outcome, _)) if !outcome.retry() && outcome != Outcome::InLabelFolder);
            out.extend(listing.messages.iter().filter(|(uid, _)| own(*uid)).map(|(_, key)| key.clone()));
        }
        Ok(out)
    }

    /// Wait until no label folder is being copied by another connection pair.
    async fn wait_for_label_folders(&mut self, prepared: &Prepared) -> Result<(), Stopped> {
        while prepared.labels_in_progress.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if self.time_is_up() {
                return Err(Stopped::TimeUp);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Other users' and shared folders: copied under `shared_folders` when set, else listed
    /// in the report (a checkpoint that says why) and left alone.
    async fn record_foreign(
        &mut self,
        foreign: &[ListedFolder],
        layout: &DestinationLayout,
        plans: &mut Vec<FolderPlan>,
    ) -> Result<(), CopyError> {
        if let Some(under) = &self.options.shared_folders {
            plans.extend(folders::plan_shared(foreign, layout, under));
            return Ok(());
        }
        let Some(namespaces) = &self.source_namespaces else { return Ok(()) };
        let checkpoints = checkpoints_by_folder(self.store, &self.job.mailbox).await?;
        for folder in foreign.iter().filter(|f| !f.noselect) {
            let reason = match namespaces.kind_of(&folder.raw) {
                NamespaceKind::OtherUsers => "not copied: other users' namespace",
                _ => "not copied: shared namespace",
            };
            tracing::info!(mailbox = %self.job.mailbox, folder = %crate::mutf7::decode(&folder.raw), reason, "folder not copied");
            let earlier = checkpoints.get(&folder.raw);
            if earlier.is_none_or(|c| c.not_copied.as_deref() != Some(reason)) {
                // Copied by an earlier pass (with shared_folders set)? Its counts stay in the report.
                let checkpoint = FolderCheckpoint {
                    source_folder: folder.raw.clone(),
                    not_copied: Some(reason.to_string()),
                    counts: earlier.map(|c| c.counts).unwrap_or_default(),
                    ..FolderCheckpoint::default()
                };
                self.store.save_folder(&self.job.mailbox, &checkpoint).await?;
            }
        }
        Ok(())
    }

    /// Copy folders from `queue` until it is empty or time is up.
    async fn work(
        &mut self,
        prepared: &Prepared,
        queue: &std::sync::Mutex<VecDeque<usize>>,
        checkpoints: &std::sync::Mutex<HashMap<String, FolderCheckpoint>>,
    ) -> Result<WorkEnd, CopyError> {
        let mut existing = prepared.existing.clone();
        let mut end = WorkEnd { folder_errors: Vec::new(), time_up: false };
        loop {
            if self.time_is_up() {
                end.time_up = true;
                return Ok(end);
            }
            // Counted as in progress while the queue is still locked: All Mail, taken after
            // it, then sees every label folder taken before it.
            let taken = {
                let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.pop_front().map(|next| {
                    let folder = &prepared.plans[next];
                    let in_progress =
                        (prepared.has_all_mail && !folder.all_mail).then(|| LabelInProgress::start(prepared));
                    (folder, in_progress, Copying::start(&prepared.copying))
                })
            };
            let Some((folder, mut in_progress, _copying)) = taken else {
                match self.help(prepared).await {
                    Ok(Some(Ok(()))) => continue,
                    Ok(Some(Err(Stopped::TimeUp))) => end.time_up = true,
                    Ok(None) => {}
                    Err(CopyError::Folder { side, folder, detail }) => {
                        end.folder_errors.push(format!("{side} folder {folder:?}: {detail}"));
                    }
                    Err(other) => return Err(other),
                }
                return Ok(end);
            };
            if folder.all_mail {
                if let Err(Stopped::TimeUp) = self.wait_for_label_folders(prepared).await {
                    end.time_up = true;
                    return Ok(end);
                }
                // The call cannot end done then (the label folder's copier reports the deadline
                // or the error): All Mail is copied by a later call, once they are settled.
                if prepared.labels_cut_short.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(mailbox = %self.job.mailbox, folder = %folder.source_display, "a label folder stopped short: All Mail waits for the next pass");
                    continue;
                }
            }
            let checkpoint = checkpoints.lock().unwrap_or_else(|p| p.into_inner()).remove(&folder.source_raw);
            let copied = self.copy_folder(folder, checkpoint, prepared, &mut existing).await;
            if matches!(copied, Ok(Ok(())) | Err(CopyError::Folder { .. })) {
                in_progress.iter_mut().for_each(LabelInProgress::ended);
            }
            match copied {
                Ok(Ok(())) => {}
                Ok(Err(Stopped::TimeUp)) => {
                    end.time_up = true;
                    return Ok(end);
                }
                Err(CopyError::Folder { side, folder, detail }) => {
                    tracing::warn!(mailbox = %self.job.mailbox, %folder, %detail, "folder refused");
                    end.folder_errors.push(format!("{side} folder {folder:?}: {detail}"));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// With no folder left to take: help append another pair's folder that has batches
    /// nobody has taken, waiting while folders are still being copied (one of them may yet
    /// offer some). None once there is nothing left to help with.
    async fn help(&mut self, prepared: &Prepared) -> Result<Option<Result<(), Stopped>>, CopyError> {
        loop {
            if self.time_is_up() {
                return Ok(Some(Err(Stopped::TimeUp)));
            }
            let offered: Vec<Arc<Appending>> = prepared.appending.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for job in offered {
                if job.join().await {
                    let helped = self.help_with(&job).await;
                    job.leave().await;
                    return helped.map(Some);
                }
            }
            if prepared.copying.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return Ok(None);
            }
            tokio::time::sleep(HELP_POLL).await;
        }
    }

    /// Open `job`'s folder on both sides and send batches of it.
    async fn help_with(&mut self, job: &Appending) -> Result<Result<(), Stopped>, CopyError> {
        let source =
            examine_folder(&mut self.source, &mut self.source_selected, &job.folder, &self.source_label).await?;
        let display = job.folder.destination_display();
        let destination = select_folder(
            &mut self.destination,
            &mut self.destination_selected,
            &job.destination_raw,
            &display,
            &self.destination_label,
        )
        .await?;
        let changed = if source.uid_validity != Some(job.uid_validity) {
            Some((Side::Source, job.folder.source_display.clone()))
        } else if destination.uid_validity != Some(job.dest_validity) {
            Some((Side::Destination, display))
        } else {
            None
        };
        if let Some((side, folder)) = changed {
            // Renumbered since the folder was listed: this pair stays out, the pass ends with
            // this error and the next one rescans the folder (its ledger no longer applies).
            return Err(CopyError::Folder {
                side,
                folder,
                detail: "UIDVALIDITY changed during the copy: the next pass rescans it".into(),
            });
        }
        tracing::debug!(mailbox = %self.job.mailbox, folder = %job.folder.source_display, "helping with a folder");
        self.append_batches(job, true).await
    }

    /// Copy what is new in one folder. `Ok(Err(TimeUp))` when stopped with more to do.
    async fn copy_folder(
        &mut self,
        folder: &FolderPlan,
        checkpoint: Option<FolderCheckpoint>,
        prepared: &Prepared,
        existing: &mut BTreeSet<String>,
    ) -> Result<Result<(), Stopped>, CopyError> {
        let layout = &prepared.layout;
        // A folder listed as not copied before (shared) and copied now starts afresh.
        let checkpoint = checkpoint.filter(|c| c.not_copied.is_none());
        let destination_raw = destination_of(folder, checkpoint.as_ref(), layout, existing);
        // uid_next 0 = not reported: such a folder is never taken as unchanged.
        // A folder completed before is most likely unchanged: STATUS tells without opening it.
        // Not for a big folder: there a changed folder costs the server a whole re-scan for
        // STATUS and again for EXAMINE (Dovecot maildir: 0.27 s each at 100,000 messages, as
        // the source is opened read-only and the scan is never saved), while an unchanged one
        // costs as little to EXAMINE as to STATUS.
        let likely_unchanged =
            checkpoint.as_ref().is_some_and(|c| c.complete && c.counts.messages() < self.options.big_folder_messages);
        // A big folder copied before: its destination folder opens alongside (see the join
        // below), whether or not the source changed; an unchanged one costs little to open.
        let open_both = self.source_examine_uidnext
            && !likely_unchanged
            && existing.contains(&destination_raw)
            && checkpoint.as_ref().is_some_and(|c| c.complete && c.in_flight.is_none());
        let (state, preselected) = if open_both {
            let display = folder.destination_display();
            let (examined, selected) = tokio::join!(
                examine_folder(&mut self.source, &mut self.source_selected, folder, &self.source_label),
                select_folder(
                    &mut self.destination,
                    &mut self.destination_selected,
                    &destination_raw,
                    &display,
                    &self.destination_label
                ),
            );
            let state = match SourceState::examined(examined?) {
                Some(state) => state,
                None => self.source_state(folder, false).await?,
            };
            (state, Some(selected?))
        } else {
            (self.source_state(folder, likely_unchanged).await?, None)
        };
        let SourceState { uid_validity, uid_next, highest_modseq, examined } = state;

        // A folder the source renumbered is rescanned: its old ledger no longer applies, and
        // what was copied before is found again by identity in the destination.
        let mut rescan = false;
        let mut cp = match checkpoint {
            Some(cp) if cp.uid_validity == uid_validity => cp,
            Some(old) => {
                tracing::warn!(mailbox = %self.job.mailbox, folder = %folder.source_display, old = old.uid_validity, new = uid_validity, "UIDVALIDITY changed: rescanning the folder");
                rescan = true;
                FolderCheckpoint {
                    rescans: old.rescans + 1,
                    counts: old.counts,
                    ..fresh_checkpoint(folder, &destination_raw, uid_validity)
                }
            }
            None => fresh_checkpoint(folder, &destination_raw, uid_validity),
        };
        cp.destination_folder = destination_raw.clone();
        cp.renamed = folder.renamed.clone();
        // Flags changed on the source since the last pass: with CONDSTORE its HIGHESTMODSEQ
        // says so (and which messages); without, every pass compares them.
        let flags_since = match (self.source_condstore, cp.highest_modseq, highest_modseq) {
            (true, Some(before), Some(now)) => (before != now).then_some(Some(before)),
            _ => Some(None),
        };
        // A UID range of a split folder: its flags are synced by the folder's next whole pass.
        let range = self.options.share.as_ref().and_then(|s| s.range()).filter(|r| r.folder == folder.source_raw);
        if let Some(range) = range {
            if rescan {
                return Err(CopyError::Folder {
                    side: Side::Source,
                    folder: folder.source_display.clone(),
                    detail: format!(
                        "UIDVALIDITY changed while the folder was copied in UID ranges (UIDs {}..): the next pass rescans it",
                        range.from
                    ),
                });
            }
        }
        let flags_due = self.options.sync_flags && cp.last_uid > 0 && flags_since.is_some() && range.is_none();
        let mut ledger = FolderLedger::from_recorded(
            self.store.load_ledger(&self.job.mailbox, &folder.source_raw, uid_validity).await?,
        );
        let mut retry = ledger.to_retry();
        if let Some(range) = range {
            retry.retain(|uid| range.contains(*uid));
        }
        let unchanged = uid_next != 0 && uid_validity != 0 && cp.uid_next == uid_next;
        if cp.complete
            && unchanged
            && !flags_due
            && cp.in_flight.is_none()
            && retry.is_empty()
            && existing.contains(&destination_raw)
        {
            self.unchanged.push(folder.source_raw.clone());
            return Ok(Ok(())); // nothing arrived since the last pass
        }
        // This pass works on the folder: an earlier verdict no longer speaks for it, even if
        // this pass ends (deadline, stop, another folder failing) before verifying it.
        cp.verify = None;
        // Gmail's All Mail: what any label folder holds is copied there, not again from here.
        // With gmail_labels = "first", a label folder leaves out what an earlier one holds.
        let elsewhere = if folder.all_mail {
            Some(self.settled_in_label_folders(prepared).await?)
        } else if prepared.has_all_mail && self.options.gmail_labels == GmailLabels::First {
            let earlier: Vec<String> =
                prepared.label_folders.iter().take_while(|raw| **raw != folder.source_raw).cloned().collect();
            if earlier.is_empty() {
                None
            } else {
                Some(self.identities_in(prepared, &earlier).await?)
            }
        } else {
            None
        };
        self.ensure_destination_folder(folder, &destination_raw, layout.delimiter, existing).await?;
        if cp.in_flight.is_some() {
            self.wait_until_quiet(&destination_raw).await?;
        }
        // The destination opens its folder while the source opens and lists what is new: on a
        // big maildir folder each server spends a quarter second on it, so side by side they
        // take half the time. Candidates: every source message past the checkpoint, and
        // earlier ones to try again.
        let (listed, opened) = {
            let reusable = examined.filter(|_| elsewhere.is_none());
            let (session, selected, label) = (&mut self.source, &mut self.source_selected, &self.source_label);
            let (endpoint, tags, last_uid, retry) = (&self.job.source, &mut self.source_tags, cp.last_uid, &retry);
            let uid_set = range.map_or_else(|| format!("{}:*", last_uid + 1), |r| r.uid_set_after(last_uid));
            let in_range = move |uid: u32| uid > last_uid && range.is_none_or(|r| r.contains(uid));
            let source = async move {
                let source_box = match reusable {
                    Some(mailbox) => mailbox,
                    None => examine_folder(session, selected, folder, label).await?,
                };
                if source_box.exists == 0 {
                    return Ok(Listing::default());
                }
                let mut link = SourceLink { session, endpoint, folder: &folder.source_raw, uid_validity, tags, label };
                let mut listing = list_source(&mut link, &uid_set).await?;
                listing.metas.retain(|m| in_range(m.uid));
                listing.unlisted.retain(|(uid, _)| in_range(*uid));
                if !retry.is_empty() {
                    let again = list_source(&mut link, &plan::uid_set(retry)).await?;
                    listing.metas.extend(again.metas);
                    listing.unlisted.extend(again.unlisted);
                }
                Ok::<Listing, CopyError>(listing)
            };
            let display = folder.destination_display();
            let still_open = self.destination_selected.as_deref() == Some(destination_raw.as_str());
            let preselected = preselected.filter(|_| still_open);
            let (session, selected, label) =
                (&mut self.destination, &mut self.destination_selected, &self.destination_label);
            let destination_raw = &destination_raw;
            let destination = async move {
                match preselected {
                    Some(mailbox) => Ok(mailbox),
                    None => select_folder(session, selected, destination_raw, &display, label).await,
                }
            };
            tokio::join!(source, destination)
        };
        let dest_box = opened?;
        let listing = listed?;
        let accepted = AcceptedFlags::from_mailbox(&dest_box);
        let dest_validity = dest_box.uid_validity.unwrap_or(0);
        // Where this pass's appends start; 0 = unknown, then every check reads the whole folder.
        let dest_next = match dest_box.uid_next {
            Some(next) => next,
            // Courier's SELECT has no UIDNEXT: STATUS has it. The view SELECT just opened is
            // fresh, and the folder must stay selected (no UNSELECT as destination_status does).
            None => timed(self.destination.status(&destination_raw, "(UIDNEXT)"))
                .await
                .map_err(|e| self.dst_err(e))?
                .uid_next
                .unwrap_or(0),
        };
        let dest_recreated = cp.destination_uid_validity != 0 && cp.destination_uid_validity != dest_validity;
        if dest_recreated {
            tracing::warn!(mailbox = %self.job.mailbox, folder = %folder.destination_display(), "destination UIDVALIDITY changed: checking it by identity");
            cp.destination_uid_next = 0;
        }
        cp.destination_uid_validity = dest_validity;

        // Messages the source cannot even list (unreadable) are not copied this pass.
        let mut candidates = listing.metas;
        candidates.sort_by_key(|m| m.uid);
        candidates.dedup_by_key(|m| m.uid);
        // Listed and already settled (a batch reconciled, or settled by a pass cut off before
        // its checkpoint moved): once the folder is done, last_uid moves past these too.
        let highest_listed = candidates.last().map_or(0, |m| m.uid);
        candidates.retain(|m| ledger.pending(m.uid));
        let mut unlisted = listing.unlisted;
        unlisted.sort_by_key(|(uid, _)| *uid);
        unlisted.dedup_by_key(|(uid, _)| *uid);
        unlisted.retain(|(uid, _)| ledger.pending(*uid));
        // Messages of the previous retry list that the source no longer has.
        let listed: HashSet<u32> =
            candidates.iter().map(|m| m.uid).chain(unlisted.iter().map(|(uid, _)| *uid)).collect();
        for uid in retry.iter().filter(|uid| !listed.contains(uid)) {
            self.settle(&mut ledger, folder, uid_validity, vec![Run::one(*uid, None, Outcome::Gone, None)]).await?;
        }

        // A batch cut off last time: what landed above the fence is ours, matched by identity.
        if let Some((low, high)) = cp.in_flight {
            let fence = match cp.fence {
                Some((validity, next)) if validity == dest_validity && !dest_recreated => next.max(1),
                _ => 1,
            };
            let sent: Vec<Identified> = candidates
                .iter()
                .filter(|m| (low..=high).contains(&m.uid))
                .map(|m| Identified { uid: m.uid, key: m.key.clone() })
                .collect();
            let unknown: Vec<&(u32, String)> = unlisted.iter().filter(|(uid, _)| (low..=high).contains(uid)).collect();
            let landed = if sent.is_empty() && unknown.is_empty() {
                Vec::new()
            } else {
                if range.is_some() {
                    // Other ranges' parts append to this folder too: what they settled since
                    // this pass read the ledger is theirs, not a candidate for ours.
                    ledger = FolderLedger::from_recorded(
                        self.store.load_ledger(&self.job.mailbox, &folder.source_raw, uid_validity).await?,
                    );
                }
                self.unclaimed_arrivals(&ledger, fence, dest_validity).await?
            };
            let matched = ledger::reconcile_in_flight(&sent, &landed);
            if let Some((uid, words)) = unknown.first().filter(|_| landed.len() > matched.len()) {
                // Something nobody claims arrived, and a message of the batch has no identity
                // to tell whether it is that one: decide when the source can list it again.
                return Err(CopyError::ConnectionLost {
                    side: Side::Source,
                    server: self.source_label.clone(),
                    detail: format!("cannot tell whether UID {uid} of the batch cut off last time landed: the source cannot list it ({words})"),
                });
            }
            tracing::info!(mailbox = %self.job.mailbox, folder = %folder.source_display, sent = sent.len(), landed = matched.len(), "reconciled the batch cut off last time");
            let runs = ledger::runs(
                matched.iter().map(|(s, d)| Run::one(*s, Some((dest_validity, *d)), Outcome::Copied, None)).collect(),
            );
            cp.counts.copied += matched.len() as u64;
            cp.in_flight = None;
            cp.fence = None;
            // The runs with the checkpoint counting them and clearing the mark, in one write.
            self.store.record_batch(&self.job.mailbox, uid_validity, &runs, &cp).await?;
            for run in runs {
                ledger.apply(run);
            }
            self.forget_retried(folder, &retry, matched.iter().map(|(s, _)| *s)).await?;
            candidates.retain(|m| ledger.pending(m.uid));
        }

        if let Some(elsewhere) = &elsewhere {
            let (labelled, rest): (Vec<MessageMeta>, Vec<MessageMeta>) =
                candidates.into_iter().partition(|m| elsewhere.contains(&m.key));
            candidates = rest;
            if !labelled.is_empty() {
                cp.counts.in_label_folder += labelled.len() as u64;
                self.outcome.this_pass.in_label_folder += labelled.len() as u64;
                let runs = labelled.iter().map(|m| Run::one(m.uid, None, Outcome::InLabelFolder, None)).collect();
                self.settle(&mut ledger, folder, uid_validity, runs).await?;
            }
        }

        if flags_due {
            let synced = self.sync_flags(&ledger, cp.last_uid, flags_since.flatten(), dest_validity, &accepted).await?;
            cp.counts.flags_updated += synced;
            self.outcome.this_pass.flags_updated += synced;
        }

        // Duplicates already in the destination (put there by someone else, or by us before
        // the source renumbered): each destination message absorbs one source message.
        // Not in a UID range: the folder's first pass checked every message it listed, and
        // the other ranges' messages arriving meanwhile are not duplicates.
        let dedupe = rescan || dest_recreated || (self.options.skip_duplicates && range.is_none());
        let mut duplicates: HashMap<u32, u32> = HashMap::new();
        if dedupe && !candidates.is_empty() && dest_box.exists > 0 {
            let from = if rescan || dest_recreated { 1 } else { cp.destination_uid_next.max(1) };
            let present = self.unclaimed_arrivals(&ledger, from, dest_validity).await?;
            let eligible: Vec<Identified> = candidates
                .iter()
                .filter(|m| plan::eligible(m, self.max_size, self.options.since))
                .map(|m| Identified { uid: m.uid, key: m.key.clone() })
                .collect();
            duplicates = ledger::reconcile_in_flight(&eligible, &present).into_iter().collect();
        }
        let actions: Vec<Action> = candidates
            .iter()
            .map(|m| match plan::decide_one(m, self.max_size, self.options.since) {
                Action::Copy if duplicates.contains_key(&m.uid) => Action::SkipDuplicate,
                action => action,
            })
            .collect();
        let to_copy_bytes: u64 =
            candidates.iter().zip(&actions).filter(|(_, a)| **a == Action::Copy).map(|(m, _)| m.size).sum();
        let to_copy = actions.iter().filter(|a| **a == Action::Copy).count() as u64;
        self.progress.planned(&self.job.mailbox, &folder.source_display, to_copy, to_copy_bytes);

        // Everything not to copy is settled at once.
        let mut decided = Vec::new();
        let mut counts = FolderCounts::default();
        for (meta, action) in candidates.iter().zip(&actions) {
            match action {
                Action::Copy => {}
                Action::SkipDuplicate => {
                    counts.skipped_duplicate += 1;
                    let existing_uid = duplicates[&meta.uid];
                    decided.push(Run::one(meta.uid, Some((dest_validity, existing_uid)), Outcome::Duplicate, None));
                }
                Action::SkipByDate => {
                    counts.skipped_by_date += 1;
                    decided.push(Run::one(meta.uid, None, Outcome::ByDate, None));
                }
                Action::SkipTooBig => {
                    counts.skipped_too_big += 1;
                    let detail =
                        format!("{} bytes is over the {} byte limit (max_message_size)", meta.size, self.max_size);
                    self.store
                        .record_skipped(
                            &self.job.mailbox,
                            &SkippedMessage {
                                folder: folder.source_display.clone(),
                                uid: meta.uid,
                                size: meta.size,
                                message_id: meta.message_id.clone(),
                                reason: SkipReason::TooBig,
                                detail: detail.clone(),
                            },
                        )
                        .await?;
                    decided.push(Run::one(meta.uid, None, Outcome::TooBig, Some(detail)));
                }
            }
        }
        for (uid, words) in unlisted {
            counts.unreadable += 1;
            tracing::warn!(mailbox = %self.job.mailbox, folder = %folder.source_display, uid, %words, "source message unreadable");
            let message = SkippedMessage {
                folder: folder.source_display.clone(),
                uid,
                size: 0,
                message_id: None,
                reason: SkipReason::Unreadable,
                detail: words.clone(),
            };
            self.store.record_skipped(&self.job.mailbox, &message).await?;
            decided.push(Run::one(uid, None, Outcome::Unreadable, Some(words)));
        }
        self.settle(&mut ledger, folder, uid_validity, decided).await?;
        let found = candidates.iter().zip(&actions).filter(|(_, a)| **a == Action::SkipDuplicate).map(|(m, _)| m.uid);
        self.forget_retried(folder, &retry, found).await?;
        cp.counts.add(&counts);
        self.outcome.this_pass.add(&counts);

        let highest_uid = candidates.last().map_or(0, |m| m.uid).max(highest_listed);
        let copy: Vec<Queued> = candidates
            .into_iter()
            .zip(&actions)
            .filter(|(_, a)| **a == Action::Copy)
            .map(|(m, _)| Queued { uid: m.uid, size: m.size, message_id: m.message_id })
            .collect();
        let sized: Vec<(u64, Action)> = copy.iter().map(|m| (m.size, Action::Copy)).collect();
        let batches: VecDeque<Vec<Queued>> =
            plan::batches(&sized, self.options.batch_bytes, self.options.batch_messages)
                .into_iter()
                .map(|range| copy[range].to_vec())
                .collect();
        drop(copy);
        // Other connection pairs with no folder left help with a folder of several batches.
        // Helpers check both UIDVALIDITYs when they open the folder: not without them.
        let shared = batches.len() >= HELP_FROM_BATCHES
            && self.options.connections_per_mailbox > 1
            && uid_validity != 0
            && dest_validity != 0;
        let job = Arc::new(Appending {
            folder: folder.clone(),
            destination_raw: destination_raw.clone(),
            uid_validity,
            dest_validity,
            accepted,
            retry,
            highest_batched: batches.back().and_then(|b| b.last()).map_or(0, |m| m.uid),
            help_until: self.multiappend.then(|| u32::try_from(self.options.big_folder_messages).unwrap_or(u32::MAX)),
            books: tokio::sync::Mutex::new(Books { cp, ledger, batches, open: BTreeMap::new(), helpers: 0, dest_next }),
        });
        if shared {
            prepared.appending.lock().unwrap_or_else(|p| p.into_inner()).push(job.clone());
        }
        let sent = self.append_batches(&job, false).await;
        if shared {
            prepared.appending.lock().unwrap_or_else(|p| p.into_inner()).retain(|other| !Arc::ptr_eq(other, &job));
        }
        match sent? {
            Ok(()) => {}
            Err(Stopped::TimeUp) => {
                let books = job.books.lock().await;
                self.store.save_folder(&self.job.mailbox, &books.cp).await?;
                return Ok(Err(Stopped::TimeUp));
            }
        }
        // Helpers still sending their last batch: the folder is done when they are.
        while job.books.lock().await.helpers > 0 {
            tokio::time::sleep(HELP_POLL).await;
        }
        let books = job.books.lock().await;
        if !books.open.is_empty() {
            // A helper stopped short (deadline) or failed (its error ends this call): the
            // books as saved, with their in-flight mark, are where the next pass goes on.
            return Ok(Err(Stopped::TimeUp));
        }
        let mut cp = books.cp.clone();
        cp.in_flight = None;
        cp.fence = None;
        cp.complete = true;
        cp.uid_next = uid_next;
        cp.highest_modseq = highest_modseq;
        cp.destination_uid_next = books.dest_next;
        cp.last_uid = cp.last_uid.max(highest_uid);
        cp.counts.unreadable =
            books.ledger.to_retry().iter().filter(|uid| range.is_none_or(|r| r.contains(**uid))).count() as u64;
        drop(books);
        self.store.save_folder(&self.job.mailbox, &cp).await?;
        tracing::info!(mailbox = %self.job.mailbox, folder = %folder.source_display, copied = cp.counts.copied, "folder done");
        Ok(Ok(()))
    }

    /// Send batches of `job` until none is left (for a `helping` pair: none it should take),
    /// time is up or a side fails. The source fetches batch N+1 while the destination appends
    /// batch N: at most two batches of bodies in memory per connection pair, and neither
    /// server waits for the other.
    async fn append_batches(&mut self, job: &Appending, helping: bool) -> Result<Result<(), Stopped>, CopyError> {
        let mut ready: Option<(Vec<Queued>, FetchedBatch)> = None;
        loop {
            // A batch taken and not sent stays open in the books: the checkpoint's last_uid
            // never passes it, so the next pass lists it again.
            if self.time_is_up() {
                return Ok(Err(Stopped::TimeUp));
            }
            let (batch, fetched) = match ready.take() {
                Some(ready) => ready,
                None => {
                    let Some(batch) = job.take(helping).await else { return Ok(Ok(())) };
                    let mut link = SourceLink {
                        session: &mut self.source,
                        endpoint: &self.job.source,
                        folder: &job.folder.source_raw,
                        uid_validity: job.uid_validity,
                        tags: &mut self.source_tags,
                        label: &self.source_label,
                    };
                    let fetched = fetch_batch(&mut link, &uids_of(&batch)).await?;
                    (batch, fetched)
                }
            };
            let uids = uids_of(&batch);
            // Mark the batch in flight, fenced, before sending anything: a crash reconciles it.
            {
                let mut books = job.books.lock().await;
                books.sent(uids[0], job.dest_validity);
                self.store.save_folder(&self.job.mailbox, &books.cp).await?;
            }
            let next = job.take(helping).await;
            let timebox = self.timebox;
            let (appended, fetched_next) = {
                let append = append_fetched(
                    &mut self.destination,
                    &mut self.destination_tags,
                    (self.literal_mode, self.multiappend),
                    &self.destination_label,
                    &job.destination_raw,
                    &uids,
                    &fetched.bodies,
                    &job.accepted,
                );
                let mut link = SourceLink {
                    session: &mut self.source,
                    endpoint: &self.job.source,
                    folder: &job.folder.source_raw,
                    uid_validity: job.uid_validity,
                    tags: &mut self.source_tags,
                    label: &self.source_label,
                };
                let prefetch = async {
                    match &next {
                        Some(batch) => Some(fetch_batch(&mut link, &uids_of(batch)).await),
                        None => None,
                    }
                };
                tokio::select! {
                    both = async { tokio::join!(append, prefetch) } => both,
                    _ = stopped(timebox) => {
                        // Abandon mid-batch: the in-flight mark stays, the next pass reconciles.
                        self.abandoned = true;
                        return Ok(Err(Stopped::TimeUp));
                    }
                }
            };
            if let Some(error) = self.settle_batch(job, &batch, fetched, appended).await? {
                return Err(error);
            }
            match (next, fetched_next) {
                (Some(batch), Some(Ok(fetched))) => ready = Some((batch, fetched)),
                (_, Some(Err(e))) => return Err(e),
                _ => {}
            }
        }
    }

    /// Settle what the servers confirmed of one batch, in the ledger first; save the books.
    /// Returns the error that stopped the batch short, if any.
    async fn settle_batch(
        &mut self,
        job: &Appending,
        batch: &[Queued],
        fetched: FetchedBatch,
        appended: AppendResult,
    ) -> Result<Option<CopyError>, CopyError> {
        let folder = &job.folder;
        let queued: HashMap<u32, &Queued> = batch.iter().map(|m| (m.uid, m)).collect();
        let mut books = job.books.lock().await;
        let books = &mut *books;
        let mut runs = Vec::new();
        let mut counts = FolderCounts::default();
        for (uid, outcome, words) in &fetched.problems {
            runs.push(Run::one(*uid, None, *outcome, Some(words.clone())));
            if *outcome == Outcome::Unreadable {
                counts.unreadable += 1;
                tracing::warn!(mailbox = %self.job.mailbox, folder = %folder.source_display, uid, %words, "source message unreadable");
                let message = SkippedMessage {
                    folder: folder.source_display.clone(),
                    uid: *uid,
                    size: queued.get(uid).map_or(0, |m| m.size),
                    message_id: queued.get(uid).and_then(|m| m.message_id.clone()),
                    reason: SkipReason::Unreadable,
                    detail: words.clone(),
                };
                self.store.record_skipped(&self.job.mailbox, &message).await?;
            }
        }
        for (uid, reply) in &appended.settled {
            let size = fetched.bodies.get(uid).map_or(0, |b| b.body.len() as u64);
            match reply {
                Appended::Stored(destination_uids) => {
                    let destination_uid = destination_uids.first().copied();
                    counts.copied += 1;
                    counts.bytes += size;
                    runs.push(Run::one(*uid, destination_uid.map(|d| (job.dest_validity, d)), Outcome::Copied, None));
                    if let Some(d) = destination_uid {
                        books.dest_next = books.dest_next.max(d + 1);
                    }
                    if job.retry.binary_search(uid).is_ok() {
                        self.store.forget_skipped(&self.job.mailbox, &folder.source_display, *uid).await?;
                    }
                }
                Appended::Refused(words) => {
                    counts.refused += 1;
                    runs.push(Run::one(*uid, None, Outcome::Refused, Some(words.clone())));
                    let message = SkippedMessage {
                        folder: folder.source_display.clone(),
                        uid: *uid,
                        size,
                        message_id: queued.get(uid).and_then(|m| m.message_id.clone()),
                        reason: SkipReason::Refused,
                        detail: words.clone(),
                    };
                    self.store.record_skipped(&self.job.mailbox, &message).await?;
                }
            }
        }
        drop(fetched);
        let runs = ledger::runs(runs);
        books.cp.counts.add(&counts);
        // From the first unconfirmed message on, the next pass reconciles.
        books.settled(batch[0].uid, appended.unconfirmed_from, job.dest_validity, job.highest_batched);
        self.store.record_batch(&self.job.mailbox, job.uid_validity, &runs, &books.cp).await?;
        for run in runs {
            books.ledger.apply(run);
        }
        self.outcome.this_pass.add(&counts);
        self.batches_confirmed += 1;
        self.progress.copied(&self.job.mailbox, &folder.source_display, counts.copied, counts.bytes);
        Ok(appended.error)
    }

    /// Apply the source's flags to the destination messages mailhaul copied (and only
    /// those: never a message someone else put there), for source UIDs up to `up_to` that
    /// changed since `since` (CONDSTORE's modseq) or, without it, that differ. Returns the
    /// number of destination messages updated. The source is only read.
    async fn sync_flags(
        &mut self,
        ledger: &FolderLedger,
        up_to: u32,
        since: Option<u64>,
        dest_validity: u32,
        accepted: &AcceptedFlags,
    ) -> Result<u64, CopyError> {
        let items = match since {
            Some(modseq) => format!("(UID FLAGS) (CHANGEDSINCE {modseq})"),
            None => "(UID FLAGS)".to_string(),
        };
        let mut wanted: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        let completion =
            fetch::uid_fetch(&mut self.source, &mut self.source_tags, &format!("1:{up_to}"), &items, |f| {
                if f.uid > up_to {
                    return;
                }
                if let Some((Outcome::Copied, Some(destination))) = ledger.get(f.uid) {
                    if ledger.destination_validity(f.uid) == Some(dest_validity) {
                        wanted.insert(destination, accepted.filter(&f.flags).iter().map(|f| f.to_string()).collect());
                    }
                }
            })
            .await
            .map_err(|b| CopyError::ConnectionLost {
                side: Side::Source,
                server: self.source_label.clone(),
                detail: b.detail,
            })?;
        if let Completion::Refused(words) = completion {
            tracing::warn!(mailbox = %self.job.mailbox, %words, "source refused the flag listing: flags not synced this pass");
            return Ok(0);
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let targets: Vec<u32> = wanted.keys().copied().collect();
        let mut current: HashMap<u32, BTreeSet<String>> = HashMap::new();
        fetch::uid_fetch(
            &mut self.destination,
            &mut self.destination_tags,
            &plan::uid_set(&targets),
            "(UID FLAGS)",
            |f| {
                current.insert(f.uid, f.flags.into_iter().filter(|f| !f.eq_ignore_ascii_case("\\Recent")).collect());
            },
        )
        .await
        .map_err(|b| CopyError::ConnectionLost {
            side: Side::Destination,
            server: self.destination_label.clone(),
            detail: b.detail,
        })?;
        // One STORE per distinct flag set; a message no longer in the destination is left alone.
        let mut by_flags: BTreeMap<BTreeSet<String>, Vec<u32>> = BTreeMap::new();
        for (destination, flags) in wanted {
            let lower = |set: &BTreeSet<String>| set.iter().map(|f| f.to_ascii_lowercase()).collect::<BTreeSet<_>>();
            match current.get(&destination) {
                Some(now) if lower(now) != lower(&flags) => by_flags.entry(flags).or_default().push(destination),
                _ => {}
            }
        }
        let mut updated = 0;
        for (flags, uids) in by_flags {
            let list = flags.into_iter().collect::<Vec<_>>().join(" ");
            let command = format!("UID STORE {} FLAGS.SILENT ({list})", plan::uid_set(&uids));
            timed(self.destination.run_command_and_check_ok(&command)).await.map_err(|e| self.dst_err(e))?;
            updated += uids.len() as u64;
        }
        if updated > 0 {
            tracing::info!(mailbox = %self.job.mailbox, updated, "flags synced from the source");
        }
        Ok(updated)
    }

    async fn examine_source(&mut self, folder: &FolderPlan) -> Result<async_imap::types::Mailbox, CopyError> {
        examine_folder(&mut self.source, &mut self.source_selected, folder, &self.source_label).await
    }

    /// A source folder's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ: from STATUS (without opening
    /// the folder) when it is `likely_unchanged` or the server's EXAMINE lacks UIDNEXT
    /// (Courier), else from EXAMINE, which opens it for the copy.
    async fn source_state(&mut self, folder: &FolderPlan, likely_unchanged: bool) -> Result<SourceState, CopyError> {
        let items = if self.source_condstore { "(UIDNEXT UIDVALIDITY HIGHESTMODSEQ)" } else { "(UIDNEXT UIDVALIDITY)" };
        if self.source_examine_uidnext && !likely_unchanged {
            let mailbox = self.examine_source(folder).await?;
            if mailbox.uid_next.is_some() {
                return Ok(SourceState::examined(mailbox).expect("UIDNEXT present"));
            }
            tracing::debug!(mailbox = %self.job.mailbox, "the source's EXAMINE has no UIDNEXT: asking STATUS first from now on");
            self.source_examine_uidnext = false;
            let status = self.source_status(folder, items).await?;
            let still_open = self.source_selected.as_deref() == Some(folder.source_raw.as_str());
            return Ok(SourceState {
                uid_validity: mailbox.uid_validity.or(status.uid_validity).unwrap_or(0),
                uid_next: status.uid_next.unwrap_or(0),
                highest_modseq: mailbox.highest_modseq.or(status.highest_modseq),
                examined: still_open.then_some(mailbox),
            });
        }
        let status = self.source_status(folder, items).await?;
        Ok(SourceState {
            uid_validity: status.uid_validity.unwrap_or(0),
            uid_next: status.uid_next.unwrap_or(0),
            highest_modseq: status.highest_modseq,
            examined: None,
        })
    }

    async fn source_status(
        &mut self,
        folder: &FolderPlan,
        items: &str,
    ) -> Result<async_imap::types::Mailbox, CopyError> {
        let status =
            fresh_status(&mut self.source, &mut self.source_selected, self.source_unselect, &folder.source_raw, items);
        timed(status).await.map_err(|e| match e {
            async_imap::error::Error::No(reply) => CopyError::Folder {
                side: Side::Source,
                folder: folder.source_display.clone(),
                detail: format!("cannot open: {reply}"),
            },
            other => self.src_err(other),
        })
    }

    async fn destination_status(&mut self, raw: &str, items: &str) -> Result<async_imap::types::Mailbox, CopyError> {
        let status =
            fresh_status(&mut self.destination, &mut self.destination_selected, self.destination_unselect, raw, items);
        timed(status).await.map_err(|e| self.dst_err(e))
    }

    /// Record ledger runs (the store first, then memory).
    async fn settle(
        &mut self,
        ledger: &mut FolderLedger,
        folder: &FolderPlan,
        uid_validity: u32,
        entries: Vec<Run>,
    ) -> Result<(), CopyError> {
        if entries.is_empty() {
            return Ok(());
        }
        let runs = ledger::runs(entries);
        self.store.record_ledger(&self.job.mailbox, &folder.source_raw, uid_validity, &runs).await?;
        for run in runs {
            ledger.apply(run);
        }
        Ok(())
    }

    /// Messages of the retry list (`retry`, sorted) that are in the destination now, however
    /// they were found there: no longer listed as skipped.
    async fn forget_retried(
        &mut self,
        folder: &FolderPlan,
        retry: &[u32],
        in_destination: impl Iterator<Item = u32>,
    ) -> Result<(), CopyError> {
        for uid in in_destination.filter(|uid| retry.binary_search(uid).is_ok()) {
            self.store.forget_skipped(&self.job.mailbox, &folder.source_display, uid).await?;
        }
        Ok(())
    }

    /// Metadata of source messages in `uid_set` of `folder` (see [`list_source`]).
    async fn source_metas(
        &mut self,
        folder: &FolderPlan,
        uid_validity: u32,
        uid_set: &str,
    ) -> Result<Listing, CopyError> {
        let mut link = SourceLink {
            session: &mut self.source,
            endpoint: &self.job.source,
            folder: &folder.source_raw,
            uid_validity,
            tags: &mut self.source_tags,
            label: &self.source_label,
        };
        list_source(&mut link, uid_set).await
    }

    /// Identities of the selected destination folder's messages from UID `from` on that no
    /// ledger entry of this folder claims.
    async fn unclaimed_arrivals(
        &mut self,
        ledger: &FolderLedger,
        from: u32,
        dest_validity: u32,
    ) -> Result<Vec<Identified>, CopyError> {
        let claimed: HashSet<u32> = ledger.destination_uids(dest_validity).into_iter().collect();
        let metas = fetch_metas(&mut self.destination, &mut self.destination_tags, &format!("{from}:*"))
            .await
            .map_err(|detail| self.lost(Side::Destination, detail))?;
        Ok(metas
            .into_iter()
            .filter(|m| m.uid >= from && !claimed.contains(&m.uid))
            .map(|m| Identified { uid: m.uid, key: m.key })
            .collect())
    }

    /// A killed run's APPENDs may still be stored by the destination after it died: wait
    /// until the folder's UIDNEXT holds still before reading it.
    async fn wait_until_quiet(&mut self, destination_raw: &str) -> Result<(), CopyError> {
        let started = tokio::time::Instant::now();
        let mut last = None;
        let mut still_since = started;
        loop {
            let status = self.destination_status(destination_raw, "(UIDNEXT MESSAGES)").await?;
            let now_seen = Some((status.uid_next, status.exists));
            let now = tokio::time::Instant::now();
            if now_seen != last {
                last = now_seen;
                still_since = now;
            } else if now - still_since >= QUIET_FOR {
                return Ok(());
            }
            if now - started >= QUIET_AT_MOST {
                tracing::warn!(mailbox = %self.job.mailbox, folder = destination_raw, "destination folder still changing after 30 s: reconciling anyway");
                return Ok(());
            }
            tokio::time::sleep(QUIET_FOR / 3).await;
        }
    }
    async fn ensure_destination_folder(
        &mut self,
        folder: &FolderPlan,
        raw: &str,
        delimiter: char,
        existing: &mut BTreeSet<String>,
    ) -> Result<(), CopyError> {
        for levels in missing_level_names(folder, raw, delimiter, existing) {
            let name = crate::mutf7::encode(&levels.join(&delimiter.to_string()));
            let quoted = append::quote(&name);
            match timed(self.destination.run_command_and_check_ok(format!("CREATE {quoted}"))).await {
                Ok(()) => {}
                // Created meanwhile by another connection, or a server that auto-creates parents.
                Err(async_imap::error::Error::No(reply)) if reply.to_ascii_uppercase().contains("EXISTS") => {}
                Err(async_imap::error::Error::No(reply)) => {
                    return Err(CopyError::Folder {
                        side: Side::Destination,
                        folder: levels.join("/"),
                        detail: format!("CREATE refused: {reply}"),
                    })
                }
                Err(other) => return Err(self.dst_err(other)),
            }
            let _ = self.destination.run_command_and_check_ok(format!("SUBSCRIBE {quoted}")).await;
            existing.insert(name);
        }
        Ok(())
    }

    /// Check the destination folders this pair verifies (`mine`) against the ledger: each
    /// source message mailhaul copied (or found already there) maps to one destination message
    /// that is still there, and the rest of the destination folder holds no copies of source
    /// messages. A folder whose sources this call found unchanged keeps the verdict of its
    /// last verified pass (unless `reverify_unchanged`): an unchanged delta then costs one
    /// command per folder.
    async fn verify(
        &mut self,
        plans: &[FolderPlan],
        layout: &DestinationLayout,
        unchanged: &HashSet<String>,
        mine: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<(String, Verdict)>, CopyError> {
        let checkpoints = checkpoints_by_folder(self.store, &self.job.mailbox).await?;
        let mut by_destination = destination_folders(plans, layout, &checkpoints);
        let mut verdicts = Vec::new();
        by_destination.retain(|destination, _| mine(destination));
        for (destination_raw, members) in by_destination {
            if !self.options.reverify_unchanged {
                if let Some(verdict) = kept_verdict(&members, &checkpoints, unchanged) {
                    verdicts.push((crate::mutf7::decode(&destination_raw), verdict));
                    continue;
                }
            }
            // The folder this connection copied into last is still selected: NOOP brings its
            // view up to date and one UID SEARCH ALL gives every message, which saves opening
            // it again (a quarter second for a 100,000-message maildir folder). Otherwise
            // EXAMINE, not STATUS: a fresh, read-only view (Courier answers STATUS on the
            // folder selected last from a stale one).
            let copied_validity = members
                .iter()
                .filter_map(|f| checkpoints.get(&f.source_raw))
                .map(|c| c.destination_uid_validity)
                .find(|v| *v != 0);
            let (dest_validity, dest_exists, all_uids) = match copied_validity {
                Some(validity) if self.destination_selected.as_deref() == Some(destination_raw.as_str()) => {
                    timed(self.destination.noop()).await.map_err(|e| self.dst_err(e))?;
                    let highest = members
                        .iter()
                        .filter_map(|f| checkpoints.get(&f.source_raw))
                        .map(|c| c.destination_uid_next.saturating_sub(1))
                        .max()
                        .unwrap_or(0);
                    let all = every_uid(&mut self.destination, &mut self.destination_tags, highest)
                        .await
                        .map_err(|detail| self.lost(Side::Destination, detail))?;
                    (validity, all.len() as u32, Some(all))
                }
                _ => {
                    self.destination_selected = None;
                    let dest_box =
                        timed(self.destination.examine(&destination_raw)).await.map_err(|e| self.dst_err(e))?;
                    self.destination_selected = Some(destination_raw.clone());
                    (dest_box.uid_validity.unwrap_or(0), dest_box.exists, None)
                }
            };
            let mut ledgers = Vec::new();
            let mut mapped = Vec::new();
            for folder in &members {
                let cp = checkpoints.get(&folder.source_raw).cloned().unwrap_or_default();
                let recorded = self.store.load_ledger(&self.job.mailbox, &folder.source_raw, cp.uid_validity).await?;
                let ledger = FolderLedger::from_recorded(recorded);
                mapped.extend(ledger.destination_uids(dest_validity));
                ledgers.push((folder, cp, ledger));
            }
            mapped.sort_unstable();
            mapped.dedup();
            let all_uids = match (all_uids, mapped.last()) {
                (Some(all), _) => Some(all),
                (None, None) => None,
                (None, Some(&highest)) => Some(
                    every_uid(&mut self.destination, &mut self.destination_tags, highest)
                        .await
                        .map_err(|detail| self.lost(Side::Destination, detail))?,
                ),
            };
            let held: HashSet<u32> = match &all_uids {
                Some(all) => mapped.iter().copied().filter(|uid| all.contains(uid)).collect(),
                None => HashSet::new(),
            };
            let mut total = ledger::Check::default();
            let mut source_messages = 0;
            let mut rescans = 0;
            for (folder, cp, ledger) in &ledgers {
                // The folder this connection copied from last is still open: NOOP brings its
                // view up to date without opening it again.
                if self.source_selected.as_deref() == Some(folder.source_raw.as_str()) {
                    timed(self.source.noop()).await.map_err(|e| self.src_err(e))?;
                } else {
                    self.examine_source(folder).await?;
                }
                let mut source_uids: Vec<u32> =
                    every_uid(&mut self.source, &mut self.source_tags, cp.uid_next.saturating_sub(1))
                        .await
                        .map_err(|detail| self.lost(Side::Source, detail))?
                        .into_iter()
                        .collect();
                // Mail that arrived after this pass looked is the next pass's.
                source_uids.retain(|uid| cp.uid_next == 0 || *uid < cp.uid_next);
                source_uids.sort_unstable();
                source_messages += source_uids.len() as u64;
                rescans += cp.rescans;
                let check = ledger::check(ledger, &source_uids, dest_validity, |d| held.contains(&d), 0);
                total.add(&check);
            }
            total.others = u64::from(dest_exists).saturating_sub(total.present + total.unmapped);
            if total.others > 0 {
                total.duplicates = self.count_duplicates(&members, &held, all_uids.as_ref(), dest_exists).await?;
            }
            let mut detail = total.describe();
            if rescans > 0 {
                detail.push_str("; the source folder was rescanned (its UIDVALIDITY changed)");
            }
            let verdict = Verdict {
                ok: total.ok(),
                source_messages,
                destination_messages: u64::from(dest_exists),
                not_copied: total.not_copied,
                detail,
            };
            for (_, cp, _) in &ledgers {
                if !cp.source_folder.is_empty() {
                    let mut cp = cp.clone();
                    cp.verify = Some(verdict.clone());
                    self.store.save_folder(&self.job.mailbox, &cp).await?;
                }
            }
            verdicts.push((crate::mutf7::decode(&destination_raw), verdict));
        }
        Ok(verdicts)
    }

    /// Among destination messages mailhaul did not map (up to [`DUPLICATE_CHECK_LIMIT`]), how
    /// many are extra copies of a source message: their Message-ID occurs more often in the
    /// destination folder than in the source folders copied into it. New mail delivered after
    /// the MX switch has Message-IDs the source never saw and is not counted.
    /// `everything`: the folder's UIDs when verification already searched them.
    async fn count_duplicates(
        &mut self,
        members: &[&FolderPlan],
        mapped: &HashSet<u32>,
        everything: Option<&HashSet<u32>>,
        messages: u32,
    ) -> Result<u64, CopyError> {
        let searched;
        let everything = match everything {
            Some(uids) => uids,
            None => {
                // In UID windows, as verification reads them (the count is a fair guess at the
                // highest UID; the last window is open-ended either way).
                searched = every_uid(&mut self.destination, &mut self.destination_tags, messages)
                    .await
                    .map_err(|detail| self.lost(Side::Destination, detail))?;
                &searched
            }
        };
        let all: Vec<u32> = {
            let mut uids: Vec<u32> = everything.iter().copied().filter(|uid| !mapped.contains(uid)).collect();
            uids.sort_unstable();
            uids.truncate(DUPLICATE_CHECK_LIMIT);
            uids
        };
        if all.is_empty() {
            return Ok(0);
        }
        let others = fetch_metas(&mut self.destination, &mut self.destination_tags, &plan::uid_set(&all))
            .await
            .map_err(|detail| self.lost(Side::Destination, detail))?;
        let ids: BTreeSet<String> = others.into_iter().filter_map(|m| m.message_id).collect();
        let mut in_destination: HashMap<&str, usize> = HashMap::new();
        for id in &ids {
            let query = format!("HEADER Message-ID {}", append::quote(id));
            let found = timed(self.destination.uid_search(&query)).await.map_err(|e| self.dst_err(e))?;
            in_destination.insert(id, found.len());
        }
        let mut in_source: HashMap<&str, usize> = HashMap::new();
        for folder in members {
            self.examine_source(folder).await?;
            for id in &ids {
                let query = format!("HEADER Message-ID {}", append::quote(id));
                let found = timed(self.source.uid_search(&query)).await.map_err(|e| self.src_err(e))?;
                *in_source.entry(id).or_default() += found.len();
            }
        }
        Ok(ids
            .iter()
            .map(|id| {
                let source = in_source.get(id.as_str()).copied().unwrap_or(0);
                let destination = in_destination.get(id.as_str()).copied().unwrap_or(0);
                if source > 0 {
                    destination.saturating_sub(source) as u64
                } else {
                    0
                }
            })
            .sum())
    }
}

/// A source message queued for APPEND, with what the report needs if it goes wrong.
#[derive(Clone)]
struct Queued {
    uid: u32,
    size: u64,
    message_id: Option<String>,
}

fn uids_of(batch: &[Queued]) -> Vec<u32> {
    batch.iter().map(|m| m.uid).collect()
}

/// A folder with at least this many batches to send takes help from idle connection pairs.
const HELP_FROM_BATCHES: usize = 2;
/// How often an idle connection pair looks for a folder to help with.
const HELP_POLL: Duration = Duration::from_millis(20);

/// One folder's batches to append, open to every connection pair of the mailbox: a pair with
/// no folder left to take helps with the batches nobody has taken yet, so one big folder is
/// written by several connections at once. The books are shared and saved whole under their
/// lock, with every sent batch in the in-flight mark, so a cut-off call is reconciled
/// exactly as with one writer.
struct Appending {
    folder: FolderPlan,
    destination_raw: String,
    uid_validity: u32,
    dest_validity: u32,
    accepted: AcceptedFlags,
    /// Unreadable before and tried again this pass (sorted): their skip records go once copied.
    retry: Vec<u32>,
    /// The last source UID of the last batch.
    highest_batched: u32,
    /// Helpers stop once the destination folder's UIDs pass this. Dovecot maildir makes
    /// every session re-read a big folder's uidlist after another's transaction: a 100,000
    /// message copy took 61 s with two pairs against 44 s with one (loopback). So with
    /// MULTIAPPEND (Dovecot, Cyrus: the server's time per batch dominates) help ends at
    /// `big_folder_messages`; without it (Exchange, Gmail: round trips dominate) it does not.
    help_until: Option<u32>,
    books: tokio::sync::Mutex<Books>,
}

/// The state of a folder being appended, shared by the connection pairs that append it.
struct Books {
    cp: FolderCheckpoint,
    ledger: FolderLedger,
    /// Batches nobody has taken yet, in UID order.
    batches: VecDeque<Vec<Queued>>,
    /// Batches taken and not settled, by first source UID: last UID, and the fence (the
    /// destination's UIDNEXT) once sent.
    open: BTreeMap<u32, (u32, Option<u32>)>,
    /// Connection pairs helping now, beside the one that opened the folder.
    helpers: usize,
    /// One past the highest destination UID the destination reported.
    dest_next: u32,
}

impl Appending {
    /// The next batch to send, open in the books from now on. None for a helper once the
    /// destination folder is past `help_until`.
    async fn take(&self, helping: bool) -> Option<Vec<Queued>> {
        let mut books = self.books.lock().await;
        if helping && self.help_until.is_some_and(|until| books.dest_next > until) {
            return None;
        }
        let batch = books.batches.pop_front()?;
        books.open.insert(batch[0].uid, (batch[batch.len() - 1].uid, None));
        Some(batch)
    }

    /// Join as a helper if there is enough left to be worth opening the folder.
    async fn join(&self) -> bool {
        let mut books = self.books.lock().await;
        let past = self.help_until.is_some_and(|until| books.dest_next > until);
        let worth = books.batches.len() >= HELP_FROM_BATCHES && !past;
        books.helpers += usize::from(worth);
        worth
    }

    async fn leave(&self) {
        self.books.lock().await.helpers -= 1;
    }
}

impl Books {
    /// The batch opened at `first` is about to be sent: fence it.
    fn sent(&mut self, first: u32, dest_validity: u32) {
        let fence = self.dest_next;
        if let Some((_, at)) = self.open.get_mut(&first) {
            *at = Some(fence);
        }
        self.mark_in_flight(dest_validity);
    }

    /// The batch opened at `first` is settled up to `unconfirmed_from` (all of it if None);
    /// the rest stays in flight under the batch's fence. The checkpoint's last_uid moves up
    /// to just below the lowest batch still open or queued.
    fn settled(&mut self, first: u32, unconfirmed_from: Option<u32>, dest_validity: u32, highest_batched: u32) {
        if let Some((last, fence)) = self.open.remove(&first) {
            if let Some(uid) = unconfirmed_from {
                self.open.insert(uid, (last, fence));
            }
        }
        let open = self.open.keys().next().copied();
        let queued = self.batches.front().map(|batch| batch[0].uid);
        let below = open.into_iter().chain(queued).min().map_or(highest_batched, |uid| uid - 1);
        self.cp.last_uid = self.cp.last_uid.max(below);
        self.mark_in_flight(dest_validity);
    }

    /// The checkpoint's in-flight mark covers every sent batch not settled yet, under the
    /// lowest fence: whatever of them landed has a destination UID at or above it.
    fn mark_in_flight(&mut self, dest_validity: u32) {
        let sent = self.open.iter().filter_map(|(first, (last, fence))| fence.map(|f| (*first, *last, f)));
        let covered = sent.fold(None, |acc: Option<(u32, u32, u32)>, (first, last, fence)| match acc {
            None => Some((first, last, fence)),
            Some((low, high, lowest)) => Some((low.min(first), high.max(last), lowest.min(fence))),
        });
        self.cp.in_flight = covered.map(|(low, high, _)| (low, high));
        self.cp.fence = covered.map(|(_, _, fence)| (dest_validity, fence));
    }
}

/// What the destination said about one batch.
#[derive(Default)]
struct AppendResult {
    /// Source UID and the server's verdict, for every message settled, in order.
    settled: Vec<(u32, Appended)>,
    /// The first UID whose APPEND is not confirmed (connection lost, throttled, busy).
    unconfirmed_from: Option<u32>,
    error: Option<CopyError>,
}

/// APPEND the fetched messages of one batch (`uids`, in order; a UID without a body was not
/// delivered by the source and is settled elsewhere) and sort the replies. With MULTIAPPEND
/// the batch is one command (one transaction on the server); if the server refuses it, the
/// batch goes again message by message.
#[allow(clippy::too_many_arguments)]
async fn append_fetched(
    destination: &mut Session,
    tag_seq: &mut u64,
    (literal_mode, multiappend): (LiteralMode, bool),
    destination_label: &str,
    destination_raw: &str,
    uids: &[u32],
    bodies: &HashMap<u32, Body>,
    accepted: &AcceptedFlags,
) -> AppendResult {
    let mut result = AppendResult::default();
    let mut order = Vec::new();
    let mut messages = Vec::new();
    for uid in uids {
        let Some(body) = bodies.get(uid) else { continue };
        order.push(*uid);
        messages.push(AppendMessage {
            flags: accepted.filter(&body.flags),
            internal_date: body.internal_date.clone(),
            body: &body.body,
        });
    }
    if messages.is_empty() {
        return result;
    }
    if multiappend && messages.len() > 1 {
        match append::append_multi(destination, destination_raw, &messages, literal_mode, tag_seq).await {
            Ok(MultiAppended::Stored(uids)) => {
                let uids =
                    uids.map_or_else(|| vec![Vec::new(); order.len()], |u| u.into_iter().map(|d| vec![d]).collect());
                result.settled = order.into_iter().zip(uids.into_iter().map(Appended::Stored)).collect();
                return result;
            }
            Ok(MultiAppended::Refused(reply)) => {
                if let Some(error @ CopyError::Throttled { .. }) = mailbox_level_refusal(&reply, destination_label) {
                    result.unconfirmed_from = order.first().copied();
                    result.error = Some(error);
                    return result;
                }
                // Nothing was stored: one by one, so only the message the server refuses stays
                // out (or, over quota, what fits is stored and the copy stops there).
                tracing::info!(folder = destination_raw, %reply, "MULTIAPPEND refused: appending the batch one by one");
            }
            Err(broken) => {
                result.unconfirmed_from = order.first().copied();
                result.error = Some(CopyError::ConnectionLost {
                    side: Side::Destination,
                    server: destination_label.to_string(),
                    detail: broken.detail,
                });
                return result;
            }
        }
    }
    let replies = match append::append_batch(destination, destination_raw, &messages, literal_mode, tag_seq).await {
        Ok(replies) => replies.into_iter().map(Some).collect(),
        Err(broken) => {
            result.error = Some(CopyError::ConnectionLost {
                side: Side::Destination,
                server: destination_label.to_string(),
                detail: broken.detail,
            });
            broken.known
        }
    };
    for (uid, reply) in order.iter().zip(replies) {
        match reply {
            // Replies past the first unconfirmed message are left to the next pass's
            // in-flight reconciliation, which finds stored ones in the destination.
            _ if result.unconfirmed_from.is_some() => break,
            Some(Appended::Refused(reply)) => match mailbox_level_refusal(&reply, destination_label) {
                // This message only (too big, unparsable, ...): recorded, the folder goes on.
                None => result.settled.push((*uid, Appended::Refused(reply))),
                // Busy, over quota, folder gone: nothing from here on is settled.
                Some(error) => {
                    result.unconfirmed_from = Some(*uid);
                    result.error.get_or_insert(error);
                }
            },
            Some(stored) => result.settled.push((*uid, stored)),
            None => result.unconfirmed_from = Some(*uid),
        }
    }
    result
}

/// A refused APPEND that says nothing about the message itself but about the mailbox or the
/// server (RFC 5530 codes): stop the batch there instead of recording the message as refused.
fn mailbox_level_refusal(reply: &str, server: &str) -> Option<CopyError> {
    let server = server.to_string();
    let side = Side::Destination;
    if let Some(retry_after) = throttle_hint(reply) {
        return Some(CopyError::Throttled { side, server, detail: reply.to_string(), retry_after });
    }
    let upper = reply.to_ascii_uppercase();
    if upper.contains("[OVERQUOTA]") {
        return Some(CopyError::OverQuota { server, detail: reply.to_string() });
    }
    ["[TRYCREATE]", "[SERVERBUG]", "[NONEXISTENT]"]
        .iter()
        .any(|code| upper.contains(code))
        .then(|| CopyError::ServerError { side, server, detail: reply.to_string() })
}

/// Longest a server may take to answer one command before the connection counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

/// Run one IMAP exchange with [`IO_TIMEOUT`]: a server that stops answering becomes a
/// retryable connection loss instead of a hang.
async fn timed<T>(
    exchange: impl std::future::Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, async_imap::error::Error> {
    match tokio::time::timeout(IO_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(async_imap::error::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply for {} s", IO_TIMEOUT.as_secs()),
        ))),
    }
}

/// Every UID of the selected folder ([`crate::imap::search::all_uids`]), within [`IO_TIMEOUT`].
async fn every_uid(session: &mut Session, tags: &mut u64, highest: u32) -> Result<HashSet<u32>, String> {
    match tokio::time::timeout(IO_TIMEOUT, crate::imap::search::all_uids(session, tags, highest)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no reply to SEARCH for {} s", IO_TIMEOUT.as_secs())),
    }
}

/// EXAMINE a source folder (`selected` says which one is open); a refusal is that folder's
/// error, not the connection's.
async fn examine_folder(
    session: &mut Session,
    selected: &mut Option<String>,
    folder: &FolderPlan,
    label: &str,
) -> Result<async_imap::types::Mailbox, CopyError> {
    *selected = None;
    let mailbox = timed(session.examine(&folder.source_raw)).await.map_err(|e| match e {
        async_imap::error::Error::No(reply) => CopyError::Folder {
            side: Side::Source,
            folder: folder.source_display.clone(),
            detail: format!("cannot open: {reply}"),
        },
        other => classify(other, Side::Source, label),
    })?;
    *selected = Some(folder.source_raw.clone());
    Ok(mailbox)
}

/// SELECT a destination folder for writing (`selected` says which one is open).
async fn select_folder(
    session: &mut Session,
    selected: &mut Option<String>,
    raw: &str,
    display: &str,
    label: &str,
) -> Result<async_imap::types::Mailbox, CopyError> {
    *selected = None;
    let mut selected_now = timed(session.select(raw)).await;
    if let Err(async_imap::error::Error::No(reply)) = &selected_now {
        // Dovecot creating an autocreated folder (auto = create) for another session at that
        // moment answers SELECT with NO [ALREADYEXISTS]: seen with four pairs at once.
        if reply.contains("ALREADYEXISTS") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            selected_now = timed(session.select(raw)).await;
        }
    }
    let mailbox = selected_now.map_err(|e| match e {
        async_imap::error::Error::No(reply) => CopyError::Folder {
            side: Side::Destination,
            folder: display.to_string(),
            detail: format!("cannot open: {reply}"),
        },
        other => classify(other, Side::Destination, label),
    })?;
    *selected = Some(raw.to_string());
    Ok(mailbox)
}

/// Resolves when the stop signal fires. (The deadline is enforced around the whole call.)
async fn stopped(timebox: &TimeBox) {
    let mut stop = timebox.stop.clone();
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The verdict a destination folder keeps without being read again: every source folder
/// copied into it is unchanged since its last pass, and that pass verified it fine.
fn kept_verdict(
    members: &[&FolderPlan],
    checkpoints: &HashMap<String, FolderCheckpoint>,
    unchanged: &HashSet<String>,
) -> Option<Verdict> {
    let mut kept = None;
    for folder in members {
        if !unchanged.contains(&folder.source_raw) {
            return None;
        }
        let verdict = checkpoints.get(&folder.source_raw)?.verify.clone().filter(|v| v.ok)?;
        kept = Some(verdict);
    }
    kept
}

/// A folder keeps the destination of its earlier passes while that folder exists, even if the
/// mapping would now pick another (a \Sent folder appeared, a prefix was set).
fn destination_of(
    folder: &FolderPlan,
    checkpoint: Option<&FolderCheckpoint>,
    layout: &DestinationLayout,
    existing: &BTreeSet<String>,
) -> String {
    match checkpoint {
        Some(cp) if !cp.destination_folder.is_empty() && existing.contains(&cp.destination_folder) => {
            cp.destination_folder.clone()
        }
        _ => folder.destination_raw(layout.delimiter),
    }
}

/// The store as a part copying one UID range of a folder sees it: the folder's checkpoint
/// is the range's own (saved under [`UidRange::checkpoint_key`]), its ledger the folder's.
struct RangeStore<'a> {
    inner: &'a dyn CheckpointStore,
    range: &'a UidRange,
}

impl RangeStore<'_> {
    fn as_saved(&self, checkpoint: &FolderCheckpoint) -> FolderCheckpoint {
        if checkpoint.source_folder != self.range.folder {
            return checkpoint.clone();
        }
        FolderCheckpoint {
            source_folder: self.range.checkpoint_key(),
            range: Some(self.range.clone()),
            ..checkpoint.clone()
        }
    }
}

#[async_trait::async_trait]
impl CheckpointStore for RangeStore<'_> {
    async fn load_saved(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, crate::ports::StoreError> {
        self.inner.load_saved(mailbox).await
    }

    async fn load_folders(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, crate::ports::StoreError> {
        let saved = self.inner.load_saved(mailbox).await?;
        let key = self.range.checkpoint_key();
        let own = saved.iter().find(|c| c.source_folder == key && c.range.as_ref() == Some(self.range)).cloned();
        let mut folders = crate::model::fold_ranges(saved);
        let own = match own {
            Some(own) => FolderCheckpoint { source_folder: self.range.folder.clone(), range: None, ..own },
            // Before the range's first save: where the folder stood (a renumbered folder
            // shows as such), nothing of the range settled yet.
            None => match folders.iter().find(|c| c.source_folder == self.range.folder) {
                Some(whole) => FolderCheckpoint {
                    source_folder: self.range.folder.clone(),
                    destination_folder: whole.destination_folder.clone(),
                    uid_validity: whole.uid_validity,
                    destination_uid_validity: whole.destination_uid_validity,
                    last_uid: self.range.from - 1,
                    ..FolderCheckpoint::default()
                },
                None => return Ok(folders),
            },
        };
        folders.retain(|c| c.source_folder != self.range.folder);
        folders.push(own);
        Ok(folders)
    }

    async fn save_folder(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<(), crate::ports::StoreError> {
        self.inner.save_folder(mailbox, &self.as_saved(checkpoint)).await
    }

    async fn record_skipped(&self, mailbox: &str, message: &SkippedMessage) -> Result<(), crate::ports::StoreError> {
        self.inner.record_skipped(mailbox, message).await
    }

    async fn skipped(&self, mailbox: &str) -> Result<Vec<SkippedMessage>, crate::ports::StoreError> {
        self.inner.skipped(mailbox).await
    }

    async fn forget_skipped(&self, mailbox: &str, folder: &str, uid: u32) -> Result<(), crate::ports::StoreError> {
        self.inner.forget_skipped(mailbox, folder, uid).await
    }

    async fn record_ledger(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
        runs: &[Run],
    ) -> Result<(), crate::ports::StoreError> {
        self.inner.record_ledger(mailbox, folder, uid_validity, runs).await
    }

    async fn load_ledger(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
    ) -> Result<Vec<Run>, crate::ports::StoreError> {
        self.inner.load_ledger(mailbox, folder, uid_validity).await
    }

    async fn record_batch(
        &self,
        mailbox: &str,
        uid_validity: u32,
        runs: &[Run],
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), crate::ports::StoreError> {
        self.inner.record_batch(mailbox, uid_validity, runs, &self.as_saved(checkpoint)).await
    }
}

/// A mailbox's folder checkpoints by source folder. (A free function: borrowing the whole
/// copier across the await would make the future hold its non-`Sync` sessions.)
async fn checkpoints_by_folder(
    store: &dyn CheckpointStore,
    mailbox: &str,
) -> Result<HashMap<String, FolderCheckpoint>, CopyError> {
    let saved = store.load_folders(mailbox).await?;
    Ok(saved.into_iter().map(|c| (c.source_folder.clone(), c)).collect())
}

/// The destination folders (as levels) to create for `folder` going into `raw`: its parents
/// and itself, those not in `existing`. None for INBOX or a folder that exists.
fn missing_level_names(
    folder: &FolderPlan,
    raw: &str,
    delimiter: char,
    existing: &BTreeSet<String>,
) -> Vec<Vec<String>> {
    if existing.contains(raw) || raw.eq_ignore_ascii_case("INBOX") {
        return Vec::new();
    }
    let mut needed: Vec<Vec<String>> = folders::parents(&folder.destination);
    needed.push(folder.destination.clone());
    needed.retain(|levels| !existing.contains(&crate::mutf7::encode(&levels.join(&delimiter.to_string()))));
    needed
}

/// [`missing_level_names`] as raw names.
fn missing_levels(folder: &FolderPlan, raw: &str, delimiter: char, existing: &BTreeSet<String>) -> Vec<String> {
    missing_level_names(folder, raw, delimiter, existing)
        .iter()
        .map(|levels| crate::mutf7::encode(&levels.join(&delimiter.to_string())))
        .collect()
}

/// The source folders going into each destination folder (raw names).
fn destination_folders<'p>(
    plans: &'p [FolderPlan],
    layout: &DestinationLayout,
    checkpoints: &HashMap<String, FolderCheckpoint>,
) -> BTreeMap<String, Vec<&'p FolderPlan>> {
    let mut by_destination: BTreeMap<String, Vec<&FolderPlan>> = BTreeMap::new();
    for folder in plans {
        let destination = checkpoints
            .get(&folder.source_raw)
            .map(|c| c.destination_folder.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| folder.destination_raw(layout.delimiter));
        by_destination.entry(destination).or_default().push(folder);
    }
    by_destination
}

fn fresh_checkpoint(folder: &FolderPlan, destination_raw: &str, uid_validity: u32) -> FolderCheckpoint {
    FolderCheckpoint {
        source_folder: folder.source_raw.clone(),
        destination_folder: destination_raw.to_string(),
        uid_validity,
        ..FolderCheckpoint::default()
    }
}

/// Which flags the destination folder keeps (PERMANENTFLAGS).
struct AcceptedFlags {
    listed: BTreeSet<String>,
    any_keyword: bool,
}

impl AcceptedFlags {
    fn from_mailbox(mailbox: &async_imap::types::Mailbox) -> AcceptedFlags {
        use async_imap::types::Flag;
        let source = if mailbox.permanent_flags.is_empty() { &mailbox.flags } else { &mailbox.permanent_flags };
        let any_keyword = mailbox.permanent_flags.is_empty() || source.iter().any(|f| matches!(f, Flag::MayCreate));
        AcceptedFlags { listed: source.iter().map(flag_name).map(|f| f.to_ascii_lowercase()).collect(), any_keyword }
    }

    /// Flags to send with APPEND: never \Recent, system flags the folder keeps, keywords if allowed.
    fn filter(&self, flags: &[String]) -> Vec<String> {
        flags
            .iter()
            .filter(|f| {
                let lower = f.to_ascii_lowercase();
                lower != "\\recent" && (self.listed.contains(&lower) || (!f.starts_with('\\') && self.any_keyword))
            })
            .cloned()
            .collect()
    }
}

fn flag_name(flag: &async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag;
    match flag {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(name) => name.to_string(),
    }
}

async fn list(session: &mut Session, reference: &str) -> Result<Vec<ListedFolder>, async_imap::error::Error> {
    use async_imap::types::NameAttribute;
    let names: Vec<_> = session.list(Some(reference), Some("*")).await?.try_collect().await?;
    Ok(names
        .iter()
        .map(|name| {
            let mut roles = Vec::new();
            let mut noselect = false;
            for attribute in name.attributes() {
                match attribute {
                    NameAttribute::NoSelect => noselect = true,
                    NameAttribute::Sent => roles.push(Role::Sent),
                    NameAttribute::Trash => roles.push(Role::Trash),
                    NameAttribute::Junk => roles.push(Role::Junk),
                    NameAttribute::Drafts => roles.push(Role::Drafts),
                    NameAttribute::Archive => roles.push(Role::Archive),
                    NameAttribute::All => roles.push(Role::All),
                    NameAttribute::Flagged => roles.push(Role::Flagged),
                    NameAttribute::Extension(other) => {
                        if other.eq_ignore_ascii_case("\\NonExistent") {
                            noselect = true;
                        } else if let Some(role) = Role::from_attribute(other) {
                            roles.push(role);
                        }
                    }
                    _ => {}
                }
            }
            if name.name().eq_ignore_ascii_case("INBOX") {
                roles = vec![Role::Inbox];
            }
            ListedFolder {
                raw: name.name().to_string(),
                delimiter: name.delimiter().and_then(|d| d.chars().next()),
                roles,
                noselect,
            }
        })
        .collect())
}

/// A namespace prefix as folder levels: `INBOX.` → `["INBOX"]`, `""` → none.
fn namespace_levels(ns: &Namespace) -> Vec<String> {
    let split: Vec<&str> = match ns.delimiter {
        Some(d) => ns.prefix.split(d).collect(),
        None => ns.prefix.split(['.', '/']).collect(),
    };
    split.into_iter().filter(|level| !level.is_empty()).map(str::to_string).collect()
}

/// Size, date and identity of the messages in `uid_set`, in UID order. Only the compact
/// record of each message is kept as responses arrive.
async fn fetch_metas(session: &mut Session, tags: &mut u64, uid_set: &str) -> Result<Vec<MessageMeta>, String> {
    let items = format!("(UID RFC822.SIZE INTERNALDATE {IDENTITY_FIELDS})");
    let mut metas: BTreeMap<u32, MessageMeta> = BTreeMap::new();
    let completion = fetch::uid_fetch(session, tags, uid_set, &items, |f: Fetched| {
        // Unsolicited responses (flag updates) carry no header: not a listing.
        let Some(header) = f.header else { return };
        let (message_id, key) = plan::identity(&header);
        let date = f.internal_date.as_deref().and_then(parse_internal_date).map(|d| d.date_naive());
        metas.entry(f.uid).or_insert(MessageMeta {
            uid: f.uid,
            size: u64::from(f.size.unwrap_or(0)),
            message_id,
            key,
            date,
        });
    })
    .await
    .map_err(|broken| broken.detail)?;
    if let Completion::Refused(words) = completion {
        // A listing must be whole, or messages would be silently passed over.
        return Err(format!("the server did not list every message: {words}"));
    }
    Ok(metas.into_values().collect())
}

fn parse_internal_date(text: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_str(text.trim(), "%d-%b-%Y %H:%M:%S %z").ok()
}

/// The source connection of one folder, as a batch fetch needs it (to reconnect too).
struct SourceLink<'a> {
    session: &'a mut Session,
    endpoint: &'a Endpoint,
    folder: &'a str,
    uid_validity: u32,
    tags: &'a mut u64,
    label: &'a str,
}

/// Fetch failures in a row, without a single success in between, after which the source
/// counts as down rather than as holding bad messages.
const FAILURES_IN_A_ROW_MAX: u32 = 12;

/// The parts of a UID list still to try on the source. A part that fails (BYE, connection
/// dropped) is tried once more on a new connection (a cut is not the messages' fault); if it
/// fails again it is split in halves, down to the one message that makes the server fail.
struct Bisection {
    /// Parts to try, each with how often it failed already.
    queue: VecDeque<(Vec<u32>, u32)>,
    failures_in_a_row: u32,
}

impl Bisection {
    fn new(uids: Vec<u32>) -> Bisection {
        Bisection { queue: VecDeque::from([(uids, 0)]), failures_in_a_row: 0 }
    }

    /// The next part to try, and how often it failed already.
    fn next_part(&mut self) -> Option<(Vec<u32>, u32)> {
        self.queue.pop_front()
    }

    fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
    }

    /// `part` failed with `detail`: `Some(uid)` when it is one message that failed twice (the
    /// culprit), `None` when it is queued again (whole or in halves); an error once the source
    /// failed [`FAILURES_IN_A_ROW_MAX`] times in a row (it is down, not holding bad messages).
    fn failed(&mut self, part: Vec<u32>, tries: u32, label: &str, detail: &str) -> Result<Option<u32>, CopyError> {
        self.failures_in_a_row += 1;
        if self.failures_in_a_row > FAILURES_IN_A_ROW_MAX {
            return Err(CopyError::ConnectionLost {
                side: Side::Source,
                server: label.to_string(),
                detail: detail.to_string(),
            });
        }
        if tries == 0 {
            self.queue.push_front((part, 1));
        } else if let Some((left, right)) = ledger::split(&part) {
            self.queue.push_front((right.to_vec(), 0));
            self.queue.push_front((left.to_vec(), 0));
        } else {
            return Ok(part.first().copied());
        }
        Ok(None)
    }
}

/// Source messages listed with their size, date and identity, and those the source could
/// not list (with the server's words).
#[derive(Default)]
struct Listing {
    metas: Vec<MessageMeta>,
    unlisted: Vec<(u32, String)>,
}

/// List the source messages in `uid_set` (see [`fetch_metas`]). Reading the identity headers
/// reads the message file: a message the server cannot read makes the whole listing fail
/// (Dovecot: `BYE FETCH failed`), every time. Then the UIDs are listed in parts by
/// [`Bisection`], and the messages that fail alone come back unlisted; the rest is listed.
async fn list_source(link: &mut SourceLink<'_>, uid_set: &str) -> Result<Listing, CopyError> {
    let SourceLink { session, endpoint, folder, uid_validity, tags, label } = link;
    let (endpoint, folder, uid_validity, label) = (*endpoint, *folder, *uid_validity, *label);
    let detail = match fetch_metas(session, tags, uid_set).await {
        Ok(metas) => return Ok(Listing { metas, unlisted: Vec::new() }),
        Err(detail) => detail,
    };
    tracing::info!(folder, %detail, "source listing failed: listing in parts");
    **session = reconnect_source(endpoint, folder, uid_validity, label).await?;
    let mut uids: Vec<u32> = timed(session.uid_search(format!("UID {uid_set}")))
        .await
        .map_err(|e| classify(e, Side::Source, label))?
        .into_iter()
        .collect();
    uids.sort_unstable();
    let mut listing = Listing::default();
    let mut parts = Bisection::new(uids);
    while let Some((part, tries)) = parts.next_part() {
        if part.is_empty() {
            continue;
        }
        match fetch_metas(session, tags, &plan::uid_set(&part)).await {
            Ok(metas) => {
                parts.succeeded();
                listing.metas.extend(metas);
            }
            Err(detail) => {
                let culprit = parts.failed(part, tries, label, &detail)?;
                **session = reconnect_source(endpoint, folder, uid_validity, label).await?;
                listing.unlisted.extend(culprit.map(|uid| (uid, detail)));
            }
        }
    }
    listing.metas.sort_by_key(|m| m.uid);
    Ok(listing)
}

/// Fetch the bodies of `uids`, accounting for every one. A part that fails is tried again
/// and split by [`Bisection`]; the one message that makes the server fail is recorded as
/// unreadable with the server's words. The rest is copied.
async fn fetch_batch(link: &mut SourceLink<'_>, uids: &[u32]) -> Result<FetchedBatch, CopyError> {
    let SourceLink { session, endpoint, folder, uid_validity, tags, label } = link;
    let (endpoint, folder, uid_validity, label) = (*endpoint, *folder, *uid_validity, *label);
    let mut batch = FetchedBatch::default();
    let mut parts = Bisection::new(uids.to_vec());
    while let Some((part, tries)) = parts.next_part() {
        let part: Vec<u32> = part.into_iter().filter(|uid| !batch.bodies.contains_key(uid)).collect();
        if part.is_empty() {
            continue;
        }
        let bodies = &mut batch.bodies;
        let wanted: HashSet<u32> = part.iter().copied().collect();
        let result =
            fetch::uid_fetch(session, tags, &plan::uid_set(&part), "(UID FLAGS INTERNALDATE BODY.PEEK[])", |f| {
                // Only what was asked, once: unsolicited FETCH responses never count.
                let (true, Some(body)) = (wanted.contains(&f.uid), f.body) else { return };
                bodies.entry(f.uid).or_insert(Body {
                    body,
                    flags: f.flags.into_iter().filter(|flag| !flag.eq_ignore_ascii_case("\\Recent")).collect(),
                    internal_date: f.internal_date,
                });
            })
            .await;
        match result {
            Ok(completion) => {
                parts.succeeded();
                let missing: Vec<u32> = part.iter().copied().filter(|uid| !batch.bodies.contains_key(uid)).collect();
                if missing.is_empty() {
                    continue;
                }
                let words = match completion {
                    Completion::Refused(words) => words,
                    Completion::Ok => "the server returned no body".to_string(),
                };
                // Gone (expunged meanwhile) or there but unreadable: the source decides.
                let query = format!("UID {}", plan::uid_set(&missing));
                let still_there =
                    timed(session.uid_search(&query)).await.map_err(|e| classify(e, Side::Source, label))?;
                for uid in missing {
                    let outcome = if still_there.contains(&uid) { Outcome::Unreadable } else { Outcome::Gone };
                    batch.problems.push((uid, outcome, words.clone()));
                }
            }
            Err(broken) => {
                tracing::info!(folder, uids = part.len(), tries, detail = %broken.detail, "source fetch failed: reconnecting");
                let culprit = parts.failed(part, tries, label, &broken.detail)?;
                **session = reconnect_source(endpoint, folder, uid_validity, label).await?;
                batch.problems.extend(culprit.map(|uid| (uid, Outcome::Unreadable, broken.detail)));
            }
        }
    }
    Ok(batch)
}

/// What the source says of a folder before it is copied; `examined` when it is open now.
struct SourceState {
    uid_validity: u32,
    uid_next: u32,
    highest_modseq: Option<u64>,
    examined: Option<async_imap::types::Mailbox>,
}

impl SourceState {
    /// From an EXAMINE's answer; None when it lacks UIDNEXT (Courier: STATUS has it).
    fn examined(mailbox: async_imap::types::Mailbox) -> Option<SourceState> {
        Some(SourceState {
            uid_validity: mailbox.uid_validity.unwrap_or(0),
            uid_next: mailbox.uid_next?,
            highest_modseq: mailbox.highest_modseq,
            examined: Some(mailbox),
        })
    }
}

/// STATUS that never answers from a stale view: Courier answers STATUS on the selected folder
/// from the view it had when selected (0 messages right after APPENDs). So when `folder` is
/// the selected one it is first left with UNSELECT where offered (never CLOSE: that would
/// expunge), else refreshed with NOOP.
async fn fresh_status(
    session: &mut Session,
    selected: &mut Option<String>,
    unselect: bool,
    folder: &str,
    items: &str,
) -> Result<async_imap::types::Mailbox, async_imap::error::Error> {
    if selected.as_deref() == Some(folder) {
        if unselect {
            session.run_command_and_check_ok("UNSELECT").await?;
            *selected = None;
        } else {
            session.noop().await?;
        }
    }
    session.status(folder, items).await
}

/// A new source session with `folder` examined, still at the same UIDVALIDITY.
async fn reconnect_source(
    endpoint: &Endpoint,
    folder: &str,
    uid_validity: u32,
    label: &str,
) -> Result<Session, CopyError> {
    let (mut session, _) = connect(endpoint, Side::Source).await?;
    let mailbox = timed(session.examine(folder)).await.map_err(|e| classify(e, Side::Source, label))?;
    if mailbox.uid_validity.unwrap_or(0) != uid_validity {
        // Renumbered mid-pass: stop here; the next call rescans the folder.
        return Err(CopyError::ConnectionLost {
            side: Side::Source,
            server: label.to_string(),
            detail: format!("folder {folder:?} changed its UIDVALIDITY during the copy"),
        });
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(uids: std::ops::RangeInclusive<u32>) -> Vec<Queued> {
        uids.map(|uid| Queued { uid, size: 1, message_id: None }).collect()
    }

    /// Batches settled out of order (several pairs append one folder): last_uid stays below
    /// the lowest batch still open or queued, and the in-flight mark covers every sent batch
    /// under the lowest fence.
    #[test]
    fn books_keep_every_open_batch_covered() {
        let mut books = Books {
            cp: FolderCheckpoint::default(),
            ledger: FolderLedger::default(),
            batches: VecDeque::from([batch(1..=10), batch(11..=20), batch(21..=30), batch(31..=40)]),
            open: BTreeMap::new(),
            helpers: 0,
            dest_next: 100,
        };
        let take = |books: &mut Books| {
            let b = books.batches.pop_front().unwrap();
            books.open.insert(b[0].uid, (b[b.len() - 1].uid, None));
        };
        take(&mut books);
        take(&mut books);
        take(&mut books); // 21..=30 taken, not sent (prefetched)
        books.sent(1, 7);
        books.dest_next = 110;
        books.sent(11, 7);
        assert_eq!((books.cp.in_flight, books.cp.fence), (Some((1, 20)), Some((7, 100))));

        // The second batch is confirmed first: nothing below the first moves last_uid.
        books.dest_next = 120;
        books.settled(11, None, 7, 40);
        assert_eq!(books.cp.last_uid, 0);
        assert_eq!((books.cp.in_flight, books.cp.fence), (Some((1, 10)), Some((7, 100))));

        // The first is confirmed up to 5: 6..=10 stays in flight under its fence.
        books.settled(1, Some(6), 7, 40);
        assert_eq!(books.cp.last_uid, 5);
        assert_eq!((books.cp.in_flight, books.cp.fence), (Some((6, 10)), Some((7, 100))));

        // The rest of it lands: the taken, unsent 21..=30 holds last_uid at 20.
        books.settled(6, None, 7, 40);
        assert_eq!((books.cp.last_uid, books.cp.in_flight, books.cp.fence), (20, None, None));
    }

    /// With `help_until`, helpers stop taking batches once the destination folder's UIDs pass
    /// it; the pair that opened the folder goes on to the end.
    #[tokio::test]
    async fn helpers_stop_past_help_until() {
        let job = Appending {
            folder: FolderPlan {
                source_raw: "INBOX".into(),
                source_display: "INBOX".into(),
                destination: vec!["INBOX".into()],
                renamed: None,
                all_mail: false,
            },
            destination_raw: "INBOX".into(),
            uid_validity: 1,
            dest_validity: 1,
            accepted: AcceptedFlags { listed: BTreeSet::new(), any_keyword: true },
            retry: Vec::new(),
            highest_batched: 40,
            help_until: Some(100),
            books: tokio::sync::Mutex::new(Books {
                cp: FolderCheckpoint::default(),
                ledger: FolderLedger::default(),
                batches: VecDeque::from([batch(1..=10), batch(11..=20), batch(21..=30), batch(31..=40)]),
                open: BTreeMap::new(),
                helpers: 0,
                dest_next: 90,
            }),
        };
        assert!(job.join().await, "below the mark: worth helping");
        assert!(job.take(true).await.is_some());
        job.books.lock().await.dest_next = 101;
        assert!(job.take(true).await.is_none(), "past the mark: a helper takes nothing more");
        assert!(!job.join().await, "and no pair joins");
        assert!(job.take(false).await.is_some(), "the pair that opened the folder goes on");
    }
}
