//! A small IMAP client for tests: seed folders with messages, dump a whole account, take a
//! read-only snapshot of it, log in over plain TCP or TLS. Folder names are UTF-8 and use the
//! server's own hierarchy separator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use async_imap::types::{Flag, NameAttribute};
use futures::TryStreamExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::dovecot::Dovecot;
use crate::servers::ImapServer;

/// A session over plain TCP.
pub type Session = async_imap::Session<TcpStream>;
/// A session over TLS.
pub type TlsSession = async_imap::Session<TlsStream<TcpStream>>;

/// One message to APPEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedMessage {
    /// The RFC 5322 message, CRLF line endings.
    pub raw: Vec<u8>,
    /// Flags and keywords, e.g. `\Seen`, `$Label1`.
    pub flags: Vec<String>,
    /// INTERNALDATE in IMAP form, `02-Jan-2006 15:04:05 +0000`, unquoted; `None` means now.
    pub internal_date: Option<String>,
}

impl SeedMessage {
    /// A message with no flags and the server's current time as INTERNALDATE.
    pub fn new(raw: impl Into<Vec<u8>>) -> Self {
        SeedMessage { raw: raw.into(), flags: Vec::new(), internal_date: None }
    }

    /// Set the flags.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Set the INTERNALDATE (`02-Jan-2006 15:04:05 +0000`).
    pub fn date(mut self, internal_date: &str) -> Self {
        self.internal_date = Some(internal_date.to_string());
        self
    }
}

/// One message as the server holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedMessage {
    pub uid: u32,
    /// Flags and keywords, without the session flag `\Recent`.
    pub flags: BTreeSet<String>,
    /// INTERNALDATE as `02-Jan-2006 15:04:05 +0000`. Dovecot (maildir) keeps the instant, not
    /// the offset: it answers in its own time zone (UTC on these machines).
    pub internal_date: String,
    /// The whole message (BODY.PEEK[]).
    pub body: Vec<u8>,
}

/// One folder from LIST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderInfo {
    /// Decoded UTF-8 name, server's separator.
    pub name: String,
    /// Attributes as the server sent them, e.g. `\Sent`, `\HasNoChildren`, `\Noselect`.
    pub attributes: Vec<String>,
}

/// The TLS configuration that trusts only `ca_file` (PEM).
pub fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.context("parsing the CA certificate")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// LOGIN over plain TCP on the server's plain IMAP port.
pub async fn login(server: &impl ImapServer, user: &str, pass: &str) -> Result<Session> {
    login_at(server.imap_port(), user, pass).await
}

/// LOGIN over plain TCP on 127.0.0.1:`port` (a server or a proxy in front of one).
pub async fn login_at(port: u16, user: &str, pass: &str) -> Result<Session> {
    let stream =
        TcpStream::connect(("127.0.0.1", port)).await.with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    finish_login(async_imap::Client::new(stream), user, pass).await
}

/// LOGIN over TLS on `server.imaps_port`, verifying the certificate for `server_name`
/// (`localhost` or `127.0.0.1`) against `server.cert_path`.
pub async fn login_tls(server: &Dovecot, server_name: &str, user: &str, pass: &str) -> Result<TlsSession> {
    login_tls_at(server.imaps_port, &server.cert_path, server_name, user, pass).await
}

/// LOGIN over TLS on 127.0.0.1:`port` (a server or a proxy in front of one), trusting only
/// `ca_file`.
pub async fn login_tls_at(port: u16, ca_file: &Path, server_name: &str, user: &str, pass: &str) -> Result<TlsSession> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca_file)?);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| anyhow!("server name {server_name:?}: {e}"))?;
    let tcp =
        TcpStream::connect(("127.0.0.1", port)).await.with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let tls = connector.connect(name, tcp).await.with_context(|| format!("TLS handshake with 127.0.0.1:{port}"))?;
    finish_login(async_imap::Client::new(tls), user, pass).await
}

async fn finish_login<T>(mut client: async_imap::Client<T>, user: &str, pass: &str) -> Result<async_imap::Session<T>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let greeting = client
        .read_response()
        .await
        .context("reading the greeting")?
        .ok_or_else(|| anyhow!("connection closed before the greeting"))?;
    if !matches!(
        greeting.parsed(),
        async_imap::imap_proto::Response::Data { status: async_imap::imap_proto::Status::Ok, .. }
    ) {
        bail!("unexpected greeting: {:?}", greeting.parsed());
    }
    client.login(user, pass).await.map_err(|(e, _)| anyhow!("LOGIN as {user} failed: {e}"))
}

