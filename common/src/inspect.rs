//! A read-only look at a server for `validate --check`: login, capabilities, folders with
//! message counts and sizes. Never changes anything.

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{CopyError, Side};
use crate::imap::conn::classify;
use crate::imap::{connect, Caps};
use crate::model::Endpoint;

/// One folder's size.
#[derive(Clone, Debug, Serialize)]
pub struct FolderSize {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

/// What a server holds for one login.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub capabilities: Vec<String>,
    /// What mailhaul does differently on this server, one sentence each.
    pub quirks: Vec<String>,
    pub folders: Vec<FolderSize>,
    pub total_messages: u64,
    pub total_bytes: u64,
}

/// The capabilities that change how mailhaul copies, as `validate --check` lists them.
pub const CAPABILITIES_THAT_MATTER: [&str; 10] = [
    "LITERAL+",
    "LITERAL-",
    "MULTIAPPEND",
    "UIDPLUS",
    "CONDSTORE",
    "SPECIAL-USE",
    "NAMESPACE",
    "APPENDLIMIT",
    "COMPRESS",
    "X-GM-EXT-1",
];

/// Of [`CAPABILITIES_THAT_MATTER`], those the server announces (`APPENDLIMIT=35651584`,
/// `COMPRESS=DEFLATE` with their values) and those it does not.
pub fn capabilities_that_matter(all: &[String]) -> (Vec<String>, Vec<&'static str>) {
    let mut offered = Vec::new();
    let mut missing = Vec::new();
    for want in CAPABILITIES_THAT_MATTER {
        let found: Vec<String> = all
            .iter()
            .filter(|c| c.eq_ignore_ascii_case(want) || c.to_ascii_uppercase().starts_with(&format!("{want}=")))
            .cloned()
            .collect();
        if found.is_empty() {
            // Gmail's extension is worth naming where it is, not as missing everywhere else.
            if want != "X-GM-EXT-1" {
                missing.push(want);
            }
        } else {
            offered.extend(found);
        }
    }
    (offered, missing)
}

/// A Gmail account whose All Mail is hidden from IMAP: its mail without a label is out of reach.
pub const ALL_MAIL_HIDDEN: &str = "Gmail's All Mail is not shown over IMAP: mail archived without a label cannot be \
     copied. Tick \"Show in IMAP\" for All Mail in Gmail's settings (Labels) before migrating";

/// One sentence per server behaviour mailhaul adapts to.
pub fn quirks(caps: &Caps, examine_without_uidnext: bool) -> Vec<String> {
    let mut out = Vec::new();
    if caps.gmail() {
        out.push(
            "Gmail (X-GM-EXT-1): labels are folders, a message is copied into each of its labels \
             (gmail_labels = \"first\": into the first only), mail without a label from All Mail into \
             Archive; Important and Starred are not copied"
                .into(),
        );
    }
    if let Some(ns) = &caps.namespaces {
        if let Some(personal) = ns.personal_prefix().filter(|p| !p.prefix.is_empty()) {
            out.push(format!(
                "personal folders live under {:?} (NAMESPACE): names are mapped to and from it",
                personal.prefix
            ));
        }
        let foreign: Vec<String> = ns.other_users.iter().chain(&ns.shared).map(|n| format!("{:?}", n.prefix)).collect();
        if !foreign.is_empty() {
            out.push(format!(
                "other users' and shared folders ({}) are not copied from this account unless [copy] shared_folders is set",
                foreign.join(", ")
            ));
        }
    } else {
        out.push("no NAMESPACE: the personal folder prefix is guessed from the folder list".into());
    }
    if !caps.literal_plus && !caps.literal_minus {
        out.push("no LITERAL+/LITERAL-: as a destination, each message APPEND waits for the server's go-ahead".into());
    }
    if !caps.multiappend {
        out.push("no MULTIAPPEND: as a destination, one APPEND per message".into());
    }
    if !caps.uidplus {
        out.push("no UIDPLUS: copies are found again by Message-ID instead of APPENDUID".into());
    }
    if !caps.special_use {
        out.push("no SPECIAL-USE: Sent, Trash, Junk, Drafts and Archive are recognised by name".into());
    }
    if !caps.condstore {
        out.push("no CONDSTORE: with sync_flags every delta pass reads all flags of a changed folder".into());
    }
    if !caps.has("UNSELECT") {
        out.push("no UNSELECT: STATUS on the open folder is preceded by NOOP (never CLOSE, which expunges)".into());
    }
    if examine_without_uidnext {
        out.push("EXAMINE reports no UIDNEXT (Courier): delta passes ask STATUS (UIDNEXT) instead".into());
    }
    out
}

/// Log in and measure every selectable folder (EXAMINE + FETCH RFC822.SIZE).
pub async fn inspect(endpoint: &Endpoint, side: Side, user_root: Option<&str>) -> Result<Inspection, CopyError> {
    let label = format!("{}:{}", endpoint.server.host, endpoint.server.port);
    let (mut session, caps) = connect(endpoint, side).await?;
    let err = |e| classify(e, side, &label);
    let names: Vec<_> =
        session.list(Some(user_root.unwrap_or("")), Some("*")).await.map_err(err)?.try_collect().await.map_err(err)?;
    let selectable: Vec<String> = names
        .iter()
        .filter(|n| !n.attributes().iter().any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect)))
        .map(|n| n.name().to_string())
        .collect();
    let all_mail_listed =
        names.iter().any(|n| n.attributes().iter().any(|a| matches!(a, async_imap::types::NameAttribute::All)));
    let mut folders = Vec::new();
    let mut examine_without_uidnext = false;
    for name in selectable {
        let mailbox = session.examine(&name).await.map_err(err)?;
        examine_without_uidnext |= mailbox.uid_next.is_none();
        let mut bytes = 0u64;
        if mailbox.exists > 0 {
            let fetches: Vec<_> =
                session.fetch("1:*", "(RFC822.SIZE)").await.map_err(err)?.try_collect().await.map_err(err)?;
            bytes = fetches.iter().map(|f| u64::from(f.size.unwrap_or(0))).sum();
        }
        folders.push(FolderSize { name: crate::mutf7::decode(&name), messages: u64::from(mailbox.exists), bytes });
    }
    let _ = session.logout().await;
    let mut quirks = quirks(&caps, examine_without_uidnext);
    if caps.gmail() && !all_mail_listed {
        quirks.push(ALL_MAIL_HIDDEN.into());
    }
    Ok(Inspection {
        quirks,
        capabilities: caps.all,
        total_messages: folders.iter().map(|f| f.messages).sum(),
        total_bytes: folders.iter().map(|f| f.bytes).sum(),
        folders,
    })
}
