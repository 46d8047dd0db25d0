//! Connecting to an IMAP server: TCP, TLS or STARTTLS (rustls), login, capabilities,
//! and the mapping of async-imap errors onto retryable/permanent [`CopyError`]s.

use std::sync::Arc;
use std::time::Duration;

use async_imap::error::Error as ImapError;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::deflate::Deflate;
use crate::error::{CopyError, Side};
use crate::model::{AuthMechanism, Compress, Endpoint, Login, Security, ServerSpec};
use crate::secret::Secret;
use async_imap::imap_proto::{Response, ResponseCode};

/// The byte stream under a session: plain TCP or TLS, boxed so both share one type.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

pub type Session = async_imap::Session<Box<dyn Io>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server said it can do, reduced to what the engine uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub literal_plus: bool,
    pub literal_minus: bool,
    pub uidplus: bool,
    pub special_use: bool,
    pub condstore: bool,
    pub multiappend: bool,
    pub append_limit: Option<u64>,
    /// COMPRESS=DEFLATE offered.
    pub deflate: bool,
    /// Every byte of this session goes through DEFLATE (COMPRESS accepted).
    pub compressed: bool,
    pub all: Vec<String>,
    /// The NAMESPACE reply, where the server offers it and it could be read.
    pub namespaces: Option<super::namespace::Namespaces>,
}

impl Caps {
    /// Gmail (X-GM-EXT-1): labels are folders and `[Gmail]/All Mail` holds every message.
    pub fn gmail(&self) -> bool {
        self.has("X-GM-EXT-1")
    }

