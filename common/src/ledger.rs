//! The per-message ledger: what became of every source message mailhaul has dealt with,
//! `(source folder, UIDVALIDITY, source UID) -> (destination UID, outcome)`.
//!
//! It makes resume, verification and delta passes exact: a message with an entry is never
//! sent again (unless its outcome says "try again"), and verification checks each mapping
//! instead of comparing counts. Entries are kept as runs: consecutive source UIDs with the
//! same outcome and consecutive destination UIDs are one run, so a folder copied in order
//! costs a few runs per batch, not one row per message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to a source message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Appended by mailhaul; the destination UID when known (APPENDUID).
    Copied,
    /// The destination already held it (duplicate skipping, or a cut-off batch that landed).
    Duplicate,
    TooBig,
    ByDate,
    /// The destination refused this message (server's words in the detail).
    Refused,
    /// The source could not deliver it (server's words); tried again by the next pass.
    Unreadable,
    /// Expunged on the source before it could be read.
    Gone,
    /// A message of Gmail's All Mail that is also in a label folder: copied there, not again.
    InLabelFolder,
}

impl Outcome {
    /// Outcomes that the next pass tries again.
    pub fn retry(self) -> bool {
        matches!(self, Outcome::Unreadable)
    }

    /// Outcomes whose source message must exist in the destination.
    pub fn in_destination(self) -> bool {
        matches!(self, Outcome::Copied | Outcome::Duplicate)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Copied => "copied",
            Outcome::Duplicate => "duplicate",
            Outcome::TooBig => "too_big",
            Outcome::ByDate => "by_date",
            Outcome::Refused => "refused",
            Outcome::Unreadable => "unreadable",
            Outcome::Gone => "gone",
            Outcome::InLabelFolder => "in_label_folder",
        }
    }
}

