//! The engine against real Dovecot: stop and deadline mid-folder then resume, a killed
//! process resumed, lost state — every message exactly once, on the pipelined (LITERAL+)
//! and the plain (synchronizing literal) APPEND paths.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mailhaul_common::engine::{copy_mailbox, CopyStatus, NoProgress, ProgressSink, TimeBox};
use mailhaul_common::model::{CopyOptions, Security};
use mailhaul_common::sqlite::SqliteStore;
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed, DumpedMessage};
use tokio::sync::watch;

/// Raises the stop signal once `after` batches are confirmed.
struct StopAfter {
    batches: AtomicU64,
    after: u64,
    stop: watch::Sender<bool>,
}

impl ProgressSink for StopAfter {
    fn copied(&self, _: &str, _: &str, _: u64, _: u64) {
        if self.batches.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            let _ = self.stop.send(true);
        }
    }
}

fn bodies(folders: &BTreeMap<String, Vec<DumpedMessage>>, folder: &str) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> =
        folders.get(folder).map(|m| m.iter().map(|m| m.body.clone()).collect()).unwrap_or_default();
    all.sort();
    all
}

/// Writes a batch of one row (alice/pw on both sides of 127.0.0.1, at these ports) and its
/// settings into `dir`; gives `mailhaul run` of it, a new command each call.
fn one_row_batch(
    dir: &Path,
    security: &str,
    (source, destination): (u16, u16),
    settings: &str,
) -> impl Fn() -> Command {
    let csv = dir.join("batch.csv");
    std::fs::write(
        &csv,
        format!(
            "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n\
             127.0.0.1,{source},{security},alice,pw,127.0.0.1,{destination},{security},alice,pw\n"
        ),
    )
    .expect("csv");
    let config = dir.join("mailhaul.toml");
    std::fs::write(&config, settings).expect("settings");
    let report = dir.join("report");
    move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mailhaul"));
        c.arg("run").arg(&csv).arg("--config").arg(&config).arg("--report-dir").arg(&report);
        c
    }
}

/// Which literals the destination announces.
#[derive(Clone, Copy)]
enum Literals {
    Plus,
    Minus,
    SyncOnly,
}

async fn servers(literals: Literals) -> (Dovecot, Dovecot) {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let options = DovecotOptions::with_users(&users).layout(Layout::None);
    let options = match literals {
        Literals::Plus => options,
        Literals::Minus => options.literal_minus(),
        Literals::SyncOnly => options.literal_plus(false),
    };
    let destination = Dovecot::start(options).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("inbox", 40)).await.expect("seed inbox");
    seed(&source, "alice", "pw", "Work", &corpus::mailbox("work", 12)).await.expect("seed work");
    (source, destination)
}

