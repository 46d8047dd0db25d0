//! Every UID of a folder read as pipelined `UID SEARCH UID` windows (verification's way on
//! big folders) is exactly what one `UID SEARCH ALL` gives, on a real Dovecot: windows that
//! split the folder, an estimate of the highest UID that is too low (the open-ended last
//! window still finds the rest), a window past every UID, and a refused window.

use std::collections::HashSet;

use mailhaul_common::error::Side;
use mailhaul_common::imap::connect;
use mailhaul_common::imap::search::{all_uids, uids_in_windows};
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions};
use mailhaul_tests::imap::seed;

mod support;

#[tokio::test(flavor = "multi_thread")]
async fn windows_together_give_every_uid_once() {
    let server = Dovecot::start(DovecotOptions::with_users(&[("alice", "pw")])).expect("Dovecot");
    seed(&server, "alice", "pw", "INBOX", &corpus::mailbox("windows", 11)).await.expect("seed");
    let endpoint = support::plain_endpoint(server.imap_port, "alice", "pw");
    let (mut session, _) = connect(&endpoint, Side::Source).await.expect("connect");
    session.examine("INBOX").await.expect("EXAMINE");
    let expected: HashSet<u32> = session.uid_search("ALL").await.expect("SEARCH ALL");
    assert_eq!(expected.len(), 11);
    let mut tags = 0;

    let split: Vec<String> = ["1:3", "4:7", "8:*"].map(String::from).to_vec();
    assert_eq!(uids_in_windows(&mut session, &mut tags, &split).await.expect("windows"), expected);
    // The caller's estimate of the highest UID is only a hint.
    assert_eq!(all_uids(&mut session, &mut tags, 2).await.expect("low estimate"), expected);
    assert_eq!(all_uids(&mut session, &mut tags, 1_000_000).await.expect("high estimate"), expected);
    // A window past every UID adds nothing (and "N:*" past the end still names the last).
    let beyond: Vec<String> = ["1:5", "6:*", "500:600"].map(String::from).to_vec();
    assert_eq!(uids_in_windows(&mut session, &mut tags, &beyond).await.expect("beyond"), expected);

    let refused: Vec<String> = ["1:3", "x:y", "4:*"].map(String::from).to_vec();
    let error = uids_in_windows(&mut session, &mut tags, &refused).await.expect_err("a bad window");
    assert!(error.contains("SEARCH refused: Bad"), "{error}");
    // The session stays usable: every reply of the batch was read.
    assert_eq!(session.uid_search("ALL").await.expect("SEARCH after"), expected);
}