/// One run of consecutive source UIDs with the same outcome (and consecutive destination UIDs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First source UID.
    #[serde(rename = "s")]
    pub source_uid: u32,
    #[serde(rename = "n")]
    pub count: u32,
    /// First destination UID, when the destination told it.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub destination_uid: Option<u32>,
    /// The destination folder's UIDVALIDITY the UIDs belong to.
    #[serde(rename = "v", default)]
    pub destination_uid_validity: u32,
    #[serde(rename = "o")]
    pub outcome: Outcome,
    /// The server's words (refused, unreadable).
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Run {
    /// A run of one message.
    pub fn one(source_uid: u32, destination: Option<(u32, u32)>, outcome: Outcome, detail: Option<String>) -> Run {
        Run {
            source_uid,
            count: 1,
            destination_uid: destination.map(|(_, uid)| uid),
            destination_uid_validity: destination.map_or(0, |(validity, _)| validity),
            outcome,
            detail,
        }
    }

    fn last_uid(&self) -> u32 {
        self.source_uid + (self.count - 1)
    }

    /// The destination UID of `uid`, a source UID inside this run.
    fn destination_of(&self, uid: u32) -> Option<u32> {
        self.destination_uid.map(|d| d + (uid - self.source_uid))
    }

    /// The part of this run from `from` to `to` (source UIDs, inclusive, inside the run).
    fn slice(&self, from: u32, to: u32) -> Run {
        Run { source_uid: from, count: to - from + 1, destination_uid: self.destination_of(from), ..self.clone() }
    }

    /// Whether `next` continues this run.
    fn extends_with(&self, next: &Run) -> bool {
        next.source_uid == self.last_uid() + 1
            && next.outcome == self.outcome
            && next.detail == self.detail
            && next.destination_uid_validity == self.destination_uid_validity
            && match (self.destination_uid, next.destination_uid) {
                (Some(d), Some(n)) => n == d + self.count,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Turn per-message entries (any order) into runs.
pub fn runs(mut entries: Vec<Run>) -> Vec<Run> {
    entries.sort_by_key(|r| r.source_uid);
    let mut out: Vec<Run> = Vec::new();
    for entry in entries {
        match out.last_mut() {
            Some(last) if last.extends_with(&entry) => last.count += entry.count,
            _ => out.push(entry),
        }
    }
    out
}

/// The ledger of one source folder (one UIDVALIDITY) in memory: non-overlapping runs by
/// first source UID. A later entry for a UID replaces the earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderLedger {
    runs: BTreeMap<u32, Run>,
}

impl FolderLedger {
    /// Replay stored runs in the order they were recorded.
    pub fn from_recorded(recorded: impl IntoIterator<Item = Run>) -> FolderLedger {
        let mut ledger = FolderLedger::default();
        for run in recorded {
            ledger.apply(run);
        }
        ledger
    }

    /// Record `run`, replacing whatever was known of its UIDs.
    pub fn apply(&mut self, run: Run) {
        let (first, last) = (run.source_uid, run.last_uid());
        let overlapping: Vec<u32> = self
            .runs
            .range(..=last)
            .rev()
            .take_while(|(_, r)| r.last_uid() >= first)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            let old = self.runs.remove(&start).expect("listed above");
            if old.source_uid < first {
                let head = old.slice(old.source_uid, first - 1);
                self.runs.insert(head.source_uid, head);
            }
            if old.last_uid() > last {
                let tail = old.slice(last + 1, old.last_uid());
                self.runs.insert(tail.source_uid, tail);
            }
        }
        self.runs.insert(first, run);
    }

    /// What is known of `uid`: (outcome, destination UID).
    pub fn get(&self, uid: u32) -> Option<(Outcome, Option<u32>)> {
        let (_, run) = self.runs.range(..=uid).next_back()?;
        (run.last_uid() >= uid).then(|| (run.outcome, run.destination_of(uid)))
    }

    /// Whether a pass must still deal with `uid` (unknown, or its outcome asks for a retry).
    pub fn pending(&self, uid: u32) -> bool {
        self.get(uid).is_none_or(|(outcome, _)| outcome.retry())
    }

    /// The destination UIDVALIDITY recorded with `uid`'s run.
    pub fn destination_validity(&self, uid: u32) -> Option<u32> {
        let (_, run) = self.runs.range(..=uid).next_back()?;
        (run.last_uid() >= uid).then_some(run.destination_uid_validity)
    }

    /// Every run, by source UID.
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.values()
    }

    /// Source UIDs whose outcome asks for a retry.
    pub fn to_retry(&self) -> Vec<u32> {
        self.runs.values().filter(|r| r.outcome.retry()).flat_map(|r| r.source_uid..=r.last_uid()).collect()
    }

    /// Destination UIDs (in `validity`) that mailhaul mapped a source message to.
    pub fn destination_uids(&self, validity: u32) -> Vec<u32> {
        let mut uids: Vec<u32> = self
            .runs
            .values()
            .filter(|r| r.outcome.in_destination() && r.destination_uid_validity == validity)
            .filter_map(|r| r.destination_uid.map(|d| d..d + r.count))
            .flatten()
            .collect();
        uids.sort_unstable();
        uids
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// One source message of an in-flight batch, or one destination message that may be it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identified {
    pub uid: u32,
    /// Message identity (see [`crate::plan::identity`]).
    pub key: String,
}

/// Match the source messages of a cut-off batch against destination messages that arrived
/// at or after the batch's fence (destination UIDNEXT before it was sent) and that no ledger
/// entry claims. Both lists in UID order; each destination message matches at most one
/// source message, the earliest first, as the batch was sent in UID order.
/// Returns (source UID, destination UID) pairs of messages that landed.
pub fn reconcile_in_flight(sent: &[Identified], arrived: &[Identified]) -> Vec<(u32, u32)> {
    let mut pool: BTreeMap<&str, std::collections::VecDeque<u32>> = BTreeMap::new();
    for message in arrived {
        pool.entry(message.key.as_str()).or_default().push_back(message.uid);
    }
    sent.iter()
        .filter_map(|message| {
            pool.get_mut(message.key.as_str()).and_then(|uids| uids.pop_front()).map(|d| (message.uid, d))
        })
        .collect()
}

/// Bisection of a batch that fails as a whole: the halves to try next, or `None` when the
/// batch is down to one message (then that message is the culprit).
pub fn split(uids: &[u32]) -> Option<(&[u32], &[u32])> {
    (uids.len() > 1).then(|| uids.split_at(uids.len() / 2))
}

/// The verification of one destination folder, from the ledger and what both servers hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Source messages that must be in the destination (copied or duplicate, still in the source).
    pub expected: u64,
    /// Of those, how many map to a destination UID that the destination still holds.
    pub present: u64,
    /// Mapped destination UIDs the destination no longer holds.
    pub missing: u64,
    /// Source messages with no ledger entry at all (never dealt with).
    pub unaccounted: u64,
    /// Two source messages mapped to one destination message.
    pub shared: u64,
    /// Mapped without a destination UID (no UIDPLUS): counted, not checked one by one.
    pub unmapped: u64,
    /// Destination messages mailhaul did not put there (and no source message maps to).
    pub others: u64,
    /// Of the others, copies of a source message (duplicates).
    pub duplicates: u64,
    /// Source messages not copied on purpose or by necessity (too big, refused, ...).
    pub not_copied: u64,
    /// Of those, unreadable on the source: listed in the report, tried again next pass.
    pub unreadable: u64,
}