/// LIST "" "*" with decoded names.
pub async fn folders<T>(session: &mut async_imap::Session<T>) -> Result<Vec<FolderInfo>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let names: Vec<_> = session.list(Some(""), Some("*")).await?.try_collect().await.context("LIST")?;
    Ok(names
        .iter()
        .map(|n| FolderInfo {
            name: utf7_imap::decode_utf7_imap(n.name().to_string()),
            attributes: n.attributes().iter().map(attribute_name).collect(),
        })
        .collect())
}

/// Log in and list the account's folders.
pub async fn list(server: &impl ImapServer, user: &str, pass: &str) -> Result<Vec<FolderInfo>> {
    let mut session = login(server, user, pass).await?;
    let out = folders(&mut session).await;
    session.logout().await.ok();
    out
}

/// Create `folder` (and its parents) if missing, then APPEND every message in order.
pub async fn seed(
    server: &impl ImapServer,
    user: &str,
    pass: &str,
    folder: &str,
    messages: &[SeedMessage],
) -> Result<()> {
    let mut session = login(server, user, pass).await?;
    let existing: BTreeSet<String> = folders(&mut session).await?.into_iter().map(|f| f.name).collect();
    let sep = server.separator();
    let mut path = String::new();
    for (i, part) in folder.split(sep).enumerate() {
        if i > 0 {
            path.push(sep);
        }
        path.push_str(part);
        if path.eq_ignore_ascii_case("INBOX") || existing.contains(&path) {
            continue;
        }
        session
            .create(utf7_imap::encode_utf7_imap(path.clone()))
            .await
            .with_context(|| format!("CREATE {path:?} for {user}"))?;
    }
    let encoded = utf7_imap::encode_utf7_imap(folder.to_string());
    for (i, message) in messages.iter().enumerate() {
        let flags = format!("({})", message.flags.join(" "));
        // async-imap pastes the date verbatim: it must be a quoted string on the wire.
        let date = message.internal_date.as_ref().map(|d| format!("\"{d}\""));
        session
            .append(&encoded, Some(&flags), date.as_deref(), &message.raw)
            .await
            .with_context(|| format!("APPEND message {i} to {folder:?} for {user}"))?;
    }
    session.logout().await.ok();
    Ok(())
}

/// Every message of every selectable folder, by decoded folder name, in UID order.
pub async fn dump(server: &impl ImapServer, user: &str, pass: &str) -> Result<BTreeMap<String, Vec<DumpedMessage>>> {
    let mut session = login(server, user, pass).await?;
    let mut out = BTreeMap::new();
    let list: Vec<_> = session.list(Some(""), Some("*")).await?.try_collect().await.context("LIST")?;
    for name in &list {
        if is_unselectable(name.attributes()) {
            continue;
        }
        let decoded = utf7_imap::decode_utf7_imap(name.name().to_string());
        let mut messages = Vec::new();
        for (uid, f) in examine_and_fetch(&mut session, name.name(), "(UID FLAGS INTERNALDATE BODY.PEEK[])").await? {
            messages.push(DumpedMessage {
                uid,
                flags: flags_of(&f),
                internal_date: f
                    .internal_date()
                    .map(|d| d.format("%d-%b-%Y %H:%M:%S %z").to_string())
                    .unwrap_or_default(),
                body: f.body().unwrap_or_default().to_vec(),
            });
        }
        out.insert(decoded, messages);
    }
    session.logout().await.ok();
    Ok(out)
}

/// An account as a read-only observer sees it: what must not change while mailhaul copies
/// from it. Compare two with `assert_eq!`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSnapshot {
    /// Every selectable folder, by decoded name.
    pub folders: BTreeMap<String, FolderSnapshot>,
    /// Folders LIST shows as `\Noselect` or `\NonExistent` (they have no messages or UIDs).
    pub unselectable: BTreeSet<String>,
}

/// One folder of a [`SourceSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderSnapshot {
    pub uid_validity: u32,
    pub uid_next: u32,
    /// `None` when the server does not offer CONDSTORE.
    pub highest_modseq: Option<u64>,
    /// STATUS MESSAGES.
    pub messages: u32,
    /// (UID, flags and keywords sorted, without `\Recent`), in UID order.
    pub flags: Vec<(u32, Vec<String>)>,
}

/// Log in and take a [`snapshot_of`] the account.
pub async fn snapshot(server: &impl ImapServer, user: &str, pass: &str) -> Result<SourceSnapshot> {
    let mut session = login(server, user, pass).await?;
    let out = snapshot_of(&mut session).await;
    session.logout().await.ok();
    out
}

