//! `mailhaul run` end to end between two real Dovecot servers: every message once,
//! byte-identical, with flags and dates, in the mapped folder; delta passes; resume after kill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{FixedOffset, TimeZone};
use mailhaul_tests::corpus::SampleMessage;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed, DumpedMessage, SeedMessage};

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");

struct World {
    source: Dovecot,
    destination: Dovecot,
    dir: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let users = [("alice", "alice-pw"), ("bob", "bob, \"quoted\" pw"), ("carol", "carol-pw")];
        let source =
            Dovecot::start(DovecotOptions::with_users(&users).master("admin", "admin-pw").layout(Layout::Outlook))
                .expect("source dovecot");
        let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::Standard).separator('.'))
            .expect("destination dovecot");
        World { source, destination, dir: tempfile::tempdir().expect("tempdir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Full-form CSV: alice directly, bob through the source master user, carol with a wrong password.
    fn write_batch(&self) -> PathBuf {
        let s = &self.source;
        let d = &self.destination;
        let row = |src_user: &str, src_pw: &str, dst_user: &str, dst_pw: &str| {
            format!(
                "127.0.0.1,{},tls,{src_user},{},127.0.0.1,{},tls,{dst_user},{}\r\n",
                s.imaps_port,
                csv_quote(src_pw),
                d.imaps_port,
                csv_quote(dst_pw)
            )
        };
        let mut csv = String::from(
            "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\r\n",
        );
        csv.push_str(&row("alice", "alice-pw", "alice", "alice-pw"));
        csv.push_str(&row("bob*admin", "admin-pw", "bob", "bob, \"quoted\" pw"));
        csv.push_str(&row("carol", "wrong-password", "carol", "carol-pw"));
        let path = self.path("batch.csv");
        std::fs::write(&path, csv).expect("write csv");
        std::fs::write(
            self.path("mailhaul.toml"),
            format!(
                "[source]\nca_file = {:?}\n[destination]\nca_file = {:?}\n[copy]\nmax_message_size = \"1MB\"\nbatch_messages = 3\n",
                s.cert_path, d.cert_path
            ),
        )
        .expect("write config");
        path
    }

    fn run(&self, extra: &[&str]) -> Output {
        let csv = self.path("batch.csv");
        let output = Command::new(BIN)
            .arg("run")
            .arg(&csv)
            .arg("--config")
            .arg(self.path("mailhaul.toml"))
            .arg("--state")
            .arg(self.path("state.sqlite"))
            .arg("--report-dir")
            .arg(self.path("report"))
            .args(extra)
            .output()
            .expect("run mailhaul");
        eprintln!("--- mailhaul stderr ---\n{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn report(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.path("report/report.json")).expect("report.json");
        serde_json::from_slice(&bytes).expect("report json")
    }
}

fn csv_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

fn date(year: i32, month: u32, day: u32) -> chrono::DateTime<FixedOffset> {
    FixedOffset::east_opt(2 * 3600)
        .expect("offset")
        .with_ymd_and_hms(year, month, day, 8, 30, 0)
        .single()
        .expect("date")
}

/// Alice's source mailbox: Outlook names, nesting, non-ASCII, a delimiter in a name, flags,
/// keywords, old dates, 8-bit, no Message-ID, two identical messages, one too big, an empty folder.
async fn seed_alice(source: &Dovecot) {
    let inbox = vec![
        SampleMessage::new("inbox", 1).date(date(2009, 3, 1)).seed().flags(&["\\Seen", "\\Answered"]),
        SampleMessage::new("inbox", 2).date(date(2015, 7, 9)).eight_bit().seed().flags(&["\\Flagged", "$Label1"]),
        SampleMessage::new("inbox", 3).date(date(2023, 12, 31)).without_message_id().seed(),
        SampleMessage::new("twin", 1).date(date(2020, 1, 1)).seed().flags(&["\\Seen"]),
        SampleMessage::new("twin", 1).date(date(2020, 1, 1)).seed().flags(&["\\Seen"]),
        SampleMessage::new("big", 1).attachment(1_500_000).seed(),
        SampleMessage::new("inbox", 4).seed().flags(&["\\Draft", "Work"]),
    ];
    seed(source, "alice", "alice-pw", "INBOX", &inbox).await.expect("seed inbox");
    seed(source, "alice", "alice-pw", "Sent Items", &[SampleMessage::new("sent", 1).seed().flags(&["\\Seen"])])
        .await
        .expect("seed sent");
    seed(source, "alice", "alice-pw", "Deleted Items", &[SampleMessage::new("trash", 1).seed()])
        .await
        .expect("seed trash");
    seed(
        source,
        "alice",
        "alice-pw",
        "Projects/2024/Q1",
        &[SampleMessage::new("q1", 1).seed(), SampleMessage::new("q1", 2).seed()],
    )
    .await
    .expect("seed nested");
    seed(source, "alice", "alice-pw", "Migré", &[SampleMessage::new("utf7", 1).seed()]).await.expect("seed utf7");
    seed(source, "alice", "alice-pw", "Reports/2024.Q1", &[SampleMessage::new("dot", 1).seed()])
        .await
        .expect("seed dot");
    seed(source, "alice", "alice-pw", "Empty", &[]).await.expect("seed empty");
}

/// Where each of alice's source folders must land on the destination (separator `.`).
fn alice_mapping() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("INBOX", "INBOX"),
        ("Sent Items", "Sent"),
        ("Deleted Items", "Trash"),
        ("Projects/2024/Q1", "Projects.2024.Q1"),
        ("Migré", "Migré"),
        ("Reports/2024.Q1", "Reports.2024_Q1"),
        ("Empty", "Empty"),
    ])
}

