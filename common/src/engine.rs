//! The copy engine: one mailbox, folder by folder, time-boxed and resumable.
//!
//! The source is only ever EXAMINEd and read with BODY.PEEK; nothing is stored, deleted or
//! expunged on either side. A checkpoint is written before each batch (its UIDs marked in
//! flight) and after the destination confirms it, so a cut-off run resumes without duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{CopyError, Side};
use crate::folders::{self, DestinationLayout, FolderPlan, ListedFolder, Role};
use crate::imap::append::{self, AppendMessage, Appended, LiteralMode};
use crate::imap::conn::{classify, throttle_hint};
use crate::imap::{connect, Caps, Session};
use crate::model::{CopyOptions, FolderCheckpoint, FolderCounts, MailboxJob, SkipReason, SkippedMessage, Verdict};
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

/// Copy one mailbox until done, the deadline, or the stop signal.
///
/// Errors: ask [`CopyError::is_retryable`]; checkpoints are saved before any error returns
/// so a retry resumes.
pub async fn copy_mailbox(
    job: &MailboxJob,
    options: &CopyOptions,
    store: &dyn CheckpointStore,
    progress: &dyn ProgressSink,
    timebox: &TimeBox,
) -> Result<MailboxOutcome, CopyError> {
    let (mut source, source_caps) = connect(&job.source, Side::Source).await?;
    if source_caps.condstore {
        // EXAMINE then reports HIGHESTMODSEQ, recorded in the checkpoint. Read-only still.
        let label = label(&job.source.server);
        timed(source.run_command_and_check_ok("ENABLE CONDSTORE"))
            .await
            .map_err(|e| classify(e, Side::Source, &label))?;
    }
    let (destination, caps) = connect(&job.destination, Side::Destination).await?;
    let mut copier = Copier {
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
        tag_seq: 0,
        batches_confirmed: 0,
        started_in_time: timebox.deadline.is_none_or(|d| tokio::time::Instant::now() < d),
        source_label: label(&job.source.server),
        destination_label: label(&job.destination.server),
    };
    let result = copier.run().await;
    // Be polite, but a failed LOGOUT changes nothing, and after an abandoned batch (a literal
    // half sent) or a broken connection the sessions are simply dropped.
    if !copier.abandoned && result.is_ok() {
        let polite = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(polite, copier.source.logout()).await;
        let _ = tokio::time::timeout(polite, copier.destination.logout()).await;
    }
    result
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
    tag_seq: u64,
    batches_confirmed: u64,
    started_in_time: bool,
    source_label: String,
    destination_label: String,
}

/// Why a folder pass stopped early.
enum Stopped {
    TimeUp,
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

