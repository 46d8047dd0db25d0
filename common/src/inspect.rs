//! A read-only look at a server for `validate --check`: login, capabilities, folders with
//! message counts and sizes. Never changes anything.

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{CopyError, Side};
use crate::imap::conn::classify;
use crate::imap::connect;
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
    pub folders: Vec<FolderSize>,
    pub total_messages: u64,
    pub total_bytes: u64,
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
    let mut folders = Vec::new();
    for name in selectable {
        let mailbox = session.examine(&name).await.map_err(err)?;
        let mut bytes = 0u64;
        if mailbox.exists > 0 {
            let fetches: Vec<_> =
                session.fetch("1:*", "(RFC822.SIZE)").await.map_err(err)?.try_collect().await.map_err(err)?;
            bytes = fetches.iter().map(|f| u64::from(f.size.unwrap_or(0))).sum();
        }
        folders.push(FolderSize { name: crate::mutf7::decode(&name), messages: u64::from(mailbox.exists), bytes });
    }
    let _ = session.logout().await;
    Ok(Inspection {
        capabilities: caps.all,
        total_messages: folders.iter().map(|f| f.messages).sum(),
        total_bytes: folders.iter().map(|f| f.bytes).sum(),
        folders,
    })
}
