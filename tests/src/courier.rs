//! Throwaway Courier-IMAP 5.0 instances, run from the Debian packages that `scripts/setup.sh`
//! unpacked privately (they conflict with dovecot-imapd). Courier's login path is compiled
//! in (`/etc/courier`, the authdaemond socket under `/run/courier`, modules in
//! `/usr/lib/courier-authlib`), so each instance runs in its own mount namespace (`unshare
//! --mount`, root only) where read-only overlays put the unpacked files and this instance's
//! config at those paths; nothing outside the namespace changes. Stopped on drop.
//!
//! Courier: folders under `INBOX.` with `.` as separator, no LITERAL+, MULTIAPPEND,
//! SPECIAL-USE, CONDSTORE or UNSELECT; no admin login.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::dovecot::{free_port, wait_for_greeting};
use crate::servers::{run, unpacked_server, ImapServer, ProcessGroup};

/// A running Courier-IMAP. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct Courier {
    /// Plain IMAP port on 127.0.0.1.
    pub imap_port: u16,
    /// Where config, logs and mail live.
    pub dir: PathBuf,
    /// The users as configured.
    pub users: Vec<(String, String)>,
    server: ProcessGroup,
    // Keeps the temp directory alive; declared last so the server is stopped first.
    _temp: tempfile::TempDir,
}

impl ImapServer for Courier {
    fn imap_port(&self) -> u16 {
        self.imap_port
    }
    fn separator(&self) -> char {
        '.'
    }
    fn kind(&self) -> &'static str {
        "Courier"
    }
}

/// The environment Debian's init script gives imapd (/etc/courier/imapd), minus the trash
/// purge: `IMAP_EMPTYTRASH=Trash:7` would delete old test messages at every login.
const IMAPD_ENV: &[(&str, &str)] = &[
    ("IMAP_CAPABILITY", "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"),
    ("IMAP_KEYWORDS", "1"),
    ("IMAP_ACL", "1"),
    ("IMAP_IDLE_TIMEOUT", "60"),
    ("IMAP_MAILBOX_SANITY_CHECK", "1"),
    ("IMAP_USELOCKS", "1"),
    ("IMAP_UMASK", "022"),
    ("IMAP_TRASHFOLDERNAME", "Trash"),
    ("IMAP_EMPTYTRASH", ""),
    ("IMAP_MOVE_EXPUNGE_TO_TRASH", "0"),
    ("IMAP_CHECK_ALL_FOLDERS", "0"),
    ("IMAP_OBSOLETE_CLIENT", "0"),
    ("IMAP_PROXY", "0"),
    ("IMAP_DISABLETHREADSORT", "0"),
    ("IMAP_ENHANCEDIDLE", "0"),
    ("PATH", "/usr/bin:/bin"),
];

impl Courier {
    /// Start a fresh server with these (user, password) pairs. Fails (never skips) when
    /// Courier is not unpacked or we are not root.
    pub fn start(users: &[(&str, &str)]) -> Result<Courier> {
        let root = unpacked_server("courier", "usr/sbin/couriertcpd")?;
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the Courier test server needs root: it runs in its own mount namespace (unshare --mount)");
        }
        let temp = tempfile::Builder::new()
            .prefix("mailhaul-courier-")
            .tempdir()
            .context("creating a temp dir for Courier")?;
        let dir = temp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let etc = dir.join("etc/courier");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(
            etc.join("authdaemonrc"),
            "authmodulelist=\"authuserdb\"\nauthmodulelistorig=\"authuserdb\"\ndaemons=4\n\
             authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\nDEFAULTOPTIONS=\"\"\nLOGGEROPTS=\"\"\n",
        )?;
        let mut userdb = String::new();
        for (user, pass) in users {
            if user.contains(['\t', '\n', '|', '=', '/']) || user.is_empty() {
                bail!("user {user:?}: not a userdb name");
            }
            let home = dir.join("home").join(user);
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(home.join("Maildir").join(sub))?;
            }
            run(Command::new("chown").args(["-R", "8:8"]).arg(&home))?;
            let hash = crypt(pass)?;
            writeln!(
                userdb,
                "{user}\tuid=8|gid=8|home={}|mail={}/Maildir|systempw={hash}",
                home.display(),
                home.display()
            )
            .ok();
        }
        std::fs::write(etc.join("userdb"), userdb)?;
        std::fs::set_permissions(etc.join("userdb"), std::fs::Permissions::from_mode(0o600))?;

        let mut last_error = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            let script = dir.join("start.sh");
            std::fs::write(&script, start_script(&root, &dir, port))?;
            // One log per attempt, so "in use" below is this attempt's port clash.
            let log = std::fs::File::create(dir.join("courier.log"))?;
            let child = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh"])
                .arg(&script)
                .env_clear()
                .envs(IMAPD_ENV.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting Courier with unshare (util-linux)")?;
            let mut server = ProcessGroup::new(child);
            match wait_for_greeting(port, Duration::from_secs(15), || server.exited().is_none()) {
                Ok(()) if !server.owns_port(port) => {
                    // Another server took the port first: ours could not bind it.
                    server.stop(Duration::from_secs(5));
                    last_error = Some(anyhow!("port {port} was taken by another server"));
                    continue;
                }
                Ok(()) => {
                    return Ok(Courier {
                        imap_port: port,
                        dir,
                        users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
                        server,
                        _temp: temp,
                    })
                }
                Err(e) => {
                    let exited = server.exited();
                    server.stop(Duration::from_secs(5));
                    let log = std::fs::read_to_string(dir.join("courier.log")).unwrap_or_default();
                    if exited.is_some() && log.contains("in use") {
                        last_error = Some(e);
                        continue;
                    }
                    return Err(e.context(format!("Courier did not greet; its log:\n{log}")));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")).context("could not start Courier after 5 attempts"))
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The password of a configured user.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, p)| p.as_str())
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("courier.log")).unwrap_or_default()
    }

    /// Stop the server now.
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(10));
    }
}

/// A SHA-512 crypt(3) hash for userdb's `systempw`, from `openssl passwd -6` (password on
/// stdin, never on a command line).
fn crypt(pass: &str) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl passwd")?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, format!("{pass}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("openssl passwd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs inside the new mount namespace: overlays, the userdb, authdaemond, then couriertcpd
/// (imaplogin → imapd) in the foreground.
fn start_script(root: &Path, dir: &Path, port: u16) -> String {
    let (r, d) = (root.display(), dir.display());
    format!(
        r#"set -e
mount -t overlay overlay -o lowerdir={r}/usr/lib:/usr/lib /usr/lib
# imapd runs as the mail user, who may not traverse the unpacked tree (under root's home).
mount -t overlay overlay -o lowerdir={r}/usr/bin:/usr/bin /usr/bin
# makeuserdb calls /usr/lib/courier/courier-authlib/makedatprog: only there from here on.
perl {r}/usr/sbin/makeuserdb -f {d}/etc/courier/userdb
mount -t overlay overlay -o lowerdir={d}/etc:/etc /etc
mount -t tmpfs tmpfs /run
mkdir -p /run/courier/authdaemon
{r}/usr/lib/courier/courier-authlib/authdaemond &
for i in $(seq 100); do [ -S /run/courier/authdaemon/socket ] && break; sleep 0.05; done
[ -S /run/courier/authdaemon/socket ] || {{ echo "authdaemond did not start" >&2; exit 1; }}
exec {r}/usr/sbin/couriertcpd -address=127.0.0.1 -maxprocs=200 -maxperip=200 -nodnslookup -noidentlookup \
    {port} /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir
"#
    )
}