    /// Whether the server announced `name` (case-insensitive), e.g. `UNSELECT`.
    pub fn has(&self, name: &str) -> bool {
        self.all.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn from_list(names: Vec<String>) -> Caps {
        let has = |want: &str| names.iter().any(|n| n.eq_ignore_ascii_case(want));
        let append_limit =
            names.iter().find_map(|n| n.to_ascii_uppercase().strip_prefix("APPENDLIMIT=").and_then(|v| v.parse().ok()));
        Caps {
            literal_plus: has("LITERAL+"),
            literal_minus: has("LITERAL-"),
            uidplus: has("UIDPLUS"),
            special_use: has("SPECIAL-USE"),
            condstore: has("CONDSTORE"),
            multiappend: has("MULTIAPPEND"),
            append_limit,
            deflate: has("COMPRESS=DEFLATE"),
            compressed: false,
            all: names,
            namespaces: None,
        }
    }
}

/// Connect, secure and log in. Returns the session and its capabilities.
///
/// With OAuth2 the token comes from the cache while it has life left; when the server refuses
/// a cached token, exactly one new token is tried on a new connection (servers delay or close
/// a connection after a failed AUTHENTICATE); a refused new token is a permanent failure.
pub async fn connect(endpoint: &Endpoint, side: Side) -> Result<(Session, Caps), CopyError> {
    match connect_once(endpoint, side, None).await {
        Ok(connected) => Ok(connected),
        Err(Attempt::Failed(e)) => Err(e),
        Err(Attempt::CachedTokenRefused(token)) => {
            let server = format!("{}:{}", endpoint.server.host, endpoint.server.port);
            tracing::info!(%side, server, "the server refused the cached OAuth2 token: one new token, new connection");
            match connect_once(endpoint, side, Some(&token)).await {
                Ok(connected) => Ok(connected),
                Err(Attempt::Failed(e)) => Err(e),
                // Not returned when a refused token is given; never loop.
                Err(Attempt::CachedTokenRefused(_)) => Err(CopyError::Auth {
                    side,
                    server,
                    user: endpoint.login.user.clone(),
                    reply: "the server refused the OAuth2 token twice".into(),
                    hint: "check the token source in the settings".into(),
                }),
            }
        }
    }
}

/// Why one connection attempt did not end in a session.
enum Attempt {
    Failed(CopyError),
    /// The server refused a token from the cache: worth one new token.
    CachedTokenRefused(Secret),
}

impl From<CopyError> for Attempt {
    fn from(e: CopyError) -> Attempt {
        Attempt::Failed(e)
    }
}

async fn connect_once(endpoint: &Endpoint, side: Side, refused: Option<&Secret>) -> Result<(Session, Caps), Attempt> {
    let server = &endpoint.server;
    let label = format!("{}:{}", server.host, server.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((server.host.as_str(), server.port)))
        .await
        .map_err(|_| CopyError::Connect { side, server: label.clone(), detail: "timed out".into() })?
        .map_err(|e| CopyError::Connect { side, server: label.clone(), detail: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let on_loopback = tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());

    let stream: Box<dyn Io> = match server.security {
        Security::Plain => Box::new(tcp),
        Security::Tls => Box::new(tls_wrap(tcp, server, side).await?),
        Security::Starttls => {
            let mut client = async_imap::Client::new(tcp);
            read_greeting(&mut client, side, &label).await?;
            client.run_command_and_check_ok("STARTTLS", None).await.map_err(|e| CopyError::Tls {
                side,
                server: label.clone(),
                detail: format!("STARTTLS refused: {e}"),
            })?;
            Box::new(tls_wrap(client.into_inner(), server, side).await?)
        }
    };

    let mut client = async_imap::Client::new(stream);
    let mut greeting_caps = None;
    if server.security != Security::Starttls {
        greeting_caps = read_greeting(&mut client, side, &label).await?;
    }
    let login = &endpoint.login;
    let plain_offered = login.mechanism == AuthMechanism::Login
        && greeting_caps.as_ref().is_some_and(|caps| caps.iter().any(|c| c.eq_ignore_ascii_case("AUTH=PLAIN")));
    let no_answer =
        || CopyError::ConnectionLost { side, server: label.clone(), detail: "no answer to login within 30 s".into() };
    let result = match (login.mechanism, &login.authz) {
        (mechanism, _) if mechanism.is_oauth2() => {
            let sasl_ir = match greeting_caps {
                Some(caps) => caps,
                None => pre_auth_capabilities(&mut client, side, &label).await?,
            }
            .iter()
            .any(|c| c.eq_ignore_ascii_case("SASL-IR"));
            Ok(Ok(oauth2_login(client, login, side, &label, sasl_ir, refused).await?))
        }
        (AuthMechanism::Plain, authz) => {
            let auth = PlainAuth {
                authz: authz.clone().unwrap_or_default(),
                authc: login.user.clone(),
                password: login.password.expose().to_string(),
            };
            tokio::time::timeout(CONNECT_TIMEOUT, client.authenticate("PLAIN", auth)).await
        }
        (_, _) => tokio::time::timeout(CONNECT_TIMEOUT, client.login(&login.user, login.password.expose())).await,
    };
    let result = result.map_err(|_| no_answer())?;
    let mut session = match result {
        Ok(session) => session,
        Err((err, _)) => {
            // A LOGIN refused where AUTHENTICATE PLAIN is offered: an admin may need that
            // (Cyrus takes the mailbox as authorization identity only there).
            return Err(login_error(err, side, &label, &login.user, &server.host, plain_offered).into());
        }
    };
    let caps = tokio::time::timeout(CONNECT_TIMEOUT, session.capabilities())
        .await
        .map_err(|_| no_answer())?
        .map_err(|e| classify(e, side, &label))?;
    let names = caps
        .iter()
        .map(|c| match c {
            async_imap::types::Capability::Imap4rev1 => "IMAP4rev1".to_string(),
            async_imap::types::Capability::Auth(a) => format!("AUTH={a}"),
            async_imap::types::Capability::Atom(a) => a.to_string(),
        })
        .collect();
    let mut caps = Caps::from_list(names);
    if caps.has("NAMESPACE") {
        caps.namespaces = super::namespace::ask(&mut session).await.map_err(|e| CopyError::ConnectionLost {
            side,
            server: label.clone(),
            detail: e.to_string(),
        })?;
    }
    if caps.deflate && server.compress.wanted(on_loopback) {
        match compress(session, side, &label).await? {
            Ok(compressed) => {
                session = compressed;
                caps.compressed = true;
            }
            // The command took the session with it: a new connection, without COMPRESS.
            Err(reply) => {
                tracing::warn!(%side, server = label, reply, "COMPRESS offered but refused: connecting again without it");
                let mut plain = endpoint.clone();
                plain.server.compress = Compress::Off;
                return Box::pin(connect_once(&plain, side, refused)).await;
            }
        }
    }
    Ok((session, caps))
}

/// `COMPRESS DEFLATE` (RFC 4978): from its OK on, every byte both ways is raw DEFLATE
/// ([`Deflate`], which sync-flushes whenever the session flushes). async-imap's `compress`
/// sends the command and rebuilds the session over a new stream; we take the plain stream
/// back out of its own (unused) wrapper and put ours around it.
/// `Ok(Err(reply))` when the server refused the command (NO or BAD).
async fn compress(session: Session, side: Side, label: &str) -> Result<Result<Session, String>, CopyError> {
    let wrap =
        |theirs: async_imap::DeflateStream<Box<dyn Io>>| Box::new(Deflate::new(theirs.into_inner())) as Box<dyn Io>;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, session.compress(wrap)).await.map_err(|_| {
        CopyError::ConnectionLost { side, server: label.into(), detail: "no answer to COMPRESS within 30 s".into() }
    })?;
    match answer {
        Ok(session) => {
            tracing::debug!(%side, server = label, "COMPRESS=DEFLATE on");
            Ok(Ok(session))
        }
        Err(async_imap::error::Error::No(reply) | async_imap::error::Error::Bad(reply)) => Ok(Err(reply)),
        Err(e) => Err(classify(e, side, label)),
    }
}

/// Reads the greeting; returns the capabilities it announces (`* OK [CAPABILITY ...]`), if any.
async fn read_greeting<T: Io>(
    client: &mut async_imap::Client<T>,
    side: Side,
    label: &str,
) -> Result<Option<Vec<String>>, CopyError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.read_response()).await {
        Ok(Ok(Some(greeting))) => Ok(match greeting.parsed() {
            Response::Data { outcome, .. } => match &outcome.code {
                Some(ResponseCode::Capabilities(caps)) => Some(cap_names(caps)),
                _ => None,
            },
            _ => None,
        }),
        Ok(Ok(None)) => {
            Err(CopyError::ConnectionLost { side, server: label.into(), detail: "closed before greeting".into() })
        }
        Ok(Err(e)) => Err(CopyError::ConnectionLost { side, server: label.into(), detail: e.to_string() }),
        Err(_) => Err(CopyError::Connect { side, server: label.into(), detail: "no greeting within 30 s".into() }),
    }
}

