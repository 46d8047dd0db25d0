//! The interoperability matrix against real servers: Dovecot 2.3, Cyrus 3.6 and Courier 5.0
//! (the harness runs the last two from privately unpacked Debian packages; `scripts/setup.sh`
//! unpacks them). Each direction must give an exact copy (per message: content hash, flags
//! and keywords, INTERNALDATE), a verified report, and a delta pass that copies nothing and
//! reads no message metadata from the source: one command per folder to see it is unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use mailhaul_common::engine::{copy_mailbox, CopyStatus, MailboxOutcome, NoProgress, TimeBox};
use mailhaul_common::model::{CopyOptions, Endpoint, GmailLabels, MailboxJob};
use mailhaul_common::sqlite::SqliteStore;
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed, DumpedMessage, SeedMessage};
use mailhaul_tests::proxy::{Direction, FaultPolicy, FaultProxy};
use mailhaul_tests::{wire, Courier, Cyrus, CyrusOptions, ImapServer};

mod support;

const USER: &str = "alice";
const PASSWORD: &str = "pw";

/// One of the servers under test, and how mailhaul logs in to it.
enum Server {
    Dovecot(Dovecot),
    Cyrus(Cyrus),
    Courier(Courier),
}

impl ImapServer for Server {
    fn imap_port(&self) -> u16 {
        self.inner().imap_port()
    }
    fn separator(&self) -> char {
        self.inner().separator()
    }
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }
}

impl Server {
    fn dovecot(layout: Layout) -> Server {
        Server::Dovecot(
            Dovecot::start(DovecotOptions::with_users(&[(USER, PASSWORD)]).layout(layout)).expect("Dovecot"),
        )
    }

    fn cyrus(altnamespace: bool) -> Server {
        let options = CyrusOptions::with_users(&[(USER, PASSWORD), ("bob", "bobpw")]).altnamespace(altnamespace);
        Server::Cyrus(Cyrus::start(options).expect("Cyrus"))
    }

    fn courier() -> Server {
        Server::Courier(Courier::start(&[(USER, PASSWORD)]).expect("Courier"))
    }

    fn inner(&self) -> &dyn ImapServer {
        match self {
            Server::Dovecot(s) => s,
            Server::Cyrus(s) => s,
            Server::Courier(s) => s,
        }
    }

    /// Where the user's personal folders live, as NAMESPACE says.
    fn personal_prefix(&self) -> String {
        match self {
            Server::Dovecot(_) => String::new(),
            Server::Cyrus(c) if c.inbox_prefix => "INBOX/".into(),
            Server::Cyrus(_) => String::new(),
            Server::Courier(_) => "INBOX.".into(),
        }
    }

    /// A folder named with `/` between levels, as this server names it.
    fn native(&self, logical: &str) -> String {
        if logical == "INBOX" {
            return logical.into();
        }
        format!("{}{}", self.personal_prefix(), logical.replace('/', &self.separator().to_string()))
    }

    /// The reverse of [`Server::native`].
    fn logical(&self, native: &str) -> String {
        let prefix = self.personal_prefix();
        let bare = if native == "INBOX" { native } else { native.strip_prefix(prefix.as_str()).unwrap_or(native) };
        bare.replace(self.separator(), "/")
    }

    /// How mailhaul logs in to alice here, through `port` (the server's or a proxy's). Cyrus:
    /// the admin acting as alice (AUTHENTICATE PLAIN with an authorization identity).
    fn endpoint(&self, port: u16) -> Endpoint {
        match self {
            Server::Cyrus(c) => support::admin_endpoint(port, &c.admin.0, &c.admin.1, USER),
            _ => support::plain_endpoint(port, USER, PASSWORD),
        }
    }
}

/// The sample mailbox: nested folders, a Sent folder, flags, keywords, dates, 8-bit bodies,
/// an attachment, messages without Message-ID.
fn mailbox() -> Vec<(&'static str, Vec<SeedMessage>)> {
    let mut sent = corpus::mailbox("interop-sent", 4);
    sent[0].flags.push("\\Answered".into());
    vec![
        ("INBOX", corpus::mailbox("interop-inbox", 12)),
        ("Sent", sent),
        ("Projects/2024", corpus::mailbox("interop-projects", 6)),
        ("Reports", corpus::mailbox("interop-reports", 8)),
    ]
}