/// `multiappend`: one APPEND per batch (Dovecot, Cyrus) or one per message (Exchange, Gmail).
async fn stop_deadline_and_resume(literals: Literals, multiappend: bool) {
    let (source, destination) = servers(literals).await;
    let job = support::job(&source, &destination);
    let options = CopyOptions { batch_messages: 4, multiappend, ..CopyOptions::default() };
    let store = SqliteStore::in_memory().expect("store");

    // 1. A stop signal after two confirmed batches: returns "more to do", part copied.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = StopAfter { batches: AtomicU64::new(0), after: 2, stop: stop_tx };
    let timebox = TimeBox { deadline: None, stop: stop_rx };
    let outcome = copy_mailbox(&job, &options, &store, &stopper, &timebox).await.expect("first pass");
    assert_eq!(outcome.status, CopyStatus::MoreToDo);
    let partial = dump(&destination, "alice", "pw").await.expect("dump");
    let copied_so_far: usize = partial.values().map(Vec::len).sum();
    assert!(copied_so_far > 0 && copied_so_far < 52, "stopped mid-way, copied {copied_so_far}");

    // 2. A deadline already past: nothing more is copied, still "more to do".
    let (_keep, stop_rx) = watch::channel(false);
    let past = TimeBox { deadline: Some(tokio::time::Instant::now()), stop: stop_rx.clone() };
    let outcome = copy_mailbox(&job, &options, &store, &NoProgress, &past).await.expect("past deadline");
    assert_eq!(outcome.status, CopyStatus::MoreToDo);
    assert_eq!(outcome.this_pass.copied, 0);

    // 3. Short deadlines until done: several continuations, each resuming from the checkpoint.
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 200, "never finished");
        let short =
            TimeBox { deadline: Some(tokio::time::Instant::now() + Duration::from_millis(150)), stop: stop_rx.clone() };
        if copy_mailbox(&job, &options, &store, &NoProgress, &short).await.expect("continuation").status
            == CopyStatus::Done
        {
            break;
        }
    }
    let source_dump = dump(&source, "alice", "pw").await.expect("dump source");
    let destination_dump = dump(&destination, "alice", "pw").await.expect("dump destination");
    for folder in ["INBOX", "Work"] {
        assert_eq!(
            bodies(&destination_dump, folder),
            bodies(&source_dump, folder),
            "{folder} exactly once, byte-identical"
        );
    }
    let flags = |d: &BTreeMap<String, Vec<DumpedMessage>>| -> Vec<_> {
        let mut v: Vec<_> =
            d["INBOX"].iter().map(|m| (m.body.clone(), m.flags.clone(), m.internal_date.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(flags(&destination_dump), flags(&source_dump), "flags and dates kept");
    {
        use mailhaul_common::ports::CheckpointStore;
        let checkpoints = store.load_folders("alice").await.expect("checkpoints");
        assert_eq!(checkpoints.len(), 2);
        for cp in &checkpoints {
            assert!(cp.complete && cp.in_flight.is_none() && cp.uid_validity > 0, "{cp:?}");
            assert!(cp.highest_modseq.is_some(), "HIGHESTMODSEQ recorded (Dovecot has CONDSTORE): {cp:?}");
        }
    }

    // 4. State lost: a fresh store finds every message already there and copies none.
    let fresh = SqliteStore::in_memory().expect("store");
    let unlimited = TimeBox { deadline: None, stop: stop_rx };
    let outcome = copy_mailbox(&job, &options, &fresh, &NoProgress, &unlimited).await.expect("rerun");
    assert_eq!(outcome.status, CopyStatus::Done);
    assert_eq!(outcome.this_pass.copied, 0);
    assert_eq!(outcome.this_pass.skipped_duplicate, 52);
    assert!(outcome.verdicts.iter().all(|(_, v)| v.ok), "{:?}", outcome.verdicts);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_append_resumes_exactly_once() {
    stop_deadline_and_resume(Literals::Plus, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multiappend_resumes_exactly_once() {
    stop_deadline_and_resume(Literals::Plus, true).await;
}

/// MULTIAPPEND with synchronizing literals: the server asks for each literal of the command.
#[tokio::test(flavor = "multi_thread")]
async fn multiappend_with_synchronizing_literals_resumes_exactly_once() {
    stop_deadline_and_resume(Literals::SyncOnly, true).await;
}

/// LITERAL- (Gmail): small messages pipelined, larger ones (the 20 KB attachments) synchronizing.
#[tokio::test(flavor = "multi_thread")]
async fn literal_minus_append_resumes_exactly_once() {
    stop_deadline_and_resume(Literals::Minus, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_append_resumes_exactly_once() {
    stop_deadline_and_resume(Literals::SyncOnly, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_process_resumes_without_duplicates() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("bulk", 400)).await.expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = format!(
        "[source]\nca_file = {:?}\n[destination]\nca_file = {:?}\n[copy]\nbatch_messages = 2\n",
        source.cert_path, destination.cert_path
    );
    let command = one_row_batch(dir.path(), "tls", (source.imaps_port, destination.imaps_port), &settings);

    let mut child = command().stderr(std::process::Stdio::null()).spawn().expect("spawn");
    // Kill it once some, but not all, messages have landed.
    let mut landed = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        landed = dump(&destination, "alice", "pw").await.map(|d| d.get("INBOX").map_or(0, Vec::len)).unwrap_or(0);
        if landed >= 20 {
            break;
        }
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!((20..400).contains(&landed), "killed mid-way ({landed} landed)");

    let status = command().status().expect("rerun");
    assert_eq!(status.code(), Some(0));
    let source_dump = dump(&source, "alice", "pw").await.expect("dump source");
    let destination_dump = dump(&destination, "alice", "pw").await.expect("dump destination");
    assert_eq!(bodies(&destination_dump, "INBOX"), bodies(&source_dump, "INBOX"), "every message exactly once");
}

/// A message the destination refuses is recorded with the server's reply; the folder goes on.
#[tokio::test(flavor = "multi_thread")]
async fn refused_message_is_recorded_and_the_folder_goes_on() {
    use mailhaul_common::model::SkipReason;
    use mailhaul_common::ports::CheckpointStore;
    use mailhaul_tests::corpus::SampleMessage;

    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None).max_mail_size("100k"))
        .expect("destination");
    let messages = vec![
        SampleMessage::new("small", 1).seed(),
        SampleMessage::new("large", 2).attachment(300_000).seed(),
        SampleMessage::new("small", 3).seed(),
    ];
    seed(&source, "alice", "pw", "INBOX", &messages).await.expect("seed");

    let store = SqliteStore::in_memory().expect("store");
    let options = CopyOptions::default();
    let outcome =
        copy_mailbox(&support::job(&source, &destination), &options, &store, &NoProgress, &TimeBox::unlimited())
            .await
            .expect("copy");
    assert_eq!(outcome.status, CopyStatus::Done);
    assert_eq!(outcome.this_pass.copied, 2);
    assert_eq!(outcome.this_pass.refused, 1);
    let copied = dump(&destination, "alice", "pw").await.expect("dump");
    assert_eq!(copied["INBOX"].len(), 2);
    let skipped = store.skipped("alice").await.expect("skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::Refused);
    assert_eq!(skipped[0].uid, 2);
    assert!(skipped[0].size > 300_000 && skipped[0].message_id.is_some(), "{:?}", skipped[0]);
    assert!(!skipped[0].detail.is_empty(), "the server's reply is kept");
    assert!(outcome.verdicts.iter().all(|(_, v)| v.ok), "refused messages are accounted for: {:?}", outcome.verdicts);

    // The next pass does not try it again.
    let again =
        copy_mailbox(&support::job(&source, &destination), &options, &store, &NoProgress, &TimeBox::unlimited())
            .await
            .expect("again");
    assert_eq!(again.this_pass.refused + again.this_pass.copied, 0);
}

/// TLS is verified by default; STARTTLS and plain work when configured; the opt-out is explicit.
#[tokio::test(flavor = "multi_thread")]
async fn tls_starttls_plain_and_certificate_checks() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("tls", 3)).await.expect("seed");
    let options = CopyOptions::default();
    let store = SqliteStore::in_memory().expect("store");

    // No CA for the test server's certificate: refused, permanently, with a hint.
    let mut unverified = support::job(&source, &destination);
    unverified.source.server.ca_file = None;
    let error = copy_mailbox(&unverified, &options, &store, &NoProgress, &TimeBox::unlimited())
        .await
        .expect_err("an unknown certificate must be refused");
    assert!(matches!(error, mailhaul_common::error::CopyError::Tls { .. }), "{error}");
    assert!(!error.is_retryable());
    assert!(error.hint().contains("ca_file"), "{}", error.hint());

    // The explicit per-side opt-out accepts it.
    unverified.source.server.accept_invalid_certs = true;
    // STARTTLS on the destination's plain port, verified with its CA.
    unverified.destination.server.port = destination.imap_port;
    unverified.destination.server.security = Security::Starttls;
    let outcome = copy_mailbox(&unverified, &options, &store, &NoProgress, &TimeBox::unlimited())
        .await
        .expect("opt-out + STARTTLS");
    assert_eq!(outcome.this_pass.copied, 3);

    // Plain IMAP, only because it is configured, finds everything there already.
    let mut plain = support::job(&source, &destination);
    plain.source.server.port = source.imap_port;
    plain.source.server.security = Security::Plain;
    let outcome = copy_mailbox(&plain, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("plain");
    assert_eq!(outcome.this_pass.copied, 0);
    assert_eq!(dump(&destination, "alice", "pw").await.expect("dump")["INBOX"].len(), 3);
}

/// cPanel/Courier-style servers keep every folder under `INBOX.`: from a plain server to such
/// a one and back, folders land under the right names.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_prefixed_servers_on_either_side() {
    let users = [("alice", "pw")];
    let plain = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::Outlook)).expect("plain");
    let prefixed =
        Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::Standard).separator('.').inbox_prefix())
            .expect("prefixed");
    let back = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::Standard)).expect("back");
    seed(&plain, "alice", "pw", "INBOX", &corpus::mailbox("in", 2)).await.expect("seed");
    seed(&plain, "alice", "pw", "Sent Items", &corpus::mailbox("sent", 2)).await.expect("seed");
    seed(&plain, "alice", "pw", "Work/2024", &corpus::mailbox("work", 3)).await.expect("seed");

    let options = CopyOptions::default();
    let to_prefixed = support::job(&plain, &prefixed);
    let outcome = copy_mailbox(
        &to_prefixed,
        &options,
        &SqliteStore::in_memory().expect("store"),
        &NoProgress,
        &TimeBox::unlimited(),
    )
    .await
    .expect("to prefixed");
    assert_eq!(outcome.this_pass.copied, 7);
    let there = dump(&prefixed, "alice", "pw").await.expect("dump");
    assert_eq!(there["INBOX"].len(), 2);
    assert_eq!(there["INBOX.Sent"].len(), 2, "{:?}", there.keys());
    assert_eq!(there["INBOX.Work.2024"].len(), 3, "{:?}", there.keys());

    let from_prefixed = support::job(&prefixed, &back);
    let outcome = copy_mailbox(
        &from_prefixed,
        &options,
        &SqliteStore::in_memory().expect("store"),
        &NoProgress,
        &TimeBox::unlimited(),
    )
    .await
    .expect("from prefixed");
    assert_eq!(outcome.this_pass.copied, 7);
    let back_dump = dump(&back, "alice", "pw").await.expect("dump");
    assert_eq!(back_dump["Sent"].len(), 2, "{:?}", back_dump.keys());
    assert_eq!(back_dump["Work/2024"].len(), 3, "{:?}", back_dump.keys());
    assert!(!back_dump.keys().any(|k| k.starts_with("INBOX/")), "no INBOX level carried over: {:?}", back_dump.keys());
}