fn cap_names(caps: &[async_imap::imap_proto::Capability<'_>]) -> Vec<String> {
    caps.iter()
        .map(|c| match c {
            async_imap::imap_proto::Capability::Imap4rev1 => "IMAP4rev1".to_string(),
            async_imap::imap_proto::Capability::Auth(a) => format!("AUTH={a}"),
            async_imap::imap_proto::Capability::Atom(a) => a.to_string(),
        })
        .collect()
}

/// `CAPABILITY` before login, for servers whose greeting does not list them (Exchange).
async fn pre_auth_capabilities<T: Io>(
    client: &mut async_imap::Client<T>,
    side: Side,
    label: &str,
) -> Result<Vec<String>, CopyError> {
    use tokio::io::AsyncWriteExt as _;
    let lost = |detail: String| CopyError::ConnectionLost { side, server: label.into(), detail };
    // Our own tag: async-imap numbers its commands A1, A2...
    let stream = client.get_mut();
    let write = async {
        stream.write_all(b"mh0 CAPABILITY\r\n").await?;
        stream.flush().await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, write)
        .await
        .map_err(|_| lost("no answer to CAPABILITY within 30 s".into()))?
        .map_err(|e| lost(e.to_string()))?;
    let mut names = Vec::new();
    loop {
        let response = tokio::time::timeout(CONNECT_TIMEOUT, client.read_response())
            .await
            .map_err(|_| lost("no answer to CAPABILITY within 30 s".into()))?
            .map_err(|e| lost(e.to_string()))?
            .ok_or_else(|| lost("closed during CAPABILITY".into()))?;
        match response.parsed() {
            Response::Capabilities(caps) => names.extend(cap_names(caps)),
            Response::Done { tag, .. } if tag.0 == "mh0" => return Ok(names),
            _ => {}
        }
    }
}

/// SASL XOAUTH2/OAUTHBEARER: the initial response, then (on failure) an empty answer to the
/// server's error challenge, which is kept to report it.
struct BearerAuth {
    initial: Option<Vec<u8>>,
    challenge: Arc<std::sync::Mutex<Option<String>>>,
}

impl async_imap::Authenticator for BearerAuth {
    type Response = Vec<u8>;
    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if let Some(initial) = self.initial.take() {
            return initial;
        }
        // RFC 7628: an error challenge is answered with an empty response (or %x01).
        if let Ok(mut kept) = self.challenge.lock() {
            *kept = Some(String::from_utf8_lossy(challenge).chars().take(500).collect());
        }
        Vec::new()
    }
}

