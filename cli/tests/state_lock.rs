//! One run per state file: a second `mailhaul run` on a state file in use is refused at once,
//! naming the file; `status` still reads it; after `kill -9` of the first run a new run takes
//! the state over and finishes, every message exactly once.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mailhaul_tests::batch::loopback_batch;
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::imap::{dump, seed};
use mailhaul_tests::{Direction, FaultPlan, FaultPolicy, FaultProxy};

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");

fn run_command(csv: &Path, state: &Path, report: &Path) -> Command {
    let config = csv.with_file_name("mailhaul.toml");
    let mut command = Command::new(BIN);
    command.arg("run").arg(csv).arg("--config").arg(config).arg("--state").arg(state).arg("--report-dir").arg(report);
    command
}

fn bodies(folders: &std::collections::BTreeMap<String, Vec<mailhaul_tests::DumpedMessage>>) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> =
        folders.get("INBOX").map(|m| m.iter().map(|m| m.body.clone()).collect()).unwrap_or_default();
    all.sort();
    all
}

/// A hung first run must not outlive a failed test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `command` to its end, failing the test if that takes longer than `limit` (a second
/// run that is not refused would hang on the stalled source).
async fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap");
            panic!("still running after {limit:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_a_state_in_use_is_refused_until_the_first_dies() {
    let users = [("alice", "pw")];
    let source = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("source");
    let destination = Dovecot::start(DovecotOptions::with_users(&users).layout(Layout::None)).expect("destination");
    seed(&source, "alice", "pw", "INBOX", &corpus::mailbox("bulk", 40)).await.expect("seed");
    // The source answers until about 60 KB have gone out, then stops answering with the
    // connection open: the first run copies a little and hangs there (far longer than this
    // test), as on a bad network.
    let stall = FaultPlan::StallAfter { direction: Direction::ServerToClient, bytes: 60_000 };
    let proxy =
        FaultProxy::start(([127, 0, 0, 1], source.imap_port).into(), FaultPolicy::always(stall)).expect("proxy");

    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("batch.csv");
    std::fs::write(&csv, loopback_batch(proxy.port, destination.imap_port, "plain", &users)).expect("csv");
    // Small batches: some land before the stall.
    std::fs::write(dir.path().join("mailhaul.toml"), "[copy]\nbatch_messages = 2\n").expect("config");
    let state = dir.path().join("state.sqlite");

    let mut first = KillOnDrop(
        run_command(&csv, &state, &dir.path().join("report-1")).stderr(Stdio::null()).spawn().expect("first run"),
    );
    let first = &mut first.0;
    let waited = Instant::now();
    while proxy.fired().is_empty() {
        assert!(waited.elapsed() < Duration::from_secs(60), "the first run never reached the stall");
        assert!(first.try_wait().expect("wait").is_none(), "the first run ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = output_within(run_command(&csv, &state, &dir.path().join("report-2")), Duration::from_secs(5)).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "names the state file: {stderr}");
    assert!(stderr.contains("in use by another mailhaul run"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "names the holder: {stderr}");
    assert!(!dir.path().join("report-2").exists(), "the refused run wrote nothing");
    assert!(first.try_wait().expect("wait").is_none(), "the first run goes on");

    // Reading the state is not running on it.
    let status = Command::new(BIN).arg("status").arg("--state").arg(&state).output().expect("status");
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));

    first.kill().expect("kill -9"); // SIGKILL: no chance to unlock anything itself
    first.wait().expect("reap");
    let landed = dump(&destination, "alice", "pw").await.expect("dump")["INBOX"].len();
    assert!((1..40).contains(&landed), "killed mid-way ({landed} landed)");

    proxy.pass_all();
    proxy.release_stalls();
    let third = run_command(&csv, &state, &dir.path().join("report-3")).output().expect("third run");
    assert_eq!(third.status.code(), Some(0), "{}", String::from_utf8_lossy(&third.stderr));
    let copied = dump(&destination, "alice", "pw").await.expect("dump destination");
    let original = dump(&source, "alice", "pw").await.expect("dump source");
    assert_eq!(bodies(&copied), bodies(&original), "every message exactly once");
    assert!(dir.path().join("state.sqlite.lock").exists(), "the lock file stays for the next run");
}
