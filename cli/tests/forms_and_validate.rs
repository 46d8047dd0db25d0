//! The Exchange CSV form with admin logins on both sides, and `mailhaul validate`
//! (the CSV rules, and `--check` against real servers), through the real binary; and,
//! for damaged files, that neither `validate` nor a rejecting `run` prints a password.

use std::path::Path;
use std::process::{Command, Output};

use mailhaul_common::batch::validate_batch;
use mailhaul_common::settings::Settings;
use mailhaul_tests::corpus::{self, SampleMessage};
use mailhaul_tests::csv_fuzz::{
    json_strings, leak, mutate, mutations, sample_csv, seeded, ADMIN_PASSWORD, ADMIN_PASSWORD_ENV, SETTINGS_TOML,
};
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed};
use proptest::prelude::*;

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

/// An Exchange-form file validated without settings: what the settings lack (no hosts, no
/// destination master user) is said once for the whole batch, not on each of its 500 rows,
/// and the one row with a mistake of its own still stands out, in the table and in --json.
#[test]
fn validate_says_a_settings_problem_once_for_all_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("exchange.csv");
    let mut text = String::from("EmailAddress,UserName,Password\n");
    for i in 1..=500 {
        let address = if i == 250 { "user250.example.com".to_string() } else { format!("user{i}@example.com") };
        text.push_str(&format!("{address},old{i},Pw-{i}-secret\n"));
    }
    std::fs::write(&csv, text).expect("csv");

    let output = mailhaul(&["validate", csv.to_str().expect("path")], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let settings_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("settings:")).collect();
    assert_eq!(
        settings_lines,
        [
            "settings: no source host: set [source] host or preset (this CSV form has no host column) (affects all 500 rows)",
            "settings: no destination host: set [destination] host or preset (this CSV form has no host column) (affects all 500 rows)",
            "settings: no destination password: set [destination] admin_user and admin_password_env (a master user) in the settings, or use the full CSV form with destination_password (affects 499 of 500 rows)",
        ],
        "{stderr}"
    );
    for needle in ["no source host", "no destination host", "no destination password"] {
        assert_eq!(stderr.matches(needle).count(), 1, "{needle} said more than once:\n{stderr}");
    }
    assert!(stderr.contains("row 250 (line 251), EmailAddress: is not an email address"), "{stderr}");
    assert!(stderr.contains("500 rows: 0 valid, 500 invalid; 4 errors, 0 warnings"), "{stderr}");

    let output = mailhaul(&["validate", csv.to_str().expect("path"), "--json"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let settings = json["settings"].as_array().expect("settings");
    assert_eq!(settings.len(), 3, "{json:#}");
    assert_eq!(settings[0]["rows"], 500);
    assert_eq!(settings[2]["rows"], 499);
    assert!(settings.iter().all(|p| p["severity"] == "error"));
    assert_eq!(json["file_problems"], serde_json::json!([]));
    let with_own_problems: Vec<&serde_json::Value> = json["invalid_rows"]
        .as_array()
        .expect("invalid rows")
        .iter()
        .filter(|r| r["problems"].as_array().is_some_and(|p| !p.is_empty()))
        .collect();
    assert_eq!(with_own_problems.len(), 1, "only row 250 has a problem of its own");
    assert_eq!(with_own_problems[0]["row"], 250);
    let everything = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(!everything.contains("-secret"), "a password was printed");
}

/// A scratch folder with the sample settings, and the damaged CSV of the current case.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mailhaul.toml"), SETTINGS_TOML).expect("config");
        Scratch { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().expect("path").to_string()
    }

    /// `mailhaul ARGS batch.csv --config mailhaul.toml` with `text` in batch.csv, quietly.
    fn mailhaul(&self, text: &[u8], args: &[&str]) -> Output {
        std::fs::write(self.path("batch.csv"), text).expect("csv");
        Command::new(BIN)
            .args(args)
            .arg(self.path("batch.csv"))
            .args(["--config", &self.path("mailhaul.toml")])
            .env(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD)
            .env_remove("MAILHAUL_LOG")
            .output()
            .expect("run mailhaul")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file below `dir` but the ones given, as text.
fn files_below(dir: &Path, except: &[&str]) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&files_below(&path, except));
        } else if !except.iter().any(|e| path.ends_with(e)) {
            out.push_str(&format!("--- {}\n{}\n", path.display(), text(&std::fs::read(&path).expect("read"))));
        }
    }
    out
}

fn sample_settings() -> Settings {
    let mut settings = Settings::from_toml_str(SETTINGS_TOML).expect("sample settings");
    settings.resolve_secrets(|_| Some(ADMIN_PASSWORD.into())).expect("admin password");
    settings
}

proptest! {
    #![proptest_config(seeded(150))]

    /// `mailhaul validate` on a file with up to three damaged lines: exit 0 or 1 as the file
    /// deserves, JSON on stdout with --json, and no password in any output.
    #[test]
    fn validate_prints_no_password_of_a_damaged_csv(sample in sample_csv(), mutations in mutations(3)) {
        let scratch = Scratch::new();
        let damaged = mutate(&sample.text, &mutations, true);
        let expected = if validate_batch(&damaged, &sample_settings()).is_valid() { 0 } else { 1 };
        let plain = scratch.mailhaul(&damaged, &["validate"]);
        let json = scratch.mailhaul(&damaged, &["validate", "--json"]);
        prop_assert_eq!(plain.status.code(), Some(expected), "{}", text(&plain.stderr));
        prop_assert_eq!(json.status.code(), Some(expected), "{}", text(&json.stderr));
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
        let everything = format!(
            "{}{}{}{}{}",
            text(&plain.stdout),
            text(&plain.stderr),
            text(&json.stdout),
            text(&json.stderr),
            json_strings(&report)
        );
        prop_assert_eq!(leak(&everything, &sample.secrets), None, "file:\n{}\noutput:\n{}", text(&damaged), everything);
    }
}

proptest! {
    #![proptest_config(seeded(40))]

    /// `mailhaul run` on a damaged file with no valid row (so no connection is made): exit
    /// 1 or 2, and no password in its output, its reports or its state file.
    #[test]
    fn a_rejecting_run_writes_no_password_of_a_damaged_csv(sample in sample_csv(), mutations in mutations(3)) {
        let damaged = mutate(&sample.text, &mutations, true);
        prop_assume!(validate_batch(&damaged, &sample_settings()).valid_jobs().is_empty());
        let scratch = Scratch::new();
        let (state, reports) = (scratch.path("state.sqlite"), scratch.path("report"));
        let output = scratch.mailhaul(&damaged, &["run", "--state", &state, "--report-dir", &reports]);
        prop_assert!(matches!(output.status.code(), Some(1 | 2)), "{:?}: {}", output.status, text(&output.stderr));
        let everything = format!(
            "{}{}{}",
            text(&output.stdout),
            text(&output.stderr),
            files_below(scratch.dir.path(), &["batch.csv", "mailhaul.toml"])
        );
        prop_assert_eq!(leak(&everything, &sample.secrets), None, "file:\n{}\noutput:\n{}", text(&damaged), everything);
    }
}
