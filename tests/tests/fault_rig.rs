//! The fault rig against real Dovecot: the fault proxy passes bytes untouched, cuts (RST) after
//! exactly N bytes, stalls until released, follows a seeded or changed policy and reports what
//! fired; the source snapshot sees every change and makes none; a message made unreadable
//! breaks its own FETCH only.

use std::io::ErrorKind;
use std::time::Duration;

use futures::TryStreamExt;
use mailhaul_tests::imap::{self, login_at, login_tls_at, snapshot};
use mailhaul_tests::{
    corpus, Direction, Dovecot, DovecotOptions, FaultPlan, FaultPolicy, FaultProxy, Layout, SampleMessage, SeedMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn server() -> Dovecot {
    Dovecot::start(DovecotOptions::with_users(&[("alice", "pw")]).layout(Layout::None)).expect("dovecot")
}

fn target(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Three small messages around one of about 300 KB, so a FETCH of the big one is long.
fn messages() -> Vec<SeedMessage> {
    vec![
        SampleMessage::new("small", 1).seed().flags(&["\\Seen"]),
        SampleMessage::new("big", 2).attachment(300_000).seed(),
        SampleMessage::new("small", 3).seed().flags(&["\\Flagged", "$Label1"]),
    ]
}

/// A server holding [`messages`], a proxy in front of it that plans `plan` for every
/// connection, and a session through the proxy with INBOX examined. Greeting, LOGIN and
/// EXAMINE answers take well under 5 KB, so a fault after 100 KB from the server lands inside
/// the 300 KB message's literal.
async fn examined_through(plan: FaultPlan) -> (Dovecot, FaultProxy, imap::Session) {
    let server = server();
    imap::seed(&server, "alice", "pw", "INBOX", &messages()).await.expect("seed");
    let proxy = FaultProxy::start(target(server.imap_port), FaultPolicy::always(plan)).expect("proxy");
    let mut session = login_at(proxy.port, "alice", "pw").await.expect("login passes before the fault");
    session.examine("INBOX").await.expect("examine passes before the fault");
    (server, proxy, session)
}

/// Read until the peer closes or fails: what arrived, and how it ended.
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Err(_) => panic!("the peer neither closed nor failed within 10 s"),
            Ok(Ok(0)) => return (got, None),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Some(e.kind())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_is_transparent_over_plain_and_tls() {
    let server = server();
    imap::seed(&server, "alice", "pw", "INBOX", &messages()).await.expect("seed");
    let direct = imap::dump(&server, "alice", "pw").await.expect("dump")["INBOX"].clone();

    let plain = FaultProxy::start(target(server.imap_port), FaultPolicy::pass_all()).expect("proxy");
    let tls = FaultProxy::start(target(server.imaps_port), FaultPolicy::pass_all()).expect("proxy");
    let mut session = login_at(plain.port, "alice", "pw").await.expect("login through the proxy");
    let through_plain = fetch_bodies(&mut session, "INBOX", "1:*").await.expect("fetch");
    session.logout().await.expect("logout");
    let mut session = login_tls_at(tls.port, &server.cert_path, "localhost", "alice", "pw").await.expect("TLS login");
    let through_tls = fetch_bodies(&mut session, "INBOX", "1:*").await.expect("fetch");
    session.logout().await.expect("logout");

    let want: Vec<Vec<u8>> = direct.iter().map(|m| m.body.clone()).collect();
    assert_eq!(want.len(), 3);
    assert_eq!(through_plain, want, "bytes through the plain proxy differ");
    assert_eq!(through_tls, want, "bytes through the TLS proxy differ");
    assert_eq!((plain.connections(), tls.connections()), (1, 1));
    assert!(plain.fired().is_empty() && tls.fired().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_fetch_resets_the_client() {
    let plan = FaultPlan::CutAfter { direction: Direction::ServerToClient, bytes: 100_000 };
    let (_server, proxy, mut session) = examined_through(plan).await;
    assert!(proxy.fired().is_empty(), "nothing fired before the FETCH");
    let fetched: Result<Vec<_>, _> = match session.uid_fetch("2", "BODY.PEEK[]").await {
        Ok(stream) => stream.try_collect().await,
        Err(e) => Err(e),
    };
    let error = fetched.expect_err("a FETCH cut in the middle must fail");
    match &error {
        async_imap::error::Error::Io(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{error:?}"),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    assert_eq!(proxy.fired(), vec![(0, plan)]);
}

/// Exactly N bytes reach the client, then a reset (not a clean close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_forwards_exactly_n_server_bytes_then_resets() {
    let server = server();
    let plan = FaultPlan::CutAfter { direction: Direction::ServerToClient, bytes: 17 };
    let proxy = FaultProxy::start(target(server.imap_port), FaultPolicy::always(plan)).expect("proxy");
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.expect("connect");
    let (got, end) = read_to_end(&mut client).await;
    assert_eq!(String::from_utf8_lossy(&got), "* OK [CAPABILITY ", "the first 17 bytes of the greeting");
    assert_eq!(end, Some(ErrorKind::ConnectionReset));
    assert_eq!(proxy.fired(), vec![(0, plan)]);
}

/// Exactly N client bytes reach the server, then a reset. The far end here is a plain socket
/// that counts bytes: the proxy is under test, not an IMAP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_forwards_exactly_n_client_bytes_then_resets() {
    let sink = TcpListener::bind("127.0.0.1:0").await.expect("sink");
    let sink_addr = sink.local_addr().expect("addr");
    let plan = FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: 300 };
    let proxy = FaultProxy::start(sink_addr, FaultPolicy::always(plan)).expect("proxy");
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.expect("connect");
    let (mut far, _) = sink.accept().await.expect("accept");
    let payload: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    // The proxy may reset before all 1000 bytes are written: that error is the point.
    let _ = client.write_all(&payload).await;
    let (got, end) = read_to_end(&mut far).await;
    assert_eq!(got, payload[..300], "exactly the first 300 bytes");
    assert_eq!(end, Some(ErrorKind::ConnectionReset), "the server side is reset too");
    let (_, client_end) = read_to_end(&mut client).await;
    assert_eq!(client_end, Some(ErrorKind::ConnectionReset), "the client side is reset");
    assert_eq!(proxy.fired(), vec![(0, plan)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_makes_the_client_time_out_until_released() {
    let plan = FaultPlan::StallAfter { direction: Direction::ServerToClient, bytes: 100_000 };
    let (_server, proxy, mut session) = examined_through(plan).await;
    assert!(proxy.fired().is_empty(), "nothing fired before the FETCH");
    let fetch = async {
        let stream = session.uid_fetch("2", "BODY.PEEK[]").await?;
        stream.try_collect::<Vec<_>>().await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(2), fetch).await;
    assert!(outcome.is_err(), "a stalled FETCH neither ends nor fails: the client must time out");
    assert_eq!(proxy.fired(), vec![(0, plan)]);

    // Released, the stalled connection closes: the client learns it at once.
    proxy.release_stalls();
    let noop = tokio::time::timeout(Duration::from_secs(5), session.noop()).await;
    assert!(matches!(noop, Ok(Err(_))), "after release the connection is closed, got {noop:?}");
}

/// A seeded policy cuts the connections it names at repeatable points and spares the rest;
/// a new policy takes effect for the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_cuts_then_a_clean_pass_and_a_policy_change() {
    let server = server();
    // The client's first bytes are its LOGIN command (about 25 bytes): cuts inside it.
    let bytes = 1..20;
    let proxy = FaultProxy::start(
        target(server.imap_port),
        FaultPolicy::seeded_cuts(11, 0..3, Direction::ClientToServer, bytes.clone()),
    )
    .expect("proxy");
    for attempt in 0..3 {
        assert!(login_at(proxy.port, "alice", "pw").await.is_err(), "attempt {attempt} must be cut");
    }
    let mut session = login_at(proxy.port, "alice", "pw").await.expect("the fourth connection passes");
    session.noop().await.expect("noop");
    session.logout().await.expect("logout");

    let fired = proxy.fired();
    assert_eq!(fired.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2], "{fired:?}");
    let mut same_seed = FaultPolicy::seeded_cuts(11, 0..3, Direction::ClientToServer, bytes.clone());
    for (index, plan) in &fired {
        let FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: n } = plan else {
            panic!("{plan:?}");
        };
        assert!(bytes.contains(n));
        assert_eq!(*plan, same_seed.plan(*index), "the same seed repeats the same cut");
    }

    proxy.set_policy(FaultPolicy::always(FaultPlan::CutAfter { direction: Direction::ServerToClient, bytes: 5 }));
    assert!(login_at(proxy.port, "alice", "pw").await.is_err(), "the new policy cuts the greeting");
    proxy.pass_all();
    login_at(proxy.port, "alice", "pw").await.expect("passes again").logout().await.expect("logout");
    assert_eq!(proxy.connections(), 6);
    assert_eq!(proxy.fired().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sees_every_change_and_makes_none() {
    let server = server();
    imap::seed(&server, "alice", "pw", "INBOX", &messages()).await.expect("seed");
    imap::seed(&server, "alice", "pw", "Projects/Q1", &corpus::mailbox("q1", 2)).await.expect("seed");
    imap::seed(&server, "alice", "pw", "Empty", &[]).await.expect("seed");

    let before = snapshot(&server, "alice", "pw").await.expect("snapshot");
    assert_eq!(before.folders.keys().collect::<Vec<_>>(), ["Empty", "INBOX", "Projects", "Projects/Q1"]);
    let inbox = &before.folders["INBOX"];
    assert_eq!((inbox.messages, inbox.uid_next), (3, 4));
    assert!(inbox.uid_validity > 0 && inbox.highest_modseq.is_some_and(|m| m > 0), "{inbox:?}");
    let flags = |list: &[&str]| list.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    assert_eq!(inbox.flags, vec![(1, flags(&["\\Seen"])), (2, vec![]), (3, flags(&["$Label1", "\\Flagged"]))]);
    assert_eq!(before.folders["Empty"].messages, 0);
    assert_eq!(snapshot(&server, "alice", "pw").await.expect("snapshot"), before, "nothing changed");

    // Neither snapshot SELECTed INBOX: the first SELECT still finds every message \Recent.
    let mut session = imap::login(&server, "alice", "pw").await.expect("login");
    let selected = session.select("INBOX").await.expect("select");
    assert_eq!(selected.recent, 3, "a snapshot consumed \\Recent");

    // A flag change, a new message and an expunge each show.
    session.run_command_and_check_ok("UID STORE 2 +FLAGS.SILENT (\\Answered)").await.expect("store");
    let flagged = snapshot(&server, "alice", "pw").await.expect("snapshot");
    assert_ne!(flagged, before);
    assert_eq!(flagged.folders["INBOX"].flags[1], (2, flags(&["\\Answered"])));
    assert!(flagged.folders["INBOX"].highest_modseq > before.folders["INBOX"].highest_modseq);
    imap::seed(&server, "alice", "pw", "Projects/Q1", &corpus::mailbox("late", 1)).await.expect("seed");
    let appended = snapshot(&server, "alice", "pw").await.expect("snapshot");
    assert_eq!(appended.folders["Projects/Q1"].uid_next, before.folders["Projects/Q1"].uid_next + 1);
    session.run_command_and_check_ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)").await.expect("store");
    session.expunge().await.expect("expunge").try_collect::<Vec<_>>().await.expect("expunge");
    let expunged = snapshot(&server, "alice", "pw").await.expect("snapshot");
    assert_eq!(expunged.folders["INBOX"].messages, 2);
    assert_eq!(expunged.folders["INBOX"].flags.iter().map(|(uid, _)| *uid).collect::<Vec<_>>(), [2, 3]);
    session.logout().await.expect("logout");
}

/// EXAMINE `folder` and fetch the bodies of `uids`, in the server's order.
async fn fetch_bodies<T>(session: &mut async_imap::Session<T>, folder: &str, uids: &str) -> anyhow::Result<Vec<Vec<u8>>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    session.examine(folder).await?;
    let fetched: Vec<_> = session.uid_fetch(uids, "BODY.PEEK[]").await?.try_collect().await?;
    Ok(fetched.iter().map(|f| f.body().unwrap_or_default().to_vec()).collect())
}

/// Every body of one of alice's folders, on a connection of its own.
async fn bodies(server: &Dovecot, folder: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut session = imap::login(server, "alice", "pw").await?;
    let out = fetch_bodies(&mut session, folder, "1:*").await;
    session.logout().await.ok();
    out
}

/// Send `commands` on a fresh plain connection and read until the server closes (or 10 s).
async fn raw_session(port: u16, commands: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(commands.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_breaks_only_its_own_fetch() {
    let server = server();
    let seeded = messages();
    imap::seed(&server, "alice", "pw", "INBOX", &seeded).await.expect("seed");
    imap::seed(&server, "alice", "pw", "Projects/Q1", &seeded).await.expect("seed");

    // The file found for each UID holds exactly that message (maildir stores LF line ends).
    for folder in ["INBOX", "Projects/Q1"] {
        for (uid, message) in (1..).zip(&seeded) {
            let file = server.message_file("alice", folder, uid).expect("message file");
            let stored = String::from_utf8(std::fs::read(&file).expect("read")).expect("ASCII message");
            let sent = String::from_utf8(message.raw.clone()).expect("ASCII message").replace("\r\n", "\n");
            assert!(stored == sent, "{folder} UID {uid}: {} holds another message", file.display());
        }
    }
    let before = snapshot(&server, "alice", "pw").await.expect("snapshot");

    let file = server.make_unreadable("alice", "Projects/Q1", 2).expect("make unreadable");
    let fetch_2 = "a LOGIN alice pw\r\nb EXAMINE \"Projects/Q1\"\r\nc UID FETCH 2 BODY.PEEK[]\r\nd LOGOUT\r\n";
    for _ in 0..2 {
        let reply = raw_session(server.imap_port, fetch_2).await;
        assert!(reply.contains("* BYE FETCH failed: Internal error occurred"), "{reply}");
        assert!(!reply.contains("d OK"), "the server closed the connection: {reply}");
    }
    // The other messages, the same message elsewhere, and the flags are all still readable.
    let fetch_others = "a LOGIN alice pw\r\nb EXAMINE \"Projects/Q1\"\r\nc UID FETCH 1,3 BODY.PEEK[]\r\nd LOGOUT\r\n";
    let reply = raw_session(server.imap_port, fetch_others).await;
    assert!(reply.contains("c OK") && !reply.contains("BYE FETCH"), "{reply}");
    assert_eq!(bodies(&server, "INBOX").await.expect("INBOX still readable")[1], seeded[1].raw);
    assert_eq!(snapshot(&server, "alice", "pw").await.expect("snapshot"), before, "a snapshot reads no body");

    assert_eq!(server.make_readable("alice", "Projects/Q1", 2).expect("make readable"), file);
    let dumped = imap::dump(&server, "alice", "pw").await.expect("readable again");
    assert_eq!(dumped["Projects/Q1"][1].body, seeded[1].raw);
}
