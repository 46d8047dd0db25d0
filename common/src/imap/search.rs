//! Every UID of the selected folder, read as windows of `UID SEARCH UID a:b` sent at once.
//!
//! One `UID SEARCH ALL` answers with a single line holding every UID. async-imap 0.12 grows
//! its read buffer 4 KiB at a time and parses the whole buffer again after each read, so the
//! cost of one line grows with its square: 0.1 s of CPU for a 100,000-message folder, seconds
//! at 500,000. Lines of a few thousand UIDs each keep it linear, and pipelined the windows
//! cost one round trip, as one SEARCH did.

use std::collections::HashSet;

use async_imap::imap_proto::{MailboxDatum, Response, Status};
use tokio::io::AsyncWriteExt;

use super::conn::Session;

/// Never more windows than this, whatever the UIDs' spread.
const MAX_WINDOWS: u32 = 32;
/// Never fewer UIDs per window than this (a small folder is one window).
const MIN_WINDOW: u32 = 4096;

/// The UID windows covering `1..=highest`, the last one open-ended (`a:*`), so a UID above
/// `highest` (the caller's estimate) is still found.
pub fn windows(highest: u32) -> Vec<String> {
    let highest = u64::from(highest);
    let size = (highest / u64::from(MAX_WINDOWS) + 1).max(u64::from(MIN_WINDOW));
    let mut out = Vec::new();
    let mut start = 1u64;
    while start + size <= highest {
        out.push(format!("{start}:{}", start + size - 1));
        start += size;
    }
    out.push(format!("{start}:*"));
    out
}

/// Every UID of the selected folder. `highest`: the highest UID the caller expects (its
/// UIDNEXT − 1 or a ledger's top); it sets the windows, not the result. An error carries
/// what went wrong, the server's words included.
pub async fn all_uids(session: &mut Session, tag_seq: &mut u64, highest: u32) -> Result<HashSet<u32>, String> {
    uids_in_windows(session, tag_seq, &windows(highest)).await
}

/// The UIDs of the selected folder in `windows` (UID sets), asked for all at once.
pub async fn uids_in_windows(
    session: &mut Session,
    tag_seq: &mut u64,
    windows: &[String],
) -> Result<HashSet<u32>, String> {
    let mut pending = HashSet::new();
    let mut commands = String::new();
    for window in windows {
        *tag_seq += 1;
        let tag = format!("MS{}", *tag_seq);
        commands.push_str(&format!("{tag} UID SEARCH UID {window}\r\n"));
        pending.insert(tag);
    }
    let stream = session.get_mut();
    stream.write_all(commands.as_bytes()).await.map_err(|e| format!("sending SEARCH: {e}"))?;
    stream.flush().await.map_err(|e| format!("sending SEARCH: {e}"))?;
    let mut uids = HashSet::new();
    // A refused window is reported after every reply was read: the session stays in step.
    let mut refused = None;
    while !pending.is_empty() {
        let response = match session.read_response().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err("reading SEARCH: connection closed".into()),
            Err(e) => return Err(format!("reading SEARCH: {e}")),
        };
        match response.parsed() {
            Response::MailboxData(MailboxDatum::Search(found)) => uids.extend(found.iter().copied()),
            Response::Data { status: Status::Bye, outcome } => {
                return Err(format!("BYE {}", outcome.information.as_deref().unwrap_or("")).trim().to_string());
            }
            // Only our own tags end a SEARCH; the first refusal is the one told.
            Response::Done { tag, status, outcome }
                if pending.remove::<str>(&tag.0) && *status != Status::Ok && refused.is_none() =>
            {
                let words = outcome.information.as_deref().unwrap_or("").trim();
                refused = Some(format!("SEARCH refused: {status:?} {words}").trim().to_string());
            }
            _ => {}
        }
    }
    match refused {
        Some(error) => Err(error),
        None => Ok(uids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_uid_in_at_most_33_lines() {
        assert_eq!(windows(0), ["1:*"]);
        assert_eq!(windows(4095), ["1:*"]);
        assert_eq!(windows(5000), ["1:4096", "4097:*"]);
        let big = windows(100_000);
        assert_eq!(big.len(), 25);
        assert_eq!(big[0], "1:4096");
        assert_eq!(big.last().map(String::as_str), Some("98305:*"));
        let huge = windows(10_000_000);
        assert!(huge.len() <= 33, "{}", huge.len());
        // Contiguous: each window starts where the previous one ended.
        for pair in huge.windows(2) {
            let end: u32 = pair[0].split(':').nth(1).and_then(|e| e.parse().ok()).expect("closed window");
            let start: u32 = pair[1].split(':').next().and_then(|s| s.parse().ok()).expect("start");
            assert_eq!(start, end + 1);
        }
        assert_eq!(windows(u32::MAX).last().map(|w| w.ends_with(":*")), Some(true));
    }
}
