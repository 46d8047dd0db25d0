//! Delta passes against real Dovecot: flags changed on the source after the first pass reach
//! the copies mailhaul made, never other destination messages; new mail is copied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use mailhaul_common::engine::{copy_mailbox, CopyStatus, NoProgress, TimeBox};
use mailhaul_common::model::CopyOptions;
use mailhaul_common::sqlite::SqliteStore;
use mailhaul_tests::corpus::{self, SampleMessage};
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, login, seed};
use mailhaul_tests::proxy::{Direction, FaultPolicy, FaultProxy};
use mailhaul_tests::{wire, ImapServer};

mod support;

/// Flags by message body, per folder.
async fn flags_by_body(server: &Dovecot) -> BTreeMap<Vec<u8>, BTreeSet<String>> {
    let dumped = dump(server, "alice", "pw").await.expect("dump");
    dumped.into_values().flatten().map(|m| (m.body, m.flags)).collect()
}

async fn store_on_source(source: &Dovecot, commands: &[&str]) {
    // The test plays the user reading mail on the old server: it may change the source.
    let mut session = login(source, "alice", "pw").await.expect("login");
    session.select("INBOX").await.expect("select");
    for command in commands {
        session.run_command_and_check_ok(command).await.expect(command);
    }
    session.logout().await.ok();
}

