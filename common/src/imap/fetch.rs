//! UID FETCH read one response at a time, with the tagged status checked.
//!
//! async-imap 0.12's `uid_fetch` ends its stream at the tagged reply without looking at it,
//! so a server that answers `NO Some messages could not be FETCHed` (Gmail) leaves UIDs
//! silently without a body, and it buffers every response whole. Here each FETCH response is
//! handed to the caller as it arrives (only the parts asked for are kept), unsolicited
//! responses (flag updates another client caused) are told apart by what they carry, the
//! tagged `NO`/`BAD` comes back with the server's words, and `BYE` ends the exchange as a
//! broken connection. (The caller's deadline is enforced around the whole copy.)

use std::time::Duration;

use async_imap::imap_proto::{AttributeValue, Response, Status};
use tokio::io::AsyncWriteExt;

use super::conn::Session;

/// Longest the server may stay silent before the connection counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(180);

/// One FETCH response, reduced to the items the engine uses.
#[derive(Debug, Default)]
pub struct Fetched {
    pub uid: u32,
    /// Flags as the server spells them (`\Seen`, `$Label1`).
    pub flags: Vec<String>,
    /// IMAP date-time as sent, e.g. `02-Jan-2006 15:04:05 +0000`.
    pub internal_date: Option<String>,
    pub size: Option<u32>,
    /// `BODY[]`: the whole message.
    pub body: Option<Vec<u8>>,
    /// `BODY[HEADER.FIELDS (...)]`.
    pub header: Option<Vec<u8>>,
}

/// How the command ended when the connection survived.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    Ok,
    /// `NO` or `BAD` with the server's words: some or all UIDs were not delivered.
    Refused(String),
}

/// The exchange could not finish: connection closed, `BYE`, or a silent server.
#[derive(Debug)]
pub struct Broken {
    pub detail: String,
    /// The server said BYE (it chose to close, e.g. on a message it cannot read).
    pub bye: bool,
}

/// Send `TAG UID FETCH uid_set items` and hand each FETCH response to `each`.
pub async fn uid_fetch(
    session: &mut Session,
    tag_seq: &mut u64,
    uid_set: &str,
    items: &str,
    mut each: impl FnMut(Fetched),
) -> Result<Completion, Broken> {
    *tag_seq += 1;
    let tag = format!("MF{}", *tag_seq);
    let command = format!("{tag} UID FETCH {uid_set} {items}\r\n");
    let stream = session.get_mut();
    bounded(async {
        stream.write_all(command.as_bytes()).await?;
        stream.flush().await
    })
    .await
    .map_err(|e| e.into_broken("sending FETCH"))?;
    loop {
        let response = match bounded(session.read_response()).await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(Broken { detail: "connection closed".into(), bye: false }),
            Err(e) => return Err(e.into_broken("reading FETCH")),
        };
        match response.parsed() {
            Response::Fetch(_, attributes) => {
                if let Some(fetched) = reduce(attributes) {
                    each(fetched);
                }
            }
            Response::Data { status: Status::Bye, outcome } => {
                let words = outcome.information.as_deref().unwrap_or("").to_string();
                return Err(Broken { detail: format!("BYE {words}").trim().to_string(), bye: true });
            }
            Response::Done { tag: done, status, outcome } if done.0 == tag => {
                return Ok(match status {
                    Status::Ok => Completion::Ok,
                    other => {
                        let words = outcome.information.as_deref().unwrap_or("").trim();
                        Completion::Refused(format!("{other:?} {words}").trim().to_string())
                    }
                });
            }
            _ => {}
        }
    }
}

/// Keep the items of one FETCH response; `None` when it carries no UID (it cannot be ours).
fn reduce(attributes: &[AttributeValue<'_>]) -> Option<Fetched> {
    let mut fetched = Fetched::default();
    let mut uid = None;
    for attribute in attributes {
        match attribute {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Flags(flags) => fetched.flags = flags.iter().map(|f| f.to_string()).collect(),
            AttributeValue::InternalDate(date) => fetched.internal_date = Some(date.to_string()),
            AttributeValue::Rfc822Size(size) => fetched.size = Some(*size),
            AttributeValue::BodySection { section: None, data: Some(data), .. } => fetched.body = Some(data.to_vec()),
            AttributeValue::BodySection { section: Some(_), data, .. } => {
                fetched.header = Some(data.as_deref().unwrap_or_default().to_vec())
            }
            _ => {}
        }
    }
    fetched.uid = uid?;
    Some(fetched)
}

/// Why a bounded wait ended early.
enum WaitError {
    Io(std::io::Error),
    Silent,
}

impl From<std::io::Error> for WaitError {
    fn from(e: std::io::Error) -> Self {
        WaitError::Io(e)
    }
}

impl WaitError {
    fn into_broken(self, doing: &str) -> Broken {
        match self {
            WaitError::Io(e) => Broken { detail: format!("{doing}: {e}"), bye: false },
            WaitError::Silent => {
                Broken { detail: format!("{doing}: no reply for {} s", REPLY_TIMEOUT.as_secs()), bye: false }
            }
        }
    }
}

/// Wait for `io` at most [`REPLY_TIMEOUT`].
async fn bounded<T>(io: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, WaitError> {
    match tokio::time::timeout(REPLY_TIMEOUT, io).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(WaitError::Silent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::imap_proto::{MessageSection, SectionPath};
    use std::borrow::Cow;

    #[test]
    fn keeps_only_responses_with_a_uid() {
        // An unsolicited flag update carries no UID unless the server adds it.
        assert!(reduce(&[AttributeValue::Flags(vec![Cow::Borrowed("\\Seen")])]).is_none());
        let full = reduce(&[
            AttributeValue::Uid(7),
            AttributeValue::Flags(vec![Cow::Borrowed("\\Seen"), Cow::Borrowed("$Work")]),
            AttributeValue::InternalDate(Cow::Borrowed("02-Jan-2006 15:04:05 +0000")),
            AttributeValue::BodySection { section: None, index: None, data: Some(Cow::Borrowed(b"hi")) },
        ])
        .unwrap();
        assert_eq!(full.uid, 7);
        assert_eq!(full.flags, vec!["\\Seen", "$Work"]);
        assert_eq!(full.body.as_deref(), Some(&b"hi"[..]));
        assert!(full.header.is_none());
        let header = reduce(&[
            AttributeValue::Uid(8),
            AttributeValue::BodySection {
                section: Some(SectionPath::Full(MessageSection::Header)),
                index: None,
                data: None,
            },
        ])
        .unwrap();
        assert_eq!((header.body, header.header), (None, Some(Vec::new())));
    }
}
