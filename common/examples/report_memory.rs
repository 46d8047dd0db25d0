//! What the batch report costs in memory, for N mailboxes of F folders each (one mailbox in
//! fifty failed, one in a hundred with a refused message). `whole`: the report built in
//! memory, then report.json and report.html each in memory (how finalize wrote them before),
//! then all four to disk by `write_dir` (the local runner); `streamed`:
//! mailbox by mailbox through `ReportWriter`, the bytes taken and dropped as a part would be
//! sent, report.html's entries spooled to a temporary directory (how finalize writes it now).
//! Prints file sizes and the process's peak resident memory (Linux).
//!
//! cargo run --release -p mailhaul-common --example report_memory -- [MAILBOXES] [FOLDERS] [whole|streamed]

use chrono::Utc;
use mailhaul_common::model::{FolderCounts, MailboxStatus, SkipReason, SkippedMessage, Verdict};
use std::io::Read;

use mailhaul_common::report::writer::ReportWriter;
use mailhaul_common::report::{BatchReport, BatchTotals, FolderReport, MailboxReport};

const FOLDER_NAMES: [&str; 8] = ["INBOX", "Sent", "Drafts", "Archive", "Projects", "Clients", "Receipts", "Lists"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let (mailboxes, folders) = (number(0, 50_000), number(1, 20));
    let streamed = args.get(2).is_some_and(|mode| mode == "streamed");
    println!("report of {mailboxes} mailboxes x {folders} folders, {}", if streamed { "streamed" } else { "whole" });
    println!("{:<28} {:>10} {:>14}", "step", "file", "peak memory");
    let peak = |step: &str, file: Option<usize>| {
        let file = file.map_or(String::new(), |bytes| format!("{:.1} MB", bytes as f64 / 1e6));
        println!("{step:<28} {file:>10} {:>11} MB", peak_kb() / 1024);
    };
    peak("start", None);

    if streamed {
        let spool = tempfile::tempdir().expect("temporary directory");
        let mut writer =
            ReportWriter::new("fifty-thousand", None, Utc::now(), headers(), Some(spool.path())).expect("writer");
        writer.expect_mailboxes(mailboxes);
        let mut sent = [0usize; 3];
        let mut send = |ready: mailhaul_common::report::writer::ReadyBytes| {
            for (total, bytes) in sent.iter_mut().zip([ready.csv, ready.json, ready.failed]) {
                *total += bytes.len();
            }
        };
        for row in 1..=mailboxes {
            writer.add(&synthetic_mailbox(row, folders)).expect("add");
            if writer.ready_len() >= 8 << 20 {
                send(writer.take_ready());
            }
        }
        let mut finished = writer.finish(None).expect("finish");
        send(finished.rest);
        let mut html = 0;
        let mut piece = vec![0; 8 << 20];
        loop {
            let n = finished.html.read(&mut piece).expect("read");
            if n == 0 {
                break;
            }
            html += n;
        }
        for (name, bytes) in
            [("report.csv", sent[0]), ("report.json", sent[1]), ("report.html", html), ("failed.csv", sent[2])]
        {
            peak(name, Some(bytes));
        }
        return;
    }
    let report = BatchReport {
        batch: "fifty-thousand".into(),
        delta_of: None,
        generated_at: Utc::now(),
        headers: headers(),
        mailboxes: (1..=mailboxes).map(|row| synthetic_mailbox(row, folders)).collect(),
        totals: BatchTotals { mailboxes, ..Default::default() },
    };
    peak("report built", None);
    let json = report.to_json();
    peak("report.json", Some(json.len()));
    drop(json);
    let html = report.to_html();
    peak("report.html", Some(html.len()));
    drop(html);
    // The local runner's way: all four files, written to disk as they grow.
    let dir = tempfile::tempdir().expect("temporary directory");
    let written = report.write_dir(dir.path()).expect("write_dir");
    let bytes = written.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len() as usize)).sum();
    peak("write_dir (all four)", Some(bytes));
}

fn headers() -> Vec<String> {
    ["SourceUser", "SourcePassword", "DestinationUser"].map(String::from).to_vec()
}

fn synthetic_mailbox(row: usize, folders: usize) -> MailboxReport {
    let failed = row.is_multiple_of(50);
    let folder_reports: Vec<FolderReport> = (0..folders)
        .map(|i| {
            let name = match FOLDER_NAMES.get(i) {
                Some(name) => name.to_string(),
                None => format!("Archive/{}", 2000 + i),
            };
            let counts = FolderCounts { copied: 800 + i as u64, bytes: 40_000_000, ..Default::default() };
            FolderReport {
                source: name.clone(),
                destination: name,
                verify: Some(Verdict {
                    ok: true,
                    source_messages: counts.copied,
                    destination_messages: counts.copied,
                    not_copied: 0,
                    detail: String::new(),
                }),
                counts,
                complete: true,
                not_copied: None,
                renamed: None,
            }
        })
        .collect();
    let mut totals = FolderCounts::default();
    folder_reports.iter().for_each(|f| totals.add(&f.counts));
    let skipped = if row.is_multiple_of(100) {
        vec![SkippedMessage {
            folder: "INBOX".into(),
            uid: 4711,
            size: 180_000_000,
            message_id: Some(format!("<{row}.big@example.com>")),
            reason: SkipReason::Refused,
            detail: "NO [LIMIT] Message too large".into(),
        }]
    } else {
        Vec::new()
    };
    MailboxReport {
        row,
        mailbox: format!("user{row}@example.com"),
        source_user: format!("user{row}@old.example.com"),
        status: if failed { MailboxStatus::Failed } else { MailboxStatus::Done },
        folders: folder_reports,
        totals,
        seconds: 312.5,
        passes: 3,
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
        verify: "ok".into(),
        error: failed.then(|| "LOGIN failed: AUTHENTICATIONFAILED Authentication failed.".into()),
        hint: failed.then(|| "Check the source password in the CSV, then retry the failed rows.".into()),
        skipped,
        cells: vec![format!("user{row}@old.example.com"), String::new(), format!("user{row}@example.com")],
    }
}

/// The process's peak resident set (VmHWM), in KB; 0 where /proc is not there.
fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