async fn seed_mailbox(server: &Server, folders: &[(&str, Vec<SeedMessage>)]) {
    for (folder, messages) in folders {
        seed(server, USER, PASSWORD, &server.native(folder), messages).await.expect("seed");
    }
}

/// A message as compared across servers: content hash, flags and keywords, INTERNALDATE as
/// an instant (servers answer in different time zones).
type Fingerprint = (u64, BTreeSet<String>, i64);

fn fingerprint(message: &DumpedMessage) -> Fingerprint {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    message.body.hash(&mut hasher);
    let date = chrono::DateTime::parse_from_str(&message.internal_date, "%d-%b-%Y %H:%M:%S %z")
        .map(|d| d.timestamp())
        .unwrap_or_else(|e| panic!("INTERNALDATE {:?}: {e}", message.internal_date));
    (hasher.finish(), message.flags.clone(), date)
}

/// Every non-empty folder of alice's account, by logical name, each message fingerprinted.
async fn contents(server: &Server) -> BTreeMap<String, Vec<Fingerprint>> {
    let dumped = dump(server, USER, PASSWORD).await.unwrap_or_else(|e| panic!("dump {}: {e:#}", server.kind()));
    dumped
        .into_iter()
        .filter(|(_, messages)| !messages.is_empty())
        .map(|(folder, messages)| {
            let mut prints: Vec<Fingerprint> = messages.iter().map(fingerprint).collect();
            prints.sort();
            (server.logical(&folder), prints)
        })
        .collect()
}

/// Every message of alice's account as "folder: Subject", a line each.
async fn subjects(server: &Server) -> String {
    let dumped = dump(server, USER, PASSWORD).await.unwrap_or_else(|e| panic!("dump {}: {e:#}", server.kind()));
    let mut out = String::new();
    for (folder, messages) in dumped {
        for message in messages {
            let text = String::from_utf8_lossy(&message.body);
            let subject = text.lines().find(|l| l.starts_with("Subject:")).unwrap_or("(no subject)");
            out.push_str(&format!("{folder}: {subject}\n"));
        }
    }
    out
}

fn job(source: &Server, source_port: u16, destination: &Server) -> MailboxJob {
    MailboxJob {
        row: 1,
        mailbox: USER.into(),
        source: source.endpoint(source_port),
        destination: destination.endpoint(destination.imap_port()),
        user_root: None,
    }
}

fn assert_verified(outcome: &MailboxOutcome, what: &str) {
    assert_eq!(outcome.status, CopyStatus::Done, "{what}");
    assert!(!outcome.verdicts.is_empty(), "{what}: no verdicts");
    assert_eq!(outcome.verification_failure(), None, "{what}: {:?}", outcome.verdicts);
}