type Fingerprint = (Vec<u8>, BTreeSet<String>, String);

fn fingerprints(messages: &[DumpedMessage]) -> Vec<Fingerprint> {
    let mut all: Vec<Fingerprint> =
        messages.iter().map(|m| (m.body.clone(), m.flags.clone(), m.internal_date.clone())).collect();
    all.sort();
    all
}

/// Every source message (but the too-big one) is in its mapped folder exactly once.
async fn assert_alice_migrated(world: &World) {
    let source = dump(&world.source, "alice", "alice-pw").await.expect("dump source");
    let destination = dump(&world.destination, "alice", "alice-pw").await.expect("dump destination");
    for (from, to) in alice_mapping() {
        let mut expected: Vec<DumpedMessage> = source.get(from).unwrap_or_else(|| panic!("source has {from}")).clone();
        expected.retain(|m| m.body.len() < 1_000_000);
        let got = destination.get(to).unwrap_or_else(|| panic!("destination lacks {to:?}: {:?}", destination.keys()));
        assert_eq!(fingerprints(got), fingerprints(&expected), "folder {from} -> {to}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrates_a_batch_reports_failures_and_delta_passes() {
    let world = World::start();
    seed_alice(&world.source).await;
    seed(
        &world.source,
        "bob",
        "bob, \"quoted\" pw",
        "INBOX",
        &[SampleMessage::new("bob", 1).seed(), SampleMessage::new("bob", 2).seed()],
    )
    .await
    .expect("seed bob");
    world.write_batch();

    let first = world.run(&[]);
    assert_eq!(first.status.code(), Some(1), "a failed row means exit 1");
    assert_alice_migrated(&world).await;
    let bob = dump(&world.destination, "bob", "bob, \"quoted\" pw").await.expect("dump bob");
    assert_eq!(bob["INBOX"].len(), 2, "bob copied through the master user");

    let report = world.report();
    let mailboxes = report["mailboxes"].as_array().expect("mailboxes");
    let by_name = |name: &str| {
        mailboxes.iter().find(|m| m["mailbox"] == name).unwrap_or_else(|| panic!("{name} in report")).clone()
    };
    assert_eq!(by_name("alice")["status"], "done");
    assert_eq!(by_name("bob")["status"], "done");
    let carol = by_name("carol");
    assert_eq!(carol["status"], "failed");
    assert!(carol["error"].as_str().unwrap_or("").contains("login failed"), "{carol}");
    let alice = by_name("alice");
    assert_eq!(alice["totals"]["skipped_too_big"], 1);
    assert_eq!(alice["totals"]["copied"], 12);
    let skipped = alice["skipped"].as_array().expect("skipped list");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "too_big");
    assert_eq!(skipped[0]["folder"], "INBOX");
    assert_eq!(alice["verify"], "ok");

    let folders = alice["folders"].as_array().expect("folders");
    let renamed = folders.iter().find(|f| f["source"] == "Reports/2024.Q1").expect("renamed folder in report");
    assert_eq!(renamed["destination"], "Reports.2024_Q1");
    assert!(String::from_utf8_lossy(&first.stderr).contains("2024_Q1"), "the rename is announced");

    // status and report read the state file alone.
    let state = world.path("state.sqlite");
    let status = Command::new(BIN).arg("status").arg("--state").arg(&state).output().expect("status");
    assert_eq!(status.status.code(), Some(0));
    let table = String::from_utf8_lossy(&status.stderr);
    assert!(table.contains("alice") && table.contains("carol") && table.contains("failed"), "{table}");
    let missing =
        Command::new(BIN).arg("status").arg("--state").arg(world.path("nope.sqlite")).output().expect("status");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no state file"));
    assert!(!world.path("nope.sqlite").exists(), "status never creates a state file");
    let again = world.path("report-again");
    let report_cmd = Command::new(BIN)
        .arg("report")
        .arg("--state")
        .arg(&state)
        .arg("--report-dir")
        .arg(&again)
        .output()
        .expect("report");
    assert_eq!(report_cmd.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(again.join("failed.csv")).expect("failed.csv again"),
        std::fs::read_to_string(world.path("report/failed.csv")).expect("failed.csv")
    );

    let failed = std::fs::read_to_string(world.path("report/failed.csv")).expect("failed.csv");
    let lines: Vec<&str> = failed.lines().collect();
    assert_eq!(lines.len(), 2, "header and carol: {failed}");
    assert!(lines[1].contains("carol") && !failed.contains("wrong-password"), "{failed}");

    // No password anywhere in what mailhaul wrote (in report.html also not HTML-escaped).
    let html = std::fs::read_to_string(world.path("report/report.html")).expect("report.html");
    assert!(html.contains("carol") && html.contains("data-standing=\"failed\""), "report.html lists the failed row");
    for file in ["state.sqlite", "report/report.csv", "report/report.json", "report/report.html", "report/failed.csv"] {
        let bytes = std::fs::read(world.path(file)).unwrap_or_default();
        for secret in ["alice-pw", "admin-pw", "wrong-password", "quoted\" pw"] {
            assert!(!contains(&bytes, secret.as_bytes()), "{secret} found in {file}");
            let escaped = mailhaul_common::report::html::escape(secret);
            assert!(!contains(&bytes, escaped.as_bytes()), "{secret} found HTML-escaped in {file}");
        }
    }
    assert!(!String::from_utf8_lossy(&first.stderr).contains("alice-pw"));

    // Second run: nothing new, nothing copied.
    let before = dump(&world.destination, "alice", "alice-pw").await.expect("dump");
    let second = world.run(&[]);
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(dump(&world.destination, "alice", "alice-pw").await.expect("dump"), before);

    // Mail that arrives on the source is copied by the next run, once.
    seed(&world.source, "alice", "alice-pw", "INBOX", &[SampleMessage::new("late", 1).seed()])
        .await
        .expect("seed late");
    seed(&world.source, "alice", "alice-pw", "Projects/2024/Q1", &[SampleMessage::new("late", 2).seed()])
        .await
        .expect("seed late");
    world.run(&[]);
    assert_alice_migrated(&world).await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[allow(dead_code)]
fn exists(path: &Path) -> bool {
    path.exists()
}

#[allow(dead_code)]
fn seed_many(tag: &str, count: u32) -> Vec<SeedMessage> {
    (1..=count).map(|n| SampleMessage::new(tag, n).body_size(4000).seed()).collect()
}

/// A server that keeps saying "busy, try again in 1 second": retried a bounded number of
/// times with its own delay, then reported as failed with the server's words and a hint,
/// while the other mailbox of the batch is done.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttling_server_is_retried_a_bounded_number_of_times() {
    let busy = "[THROTTLED] Too many logins. Try again in 1 seconds";
    let users = [("gina", "gina-pw"), ("hal", "hal-pw")];
    // passwd-file splits extra fields on spaces: no-break spaces keep the reply one field.
    let source = Dovecot::start(
        DovecotOptions::with_users(&users)
            .layout(Layout::None)
            .passdb_extra("gina", &format!("nologin reason={}", busy.replace(' ', "\u{a0}"))),
    )
    .expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "hal", "hal-pw", "INBOX", &[SampleMessage::new("hal", 1).seed()]).await.expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("batch.csv");
    let row = |user: &str, pw: &str| {
        format!(
            "127.0.0.1,{},plain,{user},{pw},127.0.0.1,{},plain,{user},{pw}\n",
            source.imap_port, destination.imap_port
        )
    };
    std::fs::write(
        &csv,
        format!(
            "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n{}{}",
            row("gina", "gina-pw"),
            row("hal", "hal-pw")
        ),
    )
    .expect("csv");
    let started = std::time::Instant::now();
    let output = Command::new(BIN)
        .env("MAILHAUL_LOG", "trace") // the most verbose logs still carry no password
        .arg("run")
        .arg(&csv)
        .arg("--report-dir")
        .arg(dir.path().join("report"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.matches("retrying in 1s").count() >= 3, "retried with the server's delay");
    assert!(!stderr.contains("hal-pw") && !stderr.contains("gina-pw"), "a password reached the trace log");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "bounded");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/report.json")).expect("report")).expect("json");
    let gina = &report["mailboxes"][0];
    assert_eq!(gina["status"], "failed");
    assert!(gina["error"].as_str().unwrap_or("").contains("THROTTLED"), "{gina}");
    assert!(gina["hint"].as_str().unwrap_or("").contains("run again"), "{gina}");
    assert_eq!(report["mailboxes"][1]["status"], "done");
}
