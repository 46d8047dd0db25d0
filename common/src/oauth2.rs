//! OAuth2 sign-in for IMAP: where tokens come from (Microsoft client credentials with a secret
//! or a certificate, Google service accounts with domain-wide delegation, any
//! client-credentials server), a process-wide token cache, and the SASL strings.
//!
//! [`OAuth2Config`] travels with a job (it is `Serialize`): it names where the credential
//! lives (an environment variable, a file, a Secrets Manager secret) but never holds it.
//! The credential itself rides in the login's [`Secret`] and the tokens stay in this module's
//! cache: neither is ever logged, reported or stored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CopyError, Side};
use crate::secret::Secret;

/// Who issues the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft Entra ID (Microsoft 365): app-only client credentials, one token per tenant.
    Microsoft,
    /// Google Workspace: a service account with domain-wide delegation, one token per mailbox.
    Google,
    /// Any OAuth2 server: client credentials at `token_url`.
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Microsoft => "microsoft",
            Provider::Google => "google",
            Provider::Generic => "generic",
        }
    }
}

/// Microsoft's IMAP scope for app-only access.
pub const MICROSOFT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Google's scope for IMAP.
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";
/// Google's token endpoint when the key file names none.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `[source.oauth2]` / `[destination.oauth2]`: how one side gets its tokens. Holds no secret,
/// only where to find it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    /// microsoft, google or generic (the outlook/office365 and gmail presets imply theirs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Microsoft: the directory (tenant) id or domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Microsoft and generic: the application (client) id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Name of the environment variable holding the client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Microsoft certificate credential: the certificate (PEM), uploaded to the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_file: Option<PathBuf>,
    /// Its private key (PEM); may be omitted when the certificate file holds it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Google: the service account's JSON key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_file: Option<PathBuf>,
    /// Google: name of the environment variable holding the JSON key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_env: Option<String>,
    /// On AWS: the Secrets Manager secret (name or ARN) holding the client secret, the
    /// service-account JSON key, or the certificate and its key (PEM); read by the copy function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_secret: Option<String>,
    /// Overrides the provider's scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Overrides the provider's token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
}

