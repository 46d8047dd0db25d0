//! OAuth2 sign-in against real parts: npm's oauth2-mock-server issues RS256 tokens (its
//! client registry and jwt-bearer endpoint in tests/oauth2/launcher.mjs), Dovecot's
//! `passdb oauth2` validates them locally. No IMAP server is faked.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use mailhaul_common::engine::{copy_mailbox, CopyStatus, ProgressSink, TimeBox};
use mailhaul_common::error::Side;
use mailhaul_common::imap::connect;
use mailhaul_common::model::{AuthMechanism, Endpoint, MailboxJob};
use mailhaul_common::oauth2::{OAuth2Config, Provider};
use mailhaul_tests::corpus::SampleMessage;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed};
use mailhaul_tests::oauth2::{rsa_key_and_certificate, OAuthMock};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");

/// A client of the mock server whose tokens name `email` and live `jwt_ttl` seconds, while
/// the token response says `expires_in`.
fn client(secret: &str, email: &str, jwt_ttl: i64, expires_in: i64) -> serde_json::Value {
    json!({ "secret": secret, "email": email, "jwt_ttl": jwt_ttl, "expires_in": expires_in })
}

fn generic(mock: &OAuthMock, client_id: &str) -> OAuth2Config {
    OAuth2Config {
        provider: Some(Provider::Generic),
        token_url: Some(mock.token_url()),
        client_id: Some(client_id.into()),
        client_secret_env: Some("UNUSED_IN_PROCESS".into()),
        scope: Some("mail".into()),
        ..OAuth2Config::default()
    }
}

/// `user` on `server` signing in with `mechanism` and tokens from `config` with `credential`.
fn oauth_endpoint(
    server: &Dovecot,
    user: &str,
    mechanism: AuthMechanism,
    config: OAuth2Config,
    credential: &str,
) -> Endpoint {
    let mut endpoint = support::endpoint(server, user, credential);
    endpoint.login.mechanism = mechanism;
    endpoint.login.oauth2 = Some(config);
    endpoint
}

/// Successful logins of `user` with `method` (XOAUTH2, OAUTHBEARER) in Dovecot's log.
fn logins(server: &Dovecot, user: &str, method: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| {
            l.contains("Login: user=<") && l.contains(&format!("<{user}>")) && l.contains(&format!("method={method}"))
        })
        .count()
}

/// Tokens Dovecot's oauth2 passdb refused for `user`.
fn refused_tokens(server: &Dovecot, user: &str) -> usize {
    server.log().lines().filter(|l| l.contains(&format!("oauth2({user},")) && !l.contains("Debug")).count()
}

fn oauth_server(mock: &OAuthMock, users: &[(&str, &str)]) -> Dovecot {
    Dovecot::start(DovecotOptions::with_users(users).layout(Layout::None).oauth2(mock.validation())).expect("dovecot")
}

#[tokio::test(flavor = "multi_thread")]
async fn xoauth2_and_oauthbearer_sign_in_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, certificate, _) = rsa_key_and_certificate(dir.path()).expect("key");
    let mock = OAuthMock::start(json!({
        "clients": {
            "app-alice": client("alice-app-secret", "alice", 3600, 3600),
            "app-cert": { "certificate_pem": certificate, "email": "alice", "jwt_ttl": 3600 },
        }
    }))
    .expect("oauth2 server");
    let server = oauth_server(&mock, &[("alice", "alice-pw")]);
    for (mechanism, name) in [(AuthMechanism::Xoauth2, "XOAUTH2"), (AuthMechanism::Oauthbearer, "OAUTHBEARER")] {
        for side in [Side::Source, Side::Destination] {
            let endpoint = oauth_endpoint(&server, "alice", mechanism, generic(&mock, "app-alice"), "alice-app-secret");
            let (mut session, caps) =
                connect(&endpoint, side).await.unwrap_or_else(|e| panic!("{name} {side}: {e}\n{}", server.log()));
            assert!(caps.uidplus);
            session.select("INBOX").await.expect("select");
            session.logout().await.expect("logout");
        }
        assert_eq!(logins(&server, "alice", name), 2, "{name}: {}", server.log());
    }
    // One token for all four logins: cached.
    assert_eq!(mock.requests().len(), 1, "{:?}", mock.requests());

    // A Microsoft certificate credential: a signed client assertion instead of a secret.
    let config = OAuth2Config {
        provider: Some(Provider::Microsoft),
        tenant: Some("contoso".into()),
        client_id: Some("app-cert".into()),
        client_certificate_file: Some(PathBuf::from("unused-in-process.pem")),
        token_url: Some(mock.token_url()),
        ..OAuth2Config::default()
    };
    let endpoint = oauth_endpoint(&server, "alice", AuthMechanism::Xoauth2, config, &format!("{certificate}\n{key}"));
    let (session, _) = connect(&endpoint, Side::Source).await.unwrap_or_else(|e| panic!("certificate: {e}"));
    drop(session);
    let last = mock.requests().pop().expect("a request");
    assert_eq!((last["client_id"].as_str(), last["status"].as_u64()), (Some("app-cert"), Some(200)), "{last}");
    assert_eq!(last["scope"], "https://outlook.office365.com/.default");
}