/// A full destination is not a message refusal: the copy stops there, unsettled, with a hint,
/// and no message is listed as refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_destination_stops_the_mailbox_without_refusing_messages() {
    use mailhaul_common::error::CopyError;
    use mailhaul_common::ports::CheckpointStore;

    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None).storage_quota("40k"))
        .expect("destination");
    let messages: Vec<_> =
        (1..=12).map(|n| mailhaul_tests::corpus::SampleMessage::new("q", n).body_size(8_000).seed()).collect();
    seed(&source, "alice", "pw", "INBOX", &messages).await.expect("seed");

    let store = SqliteStore::in_memory().expect("store");
    let error = copy_mailbox(
        &support::job(&source, &destination),
        &CopyOptions::default(),
        &store,
        &NoProgress,
        &TimeBox::unlimited(),
    )
    .await
    .expect_err("the destination fills up");
    assert!(matches!(error, CopyError::OverQuota { .. }), "{error}");
    assert!(!error.is_retryable());
    assert!(error.hint().contains("quota"), "{}", error.hint());
    assert!(store.skipped("alice").await.expect("skipped").is_empty(), "nothing recorded as refused");
    let checkpoint = &store.load_folders("alice").await.expect("checkpoints")[0];
    let landed = dump(&destination, "alice", "pw").await.expect("dump")["INBOX"].len() as u32;
    assert!(landed > 0 && landed < 12, "{landed}");
    assert_eq!(checkpoint.last_uid, landed, "the checkpoint stops at the last stored message");
    assert!(checkpoint.in_flight.is_some_and(|(lo, _)| lo == landed + 1), "{checkpoint:?}");
    assert!(!checkpoint.complete);
}

