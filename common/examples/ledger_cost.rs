//! What the per-message ledger costs in a SQLite state file: records a folder of N messages
//! the way the engine does (one call per batch of 200, destination UIDs from APPENDUID, one
//! message in a hundred refused with the server's words) and prints the bytes per message.
//!
//! cargo run --release -p mailhaul-common --example ledger_cost -- [MESSAGES]

use std::time::Instant;

use mailhaul_common::ledger::{runs, FolderLedger, Outcome, Run};
use mailhaul_common::ports::CheckpointStore;
use mailhaul_common::sqlite::SqliteStore;

const BATCH: u32 = 200;

#[tokio::main]
async fn main() {
    let messages: u32 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.sqlite");
    let store = SqliteStore::open(&path).expect("state file");
    let empty = file_size(&path);

    let started = Instant::now();
    let mut next_destination = 1;
    for first in (1..=messages).step_by(BATCH as usize) {
        let last = (first + BATCH - 1).min(messages);
        let entries = (first..=last)
            .map(|uid| {
                if uid % 100 == 50 {
                    Run::one(uid, None, Outcome::Refused, Some("NO [LIMIT] Message too large".into()))
                } else {
                    next_destination += 1;
                    Run::one(uid, Some((1_700_000_000, next_destination)), Outcome::Copied, None)
                }
            })
            .collect();
        store.record_ledger("user@example.com", "INBOX", 1_650_000_000, &runs(entries)).await.expect("record");
    }
    let recorded = started.elapsed();
    drop(store); // the last connection closing folds the write-ahead log into the file
    let bytes = file_size(&path).saturating_sub(empty);
    let store = SqliteStore::open(&path).expect("reopen");
    let started = Instant::now();
    let ledger =
        FolderLedger::from_recorded(store.load_ledger("user@example.com", "INBOX", 1_650_000_000).await.expect("load"));
    let loaded = started.elapsed();
    println!("messages            {messages}");
    println!("ledger runs         {}", ledger.runs().count());
    println!("state file growth   {bytes} bytes");
    println!("bytes per message   {:.2}", bytes as f64 / f64::from(messages));
    println!("500,000 messages    ~{:.1} MB", bytes as f64 / f64::from(messages) * 500_000.0 / 1e6);
    println!("record (per batch)  {:.2} ms", recorded.as_secs_f64() * 1000.0 / f64::from(messages.div_ceil(BATCH)));
    println!("load whole folder   {:.1} ms", loaded.as_secs_f64() * 1000.0);
}

/// The database and its write-ahead log together.
fn file_size(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("sqlite-wal");
    [path.to_path_buf(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}
