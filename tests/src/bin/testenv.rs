//! `mailhaul-testenv`: a source and a destination Dovecot on 127.0.0.1, the source seeded with
//! a sample corpus, plus the batch CSV and config that point mailhaul at them. For demos and
//! manual testing; `up` stays in the foreground until SIGTERM/Ctrl-C, `down` cleans up after
//! an `up` that was killed harder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mailhaul_tests::dovecot::stop_pid;
use mailhaul_tests::{corpus, imap, DelayProxy, Dovecot, DovecotOptions, Layout, SampleMessage, SeedMessage};

#[derive(Parser)]
#[command(name = "mailhaul-testenv", about = "Local source and destination IMAP servers for trying mailhaul")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start both servers, seed the source, write DIR/batch.csv and DIR/mailhaul.toml, and
    /// run until SIGTERM or Ctrl-C.
    Up {
        /// Where servers, batch.csv and mailhaul.toml go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Mailboxes to create on each side (user1..userN).
        #[arg(long, default_value_t = 3)]
        users: u32,
        /// Messages in each user's INBOX (other folders get fewer).
        #[arg(long, default_value_t = 20)]
        messages: u32,
        /// Extra round-trip time through a delay proxy in front of both IMAPS ports.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Both servers offer COMPRESS=DEFLATE (Dovecot's imap_zlib plugin).
        #[arg(long)]
        deflate: bool,
        /// With --latency-ms: each proxy carries at most this many megabits per second each
        /// way, shared by its connections (0: no limit).
        #[arg(long, default_value_t = 0)]
        bandwidth_mbit: u64,
    },
    /// Stop servers left running by an `up` in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up { dir, users, messages, latency_ms, deflate, bandwidth_mbit } => {
            up(&dir, users, messages, latency_ms, deflate, bandwidth_mbit).await
        }
        Command::Down { dir } => down(&dir),
    };
    if let Err(e) = result {
        eprintln!("mailhaul-testenv: {e:#}");
        std::process::exit(2);
    }
}

const PID_FILE: &str = "testenv.pid";
/// Bytes the delay proxies carried so far (a bench reads it before and after a run).
const WIRE_FILE: &str = "wire-bytes";