impl Check {
    /// Sum another folder's check into this one (several source folders, one destination).
    pub fn add(&mut self, other: &Check) {
        self.expected += other.expected;
        self.present += other.present;
        self.missing += other.missing;
        self.unaccounted += other.unaccounted;
        self.shared += other.shared;
        self.unmapped += other.unmapped;
        self.others += other.others;
        self.duplicates += other.duplicates;
        self.not_copied += other.not_copied;
        self.unreadable += other.unreadable;
    }

    pub fn ok(&self) -> bool {
        self.missing == 0 && self.unaccounted == 0 && self.shared == 0 && self.duplicates == 0
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.missing > 0 {
            parts.push(format!("{} copied message(s) no longer in the destination", self.missing));
        }
        if self.unaccounted > 0 {
            parts.push(format!("{} source message(s) never copied", self.unaccounted));
        }
        if self.shared > 0 {
            parts.push(format!("{} destination message(s) claimed twice", self.shared));
        }
        if self.duplicates > 0 {
            parts.push(format!("{} duplicate(s) of source messages in the destination", self.duplicates));
        }
        let mut summary = format!("{} of {} source message(s) present", self.present + self.unmapped, self.expected);
        if self.unmapped > 0 {
            summary.push_str(&format!(" ({} counted without UIDs: no UIDPLUS)", self.unmapped));
        }
        if self.not_copied > 0 {
            summary.push_str(&format!(", {} not copied (see report)", self.not_copied));
        }
        if self.unreadable > 0 {
            summary.push_str(&format!(", {} unreadable on the source (tried again next pass)", self.unreadable));
        }
        if self.others > 0 {
            summary.push_str(&format!(", {} other message(s) in the destination", self.others));
        }
        if parts.is_empty() {
            format!("ok: {summary}")
        } else {
            format!("{}; {summary}", parts.join("; "))
        }
    }
}

