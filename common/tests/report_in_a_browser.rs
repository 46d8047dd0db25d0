//! report.html opened in a real headless browser (Debian's `chromium`; CI installs it through
//! scripts/setup.sh): the page renders and its script runs with no console message, the
//! failed mailbox comes first and holds its folders, a folder name written as markup stays
//! text. Screenshots for people to look at: target/report-screenshot.png (laptop) and
//! target/report-screenshot-phone.png.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Duration, Utc};
use mailhaul_common::model::{FolderCheckpoint, FolderCounts, MailboxStatus, SkipReason, SkippedMessage, Verdict};
use mailhaul_common::ports::{BatchMeta, BatchStore, CheckpointStore, MailboxRecord};
use mailhaul_common::report::build_report;
use mailhaul_common::sqlite::SqliteStore;

/// A folder name as a hostile source server might send it: it must show as text.
const HOSTILE_FOLDER: &str = "Q1 <script>document.title='owned'</script>";

fn chromium() -> PathBuf {
    let candidates =
        [std::env::var("MAILHAUL_CHROMIUM").ok(), Some("chromium".into()), Some("chromium-browser".into())];
    for candidate in candidates.into_iter().flatten() {
        if Command::new(&candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.into();
        }
    }
    panic!(
        "no chromium on this machine: this test opens report.html in a real browser. \
         Install it (apt-get install -y --no-install-recommends chromium, as scripts/setup.sh does) \
         or point MAILHAUL_CHROMIUM at one"
    );
}

/// target/, where the screenshots stay for people to look at.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf()
}

fn folder(source: &str, destination: &str, copied: u64, verify_ok: bool) -> FolderCheckpoint {
    FolderCheckpoint {
        source_folder: source.to_string(),
        destination_folder: destination.to_string(),
        uid_validity: 1,
        last_uid: copied as u32,
        uid_next: copied as u32 + 1,
        counts: FolderCounts { copied, bytes: copied * 48_000, ..FolderCounts::default() },
        complete: true,
        verify: Some(Verdict {
            ok: verify_ok,
            source_messages: copied,
            destination_messages: copied,
            not_copied: 0,
            detail: String::new(),
        }),
        ..Default::default()
    }
}

fn record(row: usize, mailbox: &str, status: MailboxStatus) -> MailboxRecord {
    let started = Utc::now() - Duration::minutes(20);
    MailboxRecord {
        mailbox: mailbox.to_string(),
        row,
        source_user: format!("old-{mailbox}"),
        cells: vec![format!("old-{mailbox}"), String::new(), mailbox.to_string()],
        status,
        error: None,
        hint: None,
        started_at: Some(started),
        finished_at: Some(started + Duration::minutes(10 + row as i64)),
        seconds: 600.0 + row as f64,
        passes: 1,
    }
}

/// Row 1 done, row 2 done with a message refused, row 3 failed after two folders (listed
/// last in the CSV, shown first on the page).
async fn batch_report() -> mailhaul_common::report::BatchReport {
    let store = SqliteStore::in_memory().expect("store");
    store
        .put_batch(&BatchMeta {
            id: "spring-4f1c2a9b0e".into(),
            headers: vec!["EmailAddress".into(), "Password".into(), "UserName".into()],
            total: 3,
            created_at: Utc::now() - Duration::hours(1),
        })
        .await
        .expect("batch");
    store.put_mailbox(&record(1, "alice@example.org", MailboxStatus::Done)).await.expect("alice");
    store.put_mailbox(&record(2, "bob@example.org", MailboxStatus::Done)).await.expect("bob");
    let mut carol = record(3, "carol@example.org", MailboxStatus::Failed);
    carol.error = Some("connection to imap.old.example lost 5 times in a row (BYE server shutting down)".into());
    carol.hint = Some("check that the source server is up and reachable, then run the batch again: it resumes".into());
    store.put_mailbox(&carol).await.expect("carol");

    store.save_folder("alice@example.org", &folder("INBOX", "INBOX", 1200, true)).await.expect("folder");
    store.save_folder("alice@example.org", &folder("Sent Items", "Sent", 300, true)).await.expect("folder");
    store.save_folder("bob@example.org", &folder("INBOX", "INBOX", 80, true)).await.expect("folder");
    let mut refused = folder("Archive", "Archive", 40, true);
    refused.counts.refused = 1;
    store.save_folder("bob@example.org", &refused).await.expect("folder");
    store
        .record_skipped(
            "bob@example.org",
            &SkippedMessage {
                folder: "Archive".into(),
                uid: 17,
                size: 61_000_000,
                message_id: Some("<big@example.org>".into()),
                reason: SkipReason::Refused,
                detail: "NO [LIMIT] message too large".into(),
            },
        )
        .await
        .expect("skipped");
    store.save_folder("carol@example.org", &folder("INBOX", "INBOX", 510, true)).await.expect("folder");
    store.save_folder("carol@example.org", &folder(HOSTILE_FOLDER, "Q1 stuff", 12, false)).await.expect("folder");
    build_report(&store, &store).await.expect("report")
}