/// Every folder's UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ (after ENABLE CONDSTORE where offered),
/// message count and each message's flags. Read-only: STATUS, EXAMINE and `UID FETCH (FLAGS)`
/// only, never SELECT or STORE, so taking it changes nothing, not even `\Recent`.
pub async fn snapshot_of<T>(session: &mut async_imap::Session<T>) -> Result<SourceSnapshot>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let condstore = session.capabilities().await.context("CAPABILITY")?.has_str("CONDSTORE");
    if condstore {
        session.run_command_and_check_ok("ENABLE CONDSTORE").await.context("ENABLE CONDSTORE")?;
    }
    let items =
        if condstore { "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)" } else { "(MESSAGES UIDNEXT UIDVALIDITY)" };
    let mut out = SourceSnapshot::default();
    let list: Vec<_> = session.list(Some(""), Some("*")).await?.try_collect().await.context("LIST")?;
    for name in &list {
        let decoded = utf7_imap::decode_utf7_imap(name.name().to_string());
        if is_unselectable(name.attributes()) {
            out.unselectable.insert(decoded);
            continue;
        }
        let status = session.status(name.name(), items).await.with_context(|| format!("STATUS {decoded:?}"))?;
        let missing = |what: &str| anyhow!("STATUS {decoded:?} gave no {what}");
        let mut folder = FolderSnapshot {
            uid_validity: status.uid_validity.ok_or_else(|| missing("UIDVALIDITY"))?,
            uid_next: status.uid_next.ok_or_else(|| missing("UIDNEXT"))?,
            highest_modseq: condstore
                .then(|| status.highest_modseq.ok_or_else(|| missing("HIGHESTMODSEQ")))
                .transpose()?,
            messages: status.exists,
            flags: Vec::new(),
        };
        for (uid, f) in examine_and_fetch(session, name.name(), "(UID FLAGS)").await? {
            folder.flags.push((uid, flags_of(&f).into_iter().collect()));
        }
        out.folders.insert(decoded, folder);
    }
    Ok(out)
}

/// EXAMINE a folder (its raw, encoded name) and `UID FETCH 1:* items`: (UID, fetch) in UID
/// order; nothing for an empty folder.
async fn examine_and_fetch<T>(
    session: &mut async_imap::Session<T>,
    raw_name: &str,
    items: &str,
) -> Result<Vec<(u32, async_imap::types::Fetch)>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let decoded = utf7_imap::decode_utf7_imap(raw_name.to_string());
    let mailbox = session.examine(raw_name).await.with_context(|| format!("EXAMINE {decoded:?}"))?;
    if mailbox.exists == 0 {
        return Ok(Vec::new());
    }
    let fetched: Vec<_> = session
        .uid_fetch("1:*", items)
        .await?
        .try_collect()
        .await
        .with_context(|| format!("UID FETCH {items} in {decoded:?}"))?;
    let mut out = Vec::with_capacity(fetched.len());
    for f in fetched {
        out.push((f.uid.ok_or_else(|| anyhow!("FETCH without UID in {decoded:?}"))?, f));
    }
    out.sort_by_key(|(uid, _)| *uid);
    Ok(out)
}

/// A message's flags and keywords, without the session flag `\Recent`.
fn flags_of(fetch: &async_imap::types::Fetch) -> BTreeSet<String> {
    fetch.flags().filter(|flag| *flag != Flag::Recent).map(|flag| flag_name(&flag)).collect()
}

fn is_unselectable(attributes: &[NameAttribute<'_>]) -> bool {
    attributes.iter().any(|a| {
        matches!(a, NameAttribute::NoSelect)
            || matches!(a, NameAttribute::Extension(e) if e.eq_ignore_ascii_case("\\NonExistent"))
    })
}

/// The wire form of a flag (`\Seen`, `$Label1`).
pub fn flag_name(flag: &Flag<'_>) -> String {
    match flag {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(s) => s.to_string(),
    }
}

fn attribute_name(a: &NameAttribute<'_>) -> String {
    match a {
        NameAttribute::NoInferiors => "\\Noinferiors".into(),
        NameAttribute::NoSelect => "\\Noselect".into(),
        NameAttribute::Marked => "\\Marked".into(),
        NameAttribute::Unmarked => "\\Unmarked".into(),
        NameAttribute::All => "\\All".into(),
        NameAttribute::Archive => "\\Archive".into(),
        NameAttribute::Drafts => "\\Drafts".into(),
        NameAttribute::Flagged => "\\Flagged".into(),
        NameAttribute::Junk => "\\Junk".into(),
        NameAttribute::Sent => "\\Sent".into(),
        NameAttribute::Trash => "\\Trash".into(),
        NameAttribute::Extension(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}
