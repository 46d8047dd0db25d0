//! What a mailbox does after each pass of the engine: one pure function, used by the local
//! runner and by the copy function, so both treat every outcome alike and the rules are
//! tested in one table.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::{CopyStatus, MailboxOutcome, Survey, SurveyedFolder};
use crate::error::CopyError;
use crate::model::{FolderShare, SplitRule, UidRange};

/// How one pass ended.
#[derive(Debug)]
pub enum PassEnd<'a> {
    Copied(&'a MailboxOutcome),
    Error(&'a CopyError),
    /// A mailbox that needed more than one pass was surveyed: split it, or go on.
    Surveyed(&'a Survey),
}

/// What the runner knows of the mailbox's earlier tries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tries {
    /// Tries of this pass so far, this one included (SQS: the message's receive count).
    pub attempt: u32,
    /// Throttled passes in a row before this one, and since when (time-boxed runners).
    pub throttled_passes: u32,
    pub throttled_for: Duration,
    /// The user asked to stop (Ctrl-C): nothing is retried.
    pub stopping: bool,
    /// The pass copied messages before its error: the mailbox is moving, its tries start over.
    pub progressed: bool,
}

/// The runner's rules.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_attempts: u32,
    /// A pass that runs out of time continues in a new pass (Lambda); otherwise running out of
    /// time means the user stopped the run, and the mailbox waits for the next run.
    pub time_boxed: bool,
    /// Fixed wait before a retry; `None`: 2, 4, 8 ... seconds up to two minutes.
    pub retry_delay: Option<Duration>,
    /// Throttled passes are queued again, up to these bounds (time-boxed runners only:
    /// elsewhere a throttle is retried like any transient error).
    pub max_throttled_passes: u32,
    pub max_throttled: Duration,
    /// Wait when the server throttles without saying how long.
    pub throttle_delay: Duration,
    /// When a surveyed mailbox is split across runners.
    pub split: SplitRule,
}

/// The mailbox's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    /// More to copy: start the next pass now.
    Continue,
    /// Stopped before the end; the next run resumes from the checkpoints.
    Stopped {
        error: String,
        hint: String,
    },
    /// A transient error: try the same pass again after this long.
    RetryAfter(Duration),
    /// A transient error after the pass copied messages: a new pass after this long, its tries
    /// counted from the start. A long copy whose connection drops now and then (providers
    /// close long sessions) is never given up while each pass gets further.
    Resume(Duration),
    /// The server throttles: a new pass after this long, without holding a connection.
    Throttled(Duration),
    /// Copy the mailbox in these parts, each in its own runner, side by side.
    Split(Vec<FolderShare>),
    /// Final. `gave_up`: a transient error that outlasted every retry.
    Failed {
        reason: String,
        hint: String,
        gave_up: bool,
    },
}

/// The one rule book: from how a pass ended to what the mailbox does next.
pub fn next_step(end: PassEnd<'_>, tries: Tries, limits: &Limits) -> Next {
    match end {
        PassEnd::Surveyed(survey) => match split_parts(survey, limits.split) {
            Some(parts) => Next::Split(parts),
            None => Next::Continue,
        },
        PassEnd::Copied(outcome) if outcome.status == CopyStatus::Done => match outcome.verification_failure() {
            // A copy that does not verify is not done.
            Some(reason) => {
                Next::Failed { reason, hint: MailboxOutcome::VERIFICATION_HINT.to_string(), gave_up: false }
            }
            None => Next::Done,
        },
        PassEnd::Copied(_) if limits.time_boxed => Next::Continue,
        PassEnd::Copied(_) => Next::Stopped {
            error: "stopped before the end".into(),
            hint: "run the same command again to resume".into(),
        },
        PassEnd::Error(e @ CopyError::Throttled { .. }) if limits.time_boxed => {
            if tries.throttled_passes >= limits.max_throttled_passes || tries.throttled_for >= limits.max_throttled {
                // A server that always says "try again" must not keep the batch open forever.
                Next::Failed {
                    reason: format!(
                        "throttled {} passes in a row over {} s; last reply: {e}",
                        tries.throttled_passes,
                        tries.throttled_for.as_secs()
                    ),
                    hint: "the server keeps refusing: ask its administrator to raise the limits for this account (or lower MaxConnectionsPerSourceHost), then upload the failed rows again".into(),
                    gave_up: false,
                }
            } else {
                Next::Throttled(e.retry_after().unwrap_or(limits.throttle_delay))
            }
        }
        PassEnd::Error(e) if e.is_retryable() && tries.stopping => {
            Next::Stopped { error: e.to_string(), hint: e.hint() }
        }
        PassEnd::Error(e) if e.is_retryable() && tries.progressed => Next::Resume(retry_delay(e, 1, limits)),
        PassEnd::Error(e) if e.is_retryable() && tries.attempt < limits.max_attempts => {
            Next::RetryAfter(retry_delay(e, tries.attempt, limits))
        }
        PassEnd::Error(e) if e.is_retryable() => Next::Failed {
            reason: format!("{e} (gave up after {} tries)", tries.attempt),
            hint: e.hint(),
            gave_up: true,
        },
        PassEnd::Error(e) => Next::Failed { reason: e.to_string(), hint: e.hint(), gave_up: false },
    }
}

