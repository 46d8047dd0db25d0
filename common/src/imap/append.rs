//! APPEND in flight: many messages per round trip.
//!
//! async-imap 0.12's `append()` sends a synchronizing literal (two round trips per message)
//! and drops the APPENDUID the server answers with. We write APPEND commands ourselves on
//! the session's stream (`get_mut`) and read the tagged replies with `read_response`, so a
//! whole batch costs about one round trip where the server has LITERAL+ (RFC 7888), and one
//! per message otherwise (the next command goes out as soon as the server asks for the literal).

use std::collections::HashMap;
use std::time::Duration;

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{Response, ResponseCode, Status};
use tokio::io::AsyncWriteExt;

use super::conn::Session;

/// Longest the server may stay silent while we wait for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(180);
/// LITERAL- (RFC 7888) allows non-synchronizing literals up to this size.
const LITERAL_MINUS_MAX: usize = 4096;

/// Which literals the destination accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralMode {
    /// LITERAL+: every literal non-synchronizing.
    NonSync,
    /// LITERAL-: non-synchronizing up to 4096 bytes.
    NonSyncSmall,
    /// Plain IMAP: the server must ask for each literal.
    Sync,
}

impl LiteralMode {
    /// Whether a literal of `len` bytes may be sent without waiting for the server.
    fn non_sync(self, len: usize) -> bool {
        match self {
            LiteralMode::NonSync => true,
            LiteralMode::NonSyncSmall => len <= LITERAL_MINUS_MAX,
            LiteralMode::Sync => false,
        }
    }
}

/// ` (flags) "date" {size+}`: what precedes one message's literal in APPEND.
fn message_head(message: &AppendMessage<'_>, non_sync: bool) -> String {
    let mut head = String::new();
    if !message.flags.is_empty() {
        head.push_str(&format!(" ({})", message.flags.join(" ")));
    }
    if let Some(date) = &message.internal_date {
        head.push_str(&format!(" \"{date}\""));
    }
    head.push_str(&format!(" {{{}{}}}", message.body.len(), if non_sync { "+" } else { "" }));
    head
}

/// One message to append.
#[derive(Debug)]
pub struct AppendMessage<'a> {
    /// Flag list without parentheses, already filtered for the destination.
    pub flags: Vec<String>,
    /// IMAP date-time, e.g. `02-Jan-2006 15:04:05 +0000`, unquoted.
    pub internal_date: Option<String>,
    pub body: &'a [u8],
}

/// The server's verdict on one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the UIDs (in order) when the server sent APPENDUID, else empty.
    Stored(Vec<u32>),
    /// `NO`/`BAD` with the server's text.
    Refused(String),
}

/// The connection failed mid-batch: results known so far, indexed like the input.
#[derive(Debug)]
pub struct AppendBroken {
    pub known: Vec<Option<Appended>>,
    pub detail: String,
}

/// Quote a mailbox name as an IMAP quoted string.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Append `messages` to `mailbox` (raw, modified UTF-7 name), pipelined as far as `mode`
/// allows. Each tag is ours (`MH<n>`), distinct from async-imap's, so replies match up.
pub async fn append_batch(
    session: &mut Session,
    mailbox: &str,
    messages: &[AppendMessage<'_>],
    mode: LiteralMode,
    tag_seq: &mut u64,
) -> Result<Vec<Appended>, AppendBroken> {
    let mut pending: HashMap<String, usize> = HashMap::new();
    let mut known: Vec<Option<Appended>> = vec![None; messages.len()];
    let quoted = quote(mailbox);

    for (index, message) in messages.iter().enumerate() {
        *tag_seq += 1;
        let tag = format!("MH{}", *tag_seq);
        let non_sync = mode.non_sync(message.body.len());
        let command = format!("{tag} APPEND {quoted}{}\r\n", message_head(message, non_sync));
        pending.insert(tag.clone(), index);

        let stream = session.get_mut();
        write(stream, command.as_bytes(), &known).await?;
        if !non_sync {
            flush(stream, &known).await?;
            // The server either asks for the literal or refuses the command outright.
            let asked = read_until(session, &mut pending, &mut known, Some(&tag)).await?;
            if !asked {
                continue;
            }
        }
        let stream = session.get_mut();
        write(stream, message.body, &known).await?;
        write(stream, b"\r\n", &known).await?;
    }
    flush(session.get_mut(), &known).await?;
    while !pending.is_empty() {
        read_until(session, &mut pending, &mut known, None).await?;
    }
    Ok(known.into_iter().map(|k| k.unwrap_or_else(|| Appended::Refused("no reply".into()))).collect())
}

/// How a MULTIAPPEND ended when the connection survived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultiAppended {
    /// All stored; the UIDs in order when the server sent APPENDUID.
    Stored(Option<Vec<u32>>),
    /// None stored (MULTIAPPEND is all or nothing): the server's words.
    Refused(String),
}