async fn flags_follow_the_source(sync_flags: bool) {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("flags", 30)).await.expect("seed");
    let job = support::job(&source, &destination);
    let options = CopyOptions { sync_flags, batch_messages: 8, ..CopyOptions::default() };
    let store = SqliteStore::in_memory().expect("store");
    let unlimited = TimeBox::unlimited();
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("first pass");
    assert_eq!(first.this_pass.copied, 30);

    // Someone delivers a message straight to the destination, flagged: not ours to touch.
    let foreign = SampleMessage::new("delivered-after-switch", 1).seed().flags(&["\\Flagged"]);
    seed(&destination, "alice", "pw", "INBOX", std::slice::from_ref(&foreign)).await.expect("foreign");
    // The user reads, flags and unflags mail on the source; and new mail arrives there.
    store_on_source(
        &source,
        &["UID STORE 1:10 +FLAGS (\\Seen)", "UID STORE 5 -FLAGS (\\Flagged)", "UID STORE 20 +FLAGS ($Work)"],
    )
    .await;
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("new", 2)).await.expect("new mail");

    let second = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("delta pass");
    assert_eq!(second.status, CopyStatus::Done);
    assert_eq!(second.this_pass.copied, 2, "the new mail");
    let (source_flags, destination_flags) = (flags_by_body(&source).await, flags_by_body(&destination).await);
    let differing = source_flags.iter().filter(|(body, flags)| destination_flags.get(*body) != Some(flags)).count();
    if sync_flags {
        assert_eq!(differing, 0, "every copy has the source's flags");
        assert!(second.this_pass.flags_updated >= 8, "{:?}", second.this_pass);
    } else {
        assert!(differing >= 8, "without sync_flags the copies keep their first flags ({differing})");
        assert_eq!(second.this_pass.flags_updated, 0);
    }
    let foreign_flags = &destination_flags[&foreign.raw];
    assert!(foreign_flags.contains("\\Flagged"), "a message mailhaul did not copy is never changed");

    // Nothing changed since: the next pass updates nothing.
    let third = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("third pass");
    assert_eq!((third.this_pass.copied, third.this_pass.flags_updated), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn flag_changes_on_the_source_reach_the_copies() {
    flags_follow_the_source(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flag_sync_can_be_turned_off() {
    flags_follow_the_source(false).await;
}

/// An unchanged folder keeps its last verdict (one command per folder on a delta pass);
/// `reverify_unchanged` reads it again, and then sees a copy lost on the destination.
#[tokio::test(flavor = "multi_thread")]
async fn unchanged_folders_keep_their_verdict_unless_asked_to_verify_again() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("kept", 12)).await.expect("seed");
    let job = support::job(&source, &destination);
    let store = SqliteStore::in_memory().expect("store");
    let unlimited = TimeBox::unlimited();
    let options = CopyOptions::default();
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("first pass");
    assert!(first.verdicts.iter().all(|(_, v)| v.ok), "{:?}", first.verdicts);

    // Someone deletes a copy on the destination (the test plays a user of the new server).
    let mut session = login(&destination, "alice", "pw").await.expect("login");
    session.select("INBOX").await.expect("select");
    session.run_command_and_check_ok("UID STORE 3 +FLAGS.SILENT (\\Deleted)").await.expect("store");
    session.run_command_and_check_ok("EXPUNGE").await.expect("expunge");
    session.logout().await.ok();

    let kept = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("delta");
    let inbox = |outcome: &mailhaul_common::engine::MailboxOutcome| {
        outcome.verdicts.iter().find(|(name, _)| name == "INBOX").map(|(_, v)| v.clone()).expect("INBOX verdict")
    };
    assert!(inbox(&kept).ok, "unchanged source: the last verdict is kept: {:?}", inbox(&kept));

    let again = CopyOptions { reverify_unchanged: true, ..CopyOptions::default() };
    let verified = copy_mailbox(&job, &again, &store, &NoProgress, &unlimited).await.expect("verified delta");
    let verdict = inbox(&verified);
    assert!(!verdict.ok && verdict.not_copied == 0, "the lost copy is seen: {verdict:?}");
    assert_eq!((verdict.source_messages, verdict.destination_messages), (12, 11), "{verdict:?}");
}

/// Fires the stop signal once a folder has had `after` messages confirmed.
struct StopAfter {
    folder: &'static str,
    after: u64,
    seen: std::sync::atomic::AtomicU64,
    stop: tokio::sync::watch::Sender<bool>,
}

impl mailhaul_common::engine::ProgressSink for StopAfter {
    fn copied(&self, _mailbox: &str, folder: &str, messages: u64, _bytes: u64) {
        if folder == self.folder {
            let seen = self.seen.fetch_add(messages, std::sync::atomic::Ordering::SeqCst) + messages;
            if seen >= self.after {
                let _ = self.stop.send(true);
            }
        }
    }
}

/// A pass that copies into a folder and stops before verifying it leaves no verdict standing:
/// the next pass, seeing the source unchanged since, verifies the folder instead of keeping the
/// verdict of the pass before (which never saw the new messages).
#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_is_not_kept_for_a_folder_copied_into_since() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("before", 10)).await.expect("seed");
    let job = support::job(&source, &destination);
    let store = SqliteStore::in_memory().expect("store");
    let options = CopyOptions::default();
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("first pass");
    assert!(first.verdicts.iter().all(|(_, v)| v.ok), "{:?}", first.verdicts);

    // New mail; the next pass copies all of it, then is stopped before it verifies.
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("after", 4)).await.expect("seed");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sink = StopAfter { folder: "INBOX", after: 4, seen: Default::default(), stop };
    let timebox = TimeBox { deadline: None, stop: stopped };
    let cut = copy_mailbox(&job, &options, &store, &sink, &timebox).await.expect("stopped pass");
    assert_eq!(cut.this_pass.copied, 4, "{:?}", cut.this_pass);
    assert_eq!(cut.status, CopyStatus::MoreToDo, "stopped before verifying");
    assert!(cut.verdicts.is_empty(), "{:?}", cut.verdicts);

    // One of the new copies is lost on the destination before the next pass.
    let mut session = login(&destination, "alice", "pw").await.expect("login");
    session.select("INBOX").await.expect("select");
    session.run_command_and_check_ok("UID STORE 12 +FLAGS.SILENT (\\Deleted)").await.expect("store");
    session.run_command_and_check_ok("EXPUNGE").await.expect("expunge");
    session.logout().await.ok();

    let next = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("next pass");
    let inbox = next.verdicts.iter().find(|(name, _)| name == "INBOX").map(|(_, v)| v.clone()).expect("INBOX verdict");
    assert!(!inbox.ok, "the folder is verified again and the lost copy seen: {inbox:?}");
    assert_eq!((inbox.source_messages, inbox.destination_messages), (14, 13), "{inbox:?}");
}