/// How long to wait before try `attempt + 1`: the server's word, else the runner's fixed
/// delay, else an exponential backoff; never more than two minutes.
fn retry_delay(e: &CopyError, attempt: u32, limits: &Limits) -> Duration {
    let backoff = Duration::from_secs(1 << attempt.min(5));
    e.retry_after().or(limits.retry_delay).unwrap_or(backoff).min(Duration::from_secs(120))
}

/// The parts a surveyed mailbox is copied in, when what it has left to copy (estimated from
/// the messages not settled yet and the mean size copied so far) is above the rule's bytes:
/// one part per `above_bytes` of it, at most `max_parts`, never more than the destination
/// folders with work left. Folders going into one destination folder stay together (one
/// writer per destination folder); the biggest are dealt first, each to the lightest part.
/// The first part takes every folder the others do not, so a folder that appears on the
/// source after the split is still copied.
///
/// A folder that alone holds more than a part's worth (its destination folder has no other
/// source) is copied in UID ranges, one part each ([`range_parts`]); the other folders are
/// dealt as above onto the parts left.
pub fn split_parts(survey: &Survey, rule: SplitRule) -> Option<Vec<FolderShare>> {
    if rule.above_bytes == 0 || rule.max_parts < 2 || survey.labels_are_folders {
        return None;
    }
    // Unknown sizes (nothing copied yet): a typical message.
    let mean = if survey.mean_message_bytes > 0 { survey.mean_message_bytes } else { 75 * 1024 };
    let mut groups: BTreeMap<&str, (u64, Vec<&SurveyedFolder>)> = BTreeMap::new();
    for folder in &survey.folders {
        let left = if folder.complete { 0 } else { folder.messages.saturating_sub(folder.settled) };
        let group = groups.entry(folder.destination.as_str()).or_default();
        group.0 += left * mean;
        group.1.push(folder);
    }
    let mut groups: Vec<(u64, Vec<&SurveyedFolder>)> = groups.into_values().filter(|(bytes, _)| *bytes > 0).collect();
    groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1[0].source.cmp(&b.1[0].source)));
    let total: u64 = groups.iter().map(|(bytes, _)| bytes).sum();
    if let Some(shares) = range_parts(&groups, total, rule) {
        return Some(shares);
    }
    let parts = (total.div_ceil(rule.above_bytes) as usize).min(rule.max_parts).min(groups.len());
    if parts < 2 {
        return None;
    }
    Some(deal(groups, parts, BTreeSet::new()))
}

/// The folder groups dealt onto `parts` parts, the first taking every folder the others do
/// not (and not `elsewhere`, which other parts copy).
fn deal(groups: Vec<(u64, Vec<&SurveyedFolder>)>, parts: usize, elsewhere: BTreeSet<String>) -> Vec<FolderShare> {
    let mut loads = vec![(0u64, BTreeSet::new()); parts];
    for (bytes, folders) in groups {
        let lightest = loads.iter_mut().min_by_key(|(load, _)| *load).expect("at least one part");
        lightest.0 += bytes;
        lightest.1.extend(folders.into_iter().map(|f| f.source.clone()));
    }
    let mut others: BTreeSet<String> = loads[1..].iter().flat_map(|(_, folders)| folders.iter().cloned()).collect();
    others.extend(elsewhere);
    let mut shares = vec![FolderShare::AllBut(others)];
    shares.extend(loads.into_iter().skip(1).map(|(_, folders)| FolderShare::Only(folders)));
    shares
}

