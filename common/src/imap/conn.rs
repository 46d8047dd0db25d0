//! Connecting to an IMAP server: TCP, TLS or STARTTLS (rustls), login, capabilities,
//! and the mapping of async-imap errors onto retryable/permanent [`CopyError`]s.

use std::sync::Arc;
use std::time::Duration;

use async_imap::error::Error as ImapError;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{CopyError, Side};
use crate::model::{AuthMechanism, Endpoint, Security, ServerSpec};

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
    pub append_limit: Option<u64>,
    pub all: Vec<String>,
}

impl Caps {
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
            append_limit,
            all: names,
        }
    }
}

/// Connect, secure and log in. Returns the session and its capabilities.
pub async fn connect(endpoint: &Endpoint, side: Side) -> Result<(Session, Caps), CopyError> {
    let server = &endpoint.server;
    let label = format!("{}:{}", server.host, server.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((server.host.as_str(), server.port)))
        .await
        .map_err(|_| CopyError::Connect { side, server: label.clone(), detail: "timed out".into() })?
        .map_err(|e| CopyError::Connect { side, server: label.clone(), detail: e.to_string() })?;
    let _ = tcp.set_nodelay(true);

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
    if server.security != Security::Starttls {
        read_greeting(&mut client, side, &label).await?;
    }
    let login = &endpoint.login;
    let result = match (login.mechanism, &login.authz) {
        (AuthMechanism::Plain, authz) => {
            let auth = PlainAuth {
                authz: authz.clone().unwrap_or_default(),
                authc: login.user.clone(),
                password: login.password.expose().to_string(),
            };
            tokio::time::timeout(CONNECT_TIMEOUT, client.authenticate("PLAIN", auth)).await
        }
        (AuthMechanism::Login, _) => {
            tokio::time::timeout(CONNECT_TIMEOUT, client.login(&login.user, login.password.expose())).await
        }
    };
    let no_answer =
        || CopyError::ConnectionLost { side, server: label.clone(), detail: "no answer to login within 30 s".into() };
    let result = result.map_err(|_| no_answer())?;
    let mut session = match result {
        Ok(session) => session,
        Err((err, _)) => return Err(login_error(err, side, &label, &login.user, &server.host)),
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
    Ok((session, Caps::from_list(names)))
}

async fn read_greeting<T: Io>(client: &mut async_imap::Client<T>, side: Side, label: &str) -> Result<(), CopyError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => {
            Err(CopyError::ConnectionLost { side, server: label.into(), detail: "closed before greeting".into() })
        }
        Ok(Err(e)) => Err(CopyError::ConnectionLost { side, server: label.into(), detail: e.to_string() }),
        Err(_) => Err(CopyError::Connect { side, server: label.into(), detail: "no greeting within 30 s".into() }),
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

fn login_error(err: ImapError, side: Side, label: &str, user: &str, host: &str) -> CopyError {
    match err {
        ImapError::No(reply) | ImapError::Bad(reply) => {
            let reply = server_text(&reply);
            if let Some(throttled) = throttle_hint(&reply) {
                return CopyError::Throttled { side, server: label.into(), detail: reply, retry_after: throttled };
            }
            let host = host.to_ascii_lowercase();
            let hint = if host.contains("office365") || host.contains("outlook") {
                "Microsoft 365 rejects basic auth for IMAP: use an app password, OAuth2 or an admin login (UserName as Domain/Admin/User)"
            } else if host.contains("gmail") || host.contains("google") {
                "Gmail needs an app password for IMAP (2-step verification on), or IMAP enabled in the account settings"
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