async fn up(dir: &Path, users: u32, messages: u32, latency_ms: u64, deflate: bool, bandwidth_mbit: u64) -> Result<()> {
    if users == 0 {
        bail!("--users must be at least 1");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(pid) = live_testenv(&dir) {
        bail!(
            "a testenv (pid {pid}) is already running in {}; stop it with: mailhaul-testenv down --dir {}",
            dir.display(),
            dir.display()
        );
    }
    // Dovecot's mail processes run as an unprivileged uid and must traverse DIR.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for side in ["source", "destination"] {
        // A fresh start: old mail would make the seeded source ambiguous.
        let _ = std::fs::remove_dir_all(dir.join(side));
    }
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())?;

    let accounts = |prefix: &str| -> Vec<(String, String)> {
        (1..=users).map(|i| (format!("user{i}"), format!("{prefix}-pass-{i}"))).collect()
    };
    let source = Dovecot::start(DovecotOptions {
        users: accounts("src"),
        master: Some(("admin".into(), "src-admin-pass".into())),
        special_use_layout: Layout::Outlook,
        dir: Some(dir.join("source")),
        deflate,
        // As Dovecot ships: the benchmarks measure against that.
        list_index: true,
        ..DovecotOptions::default()
    })
    .context("starting the source Dovecot")?;
    let destination = Dovecot::start(DovecotOptions {
        users: accounts("dst"),
        special_use_layout: Layout::Standard,
        dir: Some(dir.join("destination")),
        deflate,
        // As Dovecot ships: the benchmarks measure against that.
        list_index: true,
        ..DovecotOptions::default()
    })
    .context("starting the destination Dovecot")?;

    let mut total = 0usize;
    for (user, pass) in &source.users {
        for (folder, seeds) in sample_account(user, messages) {
            total += seeds.len();
            imap::seed(&source, user, pass, &folder, &seeds)
                .await
                .with_context(|| format!("seeding {user} {folder}"))?;
        }
    }

    // With latency, mailhaul talks to the proxies; TLS passes through them untouched.
    let mut proxies = Vec::new();
    let (src_port, dst_port) = if latency_ms > 0 {
        let one_way = Duration::from_millis(latency_ms) / 2;
        let rate = (bandwidth_mbit > 0).then_some(bandwidth_mbit * 1_000_000 / 8);
        let src = DelayProxy::with_bandwidth(([127, 0, 0, 1], source.imaps_port).into(), one_way, rate)?;
        let dst = DelayProxy::with_bandwidth(([127, 0, 0, 1], destination.imaps_port).into(), one_way, rate)?;
        let ports = (src.port, dst.port);
        proxies.push(src);
        proxies.push(dst);
        ports
    } else {
        (source.imaps_port, destination.imaps_port)
    };

    let mut csv = String::from(
        "source_host,source_port,source_security,source_user,source_password,\
         destination_host,destination_port,destination_security,destination_user,destination_password\n",
    );
    for ((su, sp), (du, dp)) in source.users.iter().zip(&destination.users) {
        writeln!(csv, "127.0.0.1,{src_port},tls,{su},{sp},127.0.0.1,{dst_port},tls,{du},{dp}")?;
    }
    std::fs::write(dir.join("batch.csv.tmp"), csv)?;
    let toml = format!(
        "# Written by mailhaul-testenv: trust each local server's private CA.\n\
         [source]\nca_file = {}\n\n[destination]\nca_file = {}\n",
        toml_string(&source.cert_path),
        toml_string(&destination.cert_path)
    );
    std::fs::write(dir.join("mailhaul.toml"), toml)?;
    // batch.csv appears last and atomically: scripts wait for it as the "ready" signal.
    std::fs::rename(dir.join("batch.csv.tmp"), dir.join("batch.csv"))?;

    println!("mailhaul-testenv is up in {}", dir.display());
    println!(
        "  source:      127.0.0.1 imaps {} (imap {}), Outlook folder names, master login user1*admin",
        source.imaps_port, source.imap_port
    );
    println!(
        "  destination: 127.0.0.1 imaps {} (imap {}), standard folder names",
        destination.imaps_port, destination.imap_port
    );
    if latency_ms > 0 {
        println!("  latency:     +{latency_ms} ms round trip via proxies on ports {src_port} and {dst_port}");
    }
    println!("  seeded:      {total} messages over {users} mailboxes");
    println!("  batch:       {}", dir.join("batch.csv").display());
    println!("  config:      {}", dir.join("mailhaul.toml").display());
    println!("Stop with Ctrl-C, SIGTERM, or: mailhaul-testenv down --dir {}", dir.display());

    if !proxies.is_empty() {
        println!(
            "  wire bytes:  {} (through the proxies, both ways, updated every 100 ms)",
            dir.join(WIRE_FILE).display()
        );
    }
    let stop = wait_for_stop();
    tokio::pin!(stop);
    loop {
        let carried: u64 = proxies.iter().map(DelayProxy::bytes).sum();
        if !proxies.is_empty() {
            // Whole or not at all for a reader: write aside, then rename.
            std::fs::write(dir.join("wire-bytes.tmp"), format!("{carried}\n"))?;
            std::fs::rename(dir.join("wire-bytes.tmp"), dir.join(WIRE_FILE))?;
        }
        tokio::select! {
            stopped = &mut stop => {
                stopped?;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    eprintln!("mailhaul-testenv: stopping servers");
    drop(proxies);
    drop(source);
    drop(destination);
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    Ok(())
}

async fn wait_for_stop() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// One user's folders: INBOX, Outlook's Sent Items, nested folders, a non-ASCII folder and an
/// old archive, with flags and keywords from [`corpus::mailbox`].
fn sample_account(user: &str, messages: u32) -> Vec<(String, Vec<SeedMessage>)> {
    let part = (messages / 4).max(1);
    let old = |n: u32| {
        let date = chrono::DateTime::parse_from_rfc3339("2004-02-29T23:15:00+02:00").unwrap_or_default()
            + chrono::Duration::days(i64::from(n) * 30);
        SampleMessage::new(&format!("{user}-archive"), n).date(date).seed().flags(&["\\Seen"])
    };
    vec![
        ("INBOX".into(), corpus::mailbox(&format!("{user}-inbox"), messages)),
        ("Sent Items".into(), corpus::mailbox(&format!("{user}-sent"), (messages / 2).max(1))),
        ("Projects/2019/Q1".into(), corpus::mailbox(&format!("{user}-q1"), part)),
        ("Projects/Alpha".into(), corpus::mailbox(&format!("{user}-alpha"), part)),
        ("Société/Réunions".into(), corpus::mailbox(&format!("{user}-reunions"), part)),
        ("Old Mail 2004".into(), (1..=part).map(old).collect()),
    ]
}

/// A TOML basic string holding `path`.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The pid of a running testenv recorded in DIR, if it is still alive.
fn live_testenv(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (pid != std::process::id() && String::from_utf8_lossy(&cmdline).contains("testenv")).then_some(pid)
}

fn down(dir: &Path) -> Result<()> {
    if !dir.exists() {
        bail!("{} does not exist: nothing to stop", dir.display());
    }
    let mut stopped = Vec::new();
    if let Some(pid) = live_testenv(dir) {
        // The testenv stops its own servers on SIGTERM; give it time to do so.
        let pid_t = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid_t, libc::SIGTERM) };
        for _ in 0..200 {
            if live_testenv(dir).is_none() || !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stopped.push(format!("testenv {pid}"));
    }
    for side in ["source", "destination"] {
        let pid_file = dir.join(side).join("run").join("master.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            if stop_pid(pid, Duration::from_secs(10)) {
                stopped.push(format!("{side} dovecot {pid}"));
            }
        }
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    if stopped.is_empty() {
        println!("nothing was running in {}", dir.display());
    } else {
        println!("stopped {}", stopped.join(", "));
    }
    Ok(())
}
