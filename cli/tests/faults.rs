//! Exactly once under network faults, against real Dovecot: a [`FaultProxy`] between the
//! engine and each server cuts connections mid-literal, stalls them, or records what they
//! carry. Every scenario compares each message (body, flags, INTERNALDATE) on both sides and
//! requires the source to be unchanged (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, flags).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::TryStreamExt;

use mailhaul_common::engine::{copy_mailbox, CopyStatus, MailboxOutcome, NoProgress, TimeBox};
use mailhaul_common::model::{Compress, CopyOptions, MailboxJob, Security, ServerSpec, SkipReason};
use mailhaul_common::ports::CheckpointStore;
use mailhaul_common::sqlite::SqliteStore;
use mailhaul_tests::corpus::{self, SampleMessage};
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, login, seed, snapshot, DumpedMessage, SeedMessage, SourceSnapshot};
use mailhaul_tests::proxy::{Captured, Direction, FaultPlan, FaultPolicy, FaultProxy};
use mailhaul_tests::wire;
use tokio::time::Instant;

/// The user [`support::job`] copies.
const USER: &str = "alice";
const PASSWORD: &str = "pw";

/// One message as a test compares it: FNV-1a of the body, its length, flags, INTERNALDATE.
/// The bodies themselves are compared too; the digest makes a failure readable.
type Key = (u64, usize, Vec<String>, String);

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn key(message: &DumpedMessage) -> Key {
    (fnv1a(&message.body), message.body.len(), message.flags.iter().cloned().collect(), message.internal_date.clone())
}

type Dump = BTreeMap<String, Vec<DumpedMessage>>;

/// Messages by folder.
type InFolders = Vec<(String, Key)>;

/// What the destination lacks and what it has too much of, per folder, compared with the
/// source: both empty means every source message is there exactly once, with its flags and
/// date, and nothing else is.
fn differences(source: &Dump, destination: &Dump) -> (InFolders, InFolders) {
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let folders: std::collections::BTreeSet<&String> = source.keys().chain(destination.keys()).collect();
    for folder in folders {
        let mut want: BTreeMap<Key, i64> = BTreeMap::new();
        for m in source.get(folder).into_iter().flatten() {
            *want.entry(key(m)).or_default() += 1;
        }
        for m in destination.get(folder).into_iter().flatten() {
            *want.entry(key(m)).or_default() -= 1;
        }
        for (k, n) in want {
            let into = if n > 0 { &mut missing } else { &mut extra };
            for _ in 0..n.abs() {
                into.push((folder.clone(), k.clone()));
            }
        }
    }
    (missing, extra)
}

/// Every source message exactly once in the destination (bodies byte for byte), nothing else.
fn assert_exactly_once(source: &Dump, destination: &Dump, what: &str) {
    let (missing, extra) = differences(source, destination);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: not exactly once: {} missing {missing:?}, {} extra (duplicates or strangers) {extra:?}",
        missing.len(),
        extra.len()
    );
    for (folder, messages) in source {
        fn sorted<'a>(d: &'a Dump, folder: &str) -> Vec<&'a [u8]> {
            let mut bodies: Vec<&[u8]> = d.get(folder).into_iter().flatten().map(|m| m.body.as_slice()).collect();
            bodies.sort();
            bodies
        }
        assert!(
            sorted(source, folder) == sorted(destination, folder),
            "{what}: folder {folder}: bodies differ ({})",
            messages.len()
        );
    }
}

/// Two Dovecots holding alice, a fault proxy in front of each, and a state store.
struct Rig {
    source: Dovecot,
    destination: Dovecot,
    source_proxy: FaultProxy,
    destination_proxy: FaultProxy,
    store: SqliteStore,
}

impl Rig {
    fn start(destination_options: DovecotOptions) -> Rig {
        Rig::start_both(users(), destination_options)
    }

    fn start_both(source_options: DovecotOptions, destination_options: DovecotOptions) -> Rig {
        // The engine's log, shown with a failing test's output.
        let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
        let source = Dovecot::start(source_options).expect("source");
        let destination = Dovecot::start(destination_options).expect("destination");
        let source_proxy = FaultProxy::start(plain_address(&source), FaultPolicy::pass_all()).expect("source proxy");
        let destination_proxy =
            FaultProxy::start(plain_address(&destination), FaultPolicy::pass_all()).expect("destination proxy");
        Rig { source, destination, source_proxy, destination_proxy, store: SqliteStore::in_memory().expect("store") }
    }

    /// alice from the source to the destination, each through its proxy, plain IMAP (so the
    /// proxies can read what goes by).
    fn job(&self) -> MailboxJob {
        let mut job = support::job(&self.source, &self.destination);
        for (endpoint, port) in
            [(&mut job.source, self.source_proxy.port), (&mut job.destination, self.destination_proxy.port)]
        {
            endpoint.server = ServerSpec {
                host: "127.0.0.1".into(),
                port,
                security: Security::Plain,
                ca_file: None,
                accept_invalid_certs: false,
                compress: Compress::Off,
            };
        }
        job
    }

