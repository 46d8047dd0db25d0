//! The harness's Cyrus and Courier start, take mail and show their namespaces as measured
//! (../shared/FACTS.md): what the interoperability tests build on.

use mailhaul_tests::corpus;
use mailhaul_tests::imap::{dump, login, seed};
use mailhaul_tests::servers::untagged;
use mailhaul_tests::{Courier, Cyrus, CyrusOptions};

async fn namespace(port: u16, user: &str, pass: &str) -> String {
    let (user, pass) = (user.to_string(), pass.to_string());
    let lines = tokio::task::spawn_blocking(move || untagged(port, &user, &pass, "NAMESPACE"))
        .await
        .expect("join")
        .expect("NAMESPACE");
    lines.lines().find(|l| l.starts_with("* NAMESPACE")).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn cyrus_starts_takes_mail_and_announces_its_namespaces() {
    let cyrus =
        Cyrus::start(CyrusOptions::with_users(&[("alice", "pw"), ("bob", "pw")]).special_use_folders()).expect("Cyrus");
    let messages = corpus::mailbox("cy", 5);
    seed(&cyrus, "alice", "pw", "Projects/2024", &messages).await.expect("seed");
    let dumped = dump(&cyrus, "alice", "pw").await.expect("dump");
    assert_eq!(dumped["Projects/2024"].len(), 5);
    assert!(dumped.contains_key("Sent"), "{:?}", dumped.keys());
    assert_eq!(
        namespace(cyrus.imap_port, "alice", "pw").await,
        "* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) ((\"Shared Folders/\" \"/\"))"
    );
    // Wrong passwords are refused: the sasldb is real.
    assert!(login(&cyrus, "alice", "wrong").await.is_err());

    let old = Cyrus::start(CyrusOptions::with_users(&[("alice", "pw")]).altnamespace(false)).expect("Cyrus");
    assert_eq!(
        namespace(old.imap_port, "alice", "pw").await,
        "* NAMESPACE ((\"INBOX/\" \"/\")) ((\"user/\" \"/\")) ((\"\" \"/\"))"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn courier_starts_takes_mail_and_announces_its_namespaces() {
    let courier = Courier::start(&[("alice", "pw"), ("bob", "pw2")]).expect("Courier");
    let messages = corpus::mailbox("co", 5);
    seed(&courier, "alice", "pw", "INBOX.Projects", &messages).await.expect("seed");
    seed(&courier, "bob", "pw2", "INBOX", &messages[..2]).await.expect("seed");
    let dumped = dump(&courier, "alice", "pw").await.expect("dump");
    assert_eq!(dumped["INBOX.Projects"].len(), 5);
    assert_eq!(dump(&courier, "bob", "pw2").await.expect("dump")["INBOX"].len(), 2);
    assert_eq!(
        namespace(courier.imap_port, "alice", "pw").await,
        "* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))"
    );
    assert!(login(&courier, "alice", "wrong").await.is_err());
    // Two at once: each has its own namespace, users and mail.
    let other = Courier::start(&[("alice", "other")]).expect("second Courier");
    assert!(dump(&other, "alice", "other").await.expect("dump").values().all(Vec::is_empty));
}
