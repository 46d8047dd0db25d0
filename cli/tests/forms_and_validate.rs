//! The Exchange CSV form with admin logins on both sides, and `mailhaul validate`
//! (the CSV rules, and `--check` against real servers), through the real binary.

use std::process::{Command, Output};

use mailhaul_tests::corpus::{self, SampleMessage};
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed};

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");

fn mailhaul(args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = Command::new(BIN).args(args).envs(env.iter().copied()).output().expect("run mailhaul");
    eprintln!("--- stderr ---\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn config(source: &Dovecot, destination: &Dovecot) -> String {
    format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"tls\"\nca_file = {:?}\n\n\
         [destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"tls\"\nca_file = {:?}\n\
         admin_user = \"admin\"\nmaster_separator = \"*\"\nadmin_password_env = \"MH_TEST_DEST_ADMIN\"\n",
        source.imaps_port, source.cert_path, destination.imaps_port, destination.cert_path
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_form_with_admin_logins_on_both_sides() {
    let users = [("dora@example.com", "dora-own-pw"), ("eve@example.com", "eve-own-pw")];
    let source =
        Dovecot::start(DovecotOptions::with_users(&users).master("admin", "src-admin-pw").layout(Layout::Outlook))
            .expect("source");
    let destination =
        Dovecot::start(DovecotOptions::with_users(&users).master("admin", "dst-admin-pw").layout(Layout::Standard))
            .expect("destination");
    seed(&source, "dora@example.com", "dora-own-pw", "INBOX", &corpus::mailbox("dora", 6)).await.expect("seed");
    seed(&source, "dora@example.com", "dora-own-pw", "Sent Items", &[SampleMessage::new("sent", 1).seed()])
        .await
        .expect("seed");
    seed(&source, "eve@example.com", "eve-own-pw", "INBOX", &corpus::mailbox("eve", 3)).await.expect("seed");

    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("exchange.csv");
    // Exchange Online's form, with a BOM and the Dovecot admin form in UserName.
    std::fs::write(
        &csv,
        "\u{feff}EmailAddress,UserName,Password\r\n\
         dora@example.com,dora@example.com*admin,src-admin-pw\r\n\
         eve@example.com,eve@example.com*admin,src-admin-pw\r\n",
    )
    .expect("csv");
    let config_path = dir.path().join("mailhaul.toml");
    std::fs::write(&config_path, config(&source, &destination)).expect("config");
    let report = dir.path().join("report");
    let args = [
        "run",
        csv.to_str().expect("path"),
        "--config",
        config_path.to_str().expect("path"),
        "--report-dir",
        report.to_str().expect("path"),
    ];
    let output = mailhaul(&args, &[("MH_TEST_DEST_ADMIN", "dst-admin-pw")]);
    assert_eq!(output.status.code(), Some(0));

    let copied = dump(&destination, "dora@example.com", "dora-own-pw").await.expect("dump");
    assert_eq!(copied["INBOX"].len(), 6);
    assert_eq!(copied["Sent"].len(), 1, "Sent Items mapped to the destination's \\Sent folder");
    let copied = dump(&destination, "eve@example.com", "eve-own-pw").await.expect("dump");
    assert_eq!(copied["INBOX"].len(), 3);
    let csv_report = std::fs::read_to_string(report.join("report.csv")).expect("report.csv");
    assert_eq!(csv_report.lines().filter(|l| l.contains(",done,")).count(), 2, "{csv_report}");

    // Without the admin password in the environment the run cannot start, and says why.
    let output = mailhaul(&args, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MH_TEST_DEST_ADMIN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_lists_every_problem_and_check_reads_the_servers() {
    let users = [("frank@example.com", "frank-pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination =
        Dovecot::start(DovecotOptions::with_users(&users).master("admin", "dst-admin-pw")).expect("destination");
    seed(&source, "frank@example.com", "frank-pw", "INBOX", &corpus::mailbox("frank", 5)).await.expect("seed");
    seed(&source, "frank@example.com", "frank-pw", "Projects/A", &corpus::mailbox("proj", 2)).await.expect("seed");

    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("mailhaul.toml");
    std::fs::write(&config_path, config(&source, &destination)).expect("config");
    let env = [("MH_TEST_DEST_ADMIN", "dst-admin-pw")];

    // A file with several bad rows: each is named, no password is echoed.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "source_email,source_password,destination_email\n\
         frank@example.com,\"p,a\"\"ss SECRET1\",frank@example.com\n\
         not-an-address,SECRET2,george@example.com\n\
         harry@example.com,SECRET3\n\
         ian@example.com,SECRET4,frank@example.com\n",
    )
    .expect("csv");
    let output = mailhaul(
        &["validate", bad.to_str().expect("path"), "--config", config_path.to_str().expect("path"), "--json"],
        &env,
    );
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let invalid: Vec<u64> =
        json["invalid_rows"].as_array().expect("invalid rows").iter().map(|r| r["row"].as_u64().unwrap_or(0)).collect();
    assert_eq!(invalid, vec![1, 2, 3, 4], "row 1 and 4 share a destination, 2 has a bad address, 3 a missing column");
    let everything = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    for secret in ["SECRET1", "SECRET2", "SECRET3", "SECRET4"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }

    // --check logs in and counts; a wrong password is reported for its row.
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "source_email,source_password,destination_email\n\
         frank@example.com,frank-pw,frank@example.com\n",
    )
    .expect("csv");
    let output = mailhaul(
        &[
            "validate",
            good.to_str().expect("path"),
            "--config",
            config_path.to_str().expect("path"),
            "--json",
            "--check",
        ],
        &env,
    );
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let check = &json["check"][0];
    assert_eq!(check["source"]["total_messages"], 7, "{check}");
    assert!(check["destination"]["capabilities"].as_array().is_some_and(|c| !c.is_empty()));
    // validate never writes: the destination is still empty.
    let copied = dump(&destination, "frank@example.com", "frank-pw").await.expect("dump");
    assert!(copied.values().all(Vec::is_empty));

    std::fs::write(
        &good,
        "source_email,source_password,destination_email\nfrank@example.com,bad-pw,frank@example.com\n",
    )
    .expect("csv");
    let output = mailhaul(
        &[
            "validate",
            good.to_str().expect("path"),
            "--config",
            config_path.to_str().expect("path"),
            "--json",
            "--check",
        ],
        &env,
    );
    assert_eq!(output.status.code(), Some(1), "a failed check fails validate");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert!(json["check"][0]["source"]["error"].as_str().unwrap_or("").contains("login failed"), "{json}");
}