/// True for a plausible environment variable name (`MAILHAUL_CLIENT_SECRET`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl OAuth2Config {
    /// The provider (validated configs always have one).
    pub fn provider(&self) -> Provider {
        self.provider.unwrap_or(Provider::Generic)
    }

    /// Checks the combination of keys; the message names the keys to set. `side` is
    /// `source` or `destination`.
    pub fn validate(&self, side: &str) -> Result<(), String> {
        let t = format!("[{side}.oauth2]");
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let Some(provider) = self.provider else {
            return Err(format!("{t} provider is missing: use microsoft, google or generic"));
        };
        for (key, value) in
            [("client_secret_env", &self.client_secret_env), ("service_account_env", &self.service_account_env)]
        {
            if let Some(v) = value {
                if !is_env_name(v) {
                    // Never echo it: it may be the secret itself, pasted in the wrong place.
                    return Err(format!(
                        "{t} {key} is not an environment variable name (letters, digits, _): put the secret in an environment variable and give its name here"
                    ));
                }
            }
        }
        if let Some(url) = &self.token_url {
            check_url(url).map_err(|e| format!("{t} token_url: {e}"))?;
        }
        let certificate = self.client_certificate_file.is_some() || self.client_key_file.is_some();
        match provider {
            Provider::Microsoft => {
                if !set(&self.tenant) && !set(&self.token_url) {
                    return Err(format!("{t} tenant is missing: the directory (tenant) id of the Entra app"));
                }
                if !set(&self.client_id) {
                    return Err(format!("{t} client_id is missing: the application (client) id of the Entra app"));
                }
                let ways = [set(&self.client_secret_env), certificate, set(&self.aws_secret)];
                if ways.iter().filter(|w| **w).count() != 1 {
                    return Err(format!(
                        "{t} needs exactly one credential: client_secret_env, client_certificate_file (+ client_key_file), or aws_secret (on AWS)"
                    ));
                }
            }
            Provider::Google => {
                let ways = [self.service_account_file.is_some(), set(&self.service_account_env), set(&self.aws_secret)];
                if ways.iter().filter(|w| **w).count() != 1 {
                    return Err(format!(
                        "{t} needs exactly one service-account key: service_account_file, service_account_env, or aws_secret (on AWS)"
                    ));
                }
            }
            Provider::Generic => {
                if !set(&self.token_url) {
                    return Err(format!("{t} token_url is missing: the OAuth2 server's token endpoint"));
                }
                if !set(&self.client_id) {
                    return Err(format!("{t} client_id is missing"));
                }
                let ways = [set(&self.client_secret_env), certificate, set(&self.aws_secret)];
                if ways.iter().filter(|w| **w).count() != 1 {
                    return Err(format!(
                        "{t} needs exactly one credential: client_secret_env, client_certificate_file (+ client_key_file), or aws_secret (on AWS)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads the credential from the environment variable or files it names (through `env`);
    /// `Ok(None)` when it lives in Secrets Manager (`aws_secret`), for the copy function.
    pub fn local_credential(&self, side: &str, env: impl Fn(&str) -> Option<String>) -> Result<Option<Secret>, String> {
        let t = format!("[{side}.oauth2]");
        let from_env = |key: &str, var: &str| match env(var) {
            Some(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(format!(
                "{t} {key} names the environment variable {var}, which is not set or empty: set it before running"
            )),
        };
        let read = |key: &str, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|e| format!("{t} {key}: cannot read {}: {e}", path.display()))
        };
        if let Some(var) = &self.client_secret_env {
            return from_env("client_secret_env", var);
        }
        if let Some(var) = &self.service_account_env {
            return from_env("service_account_env", var);
        }
        if let Some(path) = &self.service_account_file {
            return Ok(Some(Secret::new(read("service_account_file", path)?)));
        }
        if self.client_certificate_file.is_some() || self.client_key_file.is_some() {
            let mut bundle = String::new();
            if let Some(path) = &self.client_certificate_file {
                bundle.push_str(&read("client_certificate_file", path)?);
                bundle.push('\n');
            }
            if let Some(path) = &self.client_key_file {
                bundle.push_str(&read("client_key_file", path)?);
            }
            return Ok(Some(Secret::new(bundle)));
        }
        Ok(None)
    }

    /// The scope asked for: the override, else the provider's.
    pub fn scope(&self) -> Option<String> {
        self.scope.clone().or_else(|| match self.provider() {
            Provider::Microsoft => Some(MICROSOFT_SCOPE.to_string()),
            Provider::Google => Some(GOOGLE_SCOPE.to_string()),
            Provider::Generic => None,
        })
    }

    /// The token endpoint: the override, else the provider's (Google's from the key file).
    fn endpoint(&self, key_token_uri: Option<&str>) -> String {
        if let Some(url) = self.token_url.as_deref().filter(|u| !u.trim().is_empty()) {
            return url.trim().to_string();
        }
        match self.provider() {
            Provider::Microsoft => format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant.as_deref().unwrap_or("common").trim()
            ),
            Provider::Google => key_token_uri.unwrap_or(GOOGLE_TOKEN_URL).to_string(),
            Provider::Generic => String::new(),
        }
    }

    /// What to do when the provider refuses us, in its terms.
    fn token_hint(&self, side: Side) -> String {
        match self.provider() {
            Provider::Microsoft => format!(
                "check [{side}.oauth2] tenant and client_id, and the client secret or certificate: in Entra ID (App registrations > Certificates & secrets) it must be current and belong to this app"
            ),
            Provider::Google => format!(
                "check the service-account key in [{side}.oauth2] is current, and that the admin console (Security > API controls > Domain-wide delegation) lists its client id with scope {GOOGLE_SCOPE}"
            ),
            Provider::Generic => format!("check [{side}.oauth2] token_url, client_id, scope and the client secret"),
        }
    }

    /// What to do when the IMAP server refuses a token the provider issued.
    pub fn imap_hint(&self) -> String {
        match self.provider() {
            Provider::Microsoft => "Exchange Online refused the app's token for this mailbox: give the Entra app the IMAP.AccessAsApp permission with admin consent, register its service principal in Exchange (New-ServicePrincipal) and give it FullAccess on the mailbox (Add-MailboxPermission); changes take up to an hour".to_string(),
            Provider::Google => format!("Gmail refused the token for this mailbox: check domain-wide delegation of the service account with scope {GOOGLE_SCOPE}, that the mailbox exists in the domain and that IMAP is enabled for it"),
            Provider::Generic => "the IMAP server refused the token: check it is issued for this mailbox (the server's user claim), the scope and the audience".to_string(),
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with https://".into());
    };
    // Plain HTTP would send the client secret in clear: only to this machine.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default(),
        None => authority.split(':').next().unwrap_or("").to_string(),
    };
    let host = host.as_str();
    if ["127.0.0.1", "localhost", "[::1]"].contains(&host) {
        Ok(())
    } else {
        Err("must use https:// (plain http only to localhost)".into())
    }
}

/// A service account's JSON key (the fields mailhaul uses).
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// Claims of an RS256 assertion: a Google service account's jwt-bearer grant, or a
/// Microsoft certificate credential (a client assertion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// How long an assertion is good for: Google accepts at most an hour.
const ASSERTION_LIFETIME: u64 = 3600;

fn now_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The first PEM block of `label` (`PRIVATE KEY`, `RSA PRIVATE KEY`, `CERTIFICATE`) in `text`.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

fn private_key_pem(text: &str) -> Option<&str> {
    pem_block(text, "PRIVATE KEY").or_else(|| pem_block(text, "RSA PRIVATE KEY"))
}

/// Signs the jwt-bearer assertion of a Google service account acting as `subject`
/// (domain-wide delegation). Returns the assertion and the token endpoint it is for.
pub fn google_assertion(
    key_json: &Secret,
    scope: &str,
    subject: &str,
    token_url: Option<&str>,
) -> Result<(Secret, String), String> {
    let key: ServiceAccountKey = serde_json::from_str(key_json.expose())
        // Only the kind of error: serde's message may quote part of the key.
        .map_err(|e| format!("the service-account key is not a JSON key file ({:?} error)", e.classify()))?;
    let aud = token_url.map(str::to_string).or(key.token_uri.clone()).unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string());
    let now = now_epoch();
    let claims = AssertionClaims {
        iss: key.client_email.clone(),
        sub: subject.to_string(),
        aud: aud.clone(),
        scope: Some(scope.to_string()),
        iat: now,
        nbf: None,
        exp: now + ASSERTION_LIFETIME,
        jti: None,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let pem = private_key_pem(&key.private_key).ok_or("the service-account key holds no private key")?;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("the service-account private key is not an RSA key: {e}"))?;
    let jwt =
        jsonwebtoken::encode(&header, &claims, &signing).map_err(|e| format!("cannot sign the assertion: {e}"))?;
    Ok((Secret::new(jwt), aud))
}

/// Signs a client assertion (RFC 7523, Microsoft "certificate credential") for `client_id` at
/// `token_url`, from a PEM bundle holding the certificate and its private key.
pub fn client_assertion(bundle: &Secret, client_id: &str, token_url: &str) -> Result<Secret, String> {
    let text = bundle.expose();
    let pem = private_key_pem(text).ok_or("the certificate credential holds no private key (PEM)")?;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("the certificate's private key is not an RSA key: {e}"))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    if let Some(cert) = pem_block(text, "CERTIFICATE") {
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or("the certificate (PEM) cannot be read")?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        header.x5t_s256 = Some(b64.encode(Sha256::digest(der.as_ref())));
    } else {
        return Err("the certificate credential holds no certificate (PEM): set client_certificate_file".into());
    }
    let now = now_epoch();
    let claims = AssertionClaims {
        iss: client_id.to_string(),
        sub: client_id.to_string(),
        aud: token_url.to_string(),
        scope: None,
        iat: now,
        nbf: Some(now),
        exp: now + 600,
        jti: Some(hex::encode(Sha256::digest(format!("{client_id}{now}{:?}", Instant::now()).as_bytes()))),
    };
    let jwt =
        jsonwebtoken::encode(&header, &claims, &signing).map_err(|e| format!("cannot sign the assertion: {e}"))?;
    Ok(Secret::new(jwt))
}

/// The SASL initial response of `mechanism` for `user` with a bearer `token`.
pub fn sasl_response(mechanism: crate::model::AuthMechanism, user: &str, token: &Secret) -> Secret {
    use crate::model::AuthMechanism;
    match mechanism {
        AuthMechanism::Oauthbearer => {
            // RFC 7628 gs2 header: `,` and `=` in the authzid are escaped.
            let authzid = user.replace('=', "=3D").replace(',', "=2C");
            Secret::new(format!("n,a={authzid},\x01auth=Bearer {}\x01\x01", token.expose()))
        }
        _ => Secret::new(format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose())),
    }
}