/// Copy alice's sample mailbox from `source` to `destination`, check the copy is exact and
/// verified, then that a delta pass copies nothing and reads no message metadata.
async fn exact_copy(source: Server, destination: Server) {
    let what = format!("{} → {}", source.kind(), destination.kind());
    let folders = mailbox();
    seed_mailbox(&source, &folders).await;
    let source_before = contents(&source).await;
    // The source is read through a recording proxy (plain IMAP).
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], source.imap_port())), FaultPolicy::pass_all())
        .expect("proxy");
    let job = job(&source, proxy.port, &destination);
    let options = CopyOptions { batch_messages: 5, ..CopyOptions::default() };
    let store = SqliteStore::in_memory().expect("store");
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited())
        .await
        .unwrap_or_else(|e| panic!("{what}: first pass: {e:#}"));
    assert_verified(&first, &what);
    assert_eq!(first.this_pass.copied, 30, "{what}: {:?}", first.this_pass);

    let copied = contents(&destination).await;
    assert_eq!(copied, source_before, "{what}: the destination holds exactly the source's messages");
    assert_eq!(contents(&source).await, source_before, "{what}: the source is unchanged");

    let delta = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited())
        .await
        .unwrap_or_else(|e| panic!("{what}: delta pass: {e:#}"));
    assert_verified(&delta, &format!("{what}, delta"));
    assert_eq!(delta.this_pass.copied, 0, "{what}: delta pass");

    // Without flag sync (which reads every message's flags on a source without CONDSTORE), an
    // unchanged folder costs the source one command (STATUS or EXAMINE for its UIDNEXT); its
    // verdict from the verified pass stands (reverify_unchanged = false, the default).
    proxy.capture(true);
    let quiet = CopyOptions { sync_flags: false, ..options.clone() };
    let delta = copy_mailbox(&job, &quiet, &store, &NoProgress, &TimeBox::unlimited())
        .await
        .unwrap_or_else(|e| panic!("{what}: delta pass: {e:#}"));
    assert_verified(&delta, &format!("{what}, delta"));
    assert_eq!(delta.this_pass.copied, 0, "{what}: delta pass");
    let commands: Vec<String> = proxy
        .captured()
        .values()
        .flat_map(|c| wire::lines(&c.bytes(Direction::ClientToServer)))
        .filter(|l| l.complete)
        .map(|l| l.text)
        .collect();
    let upper: Vec<String> = commands.iter().map(|c| c.to_ascii_uppercase()).collect();
    assert!(
        !upper.iter().any(|c| c.contains(" FETCH ")),
        "{what}: an unchanged folder is not read again: {commands:#?}"
    );
    let per_folder = upper
        .iter()
        .filter(|c| [" EXAMINE ", " SELECT ", " STATUS ", " UID SEARCH "].iter().any(|w| c.contains(w)))
        .count();
    assert!(delta.verdicts.len() >= folders.len(), "{what}: {:?}", delta.verdicts);
    assert_eq!(per_folder, delta.verdicts.len(), "{what}: one command per folder: {commands:#?}");
    assert_eq!(contents(&destination).await, source_before, "{what}: still exact after the delta passes");
}

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_to_cyrus() {
    exact_copy(Server::dovecot(Layout::None), Server::cyrus(true)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_to_courier() {
    exact_copy(Server::dovecot(Layout::None), Server::courier()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cyrus_to_dovecot() {
    exact_copy(Server::cyrus(true), Server::dovecot(Layout::Standard)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn courier_to_dovecot() {
    exact_copy(Server::courier(), Server::dovecot(Layout::Standard)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cyrus_to_courier() {
    exact_copy(Server::cyrus(true), Server::courier()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cyrus_without_altnamespace_as_source() {
    exact_copy(Server::cyrus(false), Server::dovecot(Layout::None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cyrus_without_altnamespace_as_destination() {
    exact_copy(Server::dovecot(Layout::None), Server::cyrus(false)).await;
}

/// user1's view of a Cyrus source where bob shared his Archive with her and the admin made a
/// Team folder readable by everyone: `Other Users/bob/Archive`, `Shared Folders/Team`.
async fn cyrus_with_shared_folders() -> Server {
    let Server::Cyrus(cyrus) = Server::cyrus(true) else { unreachable!() };
    seed(&cyrus, "bob", "bobpw", "Archive", &corpus::mailbox("bob-archive", 4)).await.expect("seed bob");
    cyrus.user_commands("bob", &["SETACL \"Archive\" \"alice\" \"lrs\""]).expect("share");
    cyrus
        .admin_commands(&[
            "CREATE \"Team\"",
            "SETACL \"Team\" \"admin\" \"lrswipkxtecda\"",
            "SETACL \"Team\" \"anyone\" \"lrs\"",
        ])
        .expect("shared folder");
    seed(&cyrus, "admin", "adminpw", "Team", &corpus::mailbox("team", 3)).await.expect("seed team");
    seed(&cyrus, USER, PASSWORD, "INBOX", &corpus::mailbox("alice-own", 5)).await.expect("seed alice");
    let seen = mailhaul_tests::imap::list(&cyrus, USER, PASSWORD).await.expect("list");
    let names: BTreeSet<String> = seen.into_iter().map(|f| f.name).collect();
    assert!(
        names.contains("Other Users/bob/Archive") && names.contains("Shared Folders/Team"),
        "the account sees the shared folders: {names:?}"
    );
    Server::Cyrus(cyrus)
}

#[tokio::test(flavor = "multi_thread")]
async fn other_users_and_shared_folders_are_listed_not_copied() {
    let source = cyrus_with_shared_folders().await;
    // What alice sees, read by the harness: the copy is checked against it. (Once, under load,
    // alice's INBOX held 3 messages more than seeded, before any copy; never reproduced.)
    let before = contents(&source).await;
    let held = |folder: &str| before.get(folder).map_or(0, Vec::len);
    if held("INBOX") != 5 {
        eprintln!("note: alice's INBOX holds {} messages, 5 were seeded:\n{}", held("INBOX"), subjects(&source).await);
    }
    let destination = Server::dovecot(Layout::None);
    let job = job(&source, source.imap_port(), &destination);
    let store = SqliteStore::in_memory().expect("store");
    let options = CopyOptions::default();
    let outcome = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("copy");
    assert_verified(&outcome, "Cyrus with shared folders");
    let copied = contents(&destination).await;
    assert_eq!(copied.keys().collect::<Vec<_>>(), ["INBOX"], "nothing of bob's or the team's: {copied:?}");
    assert_eq!(copied["INBOX"], before["INBOX"], "exactly alice's own mail");
    assert_eq!(outcome.this_pass.copied, held("INBOX") as u64, "{outcome:?}");
    let folders = mailhaul_common::ports::CheckpointStore::load_folders(&store, USER).await.expect("folders");
    let not_copied: BTreeMap<String, String> =
        folders.into_iter().filter_map(|c| Some((c.source_folder, c.not_copied?))).collect();
    assert_eq!(
        not_copied,
        BTreeMap::from([
            ("Other Users/bob/Archive".to_string(), "not copied: other users' namespace".to_string()),
            ("Shared Folders/Team".to_string(), "not copied: shared namespace".to_string()),
        ]),
        "listed in the report with why"
    );

    // Asked for explicitly, they are copied under the chosen folder, and verified.
    let (archive, team) = (held("Other Users/bob/Archive"), held("Shared Folders/Team"));
    assert!(archive > 0, "bob's shared Archive holds mail: {:?}", before.keys());
    let options = CopyOptions { shared_folders: Some("Shared".into()), ..CopyOptions::default() };
    let outcome = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("copy");
    assert_verified(&outcome, "shared folders included");
    assert_eq!(outcome.this_pass.copied, (archive + team) as u64);
    let copied = contents(&destination).await;
    assert_eq!(copied.get("Shared/Other Users/bob/Archive"), before.get("Other Users/bob/Archive"));
    assert_eq!(copied.get("Shared/Shared Folders/Team"), before.get("Shared Folders/Team"));
    assert_eq!(copied.len(), 2 + usize::from(team > 0), "{:?}", copied.keys());

    // The setting turned off again: they are left alone from now on, and what was copied
    // before stays counted in the report.
    let outcome =
        copy_mailbox(&job, &CopyOptions::default(), &store, &NoProgress, &TimeBox::unlimited()).await.expect("copy");
    assert_verified(&outcome, "shared folders left alone again");
    assert_eq!(outcome.this_pass.copied, 0);
    let folders = mailhaul_common::ports::CheckpointStore::load_folders(&store, USER).await.expect("folders");
    let counted: BTreeMap<String, (bool, u64)> =
        folders.into_iter().map(|c| (c.source_folder, (c.not_copied.is_some(), c.counts.copied))).collect();
    assert_eq!(counted["Other Users/bob/Archive"], (true, archive as u64), "{counted:?}");
    assert_eq!(counted["Shared Folders/Team"], (true, team as u64), "{counted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outlook_named_folders_on_a_courier_destination_are_reused() {
    let source = Server::dovecot(Layout::Standard);
    let destination = Server::courier();
    // A mailbox an Outlook user already has on the new server: no SPECIAL-USE there.
    for name in ["INBOX.Sent Items", "INBOX.Deleted Items", "INBOX.Junk Email", "INBOX.Drafts"] {
        seed(&destination, USER, PASSWORD, name, &[]).await.expect("create");
    }
    for (folder, tag) in [("Sent", "o-sent"), ("Trash", "o-trash"), ("Junk", "o-junk"), ("Drafts", "o-drafts")] {
        seed(&source, USER, PASSWORD, folder, &corpus::mailbox(tag, 2)).await.expect("seed");
    }
    let job = job(&source, source.imap_port(), &destination);
    let store = SqliteStore::in_memory().expect("store");
    let outcome =
        copy_mailbox(&job, &CopyOptions::default(), &store, &NoProgress, &TimeBox::unlimited()).await.expect("copy");
    assert_verified(&outcome, "Outlook folders");
    let folders = mailhaul_tests::imap::list(&destination, USER, PASSWORD).await.expect("list");
    let names: BTreeSet<String> = folders.into_iter().map(|f| f.name).collect();
    let expected: BTreeSet<String> =
        ["INBOX", "INBOX.Sent Items", "INBOX.Deleted Items", "INBOX.Junk Email", "INBOX.Drafts", "INBOX.Archive"]
            .map(String::from)
            .into();
    // (The source's empty Archive is created: the destination had none.)
    assert_eq!(names, expected, "no Sent/Trash/Junk beside the existing folders");
    let counts: BTreeMap<String, usize> = contents(&destination).await.into_iter().map(|(f, m)| (f, m.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("Deleted Items".to_string(), 2),
            ("Drafts".to_string(), 2),
            ("Junk Email".to_string(), 2),
            ("Sent Items".to_string(), 2),
        ])
    );
}

/// `mailhaul run` from Dovecot to Courier; then a copied message disappears from the
/// destination: the next run must not end "done" with exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_does_not_verify_is_not_done() {
    let source = Server::dovecot(Layout::None);
    let destination = Server::courier();
    seed_mailbox(&source, &mailbox()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        format!(
            "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\r\n\
             127.0.0.1,{},plain,{USER},{PASSWORD},127.0.0.1,{},plain,{USER},{PASSWORD}\r\n",
            source.imap_port(),
            destination.imap_port()
        ),
    )
    .expect("csv");
    // Only the destination changes between the runs: an unchanged folder keeps its last
    // verdict unless asked to verify again.
    let settings = dir.path().join("settings.toml");
    std::fs::write(&settings, "[copy]\nreverify_unchanged = true\n").expect("settings");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailhaul"))
            .arg("run")
            .arg(&csv)
            .arg("--config")
            .arg(&settings)
            .arg("--report-dir")
            .arg(dir.path().join("report"))
            .output()
            .expect("run mailhaul")
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("verified"), "{stderr}");

    // Someone removes a copied message on the new server (the test plays the user there).
    let mut session = mailhaul_tests::imap::login(&destination, USER, PASSWORD).await.expect("login");
    session.select("INBOX.Reports").await.expect("select");
    session.run_command_and_check_ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)").await.expect("store");
    session.run_command_and_check_ok("EXPUNGE").await.expect("expunge");
    session.logout().await.ok();

    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "a mailbox that does not verify fails the run: {stderr}");
    let report = std::fs::read_to_string(dir.path().join("report/report.csv")).expect("report.csv");
    assert!(report.contains("failed") && report.contains("verification failed"), "{report}");
}

/// `validate --check` in text mode: per side the capabilities that matter, the folders with
/// counts, a note per quirk; a refused admin LOGIN where AUTHENTICATE PLAIN is offered says
/// to use `auth = "plain"`.
#[tokio::test(flavor = "multi_thread")]
async fn validate_check_lists_capabilities_folders_and_quirks() {
    let source = Server::cyrus(true);
    let destination = Server::Courier(Courier::start(&[(USER, PASSWORD), ("bob", "bobpw")]).expect("Courier"));
    seed(&source, USER, PASSWORD, "INBOX", &corpus::mailbox("check", 3)).await.expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("batch.csv");
    let (s, d) = (source.imap_port(), destination.imap_port());
    std::fs::write(
        &csv,
        format!(
            "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\r\n\
             127.0.0.1,{s},plain,{USER},{PASSWORD},127.0.0.1,{d},plain,{USER},{PASSWORD}\r\n\
             127.0.0.1,{s},plain,bob*admin,adminpw,127.0.0.1,{d},plain,bob,bobpw\r\n"
        ),
    )
    .expect("csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailhaul"))
        .args(["validate", "--check"])
        .arg(&csv)
        .output()
        .expect("run mailhaul");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the second row's login is refused: {stderr}");
    for expected in [
        "row 1 source: ok, 1 folders, 3 messages",
        "capabilities: LITERAL+ MULTIAPPEND UIDPLUS CONDSTORE SPECIAL-USE NAMESPACE APPENDLIMIT=4294967295 COMPRESS=DEFLATE",
        "INBOX: 3 messages",
        "note: other users' and shared folders (\"Other Users/\", \"Shared Folders/\") are not copied",
        "row 1 destination: ok",
        "(not offered: LITERAL+ LITERAL- MULTIAPPEND CONDSTORE SPECIAL-USE APPENDLIMIT COMPRESS)",
        "note: personal folders live under \"INBOX.\"",
        "note: no UNSELECT",
        "note: EXAMINE reports no UIDNEXT (Courier)",
        "auth = \"plain\"",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    for secret in ["adminpw", "bobpw"] {
        assert!(!stderr.contains(secret) && !stdout.contains(secret), "never a password in the output");
    }
}

/// What a Gmail-like source holds: one message labelled both INBOX and Work, two archived
/// without a label, every message in `[Gmail]/All Mail`, the first of INBOX also Important.
struct GmailSource {
    server: Server,
    /// Every message of All Mail.
    all: Vec<SeedMessage>,
    /// Work's own two messages (not in INBOX).
    work_only: Vec<SeedMessage>,
    /// In All Mail only.
    archived: Vec<SeedMessage>,
}

/// A Dovecot that looks like Gmail over IMAP: `[Gmail]/All Mail` (`\All`) and
/// `[Gmail]/Important` (`\Important`), announcing X-GM-EXT-1.
async fn gmail_source() -> GmailSource {
    gmail_source_of(3, 2).await
}

/// [`gmail_source`] with `inbox` messages in INBOX and `work` of Work's own.
async fn gmail_source_of(inbox: u32, work: u32) -> GmailSource {
    let options = DovecotOptions::with_users(&[(USER, PASSWORD)]).layout(Layout::Gmail).announce_only("X-GM-EXT-1");
    let server = Server::Dovecot(Dovecot::start(options).expect("Dovecot"));
    let inbox = corpus::mailbox("g-inbox", inbox);
    let mut work = corpus::mailbox("g-work", work);
    let work_only = work.clone();
    work.push(inbox[1].clone()); // labelled INBOX and Work
    let archived = corpus::mailbox("g-archived", 2);
    seed(&server, USER, PASSWORD, "INBOX", &inbox).await.expect("seed");
    seed(&server, USER, PASSWORD, "Work", &work).await.expect("seed");
    let all: Vec<SeedMessage> = inbox.iter().chain(&work_only).chain(&archived).cloned().collect();
    seed(&server, USER, PASSWORD, "[Gmail]/All Mail", &all).await.expect("seed");
    seed(&server, USER, PASSWORD, "[Gmail]/Important", &inbox[..1]).await.expect("seed");
    GmailSource { server, all, work_only, archived }
}

/// The destination's non-empty folders, bodies in UID order; never a view folder.
async fn bodies_by_folder(destination: &Server) -> BTreeMap<String, Vec<Vec<u8>>> {
    let copied = dump(destination, USER, PASSWORD).await.expect("dump");
    assert!(
        copied.keys().all(|f| !f.contains("Important") && !f.contains("All Mail")),
        "views are not copied: {:?}",
        copied.keys()
    );
    copied
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(f, m)| (f, m.into_iter().map(|m| m.body).collect()))
        .collect()
}

/// Copy the Gmail-like source (mail archived without a label lands in Archive exactly once,
/// labelled mail once per label folder or, with `gmail_labels = "first"`, once in all;
/// Important is not copied), then a delta that copies nothing. Returns the bodies per
/// destination folder.
async fn gmail_copy(options: CopyOptions) -> (BTreeMap<String, Vec<Vec<u8>>>, Vec<SeedMessage>) {
    let source = gmail_source().await;
    let destination = Server::dovecot(Layout::Standard);
    let job = job(&source.server, source.server.imap_port(), &destination);
    let store = SqliteStore::in_memory().expect("store");
    let first = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("copy");
    assert_verified(&first, "Gmail");
    let delta = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("delta");
    assert_verified(&delta, "Gmail, delta");
    assert_eq!(delta.this_pass.copied, 0);
    let bodies = bodies_by_folder(&destination).await;
    // Every All Mail message is either copied to Archive or counted as left to its label
    // folder (with "first", so is Work's copy of the message INBOX holds), none as a duplicate.
    let in_archive = bodies.get("Archive").map_or(0, Vec::len) as u64;
    let first_label_only = u64::from(options.gmail_labels == GmailLabels::First);
    assert_eq!(
        first.this_pass.in_label_folder + in_archive,
        source.all.len() as u64 + first_label_only,
        "{:?}",
        first.this_pass
    );
    assert_eq!(first.this_pass.skipped_duplicate, 0, "{:?}", first.this_pass);
    (bodies, source.archived)
}

/// A label folder whose copy fails does not hold its mail for All Mail: All Mail waits for
/// the label folders (here copied on three connection pairs at once) and copies what none of
/// them settled into Archive. Nothing is lost; the failed folder is reported.
#[tokio::test(flavor = "multi_thread")]
async fn gmail_mail_of_a_label_folder_that_fails_lands_in_archive() {
    let source = gmail_source().await;
    let Server::Dovecot(destination) = Server::dovecot(Layout::Standard) else { unreachable!() };
    // Work exists on the destination but Dovecot (running as another user) cannot open it.
    seed(&destination, USER, PASSWORD, "Work", &[]).await.expect("create Work");
    let work_dir = destination.folder_dir(USER, "Work").expect("Work's directory");
    std::fs::set_permissions(&work_dir, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
    let destination = Server::Dovecot(destination);
    let job = job(&source.server, source.server.imap_port(), &destination);
    let store = SqliteStore::in_memory().expect("store");
    let options = CopyOptions { connections_per_mailbox: 3, ..CopyOptions::default() };
    let failed = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await;
    let error = failed.expect_err("the Work folder cannot be copied");
    assert!(error.to_string().contains("Work"), "the failed folder is named: {error}");
    std::fs::set_permissions(&work_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod back");
    let bodies = bodies_by_folder(&destination).await;
    let archive: BTreeSet<&Vec<u8>> = bodies["Archive"].iter().collect();
    let expected: BTreeSet<&Vec<u8>> = source.archived.iter().chain(&source.work_only).map(|m| &m.raw).collect();
    assert_eq!(archive, expected, "Work's own mail went to Archive with the archived-only mail");
    assert_eq!(bodies["INBOX"].len(), 3, "INBOX's mail (one message also labelled Work) once, in INBOX");
    assert_eq!(bodies.get("Work"), None, "{:?}", bodies.keys());
}

/// A label folder whose copy is cut off (the destination connection lost mid-APPEND) leaves
/// All Mail for a later pass: what the label folder had not settled must not be copied to
/// Archive as well. Two connection pairs: one copies a label folder and loses its link, the
/// other reaches All Mail. After a clean second pass every message is in its place once.
#[tokio::test(flavor = "multi_thread")]
async fn all_mail_waits_for_a_label_folder_cut_off() {
    let source = gmail_source_of(30, 30).await;
    let destination = Server::dovecot(Layout::Standard);
    let target: SocketAddr = ([127, 0, 0, 1], destination.imap_port()).into();
    // Destination connection 1 is the second pair's: cut 8-20 KB into what it sends, inside
    // its label folder's ~27 KB of APPENDs.
    let policy = FaultPolicy::seeded_cuts(11, 1..2, Direction::ClientToServer, 8_000..20_000);
    let proxy = FaultProxy::start(target, policy).expect("proxy");
    let mut job = job(&source.server, source.server.imap_port(), &destination);
    job.destination = destination.endpoint(proxy.port);
    let store = SqliteStore::in_memory().expect("store");
    let options = CopyOptions { connections_per_mailbox: 2, ..CopyOptions::default() };
    let cut = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await;
    assert!(cut.is_err(), "the pass lost a connection: {cut:?}");
    assert_eq!(proxy.fired().len(), 1, "the planned cut happened");
    let labelled: BTreeSet<&Vec<u8>> =
        source.all.iter().filter(|m| !source.archived.contains(m)).map(|m| &m.raw).collect();
    let after_cut = bodies_by_folder(&destination).await;
    let in_archive = after_cut.get("Archive").map(Vec::as_slice).unwrap_or_default();
    assert!(!in_archive.iter().any(|b| labelled.contains(b)), "no labelled message went to Archive");

    proxy.pass_all();
    let done = copy_mailbox(&job, &options, &store, &NoProgress, &TimeBox::unlimited()).await.expect("second pass");
    assert_verified(&done, "after the cut");
    let bodies = bodies_by_folder(&destination).await;
    let archive: BTreeSet<&Vec<u8>> = bodies["Archive"].iter().collect();
    assert_eq!(archive, source.archived.iter().map(|m| &m.raw).collect(), "Archive: the archived-only mail, once");
    assert_eq!(bodies["Archive"].len(), source.archived.len());
    assert_eq!(bodies["INBOX"].len(), 30);
    assert_eq!(bodies["Work"].len(), 31, "Work's own 30 and the message labelled INBOX too");
}

/// Gmail is recognised by X-GM-EXT-1: `validate --check` says how its labels are copied, and
/// warns when All Mail is hidden from IMAP (mail without a label would be out of reach).
#[tokio::test(flavor = "multi_thread")]
async fn gmail_is_recognised_and_a_hidden_all_mail_is_warned_about() {
    use mailhaul_common::error::Side;
    use mailhaul_common::inspect::{inspect, ALL_MAIL_HIDDEN};
    let source = gmail_source().await;
    let destination = Server::dovecot(Layout::Standard);
    let shown = inspect(&job(&source.server, source.server.imap_port(), &destination).source, Side::Source, None)
        .await
        .expect("inspect");
    assert!(shown.capabilities.iter().any(|c| c == "X-GM-EXT-1"), "{:?}", shown.capabilities);
    assert!(shown.quirks.iter().any(|q| q.starts_with("Gmail (X-GM-EXT-1): labels are folders")), "{:?}", shown.quirks);
    assert!(!shown.quirks.iter().any(|q| q == ALL_MAIL_HIDDEN), "{:?}", shown.quirks);

    let hidden = DovecotOptions::with_users(&[(USER, PASSWORD)]).layout(Layout::None).announce_only("X-GM-EXT-1");
    let hidden = Server::Dovecot(Dovecot::start(hidden).expect("Dovecot"));
    let seen =
        inspect(&job(&hidden, hidden.imap_port(), &destination).source, Side::Source, None).await.expect("inspect");
    assert!(seen.quirks.iter().any(|q| q == ALL_MAIL_HIDDEN), "{:?}", seen.quirks);
    let plain =
        inspect(&destination.endpoint(destination.imap_port()), Side::Destination, None).await.expect("inspect");
    assert!(!plain.quirks.iter().any(|q| q.contains("Gmail")), "not Gmail: {:?}", plain.quirks);
}

#[tokio::test(flavor = "multi_thread")]
async fn gmail_all_mail_gives_archived_mail_to_archive_once() {
    let (copied, archived) = gmail_copy(CopyOptions::default()).await;
    let counts: BTreeMap<&str, usize> = copied.iter().map(|(f, m)| (f.as_str(), m.len())).collect();
    assert_eq!(counts, BTreeMap::from([("Archive", 2), ("INBOX", 3), ("Work", 3)]), "one copy per label");
    let in_archive: BTreeSet<&Vec<u8>> = copied["Archive"].iter().collect();
    assert_eq!(in_archive, archived.iter().map(|m| &m.raw).collect(), "exactly the archived-only mail");
}

#[tokio::test(flavor = "multi_thread")]
async fn gmail_labels_first_copies_a_labelled_message_once() {
    let (copied, _) = gmail_copy(CopyOptions { gmail_labels: GmailLabels::First, ..CopyOptions::default() }).await;
    let counts: BTreeMap<&str, usize> = copied.iter().map(|(f, m)| (f.as_str(), m.len())).collect();
    assert_eq!(counts, BTreeMap::from([("Archive", 2), ("INBOX", 3), ("Work", 2)]), "INBOX is the first label");
}

/// A label folder left out by `exclude` does not hold its mail for All Mail: what only it
/// had is copied from All Mail into Archive, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn gmail_mail_of_an_excluded_label_lands_in_archive() {
    let (copied, archived) = gmail_copy(CopyOptions { exclude: vec!["Work".into()], ..CopyOptions::default() }).await;
    let counts: BTreeMap<&str, usize> = copied.iter().map(|(f, m)| (f.as_str(), m.len())).collect();
    assert_eq!(counts, BTreeMap::from([("Archive", 4), ("INBOX", 3)]), "Work's own two messages go to Archive");
    let in_archive: BTreeSet<&Vec<u8>> = copied["Archive"].iter().collect();
    assert!(archived.iter().all(|m| in_archive.contains(&m.raw)), "the archived-only mail too");
}