    async fn run(&mut self) -> Result<MailboxOutcome, CopyError> {
        let reference = self.job.user_root.clone().unwrap_or_default();
        let source_folders = timed(list(&mut self.source, &reference)).await.map_err(|e| self.src_err(e))?;
        let destination_folders = timed(list(&mut self.destination, "")).await.map_err(|e| self.dst_err(e))?;
        let mut layout = destination_layout(&destination_folders);
        layout.prefix = folders::prefix_levels(self.options.destination_prefix.as_deref(), &destination_folders);
        // Folders of an INBOX-prefixed source (INBOX.Sent) are top-level folders in disguise.
        let source_prefix = folders::prefix_levels(self.options.source_prefix.as_deref(), &source_folders);
        let source_root = match (&self.job.user_root, source_prefix.first()) {
            (Some(root), _) => Some(root.clone()),
            (None, Some(prefix)) => Some(prefix.clone()),
            (None, None) => None,
        };
        let mut existing: BTreeSet<String> = destination_folders.iter().map(|f| f.raw.clone()).collect();
        let (plans, excluded) = folders::plan_folders(&source_folders, &layout, self.options, source_root.as_deref());
        for skip in &excluded {
            tracing::info!(mailbox = %self.job.mailbox, folder = %skip.source_display, reason = %skip.reason, "folder not copied");
        }
        let mut checkpoints = checkpoints_by_folder(self.store, &self.job.mailbox).await?;

        let mut outcome = MailboxOutcome {
            status: CopyStatus::Done,
            this_pass: FolderCounts::default(),
            verdicts: Vec::new(),
            renamed: plans
                .iter()
                .filter_map(|p| p.renamed.clone().map(|why| (p.source_display.clone(), p.destination_display(), why)))
                .collect(),
            folders: plans.len(),
        };
        let mut folder_errors = Vec::new();
        for folder in &plans {
            if self.time_is_up() {
                outcome.status = CopyStatus::MoreToDo;
                return Ok(outcome);
            }
            let checkpoint = checkpoints.remove(&folder.source_raw);
            match self.copy_folder(folder, checkpoint, &layout, &mut existing, &mut outcome.this_pass).await {
                Ok(Ok(())) => {}
                Ok(Err(Stopped::TimeUp)) => {
                    outcome.status = CopyStatus::MoreToDo;
                    return Ok(outcome);
                }
                Err(CopyError::Folder { side, folder, detail }) => {
                    tracing::warn!(mailbox = %self.job.mailbox, %folder, %detail, "folder refused");
                    folder_errors.push(format!("{side} folder {folder:?}: {detail}"));
                }
                Err(other) => return Err(other),
            }
        }
        if !folder_errors.is_empty() {
            return Err(CopyError::Folder {
                side: Side::Destination,
                folder: format!("{} folder(s)", folder_errors.len()),
                detail: folder_errors.join("; "),
            });
        }
        outcome.verdicts = self.verify(&plans, &layout).await?;
        Ok(outcome)
    }