/// The folders with more than a part's worth left each in UID ranges (a folder that is the
/// only source of its destination folder, its UIDNEXT known, no batch in flight): ranges of
/// about equal UID spans from past its checkpoint, the top one open (it takes what arrives
/// meanwhile). The other folders are dealt onto the parts they need, at least one (it also
/// takes new folders and verifies the finished ones); the parts left go, one range at a time,
/// to the big folder with the most bytes per range. None when no folder gets two ranges.
fn range_parts(groups: &[(u64, Vec<&SurveyedFolder>)], total: u64, rule: SplitRule) -> Option<Vec<FolderShare>> {
    let rangeable = |(bytes, folders): &(u64, Vec<&SurveyedFolder>)| match folders.as_slice() {
        [f] => *bytes > rule.above_bytes && !f.in_flight && f.uid_next > f.last_uid.saturating_add(2),
        _ => false,
    };
    let (big, rest): (Vec<_>, Vec<_>) = groups.iter().cloned().partition(rangeable);
    if big.is_empty() {
        return None;
    }
    let rest_bytes = total - big.iter().map(|(bytes, _)| bytes).sum::<u64>();
    let others = (rest_bytes.div_ceil(rule.above_bytes) as usize).clamp(1, rest.len().max(1));
    // Each big folder one part to begin with, then more ranges where they shorten most.
    let budget = rule.max_parts.saturating_sub(others);
    if budget <= big.len() {
        return None;
    }
    let wanted = |bytes: u64, folder: &SurveyedFolder| {
        (bytes.div_ceil(rule.above_bytes) as usize).min((folder.uid_next - folder.last_uid - 1) as usize)
    };
    let mut ranges = vec![1usize; big.len()];
    for _ in big.len()..budget {
        let next = (0..big.len())
            .filter(|&i| ranges[i] < wanted(big[i].0, big[i].1[0]))
            .max_by_key(|&i| (big[i].0 / ranges[i] as u64, std::cmp::Reverse(i)));
        match next {
            Some(i) => ranges[i] += 1,
            None => break,
        }
    }
    if ranges.iter().all(|&k| k < 2) {
        return None;
    }
    let elsewhere: BTreeSet<String> = big.iter().map(|(_, f)| f[0].source.clone()).collect();
    let mut shares = deal(rest, others, elsewhere);
    for ((_, folders), k) in big.iter().zip(ranges) {
        let folder = folders[0];
        if k == 1 {
            shares.push(FolderShare::Only(BTreeSet::from([folder.source.clone()])));
            continue;
        }
        let (from, split) = (folder.last_uid + 1, folder.splits + 1);
        let span = u64::from(folder.uid_next - from);
        let starts: Vec<u32> = (0..k).map(|i| from + (span * i as u64 / k as u64) as u32).collect();
        for (i, start) in starts.iter().enumerate() {
            let to = starts.get(i + 1).map_or(u32::MAX, |next| next - 1);
            shares.push(FolderShare::Range(UidRange { folder: folder.source.clone(), from: *start, to, split }));
        }
    }
    Some(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Side;
    use crate::model::{FolderCounts, Verdict};

    fn outcome(status: CopyStatus, verified: bool) -> MailboxOutcome {
        let verdict = Verdict {
            ok: verified,
            source_messages: 3,
            destination_messages: if verified { 3 } else { 2 },
            not_copied: 0,
            detail: if verified { "ok".into() } else { "1 missing".into() },
        };
        MailboxOutcome {
            status,
            this_pass: FolderCounts::default(),
            verdicts: vec![("INBOX".into(), verdict)],
            renamed: Vec::new(),
            folders: 1,
        }
    }

    const LOCAL: Limits = Limits {
        max_attempts: 6,
        time_boxed: false,
        retry_delay: None,
        max_throttled_passes: 3,
        max_throttled: Duration::from_secs(3600),
        throttle_delay: Duration::from_secs(60),
        split: SplitRule { above_bytes: 0, max_parts: 1 },
    };
    const LAMBDA: Limits = Limits { time_boxed: true, retry_delay: Some(Duration::from_secs(60)), ..LOCAL };

    fn lost() -> CopyError {
        CopyError::ConnectionLost { side: Side::Source, server: "imap.example".into(), detail: "reset".into() }
    }
    fn throttled(after: Option<u64>) -> CopyError {
        CopyError::Throttled {
            side: Side::Source,
            server: "imap.example".into(),
            detail: "too many connections".into(),
            retry_after: after.map(Duration::from_secs),
        }
    }
    fn auth() -> CopyError {
        CopyError::Auth {
            side: Side::Source,
            server: "imap.example".into(),
            user: "alice".into(),
            reply: "NO".into(),
            hint: "fix it".into(),
        }
    }
    fn tries(attempt: u32) -> Tries {
        Tries { attempt, ..Tries::default() }
    }

    /// (case, how the pass ended, the tries so far, the runner, what the next step must be)
    type Case<'a> = (&'a str, PassEnd<'a>, Tries, &'a Limits, Box<dyn Fn(&Next) -> bool>);

    #[test]
    fn every_pass_end_has_one_next_step() {
        let done = outcome(CopyStatus::Done, true);
        let unverified = outcome(CopyStatus::Done, false);
        let more = outcome(CopyStatus::MoreToDo, true);
        let (lost, auth) = (lost(), auth());
        let (slow_down, slow_down_30) = (throttled(None), throttled(Some(30)));
        let stopping = Tries { attempt: 1, stopping: true, ..Tries::default() };
        let throttled_long = Tries { attempt: 1, throttled_passes: 3, ..Tries::default() };
        let s = Duration::from_secs;
        let failed = |next: &Next| matches!(next, Next::Failed { .. });
        let cases: Vec<Case> = vec![
            ("done and verified", PassEnd::Copied(&done), tries(1), &LOCAL, Box::new(|n| *n == Next::Done)),
            ("done, not verified", PassEnd::Copied(&unverified), tries(1), &LAMBDA, Box::new(failed)),
            (
                "time box ran out on Lambda",
                PassEnd::Copied(&more),
                tries(1),
                &LAMBDA,
                Box::new(|n| *n == Next::Continue),
            ),
            (
                "stopped locally",
                PassEnd::Copied(&more),
                tries(1),
                &LOCAL,
                Box::new(|n| matches!(n, Next::Stopped { .. })),
            ),
            (
                "transient, local backoff",
                PassEnd::Error(&lost),
                tries(3),
                &LOCAL,
                Box::new(move |n| *n == Next::RetryAfter(s(8))),
            ),
            (
                "transient, Lambda's fixed delay",
                PassEnd::Error(&lost),
                tries(2),
                &LAMBDA,
                Box::new(move |n| *n == Next::RetryAfter(s(60))),
            ),
            (
                "transient after copying, out of tries: a new pass, tries from the start",
                PassEnd::Error(&lost),
                Tries { progressed: true, ..tries(6) },
                &LOCAL,
                Box::new(move |n| *n == Next::Resume(s(2))),
            ),
            (
                "transient after copying on Lambda",
                PassEnd::Error(&lost),
                Tries { progressed: true, ..tries(5) },
                &LAMBDA,
                Box::new(move |n| *n == Next::Resume(s(60))),
            ),
            (
                "login refused after copying: still final",
                PassEnd::Error(&auth),
                Tries { progressed: true, ..tries(1) },
                &LOCAL,
                Box::new(|n| matches!(n, Next::Failed { gave_up: false, .. })),
            ),
            (
                "transient while stopping",
                PassEnd::Error(&lost),
                stopping,
                &LOCAL,
                Box::new(|n| matches!(n, Next::Stopped { .. })),
            ),
            (
                "transient, out of tries",
                PassEnd::Error(&lost),
                tries(6),
                &LOCAL,
                Box::new(
                    |n| matches!(n, Next::Failed { gave_up: true, reason, .. } if reason.contains("gave up after 6")),
                ),
            ),
            (
                "login refused: never retried",
                PassEnd::Error(&auth),
                tries(1),
                &LOCAL,
                Box::new(|n| matches!(n, Next::Failed { gave_up: false, .. })),
            ),
            (
                "throttled on Lambda, server's delay",
                PassEnd::Error(&slow_down_30),
                tries(1),
                &LAMBDA,
                Box::new(move |n| *n == Next::Throttled(s(30))),
            ),
            (
                "throttled on Lambda, default delay",
                PassEnd::Error(&slow_down),
                tries(1),
                &LAMBDA,
                Box::new(move |n| *n == Next::Throttled(s(60))),
            ),
            ("throttled too often", PassEnd::Error(&slow_down), throttled_long, &LAMBDA, Box::new(failed)),
            (
                "throttled locally: retried in place",
                PassEnd::Error(&slow_down_30),
                tries(1),
                &LOCAL,
                Box::new(move |n| *n == Next::RetryAfter(s(30))),
            ),
        ];
        for (case, end, tries, limits, expected) in cases {
            let next = next_step(end, tries, limits);
            assert!(expected(&next), "{case}: {next:?}");
        }
    }

    fn folder(source: &str, destination: &str, messages: u64, settled: u64) -> crate::engine::SurveyedFolder {
        crate::engine::SurveyedFolder {
            source: source.into(),
            destination: destination.into(),
            messages,
            settled,
            complete: false,
            last_uid: 0,
            uid_next: 0,
            in_flight: false,
            splits: 0,
        }
    }

    fn survey(folders: Vec<crate::engine::SurveyedFolder>) -> Survey {
        Survey { folders, labels_are_folders: false, mean_message_bytes: 1000 }
    }

    /// Which part copies each folder (exactly one must).
    fn owners(shares: &[FolderShare], folders: &[&str]) -> Vec<usize> {
        folders
            .iter()
            .map(|f| {
                let owning: Vec<usize> = (0..shares.len()).filter(|i| shares[*i].includes(f)).collect();
                assert_eq!(owning.len(), 1, "{f} is copied by parts {owning:?} of {shares:?}");
                owning[0]
            })
            .collect()
    }

    #[test]
    fn a_mailbox_is_split_by_what_it_has_left_one_writer_per_destination_folder() {
        let rule = SplitRule { above_bytes: 100_000, max_parts: 4 };
        // 400 KB left in four folders of 100 KB: four parts, one folder each.
        let even = survey(vec![
            folder("INBOX", "INBOX", 150, 50),
            folder("A", "A", 100, 0),
            folder("B", "B", 100, 0),
            folder("C", "C", 100, 0),
        ]);
        let shares = split_parts(&even, rule).expect("split");
        assert_eq!(shares.len(), 4);
        let mut parts = owners(&shares, &["INBOX", "A", "B", "C"]);
        parts.sort();
        assert_eq!(parts, vec![0, 1, 2, 3]);
        // A folder that appears after the split is the first part's.
        assert_eq!(owners(&shares, &["New"]), vec![0]);

        // Below the bound, or nothing left: not split.
        assert_eq!(split_parts(&survey(vec![folder("INBOX", "INBOX", 90, 0), folder("A", "A", 5, 0)]), rule), None);
        let mut done = even.clone();
        done.folders.iter_mut().for_each(|f| f.complete = true);
        assert_eq!(split_parts(&done, rule), None);
        // Off, or a Gmail source.
        assert_eq!(split_parts(&even, SplitRule { above_bytes: 0, ..rule }), None);
        assert_eq!(split_parts(&Survey { labels_are_folders: true, ..even.clone() }, rule), None);
        // At most max_parts.
        assert_eq!(split_parts(&even, SplitRule { max_parts: 2, ..rule }).map(|s| s.len()), Some(2));

        // Two source folders into one destination folder stay together; the big folder gets a
        // part of its own, the small ones share the other.
        let merged = survey(vec![
            folder("Big", "Big", 300, 0),
            folder("Old/Sent", "Sent", 60, 0),
            folder("Sent", "Sent", 60, 0),
            folder("Notes", "Notes", 10, 0),
        ]);
        let shares = split_parts(&merged, rule).expect("split");
        let parts = owners(&shares, &["Big", "Old/Sent", "Sent", "Notes"]);
        assert_eq!(parts[1], parts[2], "one writer for Sent: {shares:?}");
        assert_ne!(parts[0], parts[1], "{shares:?}");
        // 430 KB: five 100 KB parts wanted, but only three destination folders have work.
        assert_eq!(shares.len(), 3);
    }

    #[test]
    fn a_folder_with_more_than_a_part_left_is_split_in_uid_ranges() {
        let rule = SplitRule { above_bytes: 100_000, max_parts: 4 };
        let mut inbox = folder("INBOX", "INBOX", 1000, 100);
        (inbox.last_uid, inbox.uid_next) = (100, 1001);
        let big = survey(vec![inbox.clone(), folder("A", "A", 50, 0)]);
        let shares = split_parts(&big, rule).expect("split");
        // 900 KB in INBOX, 50 KB in A: A's part (which also takes new folders), then INBOX's
        // 900 UIDs in the three parts left, contiguous, the top one open.
        assert_eq!(shares.len(), 4, "{shares:?}");
        assert_eq!(owners(&shares, &["A", "New"]), vec![0, 0]);
        let ranges: Vec<&UidRange> = shares.iter().filter_map(FolderShare::range).collect();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].from, 101);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].to + 1, pair[1].from, "{ranges:?}");
        }
        assert_eq!(ranges[2].to, u32::MAX);
        assert!(ranges.iter().all(|r| r.folder == "INBOX" && r.split == 1));
        for uid in [101, 400, 1000, 5000] {
            assert_eq!(ranges.iter().filter(|r| r.contains(uid)).count(), 1, "UID {uid}");
        }
        assert!(!shares[0].includes("INBOX"));

        // The next split of the same folder is numbered on.
        let again = survey(vec![crate::engine::SurveyedFolder { splits: 1, ..inbox.clone() }]);
        let shares = split_parts(&again, rule).expect("split");
        assert!(shares.iter().filter_map(FolderShare::range).all(|r| r.split == 2));

        // A batch in flight (reconciled by a whole pass first), or UIDNEXT not known: by
        // folder only.
        let in_flight =
            survey(vec![crate::engine::SurveyedFolder { in_flight: true, ..inbox.clone() }, folder("A", "A", 50, 0)]);
        assert!(split_parts(&in_flight, rule).expect("split").iter().all(|s| s.range().is_none()));
        let unknown = survey(vec![crate::engine::SurveyedFolder { uid_next: 0, ..inbox.clone() }]);
        assert_eq!(split_parts(&unknown, rule), None);
        // Two big folders: each in ranges, the parts shared by bytes per range (600 KB and
        // 300 KB left, 7 parts after A's: INBOX 5 ranges, Sent 2).
        let mut sent = folder("Sent", "Sent", 300, 0);
        (sent.last_uid, sent.uid_next) = (0, 301);
        let mut six = inbox.clone();
        (six.messages, six.settled) = (700, 100);
        let two = survey(vec![six, sent, folder("A", "A", 50, 0)]);
        let shares = split_parts(&two, SplitRule { above_bytes: 100_000, max_parts: 8 }).expect("split");
        assert_eq!(shares.len(), 8, "{shares:?}");
        let count = |name: &str| shares.iter().filter_map(FolderShare::range).filter(|r| r.folder == name).count();
        assert_eq!((count("INBOX"), count("Sent")), (5, 2), "{shares:?}");
        assert_eq!(owners(&shares, &["A", "New"]), vec![0, 0]);
        assert!(!shares[0].includes("INBOX") && !shares[0].includes("Sent"));
        // Too few parts for two big folders to get a range each plus one more: by folder.
        let few = split_parts(&two, SplitRule { above_bytes: 100_000, max_parts: 3 }).expect("split");
        assert!(few.iter().all(|s| s.range().is_none()), "{few:?}");

        // Two sources into one destination folder: never in ranges (one writer each).
        let merged = survey(vec![inbox.clone(), folder("Old", "INBOX", 10, 0)]);
        assert_eq!(split_parts(&merged, rule), None);
    }

    #[test]
    fn a_surveyed_mailbox_splits_or_goes_on() {
        let limits = Limits { split: SplitRule { above_bytes: 100_000, max_parts: 4 }, ..LAMBDA };
        let big = survey(vec![folder("INBOX", "INBOX", 150, 0), folder("A", "A", 100, 0)]);
        assert!(
            matches!(next_step(PassEnd::Surveyed(&big), tries(1), &limits), Next::Split(parts) if parts.len() == 2)
        );
        let small = survey(vec![folder("INBOX", "INBOX", 10, 0)]);
        assert_eq!(next_step(PassEnd::Surveyed(&small), tries(1), &limits), Next::Continue);
    }
}