/// Signs in with a bearer token: the cached one, or a new one when there is none, it is about
/// to expire, or it is `refused`.
async fn oauth2_login(
    client: async_imap::Client<Box<dyn Io>>,
    login: &Login,
    side: Side,
    label: &str,
    sasl_ir: bool,
    refused: Option<&Secret>,
) -> Result<Session, Attempt> {
    let Some(config) = &login.oauth2 else {
        return Err(Attempt::Failed(CopyError::Auth {
            side,
            server: label.into(),
            user: login.user.clone(),
            reply: format!("{} needs a token source", login.mechanism.sasl_name()),
            hint: format!("add a [{side}.oauth2] table to the settings"),
        }));
    };
    let (token, fresh) = crate::oauth2::bearer(config, &login.password, &login.user, side, refused).await?;
    let refusal = match bearer_attempt(client, login, &token, label, side, sasl_ir).await? {
        Ok(session) => return Ok(session),
        Err((refusal, _client)) => refusal,
    };
    if !fresh && refused.is_none() {
        return Err(Attempt::CachedTokenRefused(token));
    }
    Err(Attempt::Failed(CopyError::Auth {
        side,
        server: label.into(),
        user: login.user.clone(),
        reply: format!(
            "{} refused a new token from {}: {refusal}",
            login.mechanism.sasl_name(),
            config.provider().as_str()
        ),
        hint: config.imap_hint(),
    }))
}

type Refused = (String, async_imap::Client<Box<dyn Io>>);

/// One AUTHENTICATE: `Ok(Err(..))` when the server refused the token (its words and decoded
/// challenge), `Err` when the connection failed.
async fn bearer_attempt(
    client: async_imap::Client<Box<dyn Io>>,
    login: &Login,
    token: &Secret,
    label: &str,
    side: Side,
    sasl_ir: bool,
) -> Result<Result<Session, Refused>, CopyError> {
    use base64::Engine as _;
    let response = crate::oauth2::sasl_response(login.mechanism, &login.user, token);
    let challenge = Arc::new(std::sync::Mutex::new(None));
    let name = login.mechanism.sasl_name();
    let (command, auth) = if sasl_ir {
        let encoded = Secret::new(base64::engine::general_purpose::STANDARD.encode(response.expose()));
        let command = Secret::new(format!("{name} {}", encoded.expose()));
        (command, BearerAuth { initial: None, challenge: challenge.clone() })
    } else {
        let initial = Some(response.expose().as_bytes().to_vec());
        (Secret::new(name), BearerAuth { initial, challenge: challenge.clone() })
    };
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, client.authenticate(command.expose(), auth)).await;
    let result = attempt.map_err(|_| CopyError::ConnectionLost {
        side,
        server: label.into(),
        detail: "no answer to AUTHENTICATE within 30 s".into(),
    })?;
    match result {
        Ok(session) => Ok(Ok(session)),
        Err((ImapError::No(reply) | ImapError::Bad(reply), client)) => {
            let reply = server_text(&reply);
            if let Some(retry_after) = throttle_hint(&reply) {
                return Err(CopyError::Throttled { side, server: label.into(), detail: reply, retry_after });
            }
            let said = challenge.lock().ok().and_then(|c| c.clone());
            let words = match said {
                Some(json) if !json.trim().is_empty() => format!("{reply} (server said {json})"),
                _ => reply,
            };
            Ok(Err((words, client)))
        }
        Err((other, _)) => Err(classify(other, side, label)),
    }
}

