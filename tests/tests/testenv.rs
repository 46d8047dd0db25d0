//! `mailhaul-testenv up` writes a usable batch and config, the servers it starts answer over
//! TLS with the seeded folders, and SIGTERM / `down` stop them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailhaul_tests::imap;

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul-testenv");

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("testenv exited early: {status}");
        }
        assert!(Instant::now() < deadline, "no {} after 60 s", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dovecots_in(dir: &Path) -> usize {
    let needle = format!("-c {}", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("dovecot") && c.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_writes_batch_and_config_then_sigterm_stops_everything() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    let mut child = Command::new(BIN)
        .args(["up", "--dir"])
        .arg(&dir)
        .args(["--users", "2", "--messages", "8", "--latency-ms", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&dir.join("batch.csv"), &mut child);

    let csv = std::fs::read_to_string(dir.join("batch.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "source_host,source_port,source_security,source_user,source_password,\
         destination_host,destination_port,destination_security,destination_user,destination_password"
    );
    assert_eq!(lines.len(), 3);
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((row[0], row[2], row[3], row[7], row[8]), ("127.0.0.1", "tls", "user1", "tls", "user1"));
    let toml = std::fs::read_to_string(dir.join("mailhaul.toml")).unwrap();
    let src_ca = dir.join("source/ca.pem");
    let dst_ca = dir.join("destination/ca.pem");
    assert!(toml.contains(&format!("[source]\nca_file = \"{}\"", src_ca.display())), "{toml}");
    assert!(toml.contains(&format!("[destination]\nca_file = \"{}\"", dst_ca.display())), "{toml}");

    // Exactly what mailhaul will do: TLS to the CSV's port, trusting the config's CA.
    let port: u16 = row[1].parse().unwrap();
    let mut source = imap::login_tls_at(port, &src_ca, row[0], row[3], row[4]).await.unwrap();
    let folders = imap::folders(&mut source).await.unwrap();
    source.logout().await.unwrap();
    let names: Vec<&str> = folders.iter().map(|f| f.name.as_str()).collect();
    for want in ["INBOX", "Sent Items", "Projects/2019/Q1", "Société/Réunions", "Old Mail 2004"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let dport: u16 = row[6].parse().unwrap();
    let mut dest = imap::login_tls_at(dport, &dst_ca, row[5], row[8], row[9]).await.unwrap();
    let dest_folders = imap::folders(&mut dest).await.unwrap();
    dest.logout().await.unwrap();
    assert!(dest_folders.iter().any(|f| f.name == "Sent" && f.attributes.iter().any(|a| a == "\\Sent")));

    assert_eq!(dovecots_in(&dir), 2);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(dovecots_in(&dir), 0);
    assert!(!dir.join("testenv.pid").exists());
}

#[test]
fn down_stops_servers_of_a_killed_testenv() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    let mut child = Command::new(BIN)
        .args(["up", "--dir"])
        .arg(&dir)
        .args(["--users", "1", "--messages", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&dir.join("batch.csv"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(dovecots_in(&dir), 2, "SIGKILL leaves the servers behind");
    let out = Command::new(BIN).args(["down", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("source dovecot"));
    assert_eq!(dovecots_in(&dir), 0);
}