/// A token refused by its issuer or not obtained: permanent (refused) or retryable (network,
/// server error, throttled).
fn token_error(config: &OAuth2Config, side: Side, url: &str, detail: String, retryable: bool) -> CopyError {
    CopyError::Token {
        side,
        provider: config.provider().as_str().to_string(),
        url: url.to_string(),
        detail,
        hint: if retryable {
            "transient: run again; if it persists, check the token endpoint is reachable from here".to_string()
        } else {
            config.token_hint(side)
        },
        retryable,
    }
}

struct Cached {
    token: Secret,
    expires_at: Instant,
}

impl Cached {
    /// Renewed before it expires: a tenth of its life (at most 5 minutes) ahead, so a login
    /// and the connections opened meanwhile still carry a valid one.
    fn fresh_enough(&self, lifetime_left: Duration) -> bool {
        self.expires_at > Instant::now() + lifetime_left
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<(Cached, Duration)>>>;

/// One slot per token identity (provider, endpoint, client, scope, credential, and for Google
/// the mailbox), so concurrent logins of one tenant wait for one request.
static CACHE: LazyLock<Mutex<HashMap<String, Slot>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

static HTTP: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
});

/// Token requests sent by this process (for tests and logs; never the tokens).
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Number of token requests this process has sent.
pub fn token_requests() -> u64 {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn slot(key: String) -> Slot {
    let mut map = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(key).or_default().clone()
}

/// A bearer token for `user` from `config` with `credential`: the cached one while it has
/// life left, else a new one. With `refused`, the token the IMAP server just refused is never
/// handed out again: a new one is fetched unless another login already replaced it.
/// Returns the token and whether it was fetched by this call.
pub async fn bearer(
    config: &OAuth2Config,
    credential: &Secret,
    user: &str,
    side: Side,
    refused: Option<&Secret>,
) -> Result<(Secret, bool), CopyError> {
    let provider = config.provider();
    let per_mailbox = provider == Provider::Google;
    let key = format!(
        "{}|{}|{}|{}|{}|{}",
        provider.as_str(),
        config.endpoint(None),
        config.client_id.as_deref().unwrap_or(""),
        config.scope().unwrap_or_default(),
        hex::encode(&Sha256::digest(credential.expose().as_bytes())[..8]),
        if per_mailbox { user.to_ascii_lowercase() } else { String::new() }
    );
    let slot = slot(key);
    let mut guard = slot.lock().await;
    if let Some((cached, margin)) = guard.as_ref() {
        if cached.fresh_enough(*margin) && refused.is_none_or(|r| r != &cached.token) {
            return Ok((cached.token.clone(), false));
        }
    }
    let (token, lifetime) = fetch(config, credential, user, side).await?;
    let margin = (lifetime / 10).min(Duration::from_secs(300));
    tracing::info!(%side, provider = provider.as_str(), lifetime_s = lifetime.as_secs(), "OAuth2 token obtained");
    *guard = Some((Cached { token: token.clone(), expires_at: Instant::now() + lifetime }, margin));
    Ok((token, true))
}

/// Forgets every cached token (tests; a process that rotated its credentials).
pub fn clear_cache() {
    CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
}

async fn fetch(
    config: &OAuth2Config,
    credential: &Secret,
    user: &str,
    side: Side,
) -> Result<(Secret, Duration), CopyError> {
    let provider = config.provider();
    let scope = config.scope();
    let local = |detail: String| token_error(config, side, &config.endpoint(None), detail, false);
    if credential.is_empty() {
        let detail = if config.aws_secret.is_some() {
            "the credential is in Secrets Manager (aws_secret), which only the copy function on AWS reads; locally set client_secret_env or a key file".to_string()
        } else {
            "no credential: set client_secret_env, a key file or aws_secret".to_string()
        };
        return Err(local(detail));
    }
    let mut form: Vec<(&str, String)> = Vec::new();
    let url;
    match provider {
        Provider::Google => {
            let (assertion, aud) = google_assertion(
                credential,
                scope.as_deref().unwrap_or(GOOGLE_SCOPE),
                user,
                config.token_url.as_deref(),
            )
            .map_err(local)?;
            url = aud;
            form.push(("grant_type", JWT_BEARER.to_string()));
            form.push(("assertion", assertion.expose().to_string()));
        }
        Provider::Microsoft | Provider::Generic => {
            url = config.endpoint(None);
            let client_id = config.client_id.clone().unwrap_or_default();
            form.push(("grant_type", "client_credentials".to_string()));
            form.push(("client_id", client_id.clone()));
            if credential.expose().contains("PRIVATE KEY-----") {
                let assertion = client_assertion(credential, &client_id, &url).map_err(local)?;
                form.push(("client_assertion_type", CLIENT_ASSERTION.to_string()));
                form.push(("client_assertion", assertion.expose().to_string()));
            } else {
                form.push(("client_secret", credential.expose().to_string()));
            }
            if let Some(scope) = &scope {
                form.push(("scope", scope.clone()));
            }
        }
    }
    check_url(&url).map_err(|e| token_error(config, side, &url, format!("token endpoint {e}"), false))?;
    let client = HTTP.as_ref().map_err(|e| token_error(config, side, &url, e.clone(), true))?;
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = client.post(&url).form(&form).send().await;
    drop(form);
    let response = match response {
        Ok(r) => r,
        // Without the URL: reqwest's Display names it, and we print it ourselves.
        Err(e) => return Err(token_error(config, side, &url, format!("cannot reach it: {}", e.without_url()), true)),
    };
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| token_error(config, side, &url, format!("reading the answer: {}", e.without_url()), true))?;
    #[derive(Deserialize)]
    struct Answer {
        access_token: Option<String>,
        expires_in: Option<serde_json::Value>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let answer: Option<Answer> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        let Some(Answer { access_token: Some(token), expires_in, .. }) = answer else {
            return Err(token_error(config, side, &url, format!("HTTP {status} without an access_token"), false));
        };
        let seconds = match expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        // Microsoft and Google always say; an hour is what both issue.
        .unwrap_or(3600);
        return Ok((Secret::new(token), Duration::from_secs(seconds)));
    }
    let words = match answer {
        Some(Answer { error: Some(error), error_description, .. }) => match error_description {
            Some(d) => format!("{error}: {}", first_line(&d)),
            None => error,
        },
        _ => first_line(&String::from_utf8_lossy(&body)).to_string(),
    };
    let retryable = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
    let step = if retryable { "failed" } else { "refused the client" };
    Err(token_error(config, side, &url, format!("{step} (HTTP {}): {words}", status.as_u16()), retryable))
}