/// Runs chromium headless on `page` with `args`; returns stdout and the console lines of
/// its log (every console.log/error and uncaught exception of the page is one).
fn run_chromium(browser: &Path, page: &Path, args: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = Command::new(browser)
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars"])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let console =
        stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).map(String::from).collect();
    (String::from_utf8_lossy(&output.stdout).into_owned(), console)
}

#[tokio::test]
async fn report_html_renders_in_chromium_with_the_failed_mailbox_first_and_its_folders() {
    let browser = chromium();
    let report = batch_report().await;
    let dir = target_dir().join("report-in-a-browser");
    report.write_dir(&dir).expect("write reports");
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).expect("report.html");

    let (dom, console) = run_chromium(&browser, &page, &["--dump-dom"]);
    assert!(console.is_empty(), "the page logged to the console (a script error or a CSP refusal): {console:#?}");
    // The script ran to its end: it marks the page and counts what it shows.
    assert!(dom.contains("data-ready=\"1\""), "the page's script did not finish:\n{dom}");
    assert!(dom.contains("Showing 3 of 3 mailboxes"), "{dom}");
    // The hostile folder name is text; its script never ran.
    assert!(dom.contains("<title>mailhaul report: spring-4f1c2a9b0e</title>"), "title changed");
    assert!(dom.contains("Q1 &lt;script&gt;document.title='owned'&lt;/script&gt;"), "{dom}");

    // After the script sorted the list: carol (failed) first, then bob (warnings), then alice.
    let mailboxes: Vec<&str> = dom.split("<details class=\"mailbox ").skip(1).collect();
    assert_eq!(mailboxes.len(), 3, "{dom}");
    let order: Vec<&str> = mailboxes
        .iter()
        .map(|m| m.split("data-mailbox=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or(""))
        .collect();
    assert_eq!(order, ["carol@example.org", "bob@example.org", "alice@example.org"]);
    let carol = mailboxes[0];
    assert!(carol.starts_with("failed\""), "{carol}");
    // It expands (<details>) to its folders, its error and what to do.
    let (summary, body) = carol.split_once("</summary>").expect("summary");
    assert!(summary.contains("connection to imap.old.example lost 5 times"), "{summary}");
    assert!(body.contains("<table class=\"folders\">"), "{body}");
    assert!(
        body.contains("<td class=\"name\">INBOX</td>") && body.contains("<td class=\"name\">Q1 stuff</td>"),
        "{body}"
    );
    assert!(body.contains("check that the source server is up and reachable"), "{body}");
    assert!(mailboxes[1].contains("NO [LIMIT] message too large"), "bob's refused message is listed");

    // Screenshots, with carol's mailbox opened, on a laptop and on a phone.
    let opened = dir.join("report-opened.html");
    std::fs::write(
        &opened,
        html.replacen("<details class=\"mailbox failed\"", "<details open class=\"mailbox failed\"", 1),
    )
    .expect("opened copy");
    for (name, size) in [("report-screenshot.png", "1280,1400"), ("report-screenshot-phone.png", "390,1400")] {
        let shot = target_dir().join(name);
        let _ = std::fs::remove_file(&shot);
        let (_, console) = run_chromium(
            &browser,
            &opened,
            &[&format!("--screenshot={}", shot.display()), &format!("--window-size={size}")],
        );
        assert!(console.is_empty(), "{console:#?}");
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: {} bytes", png.len());
    }
}