/// The source's commands (upper-cased, without tag) that name `folder`, seen through `proxy`
/// on its connections from the `since`th on.
fn commands_on(proxy: &FaultProxy, since: usize, folder: &str) -> Vec<String> {
    let quoted = format!("\"{}\"", folder.to_ascii_uppercase());
    proxy
        .captured()
        .range(since..)
        .map(|(_, c)| c)
        .flat_map(|c| wire::lines(&c.bytes(Direction::ClientToServer)))
        .filter(|l| l.complete)
        .map(|l| l.text.to_ascii_uppercase())
        .filter(|c| c.contains(&quoted) || c.ends_with(&format!(" {}", folder.to_ascii_uppercase())))
        .map(|c| c.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .collect()
}

/// A big folder that changed is opened once on the source (EXAMINE), not asked STATUS and
/// then opened: Dovecot re-scans a changed maildir for each (0.27 s at 100,000 messages). A
/// small folder is still asked STATUS alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_folder_that_changed_is_opened_once_on_the_source() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("big", 30)).await.expect("seed INBOX");
    seed(&source, "alice", "pw", "Archive", &corpus::mailbox("small", 4)).await.expect("seed Archive");
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], source.imap_port())), FaultPolicy::pass_all())
        .expect("proxy");
    let mut job = support::job(&source, &destination);
    job.source = support::plain_endpoint(proxy.port, "alice", "pw");
    // INBOX counts as big from 20 messages on (10,000 by default).
    let options = CopyOptions { batch_messages: 8, big_folder_messages: 20, ..CopyOptions::default() };
    let store = SqliteStore::in_memory().expect("store");
    let unlimited = TimeBox::unlimited();
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("first pass");
    assert_eq!(first.this_pass.copied, 34);
    // The folder the pass created is subscribed, as a mail client expects.
    let subscribed: Vec<String> = {
        use futures::TryStreamExt;
        let mut session = login(&destination, "alice", "pw").await.expect("login");
        let names: Vec<_> =
            session.lsub(Some(""), Some("*")).await.expect("LSUB").try_collect().await.expect("LSUB replies");
        names.iter().map(|n| n.name().to_string()).collect()
    };
    assert!(subscribed.iter().any(|n| n == "Archive"), "created folders are subscribed: {subscribed:?}");

    proxy.capture(true);
    let since = proxy.connections();
    let unchanged = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("unchanged pass");
    assert_eq!((unchanged.status, unchanged.this_pass.copied), (CopyStatus::Done, 0));
    assert_eq!(commands_on(&proxy, since, "INBOX"), ["EXAMINE \"INBOX\""], "an unchanged big folder: one command");
    assert_eq!(
        commands_on(&proxy, since, "Archive"),
        ["STATUS \"ARCHIVE\" (UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"],
        "an unchanged small folder: one STATUS"
    );

    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("new", 3)).await.expect("new mail");
    let since = proxy.connections();
    let delta = copy_mailbox(&job, &options, &store, &NoProgress, &unlimited).await.expect("delta pass");
    assert_eq!(delta.status, CopyStatus::Done);
    assert_eq!(delta.this_pass.copied, 3);
    assert_eq!(delta.verification_failure(), None, "{:?}", delta.verdicts);
    // Verified by the pair that copied it: its open folders are reused (NOOP), not opened again.
    let opens: Vec<String> = commands_on(&proxy, since, "INBOX")
        .into_iter()
        .filter(|c| c.starts_with("EXAMINE") || c.starts_with("STATUS") || c.starts_with("SELECT"))
        .collect();
    let all: Vec<String> = proxy
        .captured()
        .range(since..)
        .map(|(_, c)| c)
        .flat_map(|c| wire::lines(&c.bytes(Direction::ClientToServer)))
        .map(|l| l.text)
        .collect();
    assert_eq!(
        opens,
        ["EXAMINE \"INBOX\""],
        "the changed big folder is opened once, never asked STATUS first: {all:#?}"
    );
    let dumped = dump(&destination, "alice", "pw").await.expect("dump");
    assert_eq!(dumped["INBOX"].len(), 33, "the new mail, once");
    // Every message once with its flags and date; destination UIDs may be in another order
    // than the source's, as two connection pairs append INBOX side by side.
    let without_uids = |dumped: &BTreeMap<String, Vec<mailhaul_tests::imap::DumpedMessage>>| {
        dumped
            .iter()
            .filter(|(folder, _)| *folder == "INBOX" || *folder == "Archive")
            .map(|(folder, messages)| {
                let mut all: Vec<_> = messages.iter().map(|m| (&m.body, &m.flags, &m.internal_date)).collect();
                all.sort();
                (folder.clone(), all.into_iter().map(|(b, f, d)| (b.clone(), f.clone(), d.clone())).collect::<Vec<_>>())
            })
            .collect::<BTreeMap<_, _>>()
    };
    let source_now = dump(&source, "alice", "pw").await.expect("dump source");
    assert_eq!(without_uids(&source_now), without_uids(&dumped));
}
