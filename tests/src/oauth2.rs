//! A real OAuth2 server for the tests: npm's `oauth2-mock-server` (RS256 JWTs, JWKS,
//! client credentials) started by `tests/oauth2/launcher.mjs` on a free port, with a client
//! registry (secrets, certificates, the mailbox each client's tokens name, their lifetime) and
//! a jwt-bearer endpoint that verifies Google service-account assertions. Stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::dovecot::OAuth2Validation;

const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/oauth2/launcher.mjs");
const PACKAGE: &str = "oauth2-mock-server@8";

/// Where the npm package lives: `MAILHAUL_OAUTH2_MOCK_DIR`, else `~/.cache/mailhaul/oauth2-mock`
/// (scripts/setup.sh installs it there). Installed on first use when npm is available.
pub fn package_dir() -> Result<PathBuf> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let dir = match std::env::var_os("MAILHAUL_OAUTH2_MOCK_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Path::new(&home).join(".cache/mailhaul/oauth2-mock")
        }
    };
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !dir.join("node_modules/oauth2-mock-server/package.json").exists() {
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(PACKAGE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running npm: install nodejs and npm (apt-get install -y nodejs npm, or scripts/setup.sh)")?;
        if !status.success() {
            bail!("npm install {PACKAGE} into {} failed ({status})", dir.display());
        }
    }
    Ok(dir)
}

/// A running OAuth2 server.
#[derive(Debug)]
pub struct OAuthMock {
    pub port: u16,
    /// The `iss` of its tokens.
    pub issuer: String,
    /// The key id of its signing key (what Dovecot looks the public key up by).
    pub kid: String,
    /// Its signing key's public half (PEM).
    pub public_key_pem: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl OAuthMock {
    /// Starts a server. `config` is the launcher's (see tests/oauth2/launcher.mjs): `clients`
    /// and optionally `google`; the request log is added here.
    pub fn start(mut config: serde_json::Value) -> Result<OAuthMock> {
        let package = package_dir()?;
        let dir = tempfile::Builder::new().prefix("mailhaul-oauth2-").tempdir()?;
        config["log"] = serde_json::Value::String(dir.path().join("requests.jsonl").display().to_string());
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut child = Command::new("node")
            .arg(LAUNCHER)
            .arg(&config_path)
            .env("MAILHAUL_OAUTH2_MOCK_DIR", &package)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("running node (apt-get install -y nodejs npm)")?;
        let stdout = child.stdout.take().context("launcher stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let started: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                bail!("the OAuth2 launcher did not start: {line:?}\n{log}");
            }
        };
        let text = |key: &str| started[key].as_str().map(str::to_string).ok_or_else(|| anyhow!("launcher: no {key}"));
        Ok(OAuthMock {
            port: started["port"].as_u64().and_then(|p| u16::try_from(p).ok()).context("launcher: no port")?,
            issuer: text("issuer")?,
            kid: text("kid")?,
            public_key_pem: text("public_key_pem")?,
            child,
            dir,
        })
    }

    /// The client-credentials endpoint.
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The jwt-bearer endpoint for service-account assertions.
    pub fn google_token_url(&self) -> String {
        format!("http://127.0.0.1:{}/google/token", self.port)
    }

    /// What Dovecot needs to validate this server's tokens locally.
    pub fn validation(&self) -> OAuth2Validation {
        OAuth2Validation {
            issuer: self.issuer.clone(),
            kid: self.kid.clone(),
            public_key_pem: self.public_key_pem.clone(),
        }
    }

    /// Every token request so far: `grant`, `client_id`, `status`, and for jwt-bearer the
    /// verified claims (`iss`, `sub`, `scope`, `aud`, `iat`, `exp`) or the `reason` it failed.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for OAuthMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RSA key (PKCS#8 PEM), a self-signed certificate for it and its public key (PEM), made
/// with openssl in `dir`: a service-account key or an app's certificate credential.
pub fn rsa_key_and_certificate(dir: &Path) -> Result<(String, String, String)> {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).stdin(Stdio::null()).output().context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let (k, c, p) = (key.to_string_lossy(), cert.to_string_lossy(), public.to_string_lossy());
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &k])?;
    run(&["req", "-x509", "-new", "-key", &k, "-subj", "/CN=mailhaul test app", "-days", "2", "-out", &c])?;
    run(&["pkey", "-in", &k, "-pubout", "-out", &p])?;
    Ok((std::fs::read_to_string(&key)?, std::fs::read_to_string(&cert)?, std::fs::read_to_string(&public)?))
}