    /// Copy what is new in one folder. `Ok(Err(TimeUp))` when stopped with more to do.
    async fn copy_folder(
        &mut self,
        folder: &FolderPlan,
        checkpoint: Option<FolderCheckpoint>,
        layout: &DestinationLayout,
        existing: &mut BTreeSet<String>,
        pass: &mut FolderCounts,
    ) -> Result<Result<(), Stopped>, CopyError> {
        // A folder keeps the destination of its earlier passes while that folder exists, even
        // if the mapping would now pick another (a \Sent folder appeared, a prefix was set).
        let destination_raw = match &checkpoint {
            Some(cp) if !cp.destination_folder.is_empty() && existing.contains(&cp.destination_folder) => {
                cp.destination_folder.clone()
            }
            _ => folder.destination_raw(layout.delimiter),
        };
        let source_box = timed(self.source.examine(&folder.source_raw)).await.map_err(|e| match e {
            async_imap::error::Error::No(reply) => CopyError::Folder {
                side: Side::Source,
                folder: folder.source_display.clone(),
                detail: format!("cannot open: {reply}"),
            },
            other => self.src_err(other),
        })?;
        let uid_validity = source_box.uid_validity.unwrap_or(0);
        // 0 = not reported: such a folder is never taken as unchanged.
        let uid_next = source_box.uid_next.unwrap_or(0);
        let highest_modseq = source_box.highest_modseq;

        let mut cp = match checkpoint {
            Some(cp) if cp.uid_validity == uid_validity => cp,
            Some(old) => {
                // The server renumbered the folder: start over, relying on duplicate detection.
                tracing::warn!(mailbox = %self.job.mailbox, folder = %folder.source_display, old = old.uid_validity, new = uid_validity, "UIDVALIDITY changed: rescanning the folder");
                FolderCheckpoint {
                    in_flight: Some((1, u32::MAX)),
                    ..fresh_checkpoint(folder, &destination_raw, uid_validity)
                }
            }
            None => fresh_checkpoint(folder, &destination_raw, uid_validity),
        };
        cp.destination_folder = destination_raw.clone();
        if cp.highest_modseq.is_some() && highest_modseq.is_some() && cp.highest_modseq != highest_modseq {
            // Flags changed or messages were removed on the source since the last pass.
            // Copies already made keep the flags they had then (see README: delta passes).
            tracing::info!(mailbox = %self.job.mailbox, folder = %folder.source_display, "source folder changed since the last pass (HIGHESTMODSEQ)");
        }
        let unchanged = uid_next != 0 && uid_validity != 0 && cp.uid_next == uid_next;
        if cp.complete && unchanged && cp.in_flight.is_none() && existing.contains(&destination_raw) {
            return Ok(Ok(())); // nothing arrived since the last pass
        }

        self.ensure_destination_folder(folder, &destination_raw, layout.delimiter, existing).await?;

        // Metadata of every source message: keys of all for multiplicity, candidates past the checkpoint.
        let in_flight = cp.in_flight;
        let dedupe_needed = self.options.skip_duplicates || in_flight.is_some();
        let metas = if source_box.exists == 0 {
            Vec::new()
        } else {
            let range = if dedupe_needed { "1:*".to_string() } else { format!("{}:*", cp.last_uid + 1) };
            timed(fetch_metas(&mut self.source, &range)).await.map_err(|e| self.src_err(e))?
        };
        let candidates: Vec<MessageMeta> = metas.iter().filter(|m| m.uid > cp.last_uid).cloned().collect();

        let dest_box = timed(self.destination.select(&destination_raw)).await.map_err(|e| match e {
            async_imap::error::Error::No(reply) => CopyError::Folder {
                side: Side::Destination,
                folder: folder.destination_display(),
                detail: format!("cannot open: {reply}"),
            },
            other => self.dst_err(other),
        })?;
        let accepted = AcceptedFlags::from_mailbox(&dest_box);

        let actions = if candidates.is_empty() {
            Vec::new()
        } else {
            let (source_counts, destination_counts) = if dedupe_needed {
                let mut source_counts: HashMap<String, u64> = HashMap::new();
                for meta in metas.iter().filter(|m| plan::eligible(m, self.max_size, self.options.since)) {
                    *source_counts.entry(meta.key.clone()).or_default() += 1;
                }
                let destination_counts = if dest_box.exists == 0 {
                    HashMap::new()
                } else {
                    let mut counts = HashMap::new();
                    for meta in timed(fetch_metas(&mut self.destination, "1:*")).await.map_err(|e| self.dst_err(e))? {
                        *counts.entry(meta.key).or_default() += 1;
                    }
                    counts
                };
                (source_counts, destination_counts)
            } else {
                (HashMap::new(), HashMap::new())
            };
            let skip_all = self.options.skip_duplicates;
            plan::decide(&candidates, &source_counts, &destination_counts, self.max_size, self.options.since, |uid| {
                skip_all || in_flight.is_some_and(|(lo, hi)| (lo..=hi).contains(&uid))
            })
        };
        let to_copy_bytes: u64 =
            candidates.iter().zip(&actions).filter(|(_, a)| **a == Action::Copy).map(|(m, _)| m.size).sum();
        let to_copy = actions.iter().filter(|a| **a == Action::Copy).count() as u64;
        self.progress.planned(&self.job.mailbox, &folder.source_display, to_copy, to_copy_bytes);

        let sized: Vec<(u64, Action)> = candidates.iter().zip(&actions).map(|(m, a)| (m.size, *a)).collect();
        let ranges = plan::batches(&sized, self.options.batch_bytes, self.options.batch_messages);
        let copy_uids: Vec<Vec<u32>> = ranges
            .iter()
            .map(|r| {
                let metas = candidates[r.clone()].iter().zip(&actions[r.clone()]);
                metas.filter(|(_, a)| **a == Action::Copy).map(|(m, _)| m.uid).collect()
            })
            .collect();
        // The source fetches batch N+1 while the destination appends batch N: at most two
        // batches of bodies in memory, and neither server waits for the other.
        let mut prefetched: Option<HashMap<u32, Body>> = None;
        for (index, range) in ranges.iter().enumerate() {
            if self.time_is_up() {
                self.store.save_folder(&self.job.mailbox, &cp).await?;
                return Ok(Err(Stopped::TimeUp));
            }
            let batch_metas = &candidates[range.clone()];
            let batch_actions = &actions[range.clone()];
            let first = batch_metas[0].uid;
            let last = batch_metas[batch_metas.len() - 1].uid;
            // Mark the batch in flight before sending anything, so a crash reconciles it.
            cp.in_flight = Some((first, in_flight.map_or(last, |(_, hi)| hi.max(last))));
            self.store.save_folder(&self.job.mailbox, &cp).await?;

            let bodies = match prefetched.take() {
                Some(bodies) => bodies,
                None => timed(fetch_bodies(&mut self.source, &copy_uids[index])).await.map_err(|e| self.src_err(e))?,
            };
            let next_uids = copy_uids.get(index + 1).filter(|uids| !uids.is_empty());
            let timebox = self.timebox;
            let (copied, fetched_next) = {
                let append = append_fetched(
                    &mut self.destination,
                    &mut self.tag_seq,
                    self.literal_mode,
                    &self.destination_label,
                    (folder, &destination_raw),
                    batch_metas,
                    &copy_uids[index],
                    &bodies,
                    &accepted,
                );
                let source = &mut self.source;
                let prefetch = async move {
                    match next_uids {
                        Some(uids) => Some(timed(fetch_bodies(source, uids)).await),
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
            drop(bodies);
            let mut counts = copied.counts;
            // Messages from the first unconfirmed one on are settled by the next pass.
            let settled = |uid: u32| copied.unconfirmed_from.is_none_or(|first| uid < first);
            for (meta, action) in batch_metas.iter().zip(batch_actions).filter(|(m, _)| settled(m.uid)) {
                match action {
                    Action::Copy => {}
                    Action::SkipDuplicate => counts.skipped_duplicate += 1,
                    Action::SkipByDate => counts.skipped_by_date += 1,
                    Action::SkipTooBig => {
                        counts.skipped_too_big += 1;
                        self.store
                            .record_skipped(
                                &self.job.mailbox,
                                &SkippedMessage {
                                    folder: folder.source_display.clone(),
                                    uid: meta.uid,
                                    size: meta.size,
                                    message_id: meta.message_id.clone(),
                                    reason: SkipReason::TooBig,
                                    detail: format!(
                                        "{} bytes is over the {} byte limit (max_message_size)",
                                        meta.size, self.max_size
                                    ),
                                },
                            )
                            .await?;
                    }
                }
            }
            for refused in &copied.refused {
                self.store.record_skipped(&self.job.mailbox, refused).await?;
            }
            cp.counts.add(&counts);
            pass.add(&counts);
            match copied.unconfirmed_from {
                None => {
                    cp.last_uid = last;
                    cp.in_flight = if in_flight.is_some_and(|(_, hi)| hi > last) { in_flight } else { None };
                }
                Some(uid) => {
                    cp.last_uid = uid.saturating_sub(1);
                    cp.in_flight = Some((uid, in_flight.map_or(last, |(_, hi)| hi.max(last))));
                }
            }
            self.store.save_folder(&self.job.mailbox, &cp).await?;
            self.batches_confirmed += 1;
            self.progress.copied(&self.job.mailbox, &folder.source_display, counts.copied, counts.bytes);
            if let Some(error) = copied.error {
                return Err(error);
            }
            match fetched_next {
                Some(Ok(bodies)) => prefetched = Some(bodies),
                Some(Err(e)) => return Err(self.src_err(e)),
                None => {}
            }
        }
        cp.in_flight = None;
        cp.complete = true;
        cp.uid_next = uid_next;
        cp.highest_modseq = highest_modseq;
        if let Some(last) = candidates.last() {
            cp.last_uid = cp.last_uid.max(last.uid);
        }
        self.store.save_folder(&self.job.mailbox, &cp).await?;
        tracing::info!(mailbox = %self.job.mailbox, folder = %folder.source_display, copied = cp.counts.copied, "folder done");
        Ok(Ok(()))
    }

    async fn ensure_destination_folder(
        &mut self,
        folder: &FolderPlan,
        raw: &str,
        delimiter: char,
        existing: &mut BTreeSet<String>,
    ) -> Result<(), CopyError> {
        if existing.contains(raw) || raw.eq_ignore_ascii_case("INBOX") {
            return Ok(());
        }
        let mut needed: Vec<Vec<String>> = folders::parents(&folder.destination);
        needed.push(folder.destination.clone());
        for levels in needed {
            let name = crate::mutf7::encode(&levels.join(&delimiter.to_string()));
            if existing.contains(&name) {
                continue;
            }
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

    /// Compare message counts per destination folder with what the source holds.
    async fn verify(
        &mut self,
        plans: &[FolderPlan],
        layout: &DestinationLayout,
    ) -> Result<Vec<(String, Verdict)>, CopyError> {
        let checkpoints = checkpoints_by_folder(self.store, &self.job.mailbox).await?;
        let mut expected: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
        for folder in plans {
            let source_count =
                timed(status_messages(&mut self.source, &folder.source_raw)).await.map_err(|e| self.src_err(e))?;
            let not_copied = checkpoints
                .get(&folder.source_raw)
                .map_or(0, |c| c.counts.skipped_too_big + c.counts.refused + c.counts.skipped_by_date);
            let destination = checkpoints
                .get(&folder.source_raw)
                .map(|c| c.destination_folder.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| folder.destination_raw(layout.delimiter));
            let entry = expected.entry(destination).or_default();
            entry.0 += source_count;
            entry.1 += not_copied;
            entry.2.push(folder.source_raw.clone());
        }
        let mut verdicts = Vec::new();
        for (destination_raw, (source_count, not_copied, sources)) in expected {
            let destination_count =
                timed(status_messages(&mut self.destination, &destination_raw)).await.map_err(|e| self.dst_err(e))?;
            let needed = source_count.saturating_sub(not_copied);
            let ok = destination_count >= needed;
            let detail = if ok {
                format!("{destination_count} in destination for {source_count} in source ({not_copied} not copied, see report)")
            } else {
                format!(
                    "{} message(s) missing: {destination_count} in destination, {needed} expected",
                    needed - destination_count
                )
            };
            let verdict = Verdict {
                ok,
                source_messages: source_count,
                destination_messages: destination_count,
                not_copied,
                detail,
            };
            for source in sources {
                if let Some(mut cp) = checkpoints.get(&source).cloned() {
                    cp.verify = Some(verdict.clone());
                    self.store.save_folder(&self.job.mailbox, &cp).await?;
                }
            }
            verdicts.push((crate::mutf7::decode(&destination_raw), verdict));
        }
        Ok(verdicts)
    }
}

/// APPEND one fetched batch (`uids`, in order) and sort the replies into counts, refused
/// messages and the first unconfirmed UID.
#[allow(clippy::too_many_arguments)]
async fn append_fetched(
    destination: &mut Session,
    tag_seq: &mut u64,
    literal_mode: LiteralMode,
    destination_label: &str,
    (folder, destination_raw): (&FolderPlan, &str),
    metas: &[MessageMeta],
    uids: &[u32],
    bodies: &HashMap<u32, Body>,
    accepted: &AcceptedFlags,
) -> BatchResult {
    let mut result = BatchResult::default();
    if uids.is_empty() {
        return result;
    }
    let mut order = Vec::new();
    let mut messages = Vec::new();
    for uid in uids {
        // A message expunged on the source since the listing is simply gone.
        let Some(body) = bodies.get(uid) else { continue };
        order.push(*uid);
        messages.push(AppendMessage {
            flags: accepted.filter(&body.flags),
            internal_date: body.internal_date.clone(),
            body: &body.body,
        });
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
    let meta_by_uid: HashMap<u32, &MessageMeta> = metas.iter().map(|m| (m.uid, m)).collect();
    for (uid, reply) in order.iter().zip(replies) {
        let size = bodies.get(uid).map_or(0, |b| b.body.len() as u64);
        match reply {
            // Replies past the first unconfirmed message are left to the next pass's
            // in-flight reconciliation, which finds stored ones in the destination.
            _ if result.unconfirmed_from.is_some() => break,
            Some(Appended::Stored(_)) => {
                result.counts.copied += 1;
                result.counts.bytes += size;
            }
            Some(Appended::Refused(reply)) => match mailbox_level_refusal(&reply, destination_label) {
                // This message only (too big, unparsable, ...): recorded, the folder goes on.
                None => {
                    result.counts.refused += 1;
                    result.refused.push(SkippedMessage {
                        folder: folder.source_display.clone(),
                        uid: *uid,
                        size,
                        message_id: meta_by_uid.get(uid).and_then(|m| m.message_id.clone()),
                        reason: SkipReason::Refused,
                        detail: reply,
                    });
                }
                // Busy, over quota, folder gone: nothing from here on is settled.
                Some(error) => {
                    result.unconfirmed_from = Some(*uid);
                    result.error.get_or_insert(error);
                }
            },
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
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

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

/// Resolves when the stop signal fires. (The deadline is checked between batches: the
/// caller's margin covers one batch, and finishing it costs less than redoing it.)
async fn stopped(timebox: &TimeBox) {
    let mut stop = timebox.stop.clone();
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
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

fn fresh_checkpoint(folder: &FolderPlan, destination_raw: &str, uid_validity: u32) -> FolderCheckpoint {
    FolderCheckpoint {
        source_folder: folder.source_raw.clone(),
        destination_folder: destination_raw.to_string(),
        uid_validity,
        ..FolderCheckpoint::default()
    }
}

#[derive(Default)]
struct BatchResult {
    counts: FolderCounts,
    refused: Vec<SkippedMessage>,
    /// The first UID whose APPEND is not confirmed (connection lost or throttled).
    unconfirmed_from: Option<u32>,
    error: Option<CopyError>,
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

fn destination_layout(folders: &[ListedFolder]) -> DestinationLayout {
    let delimiter = folders.iter().find_map(|f| f.delimiter).unwrap_or('/');
    let mut by_role = BTreeMap::new();
    for folder in folders.iter().filter(|f| !f.noselect) {
        for role in &folder.roles {
            by_role.entry(*role).or_insert_with(|| folder.segments(None));
        }
    }
    DestinationLayout { delimiter, prefix: Vec::new(), by_role }
}

async fn fetch_metas(session: &mut Session, range: &str) -> Result<Vec<MessageMeta>, async_imap::error::Error> {
    let query = format!("(UID RFC822.SIZE INTERNALDATE {IDENTITY_FIELDS})");
    let fetches: Vec<_> = session.uid_fetch(range, &query).await?.try_collect().await?;
    let mut metas: Vec<MessageMeta> = fetches
        .iter()
        .filter_map(|f| {
            let uid = f.uid?;
            let size = u64::from(f.size.unwrap_or(0));
            let (message_id, key) = plan::identity(f.header().unwrap_or_default());
            Some(MessageMeta { uid, size, message_id, key, date: f.internal_date().map(|d| d.date_naive()) })
        })
        .collect();
    metas.sort_by_key(|m| m.uid);
    Ok(metas)
}

struct Body {
    body: Vec<u8>,
    flags: Vec<String>,
    internal_date: Option<String>,
}

async fn fetch_bodies(session: &mut Session, uids: &[u32]) -> Result<HashMap<u32, Body>, async_imap::error::Error> {
    if uids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut stream = session.uid_fetch(plan::uid_set(uids), "(UID FLAGS INTERNALDATE BODY.PEEK[])").await?;
    let mut bodies = HashMap::new();
    while let Some(fetch) = stream.try_next().await? {
        let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) else { continue };
        bodies.insert(
            uid,
            Body {
                body: body.to_vec(),
                flags: fetch.flags().map(|f| flag_name(&f)).collect(),
                internal_date: fetch.internal_date().map(|d| d.format("%d-%b-%Y %H:%M:%S %z").to_string()),
            },
        );
    }
    Ok(bodies)
}

async fn status_messages(session: &mut Session, mailbox: &str) -> Result<u64, async_imap::error::Error> {
    let status = session.status(mailbox, "(MESSAGES)").await?;
    Ok(u64::from(status.exists))
}