/// SASL PLAIN: authorization identity, authentication identity, password.
struct PlainAuth {
    authz: String,
    authc: String,
    password: String,
}

impl async_imap::Authenticator for PlainAuth {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        format!("{}\0{}\0{}", self.authz, self.authc, self.password).into_bytes()
    }
}

fn login_error(err: ImapError, side: Side, label: &str, user: &str, host: &str, plain_offered: bool) -> CopyError {
    match err {
        ImapError::No(reply) | ImapError::Bad(reply) => {
            let reply = server_text(&reply);
            if let Some(throttled) = throttle_hint(&reply) {
                return CopyError::Throttled { side, server: label.into(), detail: reply, retry_after: throttled };
            }
            let host = host.to_ascii_lowercase();
            let hint = if host.contains("office365") || host.contains("outlook") {
                "Microsoft 365 turned basic auth off for IMAP: sign in with OAuth2 (a [side.oauth2] table with provider = \"microsoft\", tenant, client_id and the app's secret; see the README)"
            } else if host.contains("gmail") || host.contains("google") {
                "Google Workspace signs in with OAuth2: a service account with domain-wide delegation ([side.oauth2] provider = \"google\"; see the README); a personal Gmail account needs an app password"
            } else if plain_offered {
                "check the login and password in this row (fix the row and retry it from failed.csv); for an admin \
                 logging in to someone else's mailbox, this server offers AUTHENTICATE PLAIN, which carries the \
                 mailbox as authorization identity (Cyrus): set auth = \"plain\" on this side"
            } else {
                "check the login and password in this row (fix the row and retry it from failed.csv)"
            };
            CopyError::Auth { side, server: label.into(), user: user.into(), reply, hint: hint.into() }
        }
        other => classify(other, side, label),
    }
}

/// Map an async-imap error to our classes. `NO` on a command is decided by the caller.
pub fn classify(err: ImapError, side: Side, label: &str) -> CopyError {
    match err {
        ImapError::Io(e) => CopyError::ConnectionLost { side, server: label.into(), detail: e.to_string() },
        ImapError::ConnectionLost => {
            CopyError::ConnectionLost { side, server: label.into(), detail: "connection closed".into() }
        }
        ImapError::No(reply) | ImapError::Bad(reply) => {
            let reply = server_text(&reply);
            match throttle_hint(&reply) {
                Some(retry_after) => CopyError::Throttled { side, server: label.into(), detail: reply, retry_after },
                None => CopyError::Protocol { side, server: label.into(), detail: reply },
            }
        }
        other => CopyError::Protocol { side, server: label.into(), detail: other.to_string() },
    }
}

/// The server's words from async-imap's error text, which is a Debug dump of the reply
/// (`code: None, info: Some("...")` or `Outcome { code: .., information: Some("...") }`).
pub fn server_text(reply: &str) -> String {
    let text = ["info: Some(\"", "information: Some(\""]
        .iter()
        .find_map(|marker| reply.find(marker).map(|at| &reply[at + marker.len()..]))
        .and_then(|rest| rest.rfind("\")").map(|end| unescape_debug(&rest[..end])));
    let code = reply
        .find("code: Some(")
        .map(|at| &reply[at + "code: Some(".len()..])
        .and_then(|rest| rest.split(|c: char| !c.is_alphanumeric()).next())
        .filter(|c| !c.is_empty());
    match (code, text) {
        (Some(code), Some(text)) => format!("[{}] {text}", code.to_ascii_uppercase()),
        (None, Some(text)) => text,
        _ => reply.to_string(),
    }
}