fn first_line(text: &str) -> &str {
    let line = text.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AuthMechanism;

    fn config(text: &str) -> OAuth2Config {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn combinations_are_checked() {
        let ok = [
            "provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"MS_SECRET\"",
            "provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_certificate_file = \"/c.pem\"",
            "provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\naws_secret = \"prod/ms\"",
            "provider = \"google\"\nservice_account_file = \"/sa.json\"",
            "provider = \"google\"\nservice_account_env = \"SA\"",
            "provider = \"generic\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret_env = \"X\"",
        ];
        for text in ok {
            config(text).validate("source").unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let bad = [
            ("client_id = \"c\"", "provider is missing"),
            ("provider = \"microsoft\"\nclient_id = \"c\"\nclient_secret_env = \"X\"", "tenant"),
            ("provider = \"microsoft\"\ntenant = \"t\"\nclient_secret_env = \"X\"", "client_id"),
            ("provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"", "exactly one credential"),
            (
                "provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"X\"\naws_secret = \"s\"",
                "exactly one credential",
            ),
            ("provider = \"google\"", "exactly one service-account key"),
            ("provider = \"generic\"\nclient_id = \"c\"\nclient_secret_env = \"X\"", "token_url"),
            (
                "provider = \"generic\"\ntoken_url = \"http://login.example/token\"\nclient_id = \"c\"\nclient_secret_env = \"X\"",
                "https://",
            ),
            ("provider = \"google\"\nservice_account_env = \"s3cr3t value!\"", "not an environment variable name"),
        ];
        for (text, needle) in bad {
            let err = config(text).validate("destination").unwrap_err();
            assert!(err.contains(needle) && err.contains("[destination.oauth2]"), "{text}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn endpoints_and_scopes_per_provider() {
        let ms = config("provider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"");
        assert_eq!(ms.endpoint(None), "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert_eq!(ms.scope().as_deref(), Some(MICROSOFT_SCOPE));
        let g = config("provider = \"google\"");
        assert_eq!(g.endpoint(Some("https://oauth2.googleapis.com/token")), GOOGLE_TOKEN_URL);
        assert_eq!(g.scope().as_deref(), Some(GOOGLE_SCOPE));
        let over =
            config("provider = \"microsoft\"\ntenant = \"t\"\ntoken_url = \"https://login.example/t\"\nscope = \"s\"");
        assert_eq!((over.endpoint(None).as_str(), over.scope().as_deref()), ("https://login.example/t", Some("s")));
        assert_eq!(config("provider = \"generic\"").scope(), None);
    }

    #[test]
    fn credentials_come_from_env_or_files() {
        let c = config("provider = \"generic\"\nclient_secret_env = \"MY_SECRET\"");
        assert_eq!(
            c.local_credential("source", |v| (v == "MY_SECRET").then(|| "x".into())).unwrap().unwrap().expose(),
            "x"
        );
        let err = c.local_credential("source", |_| None).unwrap_err();
        assert!(err.contains("MY_SECRET") && err.contains("[source.oauth2]"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "CERT").unwrap();
        std::fs::write(&key, "KEY").unwrap();
        let c = OAuth2Config { client_certificate_file: Some(cert), client_key_file: Some(key), ..Default::default() };
        assert_eq!(c.local_credential("source", |_| None).unwrap().unwrap().expose(), "CERT\nKEY");
        let aws = config("provider = \"google\"\naws_secret = \"name\"");
        assert!(aws.local_credential("source", |_| None).unwrap().is_none());
        // Serialized (into a queued job) it names the secret, nothing more.
        let json = serde_json::to_string(&aws).unwrap();
        assert_eq!(json, r#"{"provider":"google","aws_secret":"name"}"#);
    }

    #[test]
    fn sasl_strings() {
        let t = Secret::new("tok");
        assert_eq!(
            sasl_response(AuthMechanism::Xoauth2, "a@b.c", &t).expose(),
            "user=a@b.c\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(
            sasl_response(AuthMechanism::Oauthbearer, "a,=b@c", &t).expose(),
            "n,a=a=2C=3Db@c,\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(format!("{:?}", sasl_response(AuthMechanism::Xoauth2, "a", &t)), "***");
    }

    /// An RSA key (PKCS#8) and a self-signed certificate for it, from openssl.
    fn key_and_certificate(dir: &std::path::Path) -> (String, String) {
        let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        let (k, c) = (key.to_str().unwrap(), cert.to_str().unwrap());
        run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", k]);
        run(&["req", "-x509", "-new", "-key", k, "-subj", "/CN=t", "-days", "1", "-out", c]);
        (std::fs::read_to_string(key).unwrap(), std::fs::read_to_string(cert).unwrap())
    }

    fn verified(jwt: &Secret, cert_pem: &str, audience: &str) -> (jsonwebtoken::Header, AssertionClaims) {
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next().unwrap().unwrap();
        // The certificate's public key, checked with the key's public half only.
        let public = x509_public_key_pem(der.as_ref());
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).expect("public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<AssertionClaims>(jwt.expose(), &key, &validation).expect("verifies");
        (data.header, data.claims)
    }

    /// The SubjectPublicKeyInfo of a certificate, via openssl (test only).
    fn x509_public_key_pem(der: &[u8]) -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-pubkey", "-noout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(der).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }

    #[test]
    fn google_assertion_is_signed_for_the_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_and_certificate(dir.path());
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": "migrator@proj.iam.gserviceaccount.com",
            "private_key_id": "k-1",
            "private_key": key,
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let (jwt, aud) =
            google_assertion(&Secret::new(json.to_string()), GOOGLE_SCOPE, "alice@example.com", None).unwrap();
        assert_eq!(aud, GOOGLE_TOKEN_URL);
        let (header, claims) = verified(&jwt, &cert, GOOGLE_TOKEN_URL);
        assert_eq!(header.kid.as_deref(), Some("k-1"));
        assert_eq!(claims.iss, "migrator@proj.iam.gserviceaccount.com");
        assert_eq!(claims.sub, "alice@example.com");
        assert_eq!(claims.scope.as_deref(), Some(GOOGLE_SCOPE));
        assert!(claims.exp > now_epoch() && claims.exp - claims.iat <= 3600, "{claims:?}");
        // A token_url override is the audience.
        let (jwt, aud) = google_assertion(
            &Secret::new(json.to_string()),
            GOOGLE_SCOPE,
            "b@example.com",
            Some("https://t.example/t"),
        )
        .unwrap();
        assert_eq!(aud, "https://t.example/t");
        assert_eq!(verified(&jwt, &cert, "https://t.example/t").1.sub, "b@example.com");
        // Errors never quote the key.
        let err = google_assertion(&Secret::new("{\"private_key\": \"x\"}"), GOOGLE_SCOPE, "a", None).unwrap_err();
        assert!(err.contains("not a JSON key file"), "{err}");
        let broken = serde_json::json!({"client_email": "m", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"});
        let err = google_assertion(&Secret::new(broken.to_string()), GOOGLE_SCOPE, "a", None).unwrap_err();
        assert!(!err.contains("AAAA"), "{err}");
    }

    #[test]
    fn certificate_credential_is_a_client_assertion() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_and_certificate(dir.path());
        let url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let jwt = client_assertion(&Secret::new(format!("{cert}\n{key}")), "app-id", url).unwrap();
        let (header, claims) = verified(&jwt, &cert, url);
        let der = rustls_pemfile::certs(&mut cert.as_bytes()).next().unwrap().unwrap();
        use base64::Engine as _;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()));
        assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint.as_str()));
        assert_eq!((claims.iss.as_str(), claims.sub.as_str()), ("app-id", "app-id"));
        assert!(claims.jti.is_some() && claims.exp - claims.iat <= 600);
        let err = client_assertion(&Secret::new(key.clone()), "app-id", url).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn urls_without_tls_only_to_this_machine() {
        for ok in ["https://login.example/t", "http://127.0.0.1:8080/token", "http://localhost/x", "http://[::1]:9/t"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://login.example/t", "ftp://x", "http://127.0.0.1.evil.example/t"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    /// `[side.oauth2]` in the settings file, and the CSV rows of an OAuth2 side.
    mod settings_and_csv {
        use crate::batch::{validate_batch, Severity};
        use crate::model::AuthMechanism;
        use crate::settings::Settings;

        const GENERIC: &str = "provider = \"generic\"\ntoken_url = \"https://login.example/token\"\nclient_id = \"app\"\nclient_secret_env = \"APP_SECRET\"\n";

        fn settings(text: &str) -> Settings {
            let mut s = Settings::from_toml_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            s.resolve_secrets(|v| (v == "APP_SECRET" || v == "SA_KEY").then(|| "client-secret-value".into())).unwrap();
            s
        }

        #[test]
        fn presets_imply_the_provider_and_xoauth2() {
            let s = settings(
                "[source]\npreset = \"outlook\"\n[source.oauth2]\ntenant = \"contoso\"\nclient_id = \"app\"\nclient_secret_env = \"APP_SECRET\"\n\
                 [destination]\npreset = \"gmail\"\nauth = \"oauthbearer\"\n[destination.oauth2]\nservice_account_env = \"SA_KEY\"\n",
            );
            assert_eq!(s.source.auth, AuthMechanism::Xoauth2);
            assert_eq!(s.source.oauth2.as_ref().and_then(|o| o.provider), Some(super::Provider::Microsoft));
            assert_eq!(s.source.oauth2_credential.expose(), "client-secret-value");
            assert_eq!(s.destination.auth, AuthMechanism::Oauthbearer);
            assert_eq!(s.destination.oauth2.as_ref().and_then(|o| o.provider), Some(super::Provider::Google));
            assert!(!format!("{s:?}").contains("client-secret-value"));
        }

        #[test]
        fn bad_oauth2_settings_are_explained() {
            for (text, needle) in [
                ("[source]\nauth = \"xoauth2\"\nhost = \"x\"", "add a [source.oauth2] table"),
                ("[source]\nauth = \"plain\"\n[source.oauth2]\nprovider = \"google\"\nservice_account_env = \"S\"", "xoauth2 or oauthbearer"),
                ("[source.oauth2]\ntenant = \"t\"", "provider is missing"),
                ("[destination.oauth2]\nprovider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"", "exactly one credential"),
                ("[destination.oauth2]\nprovider = \"generic\"\nclient_secret = \"hunter2\"", "destination.oauth2.client_secret"),
                ("[source.oauth2]\nprovider = \"generic\"\nclient_idd = \"x\"", "client_idd"),
                (
                    "[source]\nadmin_user = \"a\"\nadmin_password_env = \"X\"\n[source.oauth2]\nprovider = \"google\"\nservice_account_env = \"S\"",
                    "either with OAuth2 tokens or with a master user",
                ),
            ] {
                let err = Settings::from_toml_str(text).unwrap_err().to_string();
                assert!(err.contains(needle), "{text}: {err}");
                assert!(!err.contains("hunter2"), "{err}");
            }
            let mut s = Settings::from_toml_str(&format!("[source.oauth2]\n{GENERIC}")).unwrap();
            let err = s.resolve_secrets(|_| None).unwrap_err().to_string();
            assert!(err.contains("APP_SECRET") && err.contains("[source.oauth2]"), "{err}");
        }

        /// Every OAuth2 settings example in the README parses and validates.
        #[test]
        fn readme_oauth2_examples_are_valid() {
            let readme = include_str!("../../README.md");
            let blocks: Vec<&str> = readme
                .split("```toml\n")
                .skip(1)
                .filter_map(|b| b.split("```").next())
                .filter(|b| b.contains(".oauth2]"))
                .collect();
            assert_eq!(blocks.len(), 4, "the Microsoft, Google, generic and AWS examples");
            for block in blocks {
                let s = Settings::from_toml_str(block).unwrap_or_else(|e| panic!("{block}: {e}"));
                let side = if block.contains("[source.oauth2]") { &s.source } else { &s.destination };
                assert!(side.auth.is_oauth2() && side.oauth2.as_ref().is_some_and(|o| o.provider.is_some()), "{block}");
            }
        }

        #[test]
        fn password_cells_may_be_empty_in_every_csv_form() {
            let s = settings(&format!(
                "[source]\nhost = \"old.example\"\n[source.oauth2]\n{GENERIC}[destination]\nhost = \"new.example\"\nauth = \"oauthbearer\"\n[destination.oauth2]\n{GENERIC}"
            ));
            for csv in [
                "EmailAddress,UserName,Password\nalice@new.example,alice@old.example,\n",
                "source_email,source_password,destination_email\nalice@old.example,,alice@new.example\n",
                "source_user,source_password,destination_user,destination_password\nalice@old.example,,alice@new.example,\n",
            ] {
                let batch = validate_batch(csv.as_bytes(), &s);
                assert!(batch.is_valid(), "{csv}: {}", batch.render_table());
                let job = batch.valid_jobs()[0].clone();
                assert_eq!(job.source.login.user, "alice@old.example");
                assert_eq!(job.source.login.mechanism, AuthMechanism::Xoauth2);
                assert_eq!(job.source.login.password.expose(), "client-secret-value");
                assert_eq!(job.destination.login.user, "alice@new.example");
                assert_eq!(job.destination.login.mechanism, AuthMechanism::Oauthbearer);
                assert!(job.destination.login.oauth2.is_some());
                // What is queued names the token source and holds no secret.
                let json = serde_json::to_string(&job).unwrap();
                assert!(json.contains("\"client_secret_env\":\"APP_SECRET\"") && !json.contains("client-secret-value"), "{json}");
            }
            // A password typed anyway is not used, and said so.
            let batch =
                validate_batch(b"source_email,source_password,destination_email\na@old.example,pw,a@new.example\n", &s);
            assert!(batch.is_valid());
            assert!(batch.problems.iter().any(|p| p.severity == Severity::Warning && p.message.contains("OAuth2")));
            assert_eq!(batch.valid_jobs()[0].source.login.password.expose(), "client-secret-value");
            // Without OAuth2 the destination still needs a password.
            let plain = settings("[source]\nhost = \"a\"\n[destination]\nhost = \"b\"");
            let batch =
                validate_batch(b"source_user,source_password,destination_user,destination_password\nu,pw,d,\n", &plain);
            assert!(!batch.is_valid());
        }
    }
}