    async fn pass(&self, options: &CopyOptions, timebox: &TimeBox) -> Result<MailboxOutcome, String> {
        copy_mailbox(&self.job(), options, &self.store, &NoProgress, timebox).await.map_err(|e| {
            assert!(e.is_retryable(), "only retryable errors under network faults, got: {e}");
            e.to_string()
        })
    }

    async fn dumps(&self) -> (Dump, Dump) {
        let source = dump(&self.source, USER, PASSWORD).await.expect("dump source");
        let destination = dump(&self.destination, USER, PASSWORD).await.expect("dump destination");
        (source, destination)
    }

    async fn source_snapshot(&self) -> SourceSnapshot {
        snapshot(&self.source, USER, PASSWORD).await.expect("snapshot")
    }
}

fn plain_address(server: &Dovecot) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.imap_port))
}

fn users() -> DovecotOptions {
    DovecotOptions::with_users(&[(USER, PASSWORD)]).layout(Layout::None)
}

/// A small seeded generator, so a failing run repeats.
struct Rng(u64);
impl Rng {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

/// `count` messages of 20-200 KB (a base64 attachment), flags and dates as in the corpus.
fn large_mail(tag: &str, count: u32, rng: &mut Rng) -> Vec<SeedMessage> {
    corpus::mailbox(tag, count)
        .into_iter()
        .enumerate()
        .map(|(i, small)| {
            let attachment = rng.between(14_000, 145_000) as usize;
            let mut message = SampleMessage::new(tag, i as u32 + 1).attachment(attachment).seed();
            message.flags = small.flags;
            message
        })
        .collect()
}

/// Body literals are at least this big; identity header literals are far smaller.
const MESSAGE_LITERAL: usize = 16_000;

/// For each fault that fired: its connection, and where the stream it was counted on ends.
fn cut_positions(proxy: &FaultProxy) -> Vec<(usize, wire::End)> {
    let captured = proxy.captured();
    proxy
        .fired()
        .into_iter()
        .filter_map(|(index, plan)| match plan {
            FaultPlan::CutAfter { direction, .. }
            | FaultPlan::StallAfter { direction, .. }
            | FaultPlan::CutBefore { direction, .. } => {
                Some((index, wire::end(&captured.get(&index)?.bytes(direction))))
            }
            FaultPlan::Pass => None,
        })
        .collect()
}

fn mid_message_literal(end: &wire::End) -> bool {
    matches!(end, wire::End::InLiteral { size, received } if *size >= MESSAGE_LITERAL && *received > 0)
}

/// Passes until the mailbox is done with nothing left to try again, each error retried at
/// once (the CLI waits a little first); returns (passes, passes that ended in an error).
async fn until_done(rig: &Rig, options: &CopyOptions, most: usize) -> (usize, usize) {
    let mut errors = 0;
    for pass in 1..=most {
        match rig.pass(options, &TimeBox::unlimited()).await {
            Ok(outcome) if outcome.status == CopyStatus::Done => {
                let left = rig.store.skipped(USER).await.expect("skipped");
                if left.iter().all(|s| s.reason != SkipReason::Unreadable) {
                    return (pass, errors);
                }
                // Messages a cut made unreadable twice in a row: the next pass tries them again.
                eprintln!("pass {pass}: done, {} message(s) to try again", left.len());
            }
            Ok(outcome) => panic!("no deadline, no stop signal, yet {:?}", outcome.status),
            Err(e) => {
                errors += 1;
                eprintln!("pass {pass}: {e}");
            }
        }
    }
    panic!("not done after {most} passes");
}

/// 40+ connections cut hard (RST) at seeded positions: the source's inside FETCH body
/// literals, the destination's inside APPEND literals. Each error is retried with a new pass.
/// At the end: every message exactly once, flags and dates kept, nothing listed as skipped,
/// the source untouched, and the proxies prove the cuts really happened mid-literal.
async fn cut_again_and_again(multiappend: bool, seed_value: u64) {
    let rig = Rig::start(users());
    let mut rng = Rng(seed_value);
    seed(&rig.source, USER, PASSWORD, "INBOX", &large_mail("cut-in", 24, &mut rng)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Projects/2024", &large_mail("cut-pr", 14, &mut rng)).await.expect("seed");
    let before = rig.source_snapshot().await;

    rig.source_proxy.capture(true);
    rig.destination_proxy.capture(true);
    // Past the login, folder list and identity listing of a pass (under 20 KB here): the cut
    // lands in message data.
    rig.source_proxy.set_policy(FaultPolicy::seeded_cuts(
        seed_value,
        0..72,
        Direction::ServerToClient,
        40_000..600_000,
    ));
    rig.destination_proxy.set_policy(FaultPolicy::seeded_cuts(
        seed_value ^ 0xd5,
        0..24,
        Direction::ClientToServer,
        20_000..500_000,
    ));
    // Without duplicate skipping: only the ledger and the in-flight reconciliation stand
    // between a cut batch and a second copy.
    let options = CopyOptions { batch_messages: 3, skip_duplicates: false, multiappend, ..CopyOptions::default() };
    let started = Instant::now();
    let (passes, errors) = until_done(&rig, &options, 120).await;

    let source_cuts = cut_positions(&rig.source_proxy);
    let destination_cuts = cut_positions(&rig.destination_proxy);
    let mid_literal = |cuts: &[(usize, wire::End)]| cuts.iter().filter(|(_, end)| mid_message_literal(end)).count();
    let (source_mid, destination_mid) = (mid_literal(&source_cuts), mid_literal(&destination_cuts));
    eprintln!(
        "multiappend {multiappend}: {passes} passes ({errors} ended by a cut) in {:.1} s; cuts: source {} ({source_mid} mid-FETCH literal), destination {} ({destination_mid} mid-APPEND literal)",
        started.elapsed().as_secs_f64(),
        source_cuts.len(),
        destination_cuts.len()
    );
    assert!(
        source_cuts.len() + destination_cuts.len() >= 40,
        "at least 40 cuts really happened: source {source_cuts:?}, destination {destination_cuts:?}"
    );
    assert!(source_mid + destination_mid >= 40, "at least 40 cuts mid-literal: {source_cuts:?} {destination_cuts:?}");
    assert!(source_mid >= 10 && destination_mid >= 10, "both sides cut: {source_cuts:?} {destination_cuts:?}");

    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, &format!("after {passes} passes"));
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
    assert!(rig.store.skipped(USER).await.expect("skipped").is_empty(), "nothing left listed as skipped");
    // The report agrees: a clean pass copies nothing and verifies every folder exactly.
    rig.source_proxy.pass_all();
    rig.destination_proxy.pass_all();
    let last = rig.pass(&options, &TimeBox::unlimited()).await.expect("a clean pass");
    assert_eq!((last.status, last.this_pass.copied), (CopyStatus::Done, 0));
    for (folder, verdict) in &last.verdicts {
        assert!(verdict.ok && verdict.detail.starts_with("ok: "), "{folder}: {verdict:?}");
        assert!(!verdict.detail.contains("other message"), "{folder}: {verdict:?}");
    }
}

/// One APPEND per message (LITERAL+): a cut leaves the first messages of the batch stored
/// without their OK, which only the in-flight reconciliation keeps from a second copy.
#[tokio::test(flavor = "multi_thread")]
async fn forty_cuts_mid_literal_on_both_sides_pipelined_appends() {
    cut_again_and_again(false, 0xc0ff_ee01).await;
}

/// One MULTIAPPEND per batch: a cut mid-command stores none of it, so the whole batch goes
/// again (and must, all of it).
#[tokio::test(flavor = "multi_thread")]
async fn forty_cuts_mid_literal_on_both_sides_multiappend() {
    cut_again_and_again(true, 0xc0ff_ee02).await;
}

/// A source message the server cannot read (its maildir file is unreadable: Dovecot answers
/// `BYE FETCH failed`): every other message of every folder is copied, that one is listed as
/// unreadable with the server's words, and the mailbox is done. Once it is readable again,
/// the next pass copies it, exactly once, and it leaves the list.
///
/// `headers_cached`: Dovecot already holds the identity headers mailhaul lists in its cache
/// (another client asked for them), so only the body fetch fails; otherwise the listing
/// of the folder fails too.
async fn unreadable_source_message(headers_cached: bool) {
    let rig = Rig::start(users());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("bad-in", 14)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Work", &corpus::mailbox("bad-work", 9)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Zeta", &corpus::mailbox("bad-zeta", 5)).await.expect("seed");
    if headers_cached {
        let mut session = login(&rig.source, USER, PASSWORD).await.expect("login");
        session.examine("Work").await.expect("examine");
        let items = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)])";
        let listed: Vec<_> = session.uid_fetch("1:*", items).await.expect("fetch").try_collect().await.expect("list");
        assert_eq!(listed.len(), 9);
        session.logout().await.ok();
    }
    let before = rig.source_snapshot().await;
    // Dumped while readable: a dump reads every body, the bad one too.
    let source_dump = dump(&rig.source, USER, PASSWORD).await.expect("dump source");
    rig.source.make_unreadable(USER, "Work", 5).expect("chmod 000");
    // Batches of 4: the bad message shares a batch, which bisection must take apart.
    let options = CopyOptions { batch_messages: 4, skip_duplicates: false, ..CopyOptions::default() };

    let first = rig.pass(&options, &TimeBox::unlimited()).await.expect("the first pass completes");
    assert_eq!(first.status, CopyStatus::Done);
    assert_eq!((first.this_pass.copied, first.this_pass.unreadable), (27, 1), "{:?}", first.this_pass);
    let skipped = rig.store.skipped(USER).await.expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let bad = &skipped[0];
    assert_eq!((bad.folder.as_str(), bad.uid, bad.reason), ("Work", 5, SkipReason::Unreadable), "{bad:?}");
    assert!(bad.detail.contains("FETCH failed: Internal error occurred"), "the server's words: {bad:?}");
    if headers_cached {
        assert!(bad.size > 0 && bad.message_id.is_some(), "size and Message-ID from the listing: {bad:?}");
    }
    let work = &first.verdicts.iter().find(|(f, _)| f == "Work").expect("Work verdict").1;
    assert!(work.detail.contains("1 unreadable on the source"), "{work:?}");
    assert_eq!(work.not_copied, 1, "{work:?}");
    for (folder, verdict) in &first.verdicts {
        assert!(verdict.ok, "{folder}: {verdict:?}");
    }
    let destination_dump = dump(&rig.destination, USER, PASSWORD).await.expect("dump destination");
    let mut all_but_one = source_dump.clone();
    all_but_one.get_mut("Work").expect("Work").retain(|m| m.uid != 5);
    assert_exactly_once(&all_but_one, &destination_dump, "with one message unreadable");

    rig.source.make_readable(USER, "Work", 5).expect("chmod back");
    let second = rig.pass(&options, &TimeBox::unlimited()).await.expect("the second pass completes");
    assert_eq!(second.status, CopyStatus::Done);
    assert_eq!((second.this_pass.copied, second.this_pass.unreadable), (1, 0), "{:?}", second.this_pass);
    assert!(rig.store.skipped(USER).await.expect("skipped").is_empty(), "no longer listed");
    for (folder, verdict) in &second.verdicts {
        assert!(verdict.ok && !verdict.detail.contains("unreadable"), "{folder}: {verdict:?}");
    }
    let (source_now, destination_dump) = rig.dumps().await;
    assert_eq!(source_now, source_dump, "the source holds what it held");
    assert_exactly_once(&source_dump, &destination_dump, "once readable again");
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_source_message_is_isolated_then_copied_once_readable() {
    unreadable_source_message(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_source_body_is_isolated_then_copied_once_readable() {
    unreadable_source_message(true).await;
}

/// A destination that refuses one message of a batch (over quota_max_mail_size): the rest of
/// the batch is copied, the refused one is listed with the server's words. With MULTIAPPEND
/// the batch is one command, refused as a whole, then sent again message by message.
async fn refused_in_a_batch(multiappend: bool) {
    let rig = Rig::start(users().max_mail_size("100k"));
    let mut messages: Vec<SeedMessage> = corpus::mailbox("refuse", 7);
    let flags = messages[3].flags.clone();
    messages[3] = SampleMessage::new("refuse-big", 4).attachment(300_000).seed();
    messages[3].flags = flags;
    seed(&rig.source, USER, PASSWORD, "INBOX", &messages).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Later", &corpus::mailbox("refuse-later", 3)).await.expect("seed");
    let before = rig.source_snapshot().await;
    rig.destination_proxy.capture(true);
    let options = CopyOptions { batch_messages: 7, skip_duplicates: false, multiappend, ..CopyOptions::default() };

    let outcome = rig.pass(&options, &TimeBox::unlimited()).await.expect("copy");
    assert_eq!(outcome.status, CopyStatus::Done);
    assert_eq!((outcome.this_pass.copied, outcome.this_pass.refused), (9, 1), "{:?}", outcome.this_pass);
    let skipped = rig.store.skipped(USER).await.expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let refused = &skipped[0];
    assert_eq!((refused.folder.as_str(), refused.uid, refused.reason), ("INBOX", 4, SkipReason::Refused));
    assert!(
        refused.detail.contains("Mail size is larger than the maximum size allowed"),
        "the server's words: {refused:?}"
    );
    for (folder, verdict) in &outcome.verdicts {
        assert!(verdict.ok, "{folder}: {verdict:?}");
    }

    let (source_dump, destination_dump) = rig.dumps().await;
    let mut expected = source_dump.clone();
    expected.get_mut("INBOX").expect("INBOX").retain(|m| m.uid != 4);
    assert_exactly_once(&expected, &destination_dump, "all but the refused message");
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");

    // On the wire: INBOX's batch as one MULTIAPPEND of 7, refused, then 7 single APPENDs;
    // without MULTIAPPEND, 7 single APPENDs.
    let expected = if multiappend {
        [("INBOX", vec![7, 1, 1, 1, 1, 1, 1, 1]), ("Later", vec![3])]
    } else {
        [("INBOX", vec![1; 7]), ("Later", vec![1; 3])]
    };
    assert_eq!(appends(&rig.destination_proxy), folders(expected), "APPEND commands (messages in each)");
}

/// The APPEND commands every recorded connection of `proxy` carried, by mailbox, as the
/// number of messages in each (see [`wire::appends`]). A pass copies a folder on one
/// connection, so each folder's list is in the order sent.
fn appends(proxy: &FaultProxy) -> BTreeMap<String, Vec<usize>> {
    let mut all: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for connection in proxy.captured().values() {
        for (mailbox, commands) in wire::appends(&connection.bytes(Direction::ClientToServer)) {
            all.entry(mailbox).or_default().extend(commands);
        }
    }
    all
}

fn folders<const N: usize>(list: [(&str, Vec<usize>); N]) -> BTreeMap<String, Vec<usize>> {
    list.into_iter().map(|(folder, commands)| (folder.to_string(), commands)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_leaves_the_rest_of_its_multiappend_batch_copied() {
    refused_in_a_batch(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_leaves_the_rest_of_its_pipelined_batch_copied() {
    refused_in_a_batch(false).await;
}

/// A server that stops forwarding mid-literal, with a 20 s deadline: the call returns within
/// the deadline plus 5 s, "more to do"; once the network passes again, the next pass finishes
/// with every message exactly once.
async fn stalled(side: Direction, multiappend: bool, seed_value: u64) {
    let rig = Rig::start(users());
    let mut rng = Rng(seed_value);
    seed(&rig.source, USER, PASSWORD, "INBOX", &large_mail("stall-in", 16, &mut rng)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Work", &large_mail("stall-work", 5, &mut rng)).await.expect("seed");
    let before = rig.source_snapshot().await;
    let (proxy, stall) = match side {
        // Mid-APPEND: the destination stops reading what mailhaul sends, 2-3 messages in.
        Direction::ClientToServer => (&rig.destination_proxy, 300_000),
        // Mid-FETCH: the source stops sending, a few messages into the first batch.
        Direction::ServerToClient => (&rig.source_proxy, 250_000),
    };
    proxy.capture(true);
    proxy.set_policy(FaultPolicy::from_fn(move |index| match index {
        0 => FaultPlan::StallAfter { direction: side, bytes: stall },
        _ => FaultPlan::Pass,
    }));
    let options = CopyOptions { batch_messages: 4, skip_duplicates: false, multiappend, ..CopyOptions::default() };

    let (_keep, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let outcome = rig.pass(&options, &TimeBox { deadline: Some(deadline), stop }).await.expect("no error, more to do");
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(25), "returned {:.1} s after the start, deadline 20 s", took.as_secs_f64());
    assert_eq!(outcome.status, CopyStatus::MoreToDo);
    let stalls = cut_positions(proxy);
    assert_eq!(stalls.len(), 1, "the stall happened: {stalls:?}");
    assert!(mid_message_literal(&stalls[0].1), "stalled mid-literal: {stalls:?}");
    let (_, partial) = rig.dumps().await;
    eprintln!(
        "stalled {side:?}: returned after {:.1} s with {} message(s) in the destination",
        took.as_secs_f64(),
        partial.values().map(Vec::len).sum::<usize>()
    );

    proxy.release_stalls();
    proxy.pass_all();
    let next = rig.pass(&options, &TimeBox::unlimited()).await.expect("the next pass");
    assert_eq!(next.status, CopyStatus::Done);
    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, "after the stall");
    for (folder, verdict) in &next.verdicts {
        assert!(verdict.ok && verdict.detail.starts_with("ok: "), "{folder}: {verdict:?}");
    }
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_stalled_mid_append_keeps_the_deadline() {
    stalled(Direction::ClientToServer, false, 0x0057_a101).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_stalled_mid_fetch_keeps_the_deadline() {
    stalled(Direction::ServerToClient, true, 0x0057_a102).await;
}

/// MULTIAPPEND is really used where offered: one APPEND command per batch on the
/// destination's connections, and one per message when it is turned off.
async fn appends_on_the_wire(multiappend: bool) -> BTreeMap<String, Vec<usize>> {
    let rig = Rig::start(users());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("wire-in", 20)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Work", &corpus::mailbox("wire-work", 7)).await.expect("seed");
    let before = rig.source_snapshot().await;
    rig.destination_proxy.capture(true);
    let options = CopyOptions { batch_messages: 5, multiappend, ..CopyOptions::default() };
    let outcome = rig.pass(&options, &TimeBox::unlimited()).await.expect("copy");
    assert_eq!((outcome.status, outcome.this_pass.copied), (CopyStatus::Done, 27));
    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, "copied");
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
    appends(&rig.destination_proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn multiappend_sends_one_append_per_batch() {
    let expected = folders([("INBOX", vec![5, 5, 5, 5]), ("Work", vec![5, 2])]);
    assert_eq!(appends_on_the_wire(true).await, expected, "messages per APPEND command");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_multiappend_each_message_is_its_own_append() {
    let expected = folders([("INBOX", vec![1; 20]), ("Work", vec![1; 7])]);
    assert_eq!(appends_on_the_wire(false).await, expected, "messages per APPEND command");
}

/// What Dovecot answers to a stored APPEND (UIDPLUS): cutting before it loses the
/// acknowledgement of a message the server did store.
const APPEND_OK: &[u8] = b" OK [APPENDUID ";

/// The destination stores every batch but its OK never reaches mailhaul (the connection
/// drops first), pass after pass: the next pass finds the batch above its fence and
/// copies none of it again.
async fn acknowledgements_lost(multiappend: bool) {
    let rig = Rig::start(users());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("ack-in", 16)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Work", &corpus::mailbox("ack-work", 8)).await.expect("seed");
    let before = rig.source_snapshot().await;
    let lost = FaultPlan::CutBefore { direction: Direction::ServerToClient, marker: APPEND_OK };
    rig.destination_proxy.set_policy(FaultPolicy::from_fn(move |index| if index < 8 { lost } else { FaultPlan::Pass }));
    let options = CopyOptions { batch_messages: 4, skip_duplicates: false, multiappend, ..CopyOptions::default() };
    let (passes, errors) = until_done(&rig, &options, 30).await;
    let fired = rig.destination_proxy.fired().len();
    eprintln!("multiappend {multiappend}: {passes} passes, {errors} ended by a lost OK, {fired} OKs lost");
    assert!(fired >= 4, "acknowledgements really lost: {fired}");

    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, "after lost acknowledgements");
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
    let last = rig.pass(&options, &TimeBox::unlimited()).await.expect("a clean pass");
    for (folder, verdict) in &last.verdicts {
        assert!(verdict.ok && !verdict.detail.contains("other message"), "{folder}: {verdict:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_acknowledgements_of_multiappend_batches_copy_nothing_twice() {
    acknowledgements_lost(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_acknowledgements_of_pipelined_appends_copy_nothing_twice() {
    acknowledgements_lost(false).await;
}

/// A message unreadable on the first pass is copied by a later one whose acknowledgement is
/// lost; the pass after that finds it in the destination. It is copied once, and no longer
/// listed as unreadable (the report would say it is missing).
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_message_found_by_reconciliation_leaves_the_skipped_list() {
    let rig = Rig::start(users());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("retry-in", 6)).await.expect("seed");
    let before = rig.source_snapshot().await;
    let source_dump = dump(&rig.source, USER, PASSWORD).await.expect("dump source");
    let options = CopyOptions { skip_duplicates: false, ..CopyOptions::default() };
    rig.source.make_unreadable(USER, "INBOX", 3).expect("chmod 000");
    let first = rig.pass(&options, &TimeBox::unlimited()).await.expect("first pass");
    assert_eq!((first.this_pass.copied, first.this_pass.unreadable), (5, 1));

    rig.source.make_readable(USER, "INBOX", 3).expect("chmod back");
    let lost = FaultPlan::CutBefore { direction: Direction::ServerToClient, marker: APPEND_OK };
    rig.destination_proxy.set_policy(FaultPolicy::always(lost));
    let error = rig.pass(&options, &TimeBox::unlimited()).await.expect_err("the acknowledgement is lost");
    assert!(error.contains("destination"), "{error}");
    assert_eq!(rig.destination_proxy.fired().len(), 1);

    rig.destination_proxy.pass_all();
    let third = rig.pass(&options, &TimeBox::unlimited()).await.expect("third pass");
    assert_eq!(third.status, CopyStatus::Done);
    let destination_dump = dump(&rig.destination, USER, PASSWORD).await.expect("dump destination");
    assert_exactly_once(&source_dump, &destination_dump, "the retried message once");
    let skipped = rig.store.skipped(USER).await.expect("skipped");
    assert!(skipped.is_empty(), "copied, so no longer listed as unreadable: {skipped:?}");
    for (folder, verdict) in &third.verdicts {
        assert!(verdict.ok && !verdict.detail.contains("unreadable"), "{folder}: {verdict:?}");
    }
    assert_eq!(rig.source_snapshot().await, before, "the source is never modified");
}

/// alice copied with `compress` on both sides, both servers offering COMPRESS=DEFLATE, through
/// recording proxies. Returns the rig and the size of the source's mail.
async fn copied_with(compress: Compress) -> (Rig, usize) {
    let rig = Rig::start_both(users().deflate(), users().deflate());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("deflate", 60)).await.expect("seed");
    seed(&rig.source, USER, PASSWORD, "Projects/2024", &corpus::mailbox("deflate-pr", 20)).await.expect("seed");
    rig.source_proxy.capture(true);
    rig.destination_proxy.capture(true);
    let mut job = rig.job();
    job.source.server.compress = compress;
    job.destination.server.compress = compress;
    let outcome = copy_mailbox(&job, &CopyOptions::default(), &rig.store, &NoProgress, &TimeBox::unlimited())
        .await
        .expect("copy");
    assert_eq!((outcome.status, outcome.this_pass.copied), (CopyStatus::Done, 80), "{:?}", outcome.this_pass);
    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, &format!("compress {compress:?}"));
    let mail = source_dump.values().flatten().map(|m| m.body.len()).sum();
    (rig, mail)
}

/// One recorded connection split at COMPRESS DEFLATE: (client bytes, server bytes) before it,
/// and after it as they went on the wire. None when the connection never sent COMPRESS.
struct Split {
    plain: [Vec<u8>; 2],
    deflated: [Vec<u8>; 2],
}

fn split_at_compress(connection: &Captured) -> Option<Split> {
    let client = connection.bytes(Direction::ClientToServer);
    let server = connection.bytes(Direction::ServerToClient);
    let command = find(&client, b" COMPRESS DEFLATE\r\n")?;
    let tag = &client[client[..command].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..command];
    let client_end = command + b" COMPRESS DEFLATE\r\n".len();
    let ok = find(&server, &[b"\r\n", tag, b" OK"].concat()).expect("the server answered COMPRESS with OK") + 2;
    let server_end = ok + find(&server[ok..], b"\r\n").expect("a whole OK line") + 2;
    Some(Split {
        plain: [client[..client_end].to_vec(), server[..server_end].to_vec()],
        deflated: [client[client_end..].to_vec(), server[server_end..].to_vec()],
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Raw DEFLATE (RFC 1951, no zlib header) as one stream, sync-flushed blocks included.
fn inflate(raw: &[u8]) -> Vec<u8> {
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::new();
    while (inflater.total_in() as usize) < raw.len() {
        let before = (inflater.total_in(), inflater.total_out());
        out.reserve(256 * 1024);
        let consumed = inflater.total_in() as usize;
        inflater.decompress_vec(&raw[consumed..], &mut out, flate2::FlushDecompress::Sync).expect("valid raw DEFLATE");
        assert!((inflater.total_in(), inflater.total_out()) != before, "the DEFLATE stream stops making sense");
    }
    out
}

/// COMPRESS=DEFLATE on both sides (RFC 4978): the copy is exact; every connection compressed
/// right after login; on the wire after that there is no IMAP text, and the bytes inflate to
/// the FETCHes and APPENDs that moved all 80 messages, in well under half their size.
#[tokio::test(flavor = "multi_thread")]
async fn compress_deflate_copies_exactly_with_every_byte_deflated() {
    let (rig, mail) = copied_with(Compress::On).await;
    let (mut appended, mut wire, mut inflated, mut fetched) = (0, 0, 0, 0);
    for (proxy, name) in [(&rig.source_proxy, "source"), (&rig.destination_proxy, "destination")] {
        let captured = proxy.captured();
        assert!(!captured.is_empty(), "{name}: connections recorded");
        for (index, connection) in captured {
            let split = split_at_compress(&connection)
                .unwrap_or_else(|| panic!("{name} connection {index} never sent COMPRESS DEFLATE"));
            assert!(find(&split.plain[0], b"LOGIN").is_some(), "{name} {index}: COMPRESS comes after login");
            assert!(find(&split.plain[0], b"SELECT").is_none() && find(&split.plain[0], b"EXAMINE").is_none());
            for (raw, word) in [(&split.deflated[0], &b" UID FETCH "[..]), (&split.deflated[1], &b" FETCH ("[..])] {
                assert!(find(raw, word).is_none(), "{name} {index}: IMAP text after COMPRESS");
            }
            let [to_server, to_client] = split.deflated.map(|raw| {
                wire += raw.len();
                let plain = inflate(&raw);
                inflated += plain.len();
                plain
            });
            appended += wire::appends(&to_server).values().flatten().sum::<usize>();
            fetched += find_all(&to_client, b" FETCH (");
        }
    }
    eprintln!(
        "COMPRESS=DEFLATE: {mail} bytes of mail; after COMPRESS, both servers, both ways: {inflated} bytes of IMAP sent as {wire} bytes"
    );
    assert_eq!(appended, 80, "every message went in an APPEND inside the DEFLATE stream");
    assert!(fetched >= 80, "every body came in a FETCH inside the DEFLATE stream: {fetched}");
    // Each message crosses twice (FETCH, APPEND). The test corpus is random words and random
    // attachments, so it deflates by about a third only; real mail does better.
    assert!(inflated > 2 * mail, "{inflated} bytes of IMAP for {mail} bytes of mail, twice");
    assert!(wire * 4 < inflated * 3, "at least a quarter saved: {wire} bytes on the wire for {inflated}");
}

/// `compress = "off"`: the same servers, offering COMPRESS=DEFLATE, see plain IMAP only.
#[tokio::test(flavor = "multi_thread")]
async fn compress_off_keeps_plain_imap_on_a_server_that_offers_it() {
    let (rig, mail) = copied_with(Compress::Off).await;
    let mut appended = 0;
    let mut wire = 0;
    for proxy in [&rig.source_proxy, &rig.destination_proxy] {
        for connection in proxy.captured().values() {
            let client = connection.bytes(Direction::ClientToServer);
            let server = connection.bytes(Direction::ServerToClient);
            assert!(find(&client, b"COMPRESS").is_none(), "no COMPRESS command");
            assert!(find(&server, b"COMPRESS=DEFLATE").is_some(), "the server offers it");
            appended += wire::appends(&client).values().flatten().sum::<usize>();
            wire += client.len() + server.len();
        }
    }
    assert_eq!(appended, 80, "every APPEND readable on the wire");
    eprintln!("compress off: {mail} bytes of mail, {wire} bytes on the wire (both servers, both ways)");
    assert!(wire > 2 * mail, "{wire} bytes on the wire for {mail} bytes of mail, twice");
}

/// A server that announces COMPRESS=DEFLATE but refuses the command (BAD): each connection is
/// made again without it, and the copy goes on, exact, in plain IMAP.
#[tokio::test(flavor = "multi_thread")]
async fn compress_refused_reconnects_without_it() {
    let rig = Rig::start_both(users().deflate_announced_only(), users().deflate_announced_only());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("refused-deflate", 30)).await.expect("seed");
    rig.source_proxy.capture(true);
    rig.destination_proxy.capture(true);
    let mut job = rig.job();
    job.source.server.compress = Compress::On;
    job.destination.server.compress = Compress::On;
    let outcome = copy_mailbox(&job, &CopyOptions::default(), &rig.store, &NoProgress, &TimeBox::unlimited())
        .await
        .expect("copied without COMPRESS");
    assert_eq!((outcome.status, outcome.this_pass.copied), (CopyStatus::Done, 30), "{:?}", outcome.this_pass);
    let (source_dump, destination_dump) = rig.dumps().await;
    assert_exactly_once(&source_dump, &destination_dump, "COMPRESS refused");
    let mut appended = 0;
    for (proxy, name) in [(&rig.source_proxy, "source"), (&rig.destination_proxy, "destination")] {
        let (mut refused, mut plain) = (0, 0);
        for connection in proxy.captured().values() {
            let client = connection.bytes(Direction::ClientToServer);
            if find(&client, b" COMPRESS DEFLATE\r\n").is_some() {
                // Refused, and nothing but LOGOUT or the close after it on that connection.
                assert!(find(&client, b"EXAMINE").is_none() && find(&client, b"SELECT").is_none(), "{name}");
                assert!(find(&connection.bytes(Direction::ServerToClient), b" BAD ").is_some(), "{name}: refused");
                refused += 1;
            } else {
                plain += 1;
                appended += wire::appends(&client).values().flatten().sum::<usize>();
            }
        }
        assert!(refused >= 1 && plain >= refused, "{name}: {refused} refused, {plain} plain connections");
    }
    assert_eq!(appended, 30, "every APPEND went in plain IMAP");
}

fn find_all(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Verification reuses the folder the copy left selected (NOOP, then UID SEARCH ALL) instead of
/// opening it again, and still counts exactly: a message someone else put there meanwhile is
/// seen as not ours.
#[tokio::test(flavor = "multi_thread")]
async fn verification_reads_the_folder_the_copy_left_selected() {
    let rig = Rig::start_both(users(), users());
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("reuse", 12)).await.expect("seed");
    rig.destination_proxy.capture(true);
    let options = CopyOptions::default();
    let first = rig.pass(&options, &TimeBox::unlimited()).await.expect("copy");
    let verdict = first.verdicts.iter().find(|(name, _)| name == "INBOX").map(|(_, v)| v.clone()).expect("verdict");
    assert!(verdict.ok && (verdict.source_messages, verdict.destination_messages) == (12, 12), "{verdict:?}");
    let commands: Vec<String> = rig
        .destination_proxy
        .captured()
        .values()
        .flat_map(|c| wire::lines(&c.bytes(Direction::ClientToServer)))
        .filter(|l| l.complete)
        .map(|l| l.text.to_ascii_uppercase())
        .collect();
    assert!(!commands.iter().any(|c| c.contains(" EXAMINE ")), "INBOX is not opened again: {commands:#?}");
    assert!(commands.iter().any(|c| c.ends_with(" NOOP")), "{commands:#?}");

    // New source mail, and meanwhile someone appends a message of their own on the destination.
    seed(&rig.source, USER, PASSWORD, "INBOX", &corpus::mailbox("reuse-more", 3)).await.expect("seed");
    seed(&rig.destination, USER, PASSWORD, "INBOX", &corpus::mailbox("theirs", 1)).await.expect("seed");
    let second = rig.pass(&options, &TimeBox::unlimited()).await.expect("delta");
    let verdict = second.verdicts.iter().find(|(name, _)| name == "INBOX").map(|(_, v)| v.clone()).expect("verdict");
    assert!(verdict.ok, "other mail is not a mismatch: {verdict:?}");
    assert_eq!((verdict.source_messages, verdict.destination_messages), (15, 16), "{verdict:?}");
}