/// Undoes Rust's `Debug` escaping of a string (`\"`, `\\`, `\t`, `\u{a0}`...), so a reply with
/// tabs or non-ASCII text (a localized "réessayez dans 30 secondes") reads as the server sent it.
fn unescape_debug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let rest = chars.as_str();
                let decoded = rest.strip_prefix('{').and_then(|r| r.split_once('}')).and_then(|(hex, _)| {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).map(|ch| (ch, hex.len() + 2))
                });
                match decoded {
                    Some((ch, used)) => {
                        out.push(ch);
                        for _ in 0..used {
                            chars.next();
                        }
                    }
                    None => out.push_str("\\u"),
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `Some(hint)` when a server reply means "busy, come back later" (BYE, THROTTLED, UNAVAILABLE).
pub fn throttle_hint(reply: &str) -> Option<Option<Duration>> {
    let upper = reply.to_ascii_uppercase();
    // Not [LIMIT] (RFC 5530): that is a permanent implementation limit, e.g. a message too big.
    let busy = ["[THROTTLED]", "[UNAVAILABLE]", "[INUSE]", "TOO MANY", "TRY AGAIN", "SERVER BUSY"];
    if !busy.iter().any(|b| upper.contains(b)) {
        return None;
    }
    // Some servers say "try again in N seconds"; take the first number followed by "second".
    let words: Vec<&str> = upper.split_whitespace().collect();
    let seconds = words.windows(2).find(|w| w[1].starts_with("SEC")).and_then(|w| w[0].parse::<u64>().ok());
    Some(seconds.map(Duration::from_secs))
}

async fn tls_wrap(
    tcp: TcpStream,
    server: &ServerSpec,
    side: Side,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, CopyError> {
    let label = format!("{}:{}", server.host, server.port);
    let tls_err = |detail: String| CopyError::Tls { side, server: label.clone(), detail };
    let config = tls_config(server).map_err(tls_err)?;
    let name = ServerName::try_from(server.host.clone()).map_err(|e| tls_err(format!("bad host name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(tls_err(e.to_string())),
        Ok(Err(e)) => {
            Err(CopyError::ConnectionLost { side, server: label.clone(), detail: format!("TLS handshake: {e}") })
        }
        Err(_) => Err(CopyError::Connect { side, server: label.clone(), detail: "TLS handshake timed out".into() }),
    }
}

fn tls_config(server: &ServerSpec) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if server.accept_invalid_certs {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &server.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::new(pem.as_slice());
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {} holds no PEM certificate", path.display()));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The explicit, per-endpoint opt-out for self-signed servers: signatures are still checked,
/// the chain and name are not.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_replies_are_recognised() {
        assert_eq!(
            throttle_hint("[THROTTLED] Request is throttled. Try again in 30 seconds"),
            Some(Some(Duration::from_secs(30)))
        );
        assert_eq!(throttle_hint("[UNAVAILABLE] Internal error"), Some(None));
        assert_eq!(throttle_hint("[AUTHENTICATIONFAILED] Authentication failed."), None);
    }

    #[test]
    fn server_words_are_taken_from_async_imap_errors() {
        assert_eq!(
            server_text(r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text(r#"outcome: Outcome { code: None, information: Some("Mailbox doesn't exist: \"Sent\"") }"#),
            "Mailbox doesn't exist: \"Sent\""
        );
        assert_eq!(server_text(r#"code: Some(TryCreate), info: Some("no such folder")"#), "[TRYCREATE] no such folder");
        assert_eq!(server_text("plain words"), "plain words");
        assert_eq!(
            server_text(r#"code: None, info: Some("Try\u{a0}again\tin 3 s \\o/")"#),
            "Try\u{a0}again\tin 3 s \\o/"
        );
        assert_eq!(
            throttle_hint(&server_text(
                r#"code: None, info: Some("[THROTTLED]\u{a0}Try\u{a0}again\u{a0}in\u{a0}3\u{a0}seconds")"#
            )),
            Some(Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn capabilities_are_read() {
        let caps = Caps::from_list(vec![
            "IMAP4rev1".into(),
            "LITERAL+".into(),
            "APPENDLIMIT=35651584".into(),
            "UIDPLUS".into(),
        ]);
        assert!(caps.literal_plus && caps.uidplus && !caps.literal_minus);
        assert_eq!(caps.append_limit, Some(35651584));
    }
}