/// Append all `messages` to `mailbox` in one MULTIAPPEND command (RFC 3502): one transaction
/// on the server instead of one per message, which is what makes a big maildir folder fast.
/// All or nothing: when refused, the caller retries message by message to find the culprit.
pub async fn append_multi(
    session: &mut Session,
    mailbox: &str,
    messages: &[AppendMessage<'_>],
    mode: LiteralMode,
    tag_seq: &mut u64,
) -> Result<MultiAppended, AppendBroken> {
    *tag_seq += 1;
    let tag = format!("MH{}", *tag_seq);
    let none: Vec<Option<Appended>> = vec![None; messages.len()];
    let mut pending = HashMap::from([(tag.clone(), 0)]);
    let mut outcome = vec![None];
    let mut line = format!("{tag} APPEND {}", quote(mailbox));
    for message in messages {
        let non_sync = mode.non_sync(message.body.len());
        line.push_str(&message_head(message, non_sync));
        line.push_str("\r\n");
        let stream = session.get_mut();
        write(stream, line.as_bytes(), &none).await?;
        line.clear();
        if !non_sync {
            flush(stream, &none).await?;
            if !read_until(session, &mut pending, &mut outcome, Some(&tag))
                .await
                .map_err(|b| AppendBroken { known: none.clone(), ..b })?
            {
                break; // refused before the end: the tagged reply is in
            }
        }
        write(session.get_mut(), message.body, &none).await?;
    }
    if !pending.is_empty() {
        write(session.get_mut(), b"\r\n", &none).await?;
        flush(session.get_mut(), &none).await?;
        read_until(session, &mut pending, &mut outcome, None)
            .await
            .map_err(|b| AppendBroken { known: none.clone(), ..b })?;
    }
    Ok(match outcome.pop().flatten() {
        // A UID set that does not account for every message is no mapping at all.
        Some(Appended::Stored(uids)) => MultiAppended::Stored((uids.len() == messages.len()).then_some(uids)),
        Some(Appended::Refused(words)) => MultiAppended::Refused(words),
        None => MultiAppended::Refused("no reply".into()),
    })
}

async fn write(
    stream: &mut Box<dyn super::conn::Io>,
    bytes: &[u8],
    known: &[Option<Appended>],
) -> Result<(), AppendBroken> {
    // A server that stops reading must not stall us forever (the Lambda would time out).
    match tokio::time::timeout(REPLY_TIMEOUT, stream.write_all(bytes)).await {
        Ok(written) => written.map_err(|e| broken(known, e)),
        Err(_) => Err(broken(known, "the server stopped reading for 180 s")),
    }
}

async fn flush(stream: &mut Box<dyn super::conn::Io>, known: &[Option<Appended>]) -> Result<(), AppendBroken> {
    match tokio::time::timeout(REPLY_TIMEOUT, stream.flush()).await {
        Ok(flushed) => flushed.map_err(|e| broken(known, e)),
        Err(_) => Err(broken(known, "the server stopped reading for 180 s")),
    }
}

fn broken(known: &[Option<Appended>], e: impl std::fmt::Display) -> AppendBroken {
    AppendBroken { known: known.to_vec(), detail: e.to_string() }
}

/// Read replies, settling tagged ones. With `want_continuation`, return `true` at the
/// server's `+` for that tag, `false` if that tag completed instead. Without, return after
/// one tagged reply.
async fn read_until(
    session: &mut Session,
    pending: &mut HashMap<String, usize>,
    known: &mut [Option<Appended>],
    want_continuation: Option<&str>,
) -> Result<bool, AppendBroken> {
    loop {
        let response = match tokio::time::timeout(REPLY_TIMEOUT, session.read_response()).await {
            Err(_) => return Err(broken(known, "no reply from the server for 180 s")),
            Ok(Err(e)) => return Err(broken(known, e)),
            Ok(Ok(None)) => return Err(broken(known, "connection closed")),
            Ok(Ok(Some(response))) => response,
        };
        match response.parsed() {
            Response::Continue { .. } if want_continuation.is_some() => return Ok(true),
            Response::Done { tag, status, outcome } => {
                let (code, information) = (&outcome.code, &outcome.information);
                let Some(index) = pending.remove(&tag.0) else { continue };
                known[index] = Some(match status {
                    Status::Ok => Appended::Stored(match code {
                        Some(ResponseCode::AppendUid(_, uids)) => uids
                            .iter()
                            .flat_map(|m| match m {
                                UidSetMember::Uid(uid) => *uid..=*uid,
                                UidSetMember::UidRange(range) => range.clone(),
                            })
                            .collect(),
                        _ => Vec::new(),
                    }),
                    _ => Appended::Refused(reply_text(code.as_ref(), information.as_deref())),
                });
                match want_continuation {
                    Some(wanted) if wanted == tag.0 => return Ok(false),
                    Some(_) => {}
                    None => return Ok(false),
                }
            }
            _ => {}
        }
    }
}

fn reply_text(code: Option<&ResponseCode<'_>>, information: Option<&str>) -> String {
    let code = match code {
        Some(ResponseCode::Alert) => "[ALERT] ".to_string(),
        Some(ResponseCode::TryCreate) => "[TRYCREATE] ".to_string(),
        Some(ResponseCode::Parse) => "[PARSE] ".to_string(),
        Some(other) => format!("[{other:?}] "),
        None => String::new(),
    };
    format!("{code}{}", information.unwrap_or("")).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_mailbox_names() {
        assert_eq!(quote("Sent Items"), "\"Sent Items\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
