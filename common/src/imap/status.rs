//! How many messages each of many folders holds (and its UIDNEXT), in one round trip: every `STATUS` sent at
//! once. Surveying a mailbox of 200 folders at 50 ms RTT takes 50 ms instead of 10 s.

use std::collections::HashMap;

use async_imap::imap_proto::{MailboxDatum, Response, StatusAttribute};

use super::conn::Session;
use super::create::pipelined;

/// What STATUS says of one folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolderStatus {
    pub messages: u32,
    /// 0 when the server did not say.
    pub uid_next: u32,
}

/// `STATUS name (MESSAGES UIDNEXT)` for each of `names` (raw), pipelined: the answer for
/// each, in order, `None` for a folder the server refused or did not count. `Err` when the
/// connection broke. Nothing may be selected on `session` (Courier answers STATUS on the
/// selected folder from a stale view).
pub async fn message_counts(
    session: &mut Session,
    tag_seq: &mut u64,
    names: &[String],
) -> Result<Vec<Option<FolderStatus>>, String> {
    let mut counts: HashMap<String, (Option<u32>, u32)> = HashMap::new();
    let replies = pipelined(session, tag_seq, "STATUS", names, " (MESSAGES UIDNEXT)", &mut |response| {
        if let Response::MailboxData(MailboxDatum::Status { mailbox, status }) = response {
            let entry = counts.entry(mailbox.to_string()).or_default();
            for attribute in status {
                match attribute {
                    StatusAttribute::Messages(n) => entry.0 = Some(*n),
                    StatusAttribute::UidNext(n) => entry.1 = *n,
                    _ => {}
                }
            }
        }
    })
    .await?;
    Ok(names
        .iter()
        .zip(replies)
        .map(|(name, reply)| {
            reply.ok().and_then(|()| counts.get(name)).and_then(|(messages, uid_next)| {
                messages.map(|messages| FolderStatus { messages, uid_next: *uid_next })
            })
        })
        .collect())
}