/// Forwards 127.0.0.1:port to `target` and records what the client sends (plain IMAP only).
fn recording_proxy(target: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { return };
            let (mut client_reader, mut server_writer) =
                (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = client_reader.read(&mut buf) {
                    if n == 0 || server_writer.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    record.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
                let _ = server_writer.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, sent)
}

/// SASL-IR where the server offers it (the response on the AUTHENTICATE line), else the
/// response as a continuation; a refused token's JSON challenge is answered with an empty line.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_ir_only_where_offered() {
    let mock =
        OAuthMock::start(json!({ "clients": { "app": client("app-secret", "alice", 3600, 3600) } })).expect("mock");
    for offered in [true, false] {
        let server = Dovecot::start(
            DovecotOptions::with_users(&[("alice", "pw")])
                .layout(Layout::None)
                .oauth2(mock.validation())
                .sasl_ir(offered),
        )
        .expect("dovecot");
        let (port, sent) = recording_proxy(server.imap_port);
        let mut endpoint =
            oauth_endpoint(&server, "alice", AuthMechanism::Oauthbearer, generic(&mock, "app"), "app-secret");
        endpoint.server.port = port;
        endpoint.server.security = mailhaul_common::model::Security::Plain;
        let (session, _) = connect(&endpoint, Side::Source).await.unwrap_or_else(|e| panic!("{offered}: {e}"));
        drop(session);
        let wire = String::from_utf8_lossy(&sent.lock().expect("lock")).to_string();
        let line = wire.lines().find(|l| l.contains("AUTHENTICATE")).expect("an AUTHENTICATE line");
        let (_tag, first) = line.split_once(' ').expect("a tag");
        // `bixhPWFsaWNlLA` is base64 of `n,a=alice,`.
        if offered {
            assert!(first.starts_with("AUTHENTICATE OAUTHBEARER bixhPWFsaWNlLA"), "SASL-IR: {first}");
        } else {
            assert_eq!(first, "AUTHENTICATE OAUTHBEARER", "continuation");
            assert!(wire.contains("\r\nbixhPWFsaWNlLA"), "the response follows as a continuation");
        }
        assert!(logins(&server, "alice", "OAUTHBEARER") == 1, "{}", server.log());

        // A token for another mailbox: the server's JSON challenge is answered with an empty
        // line, its words and the decoded challenge are reported.
        sent.lock().expect("lock").clear();
        let mut bob = endpoint.clone();
        bob.login.user = "bob".into();
        let Err(error) = connect(&bob, Side::Destination).await else { panic!("a token for alice signed in as bob") };
        let text = error.to_string();
        assert!(!error.is_retryable(), "{text}");
        assert!(text.contains("destination") && text.contains("OAUTHBEARER refused"), "{text}");
        assert!(text.contains("{\"status\":\"invalid_token\"}"), "decoded challenge: {text}");
        let wire = String::from_utf8_lossy(&sent.lock().expect("lock")).to_string();
        assert!(wire.ends_with("\r\n\r\n") || wire.contains("\r\n\r\n"), "an empty answer to the challenge: {wire:?}");
    }
}

/// Kicks `user` off the server (`doveadm kick`) once, after the first confirmed batch and a
/// pause long enough for the token to expire: the engine's next source command finds the
/// connection gone and reconnects.
struct KickOnce {
    server_dir: PathBuf,
    user: String,
    pause: Duration,
    kicked: std::sync::Mutex<Option<String>>,
}

