//! Smoke tests of the harness itself: real Dovecots start side by side, seed and dump round
//! trip exactly, the master user, TLS certificate, layouts, separator and capability options
//! do what they claim, and the delay proxy adds latency.

use std::time::{Duration, Instant};

use mailhaul_tests::{corpus, imap, DelayProxy, Dovecot, DovecotOptions, Layout, SampleMessage, SeedMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_seed_and_dump_round_trip() {
    let a = Dovecot::start(DovecotOptions::with_users(&[("alice", "pw-a")])).unwrap();
    let b = Dovecot::start(DovecotOptions::with_users(&[("alice", "pw-b")])).unwrap();
    assert_ne!(a.imap_port, b.imap_port);

    let inbox = corpus::mailbox("inbox", 12);
    let nested = vec![SeedMessage::new(SampleMessage::new("nested", 1).build())
        .flags(&["\\Answered", "$Custom"])
        .date("02-Jan-2006 15:04:05 +0000")];
    imap::seed(&a, "alice", "pw-a", "INBOX", &inbox).await.unwrap();
    imap::seed(&a, "alice", "pw-a", "Projects/2019/Q1", &nested).await.unwrap();
    imap::seed(&a, "alice", "pw-a", "Migración/Año", &inbox[..2]).await.unwrap();

    let dump = imap::dump(&a, "alice", "pw-a").await.unwrap();
    let names: Vec<&str> = dump.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Archive",
            "Drafts",
            "INBOX",
            "Junk",
            "Migración",
            "Migración/Año",
            "Projects",
            "Projects/2019",
            "Projects/2019/Q1",
            "Sent",
            "Trash"
        ],
        "{}",
        a.log()
    );
    let got = &dump["INBOX"];
    assert_eq!(got.len(), 12);
    for (seeded, dumped) in inbox.iter().zip(got) {
        assert_eq!(dumped.body, seeded.raw, "body bytes differ for uid {}", dumped.uid);
        assert_eq!(Some(&dumped.internal_date), seeded.internal_date.as_ref());
        let want: std::collections::BTreeSet<String> = seeded.flags.iter().cloned().collect();
        assert_eq!(dumped.flags, want);
    }
    assert!(got[2].flags.contains("\\Seen") && got[6].flags.contains("$Label1"));
    let q1 = &dump["Projects/2019/Q1"];
    assert_eq!(q1[0].internal_date, "02-Jan-2006 15:04:05 +0000");
    assert_eq!(q1[0].flags, ["$Custom", "\\Answered"].map(String::from).into());
    assert_eq!(dump["Migración/Año"].len(), 2);
    assert!(dump["Projects"].is_empty());

    // The other server is independent: same user name, own mail, own password.
    let other = imap::dump(&b, "alice", "pw-b").await.unwrap();
    assert!(other["INBOX"].is_empty());
    assert!(imap::login(&b, "alice", "pw-a").await.is_err());

    // The non-ASCII folder is stored in modified UTF-7 on the wire.
    let mut session = imap::login(&a, "alice", "pw-a").await.unwrap();
    let raw: Vec<String> = {
        use futures::TryStreamExt;
        let names: Vec<_> = session.list(Some(""), Some("Migr*")).await.unwrap().try_collect().await.unwrap();
        names.iter().map(|n| n.name().to_string()).collect()
    };
    assert!(raw.contains(&"Migraci&APM-n/A&APE-o".to_string()), "{raw:?}");
    session.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_user_logs_in_as_the_user() {
    let server = Dovecot::start(
        DovecotOptions::with_users(&[("user1", "secret1"), ("user2", "secret2")]).master("admin", "adminpass"),
    )
    .unwrap();
    imap::seed(&server, "user1", "secret1", "INBOX", &corpus::mailbox("m", 3)).await.unwrap();
    let as_master = imap::dump(&server, "user1*admin", "adminpass").await.unwrap();
    assert_eq!(as_master["INBOX"].len(), 3, "{}", server.log());
    // The master password does not work without the separator, nor for unknown users.
    // Concurrently: Dovecot holds each refused connection for seconds.
    let (bare, unknown, wrong) = tokio::join!(
        imap::login(&server, "admin", "adminpass"),
        imap::login(&server, "nobody*admin", "adminpass"),
        imap::login(&server, "user2*admin", "wrong"),
    );
    assert!(bare.is_err() && unknown.is_err() && wrong.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_presents_a_certificate_signed_by_cert_path() {
    let server = Dovecot::start(DovecotOptions::with_users(&[("u", "p")])).unwrap();
    for name in ["127.0.0.1", "localhost"] {
        let mut session = imap::login_tls(&server, name, "u", "p").await.unwrap();
        session.noop().await.unwrap();
        session.logout().await.unwrap();
    }
    // Verification is real: another server's CA does not vouch for this one.
    let other = Dovecot::start(DovecotOptions::with_users(&[("u", "p")])).unwrap();
    let config = imap::tls_config(&other.cert_path).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.imaps_port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await;
    assert!(handshake.is_err(), "a foreign CA must not verify this server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_layout_dot_separator_and_no_literal_plus() {
    let server = Dovecot::start(
        DovecotOptions::with_users(&[("u", "p")]).layout(Layout::Outlook).separator('.').literal_plus(false),
    )
    .unwrap();
    let mut session = imap::login(&server, "u", "p").await.unwrap();
    let caps = session.capabilities().await.unwrap();
    assert!(!caps.has_str("LITERAL+") && !caps.has_str("LITERAL-"));
    assert!(caps.has_str("UIDPLUS") && caps.has_str("SPECIAL-USE"));
    let folders = imap::folders(&mut session).await.unwrap();
    session.logout().await.unwrap();
    let sent = folders.iter().find(|f| f.name == "Sent Items").expect("Sent Items exists");
    assert!(sent.attributes.iter().any(|a| a == "\\Sent"), "{:?}", sent.attributes);
    for name in ["Deleted Items", "Junk Email", "Drafts", "Archive"] {
        assert!(folders.iter().any(|f| f.name == name), "{name} missing: {folders:?}");
    }

    // '.' is the separator: a dotted name nests, and the plain APPEND path works.
    imap::seed(&server, "u", "p", "Clients.Acme", &corpus::mailbox("acme", 2)).await.unwrap();
    let dump = imap::dump(&server, "u", "p").await.unwrap();
    assert!(dump.contains_key("Clients") && dump["Clients.Acme"].len() == 2, "{:?}", dump.keys());

    // The default server does announce LITERAL+.
    let plain = Dovecot::start(DovecotOptions::with_users(&[("u", "p")]).layout(Layout::None)).unwrap();
    let mut session = imap::login(&plain, "u", "p").await.unwrap();
    assert!(session.capabilities().await.unwrap().has_str("LITERAL+"));
    session.logout().await.unwrap();
    assert_eq!(imap::dump(&plain, "u", "p").await.unwrap().keys().collect::<Vec<_>>(), ["INBOX"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_proxy_adds_round_trip_time() {
    let server = Dovecot::start(DovecotOptions::with_users(&[("u", "p")])).unwrap();
    let proxy = DelayProxy::start(([127, 0, 0, 1], server.imap_port).into(), Duration::from_millis(25)).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.unwrap().unwrap();
    let mut session = client.login("u", "p").await.map_err(|(e, _)| e).unwrap();
    let start = Instant::now();
    for _ in 0..4 {
        session.noop().await.unwrap();
    }
    let per_rtt = start.elapsed() / 4;
    assert!(per_rtt >= Duration::from_millis(50), "{per_rtt:?}");
    assert!(per_rtt < Duration::from_millis(500), "{per_rtt:?}");
}

#[test]
fn dropping_the_server_stops_it() {
    let server = Dovecot::start(DovecotOptions::with_users(&[("u", "p")])).unwrap();
    let (port, pid, dir) = (server.imap_port, server.pid, server.dir.clone());
    drop(server);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie reaped later by init still has a /proc entry; it must not be running.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z")).unwrap_or(true)
        }
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists(), "temp dir removed");
}