/// Compare a ledger with the servers: `source_uids` the source folder holds now,
/// `destination_holds(uid)` whether a mapped destination UID is still there,
/// `destination_total` the destination folder's message count. `duplicates` is filled in by
/// the caller, who looks at the others' identities.
pub fn check(
    ledger: &FolderLedger,
    source_uids: &[u32],
    destination_validity: u32,
    destination_holds: impl Fn(u32) -> bool,
    destination_total: u64,
) -> Check {
    let mut check = Check::default();
    let mut claimed: std::collections::HashSet<u32> = std::collections::HashSet::new();
    for uid in source_uids {
        match ledger.get(*uid) {
            None => check.unaccounted += 1,
            // Copied with its label folder: accounted for, nothing to find here.
            Some((Outcome::InLabelFolder, _)) => {}
            Some((outcome, _)) if !outcome.in_destination() => {
                // Listed in the report with the server's words; not a copy fault.
                if outcome.retry() {
                    check.unreadable += 1;
                }
                check.not_copied += 1;
            }
            Some((_, destination)) => {
                check.expected += 1;
                let run_validity = ledger.destination_validity(*uid);
                match destination.filter(|_| run_validity == Some(destination_validity)) {
                    None => check.unmapped += 1,
                    Some(d) if !claimed.insert(d) => check.shared += 1,
                    Some(d) if destination_holds(d) => check.present += 1,
                    Some(_) => check.missing += 1,
                }
            }
        }
    }
    check.others = destination_total.saturating_sub(check.present + check.unmapped);
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(s: u32, n: u32, d: u32) -> Run {
        Run {
            source_uid: s,
            count: n,
            destination_uid: Some(d),
            destination_uid_validity: 7,
            outcome: Outcome::Copied,
            detail: None,
        }
    }

    fn with(outcome: Outcome, s: u32) -> Run {
        Run::one(s, None, outcome, Some("server said no".into()))
    }

    #[test]
    fn consecutive_entries_become_one_run() {
        let entries = (1..=200).map(|u| Run::one(u, Some((7, 1000 + u)), Outcome::Copied, None)).collect();
        assert_eq!(runs(entries), vec![copied(1, 200, 1001)]);
        // A gap in either UID space, or another outcome, starts a new run.
        let cases: Vec<(Vec<Run>, usize)> = vec![
            (vec![copied(1, 1, 10), copied(2, 1, 12)], 2),
            (vec![copied(1, 1, 10), copied(3, 1, 11)], 2),
            (vec![copied(1, 1, 10), with(Outcome::Refused, 2), with(Outcome::Refused, 3)], 2),
            (vec![with(Outcome::Refused, 3), copied(1, 2, 10)], 2),
            (vec![Run::one(1, None, Outcome::Copied, None), Run::one(2, None, Outcome::Copied, None)], 1),
        ];
        for (entries, expected) in cases {
            assert_eq!(runs(entries.clone()).len(), expected, "{entries:?}");
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones_inside_runs() {
        let mut ledger = FolderLedger::from_recorded([copied(1, 10, 101), with(Outcome::Unreadable, 11)]);
        assert_eq!(ledger.to_retry(), vec![11]);
        assert!(ledger.pending(11) && ledger.pending(12) && !ledger.pending(5));
        // The unreadable message is copied by the next pass.
        ledger.apply(copied(11, 1, 200));
        assert!(ledger.to_retry().is_empty());
        assert_eq!(ledger.get(11), Some((Outcome::Copied, Some(200))));
        // A UID in the middle of a run is replaced: the run splits around it.
        ledger.apply(with(Outcome::Refused, 5));
        assert_eq!(ledger.get(4), Some((Outcome::Copied, Some(104))));
        assert_eq!(ledger.get(5), Some((Outcome::Refused, None)));
        assert_eq!(ledger.get(6), Some((Outcome::Copied, Some(106))));
        assert_eq!(ledger.runs().count(), 4);
        // A run over several runs replaces all of them.
        ledger.apply(copied(3, 10, 300));
        assert_eq!(ledger.get(2), Some((Outcome::Copied, Some(102))));
        assert_eq!(ledger.get(12), Some((Outcome::Copied, Some(309))));
        assert_eq!(ledger.destination_uids(7), vec![101, 102, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309]);
        assert_eq!(ledger.get(13), None);
    }

    #[test]
    fn runs_serialize_compactly() {
        let json = serde_json::to_string(&copied(1, 200, 1001)).unwrap();
        assert_eq!(json, r#"{"s":1,"n":200,"d":1001,"v":7,"o":"copied"}"#);
        assert_eq!(serde_json::from_str::<Run>(&json).unwrap(), copied(1, 200, 1001));
    }

    fn id(uid: u32, key: &str) -> Identified {
        Identified { uid, key: key.into() }
    }

    /// (case, the in-flight batch, destination arrivals, expected (source, destination) UIDs)
    type ReconcileCase = (&'static str, Vec<Identified>, Vec<Identified>, Vec<(u32, u32)>);

    #[test]
    fn in_flight_reconciliation_matches_by_identity_with_multiplicity() {
        let cases: Vec<ReconcileCase> = vec![
            ("nothing landed", vec![id(1, "a"), id(2, "b")], vec![], vec![]),
            ("all landed", vec![id(1, "a"), id(2, "b")], vec![id(50, "a"), id(51, "b")], vec![(1, 50), (2, 51)]),
            ("a prefix landed", vec![id(1, "a"), id(2, "b"), id(3, "c")], vec![id(50, "a")], vec![(1, 50)]),
            ("twins: one landed, the other is copied", vec![id(1, "t"), id(2, "t")], vec![id(60, "t")], vec![(1, 60)]),
            ("new mail that is not ours is ignored", vec![id(1, "a")], vec![id(70, "x"), id(71, "a")], vec![(1, 71)]),
        ];
        for (name, sent, arrived, expected) in cases {
            assert_eq!(reconcile_in_flight(&sent, &arrived), expected, "{name}");
        }
    }

    #[test]
    fn bisection_halves_until_one_message_is_left() {
        assert_eq!(split(&[1, 2, 3, 4, 5]), Some((&[1, 2][..], &[3, 4, 5][..])));
        assert_eq!(split(&[9]), None);
        // Finding one bad UID among 200 takes about log2(200) splits.
        let bad = 137;
        let mut batch: Vec<u32> = (1..=200).collect();
        let mut rounds = 0;
        while let Some((left, right)) = split(&batch) {
            batch = if left.contains(&bad) { left.to_vec() } else { right.to_vec() };
            rounds += 1;
        }
        assert_eq!(batch, vec![bad]);
        assert!(rounds <= 8, "{rounds}");
    }

    #[test]
    fn verification_verdicts() {
        let ledger = FolderLedger::from_recorded([
            copied(1, 3, 10),
            Run::one(4, None, Outcome::TooBig, Some("too big".into())),
            Run { outcome: Outcome::Duplicate, ..copied(5, 1, 5) },
        ]);
        let holds = |uids: &'static [u32]| move |d: u32| uids.contains(&d);
        // Exact: every copied message is there, nothing else.
        let exact = check(&ledger, &[1, 2, 3, 4, 5], 7, holds(&[5, 10, 11, 12]), 4);
        assert!(exact.ok(), "{exact:?}");
        assert_eq!((exact.expected, exact.present, exact.not_copied, exact.others), (4, 4, 1, 0));
        assert!(exact.describe().starts_with("ok: 4 of 4"), "{}", exact.describe());
        // Mail delivered after the MX switch: ok, said as "other messages".
        let more = check(&ledger, &[1, 2, 3, 4, 5], 7, holds(&[5, 10, 11, 12]), 6);
        assert!(more.ok() && more.others == 2);
        assert!(more.describe().contains("2 other message(s)"));
        // A copied message deleted in the destination.
        let gone = check(&ledger, &[1, 2, 3, 4, 5], 7, holds(&[5, 10, 12]), 3);
        assert!(!gone.ok() && gone.missing == 1);
        // A source message nobody dealt with.
        let new = check(&ledger, &[1, 2, 3, 4, 5, 6], 7, holds(&[5, 10, 11, 12]), 4);
        assert!(!new.ok() && new.unaccounted == 1);
        // Duplicates found among the others fail the check.
        let mut dup = more.clone();
        dup.duplicates = 1;
        assert!(!dup.ok() && dup.describe().contains("1 duplicate(s)"));
        // The destination folder was recreated: mappings to the old UIDVALIDITY count as unmapped.
        let recreated = check(&ledger, &[1, 2, 3], 8, |_| false, 3);
        assert_eq!((recreated.unmapped, recreated.present, recreated.others), (3, 0, 0));
        // Messages expunged on the source are not expected any more.
        let expunged = check(&ledger, &[2, 3], 7, holds(&[5, 10, 11, 12]), 4);
        assert!(expunged.ok() && expunged.others == 2);
    }
}
