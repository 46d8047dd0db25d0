//! What the throwaway IMAP servers have in common: the [`ImapServer`] view the test client
//! needs, where the privately unpacked Cyrus and Courier live, and a server process group
//! that is stopped on drop.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// A running server the test client can log in to over plain IMAP on 127.0.0.1.
pub trait ImapServer {
    /// Plain IMAP port on 127.0.0.1.
    fn imap_port(&self) -> u16;
    /// The hierarchy separator of the users' personal folders.
    fn separator(&self) -> char;
    /// Which server this is, for messages (`Dovecot`, `Cyrus`, `Courier`).
    fn kind(&self) -> &'static str;
}

/// Where `scripts/setup.sh` unpacked a server's Debian packages (`cyrus` or `courier`):
/// `$MAILHAUL_SERVERS_DIR/<name>`, by default `~/.cache/mailhaul/servers/<name>`. Fails with
/// what to run when `marker` (a file inside it) is missing: a test never passes without its
/// server.
pub fn unpacked_server(name: &str, marker: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("MAILHAUL_SERVERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cache/mailhaul/servers"),
            None => bail!("neither MAILHAUL_SERVERS_DIR nor HOME is set: cannot find the unpacked {name} server"),
        },
    };
    let root = base.join(name);
    if !root.join(marker).exists() {
        bail!(
            "{name} is not unpacked in {} ({marker} is missing); the interoperability tests need the real \
             server: run scripts/setup.sh (CI does), or point MAILHAUL_SERVERS_DIR at the directory it \
             unpacked the servers into",
            root.display()
        );
    }
    Ok(root)
}

/// A server's process group (the child leads it): SIGTERM to the whole group, then SIGKILL
/// after `wait`. The server's own children (one per connection) go with it.
#[derive(Debug)]
pub struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    /// Takes a child started with `process_group(0)`.
    pub fn new(child: Child) -> Self {
        ProcessGroup { child }
    }

    /// The leader's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the leader has exited (and with what).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether this group, and only this group, listens on 127.0.0.1:`port`. A free port
    /// found by binding port 0 is only probably free when the server binds it: a server that
    /// lost that race (Cyrus's master keeps running, couriertcpd exits) must not be mistaken
    /// for the one that won, whose greeting looks the same; and a server that shares the port
    /// (SO_REUSEPORT) would get part of the other's connections. Whichever of two such servers
    /// checks last sees the other and retries.
    pub fn owns_port(&self, port: u16) -> bool {
        let Ok(pgid) = i32::try_from(self.child.id()) else { return false };
        let listening = listening_inodes(port);
        if listening.is_empty() {
            return false;
        }
        let ours = socket_inodes_of_group(pgid);
        listening.iter().all(|inode| ours.contains(inode))
    }

    /// Stop the group now and reap the leader.
    pub fn stop(&mut self, wait: Duration) {
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        if self.exited().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the
            // process group this child leads (it was started with process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Connection processes may outlive the leader: the group goes in any case.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Socket inodes listening on TCP `port` (IPv4 or IPv6), from /proc/net/tcp{,6}.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let on_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port);
            if listening && on_port {
                out.push(inode.to_string());
            }
        }
    }
    out
}

/// The inodes of every socket a process of group `pgid` holds open.
fn socket_inodes_of_group(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if process_group_of(pid) != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                out.push(inode.to_string());
            }
        }
    }
    out
}

/// The process group of `pid` (field 5 of /proc/PID/stat).
fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Run a setup command, failing with its output.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output();
    let out = match out {
        Ok(out) => out,
        Err(e) => bail!("running {cmd:?}: {e}"),
    };
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A blocking IMAP connection for server setup (creating users, shared folders, ACLs): one
/// command at a time, each checked for a tagged OK. Not for literals.
pub(crate) struct SetupSession {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    tag: u32,
}

impl SetupSession {
    /// Connect to 127.0.0.1:`port` and LOGIN.
    pub(crate) fn login(port: u16, user: &str, pass: &str) -> Result<SetupSession> {
        use std::io::BufRead as _;
        let stream = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut session = SetupSession { reader: std::io::BufReader::new(stream.try_clone()?), writer: stream, tag: 0 };
        let mut greeting = String::new();
        session.reader.read_line(&mut greeting)?;
        if !greeting.starts_with("* OK") {
            bail!("greeting on port {port}: {greeting:?}");
        }
        session
            .command(&format!("LOGIN {} {}", quote(user), quote(pass)))
            .map_err(|e| e.context(format!("LOGIN as {user}")))?;
        Ok(session)
    }

    /// Send one command; its untagged lines when the server answers OK.
    pub(crate) fn command(&mut self, command: &str) -> Result<String> {
        use std::io::{BufRead as _, Write as _};
        self.tag += 1;
        let tag = format!("s{}", self.tag);
        self.writer.write_all(format!("{tag} {command}\r\n").as_bytes())?;
        let mut untagged = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed during {command:?}");
            }
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                if status.starts_with("OK") {
                    return Ok(untagged);
                }
                // LOGIN's arguments never reach an error message.
                let shown = if command.starts_with("LOGIN ") { "LOGIN" } else { command };
                bail!("{shown:?}: {}", status.trim_end());
            }
            untagged.push_str(&line);
        }
    }
}

impl Drop for SetupSession {
    fn drop(&mut self) {
        let _ = self.command("LOGOUT");
    }
}

/// An IMAP quoted string.
pub(crate) fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Log in to 127.0.0.1:`port` and send one command (no literals); its untagged response
/// lines, when the server answers OK. E.g. `NAMESPACE`, `GETACL "Team"`.
pub fn untagged(port: u16, user: &str, pass: &str, command: &str) -> Result<String> {
    SetupSession::login(port, user, pass)?.command(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    /// A process group listening on `port` with SO_REUSEPORT, as Cyrus's master does.
    fn reuse_port_listener(port: u16) -> ProcessGroup {
        let script = format!(
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1)\n\
             s.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(30)"
        );
        let child =
            std::process::Command::new("python3").args(["-c", &script]).process_group(0).spawn().expect("python3");
        ProcessGroup::new(child)
    }

    fn wait_for_listeners(port: u16, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while listening_inodes(port).len() < count {
            assert!(std::time::Instant::now() < deadline, "{count} listener(s) on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn two_servers_sharing_a_port_both_see_the_clash() {
        let port = crate::dovecot::free_port().expect("port");
        let mut first = reuse_port_listener(port);
        wait_for_listeners(port, 1);
        assert!(first.owns_port(port), "alone on the port");
        let mut second = reuse_port_listener(port);
        wait_for_listeners(port, 2);
        assert!(!second.owns_port(port), "the later server sees the earlier one");
        assert!(!first.owns_port(port), "and the earlier one sees the later");
        second.stop(Duration::from_secs(5));
        assert!(first.owns_port(port), "alone again");
        first.stop(Duration::from_secs(5));
    }

    #[test]
    fn a_port_is_handed_out_once_per_process() {
        let ports: Vec<u16> = (0..200).map(|_| crate::dovecot::free_port().expect("port")).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn a_port_someone_else_listens_on_is_not_the_groups() {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(listening_inodes(port).len(), 1, "the test process listens there");
        let child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let group = ProcessGroup::new(child);
        assert!(!group.owns_port(port), "a server that lost the race for its port is told apart");
        assert_eq!(process_group_of(i32::try_from(group.pid()).expect("pid")), i32::try_from(group.pid()).ok());
    }
}