/// A destination that drops every connection after 70 KB of appends (two batches or so): more drops than
/// the runner's tries, but each try gets further, so the mailbox is resumed to the end (as a
/// long copy whose provider closes sessions now and then) and every message lands once.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_keeps_dropping_is_resumed_while_each_try_gets_further() {
    use mailhaul_tests::proxy::{Direction, FaultPlan, FaultPolicy, FaultProxy};

    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("drops", 150)).await.expect("seed");
    let cut = FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: 70_000 };
    let proxy =
        FaultProxy::start(([127, 0, 0, 1], destination.imap_port).into(), FaultPolicy::always(cut)).expect("proxy");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = "[copy]\nbatch_messages = 5\nconnections_per_mailbox = 1\n";
    let output = one_row_batch(dir.path(), "plain", (source.imap_port, proxy.port), settings)().output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let drops = proxy.fired().len();
    assert!(drops > 6, "more drops ({drops}) than the 6 tries a pass that gets nowhere has: {stderr}");
    assert!(stderr.contains("copied since the last try"), "{stderr}");
    let source_dump = dump(&source, "alice", "pw").await.expect("dump source");
    let destination_dump = dump(&destination, "alice", "pw").await.expect("dump destination");
    assert_eq!(bodies(&destination_dump, "INBOX"), bodies(&source_dump, "INBOX"), "every message exactly once");
}