impl ProgressSink for KickOnce {
    fn copied(&self, _mailbox: &str, _folder: &str, _messages: u64, _bytes: u64) {
        let mut kicked = self.kicked.lock().expect("lock");
        if kicked.is_some() {
            return;
        }
        std::thread::sleep(self.pause);
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.server_dir.join("dovecot.conf"))
            .args(["kick", &self.user])
            .output()
            .expect("doveadm");
        *kicked = Some(format!(
            "{} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// Short-lived tokens; the first batch is copied, then the token expires and the source
/// connection is cut. `honest`: the token endpoint says how long the token lives, and mailhaul
/// renews it before it reconnects; else it claims an hour, Dovecot refuses the cached token
/// and mailhaul asks for exactly one new one. Either way every message lands once.
async fn expired_token_is_renewed_on_reconnect(honest: bool) {
    // After a refused token Dovecot delays the next logins from the same address (anvil's auth
    // penalty, doubling per refusal up to 15 s): the renewed token must outlive that. With two
    // pairs refused, CI saw the second pair's login with the new token wait 8 s and find a
    // 10 s token expired; 25 s outlives the longest penalty.
    let (ttl, expires_in) = if honest { (3, 3) } else { (25, 3600) };
    let mock = OAuthMock::start(json!({ "clients": { "app": client("app-secret", "alice", ttl, expires_in) } }))
        .expect("mock");
    let source = oauth_server(&mock, &[("alice", "pw")]);
    let destination =
        Dovecot::start(DovecotOptions::with_users(&[("alice", "pw")]).layout(Layout::None)).expect("dovecot");
    let messages: Vec<_> = (1..=30).map(|n| SampleMessage::new("exp", n).seed()).collect();
    seed(&source, "alice", "pw", "INBOX", &messages).await.expect("seed");
    let mut job: MailboxJob = support::job(&source, &destination);
    job.source = oauth_endpoint(&source, "alice", AuthMechanism::Xoauth2, generic(&mock, "app"), "app-secret");
    let options = mailhaul_common::model::CopyOptions { batch_messages: 5, ..Default::default() };
    let store = mailhaul_common::sqlite::SqliteStore::in_memory().expect("store");
    let sink = KickOnce {
        server_dir: source.dir.clone(),
        user: "alice".into(),
        pause: Duration::from_secs(ttl as u64 + 1),
        kicked: std::sync::Mutex::new(None),
    };
    // As `mailhaul run` does: a connection lost outside a fetch is retried by a new call.
    let mut calls = 0;
    loop {
        calls += 1;
        match copy_mailbox(&job, &options, &store, &sink, &TimeBox::unlimited()).await {
            Ok(outcome) if outcome.status == CopyStatus::Done => break,
            Ok(_) => panic!("stopped without a deadline"),
            Err(e) if e.is_retryable() && calls < 4 => eprintln!("retrying after: {e}"),
            Err(e) => panic!("{e}\n{}", source.log()),
        }
    }
    let kicked = sink.kicked.lock().expect("lock").clone().expect("kicked mid-run");
    assert!(kicked.starts_with("exit status: 0"), "{kicked}");
    let copied = dump(&destination, "alice", "pw").await.expect("dump");
    let original = dump(&source, "alice", "pw").await.expect("dump");
    let bodies = |d: &std::collections::BTreeMap<String, Vec<mailhaul_tests::DumpedMessage>>| {
        let mut b: Vec<_> = d["INBOX"].iter().map(|m| m.body.clone()).collect();
        b.sort();
        b
    };
    assert_eq!(bodies(&copied), bodies(&original), "every message exactly once");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2, "the first token and one renewal: {requests:?}");
    // The pairs log in side by side, so each may present the stale token before either is
    // refused; the renewal is still one request, taken by all of them.
    let refused = refused_tokens(&source, "alice");
    if honest {
        assert_eq!(refused, 0, "{}", source.log());
    } else {
        assert!((1..=options.connections_per_mailbox).contains(&refused), "{refused} refused\n{}", source.log());
    }
    assert!(logins(&source, "alice", "XOAUTH2") >= 2, "{}", source.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_renewed_before_the_reconnect() {
    expired_token_is_renewed_on_reconnect(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_the_server_refuses_gets_exactly_one_new_token() {
    expired_token_is_renewed_on_reconnect(false).await;
}

/// A batch run of the `mailhaul` binary at trace level.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Full-form CSV rows (source user, source password, destination user, destination password).
    fn csv(&self, source: &Dovecot, destination: &Dovecot, rows: &[(&str, &str, &str, &str)]) -> PathBuf {
        let mut csv = String::from("source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n");
        for (su, sp, du, dp) in rows {
            csv.push_str(&format!(
                "127.0.0.1,{},tls,{su},{sp},127.0.0.1,{},tls,{du},{dp}\n",
                source.imaps_port, destination.imaps_port
            ));
        }
        let path = self.path("batch.csv");
        std::fs::write(&path, csv).expect("csv");
        path
    }

    fn settings(&self, text: &str) -> PathBuf {
        let path = self.path("mailhaul.toml");
        std::fs::write(&path, text).expect("settings");
        path
    }

    fn mailhaul(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(BIN);
        command.env("MAILHAUL_LOG", "trace").args(args).current_dir(self.dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("mailhaul");
        eprintln!("--- mailhaul {args:?} ---\n{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn run(&self, env: &[(&str, &str)]) -> Output {
        self.mailhaul(
            &["run", "batch.csv", "--config", "mailhaul.toml", "--state", "state.sqlite", "--report-dir", "report"],
            env,
        )
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("report/report.json")).expect("report")).expect("json")
    }

    /// Nothing mailhaul wrote (its trace log included) holds a token, an assertion or any
    /// of `secrets`.
    fn assert_no_secrets(&self, outputs: &[&Output], secrets: &[&str]) {
        let mut texts: Vec<(String, Vec<u8>)> = outputs
            .iter()
            .map(|o| ("stderr+stdout".to_string(), [o.stderr.clone(), o.stdout.clone()].concat()))
            .collect();
        for file in
            ["state.sqlite", "report/report.csv", "report/report.json", "report/report.html", "report/failed.csv"]
        {
            texts.push((file.to_string(), std::fs::read(self.path(file)).unwrap_or_default()));
        }
        // "eyJ" starts every JWT (base64 of `{"`): tokens and signed assertions alike.
        for (name, bytes) in texts {
            for needle in secrets.iter().copied().chain(["eyJ", "Bearer ", "PRIVATE KEY"]) {
                assert!(!contains(&bytes, needle.as_bytes()), "{needle:?} found in {name}");
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn server_settings(source: &Dovecot, destination: &Dovecot) -> String {
    format!(
        "workers = 1\n[source]\nca_file = {:?}\n[destination]\nca_file = {:?}\n",
        source.cert_path, destination.cert_path
    )
}

fn generic_table(side: &str, mock: &OAuthMock, client_id: &str) -> String {
    format!(
        "[{side}.oauth2]\nprovider = \"generic\"\ntoken_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_env = \"MH_TEST_CLIENT_SECRET\"\nscope = \"mail\"\n",
        mock.token_url()
    )
}

type Dump = std::collections::BTreeMap<String, Vec<mailhaul_tests::DumpedMessage>>;

fn bodies(dump: &Dump) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = dump.iter().flat_map(|(f, ms)| ms.iter().map(move |m| (f.clone(), m.body.clone()))).collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mailbox_migrates_with_oauth2_on_either_side() {
    const SECRET: &str = "alice-app-secret-7Qx";
    let mock =
        OAuthMock::start(json!({ "clients": { "app-alice": client(SECRET, "alice", 3600, 3600) } })).expect("mock");
    let source = oauth_server(&mock, &[("alice", "alice-pw")]);
    let middle =
        Dovecot::start(DovecotOptions::with_users(&[("alice", "alice-pw")]).layout(Layout::None)).expect("dovecot");
    let last = oauth_server(&mock, &[("alice", "alice-pw")]);
    let inbox: Vec<_> = (1..=12).map(|n| SampleMessage::new("in", n).seed()).collect();
    seed(&source, "alice", "alice-pw", "INBOX", &inbox).await.expect("seed");
    seed(&source, "alice", "alice-pw", "Projects", &[SampleMessage::new("p", 1).seed()]).await.expect("seed");
    let env = [("MH_TEST_CLIENT_SECRET", SECRET)];

    // OAuth2 (XOAUTH2) on the source, a password on the destination; the source password
    // cell is empty.
    let first = Run::new();
    first.csv(&source, &middle, &[("alice", "", "alice", "alice-pw")]);
    first.settings(&format!("{}{}", server_settings(&source, &middle), generic_table("source", &mock, "app-alice")));
    let out = first.run(&env);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let original = dump(&source, "alice", "alice-pw").await.expect("dump");
    assert_eq!(bodies(&dump(&middle, "alice", "alice-pw").await.expect("dump")), bodies(&original));
    assert!(logins(&source, "alice", "XOAUTH2") >= 1, "{}", source.log());
    first.assert_no_secrets(&[&out], &[SECRET, "alice-pw"]);

    // The reverse: a password on the source, OAUTHBEARER on the destination (its cell empty).
    let second = Run::new();
    second.csv(&middle, &last, &[("alice", "alice-pw", "alice", "")]);
    second.settings(&format!(
        "{}auth = \"oauthbearer\"\n{}",
        server_settings(&middle, &last),
        generic_table("destination", &mock, "app-alice")
    ));
    let out = second.run(&env);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bodies(&dump(&last, "alice", "alice-pw").await.expect("dump")), bodies(&original));
    assert!(logins(&last, "alice", "OAUTHBEARER") >= 1, "{}", last.log());
    second.assert_no_secrets(&[&out], &[SECRET, "alice-pw"]);
}

/// Why rows fail, and that nothing is tried twice: a token for another mailbox, a wrong client
/// secret, a server that refuses every token. `validate --check` names the failing step.
#[tokio::test(flavor = "multi_thread")]
async fn refused_tokens_fail_the_row_once_with_the_step_and_the_others_finish() {
    let mock = OAuthMock::start(json!({ "clients": {
        "app-bob": client("bob-app-secret", "bob", 3600, 3600),
        "app-stale": client("stale-app-secret", "alice", -120, 3600),
    } }))
    .expect("mock");
    let users = [("alice", "alice-pw"), ("bob", "bob-pw")];
    let source = oauth_server(&mock, &users);
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("dovecot");
    for user in ["alice", "bob"] {
        seed(&source, user, &format!("{user}-pw"), "INBOX", &[SampleMessage::new(user, 1).seed()]).await.expect("seed");
    }
    let rows = [("bob", "", "bob", "bob-pw"), ("alice", "", "alice", "alice-pw")];

    // 1. The app's tokens name bob: bob's row is done; alice's fails at the IMAP step after
    // the cached token and exactly one new token were refused.
    let run = Run::new();
    run.csv(&source, &destination, &rows);
    run.settings(&format!("{}{}", server_settings(&source, &destination), generic_table("source", &mock, "app-bob")));
    let out = run.run(&[("MH_TEST_CLIENT_SECRET", "bob-app-secret")]);
    assert_eq!(out.status.code(), Some(1));
    let report = run.report();
    let (bob, alice) = (&report["mailboxes"][0], &report["mailboxes"][1]);
    assert_eq!((alice["status"].as_str(), bob["status"].as_str()), (Some("failed"), Some("done")), "{report}");
    let error = alice["error"].as_str().unwrap_or("");
    assert!(
        error.contains("XOAUTH2 refused a new token from generic") && error.contains("\"status\":\"401\""),
        "{error}"
    );
    assert!(alice["hint"].as_str().unwrap_or("").contains("issued for this mailbox"), "{alice}");
    assert_eq!(refused_tokens(&source, "alice"), 2, "the cached token, one new one, no more: {}", source.log());
    assert_eq!(mock.requests().len(), 2, "the tenant's token, and one renewal after the refusal");
    run.assert_no_secrets(&[&out], &["bob-app-secret"]);

    // validate --check logs in for every row and says which step failed.
    let out = run.mailhaul(
        &["validate", "batch.csv", "--config", "mailhaul.toml", "--check", "--json"],
        &[("MH_TEST_CLIENT_SECRET", "bob-app-secret")],
    );
    assert_eq!(out.status.code(), Some(1));
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let alice_error = check["check"][1]["source"]["error"].as_str().unwrap_or("");
    assert!(alice_error.contains("login failed for alice: XOAUTH2 refused"), "{check}");
    assert!(check["check"][0]["source"]["error"].is_null(), "bob signs in: {check}");
    run.assert_no_secrets(&[&out], &["bob-app-secret"]);

    // 2. A wrong client secret: the token step fails for each row, once, and no IMAP login
    // is even tried.
    let before = (mock.requests().len(), refused_tokens(&source, "alice"), refused_tokens(&source, "bob"));
    let wrong = Run::new();
    wrong.csv(&source, &destination, &rows);
    wrong.settings(&format!("{}{}", server_settings(&source, &destination), generic_table("source", &mock, "app-bob")));
    let out = wrong.run(&[("MH_TEST_CLIENT_SECRET", "not-the-secret")]);
    assert_eq!(out.status.code(), Some(1));
    for row in wrong.report()["mailboxes"].as_array().expect("rows") {
        assert_eq!(row["status"], "failed");
        let error = row["error"].as_str().unwrap_or("");
        assert!(
            error.contains("OAuth2 token from generic")
                && error.contains("refused the client (HTTP 401): invalid_client: AADSTS7000215"),
            "{error}"
        );
        assert!(row["hint"].as_str().unwrap_or("").contains("client secret"), "{row}");
    }
    assert_eq!(mock.requests().len(), before.0 + 2, "one token request per row: {:?}", mock.requests());
    assert_eq!((refused_tokens(&source, "alice"), refused_tokens(&source, "bob")), (before.1, before.2));
    let out = wrong.mailhaul(
        &["validate", "batch.csv", "--config", "mailhaul.toml", "--check"],
        &[("MH_TEST_CLIENT_SECRET", "not-the-secret")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("row 1 source: source: OAuth2 token from generic") && stderr.contains("invalid_client"),
        "{stderr}"
    );
    wrong.assert_no_secrets(&[&out], &["not-the-secret"]);

    // 3. The server refuses every token of this app (expired when issued): the row fails
    // after one attempt with a new token, which is not asked for again.
    let before = (mock.requests().len(), refused_tokens(&source, "alice"));
    let stale = Run::new();
    stale.csv(&source, &destination, &rows[1..]);
    stale.settings(&format!(
        "{}{}",
        server_settings(&source, &destination),
        generic_table("source", &mock, "app-stale")
    ));
    let out = stale.run(&[("MH_TEST_CLIENT_SECRET", "stale-app-secret")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stale.report()["mailboxes"][0]["status"], "failed");
    assert_eq!(mock.requests().len(), before.0 + 1);
    assert_eq!(refused_tokens(&source, "alice"), before.1 + 1, "{}", source.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_google_service_account_signs_in_as_each_mailbox() {
    let run = Run::new();
    let (key, _, public) = rsa_key_and_certificate(run.dir.path()).expect("key");
    const ACCOUNT: &str = "migrator@mailhaul-test.iam.gserviceaccount.com";
    let mock =
        OAuthMock::start(json!({ "clients": {}, "google": { "client_email": ACCOUNT, "public_key_pem": public } }))
            .expect("mock");
    let key_file = run.path("service-account.json");
    let key_json = json!({
        "type": "service_account",
        "client_email": ACCOUNT,
        "private_key_id": "test-key-1",
        "private_key": key,
        "token_uri": mock.google_token_url(),
    });
    std::fs::write(&key_file, key_json.to_string()).expect("key file");
    let users = [("alice", "alice-pw"), ("bob", "bob-pw")];
    let source = oauth_server(&mock, &users);
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("dovecot");
    for user in ["alice", "bob"] {
        let messages: Vec<_> = (1..=4).map(|n| SampleMessage::new(user, n).seed()).collect();
        seed(&source, user, &format!("{user}-pw"), "INBOX", &messages).await.expect("seed");
    }
    run.csv(&source, &destination, &[("alice", "", "alice", "alice-pw"), ("bob", "", "bob", "bob-pw")]);
    run.settings(&format!(
        "{}[source.oauth2]\nprovider = \"google\"\nservice_account_file = {key_file:?}\n",
        server_settings(&source, &destination)
    ));
    let out = run.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for user in ["alice", "bob"] {
        let pw = format!("{user}-pw");
        assert_eq!(
            bodies(&dump(&destination, user, &pw).await.expect("dump")),
            bodies(&dump(&source, user, &pw).await.expect("dump"))
        );
    }
    // The endpoint verified each assertion against the key's public half; its claims:
    let requests = mock.requests();
    let mut subjects: Vec<&str> = requests.iter().filter_map(|r| r["sub"].as_str()).collect();
    subjects.sort();
    assert_eq!(subjects, ["alice", "bob"], "one token per mailbox: {requests:?}");
    for r in &requests {
        assert_eq!((r["grant"].as_str(), r["status"].as_u64()), (Some("jwt-bearer"), Some(200)), "{r}");
        assert_eq!(r["iss"], ACCOUNT);
        assert_eq!(r["scope"], "https://mail.google.com/");
        assert_eq!(r["aud"].as_str(), Some(mock.google_token_url().as_str()));
        assert_eq!(r["kid"], "test-key-1");
        let (iat, exp) = (r["iat"].as_u64().expect("iat"), r["exp"].as_u64().expect("exp"));
        assert!(exp > iat && exp - iat <= 3600, "{r}");
    }
    let key_body = key.lines().nth(1).expect("a line of the key");
    run.assert_no_secrets(&[&out], &[key_body]);
}
