//! Throwaway Cyrus IMAP 3.6 instances, run from the Debian packages that `scripts/setup.sh`
//! unpacked privately (they conflict with dovecot-imapd): own config, port, sasldb users and
//! mail spool in a temp directory; stopped on drop. Several can run at once.
//!
//! Users log in with their own password (LOGIN or AUTHENTICATE PLAIN); the admin can act as
//! any user through AUTHENTICATE PLAIN with that user as authorization identity. Cyrus logs
//! only to syslog; set `MAILHAUL_KEEP_FAILED_SERVER=1` to keep the directory of one that did
//! not start.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::dovecot::{free_port, wait_for_greeting};
use crate::servers::{quote, run, unpacked_server, ImapServer, ProcessGroup, SetupSession};

/// The SASL realm the users are created in (Cyrus's `servername`).
const REALM: &str = "mailhaul-cyrus";

/// How to set up a [`Cyrus`] instance.
#[derive(Clone, Debug)]
pub struct CyrusOptions {
    /// (user, password) pairs; each gets an INBOX.
    pub users: Vec<(String, String)>,
    /// The admin's (login, password): `admins:` in imapd.conf.
    pub admin: (String, String),
    /// `altnamespace: yes` (default; NAMESPACE `(("" "/")) (("Other Users/" "/")) (("Shared
    /// Folders/" "/"))`) or `no` (`(("INBOX/" "/")) (("user/" "/")) (("" "/"))`).
    pub altnamespace: bool,
    /// Give every user Sent, Trash, Junk, Drafts and Archive with their SPECIAL-USE attribute.
    pub special_use_folders: bool,
}

impl CyrusOptions {
    /// Default options with these users and the admin `admin` / `adminpw`.
    pub fn with_users(users: &[(&str, &str)]) -> Self {
        CyrusOptions {
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            admin: ("admin".into(), "adminpw".into()),
            altnamespace: true,
            special_use_folders: false,
        }
    }

    /// `altnamespace: no`: personal folders under `INBOX/`.
    pub fn altnamespace(mut self, on: bool) -> Self {
        self.altnamespace = on;
        self
    }

    /// Create the special-use folders for every user.
    pub fn special_use_folders(mut self) -> Self {
        self.special_use_folders = true;
        self
    }
}

/// A running Cyrus. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct Cyrus {
    /// Plain IMAP port on 127.0.0.1.
    pub imap_port: u16,
    /// Where config, sasldb and spool live.
    pub dir: PathBuf,
    /// The users as configured.
    pub users: Vec<(String, String)>,
    /// The admin's (login, password).
    pub admin: (String, String),
    /// Whether personal folders live under `INBOX/` (`altnamespace: no`).
    pub inbox_prefix: bool,
    master: ProcessGroup,
    // Keeps the temp directory alive; declared last so the server is stopped first.
    _temp: tempfile::TempDir,
}

impl ImapServer for Cyrus {
    fn imap_port(&self) -> u16 {
        self.imap_port
    }
    fn separator(&self) -> char {
        '/'
    }
    fn kind(&self) -> &'static str {
        "Cyrus"
    }
}

impl Cyrus {
    /// Start a fresh server. Fails (never skips) when Cyrus is not unpacked.
    pub fn start(opts: CyrusOptions) -> Result<Cyrus> {
        let root = unpacked_server("cyrus", "usr/lib/cyrus/bin/master")?;
        let temp =
            tempfile::Builder::new().prefix("mailhaul-cyrus-").tempdir().context("creating a temp dir for Cyrus")?;
        let dir = temp.path().to_path_buf();
        for sub in ["conf", "spool", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let run_as = cyrus_user(&dir)?;
        write_sasldb(&dir, &opts)?;
        chown_tree(&dir, &run_as)?;
        // imapd runs as the mail user, who may not traverse the unpacked tree (under
        // root's home by default): it gets hard links (copies across file systems) here.
        let bin = reachable_copy(&root, &dir)?;
        let libs = bin.join("lib");
        let mut last_error = None;
        // A free port is only probably free when master binds it: retry on a clash.
        for _attempt in 0..5 {
            let port = free_port()?;
            let conf = dir.join("imapd.conf");
            std::fs::write(&conf, imapd_conf(&dir, &opts, &run_as.0, port))?;
            let services = dir.join("cyrus.conf");
            std::fs::write(&services, cyrus_conf(&bin, &conf, port))?;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("master.log"))?;
            let child = Command::new(root.join("usr/lib/cyrus/bin/master"))
                .arg("-C")
                .arg(&conf)
                .arg("-M")
                .arg(&services)
                .arg("-p")
                .arg(dir.join("run/master.pid"))
                .env("LD_LIBRARY_PATH", &libs)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting Cyrus master")?;
            let mut master = ProcessGroup::new(child);
            match wait_for_greeting(port, Duration::from_secs(15), || master.exited().is_none()) {
                Ok(()) if !master.owns_port(port) => {
                    // Another server took the port first: ours cannot bind it.
                    master.stop(Duration::from_secs(5));
                    last_error = Some(anyhow!("port {port} was taken by another server"));
                    continue;
                }
                Ok(()) => {
                    let server = Cyrus {
                        imap_port: port,
                        dir,
                        users: opts.users.clone(),
                        admin: opts.admin.clone(),
                        inbox_prefix: !opts.altnamespace,
                        master,
                        _temp: temp,
                    };
                    server.create_users(&opts)?;
                    return Ok(server);
                }
                Err(e) => {
                    let exited = master.exited();
                    master.stop(Duration::from_secs(5));
                    let log = std::fs::read_to_string(dir.join("master.log")).unwrap_or_default();
                    let e = e.context(format!("master's output:\n{log}"));
                    // master exits at once (EX_OSERR/EX_UNAVAILABLE) when it cannot bind.
                    if exited.is_some() {
                        last_error = Some(e.context(format!("Cyrus master exited ({exited:?})")));
                        continue;
                    }
                    if std::env::var_os("MAILHAUL_KEEP_FAILED_SERVER").is_some() {
                        let kept = temp.keep();
                        return Err(e.context(format!(
                            "Cyrus did not greet (it logs to syslog only); kept {}",
                            kept.display()
                        )));
                    }
                    return Err(e.context("Cyrus did not greet (it logs to syslog only)"));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")).context("could not start Cyrus after 5 attempts"))
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The password of a configured user.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, p)| p.as_str())
    }

    /// A user's personal folder as that user names it: `Projects` or, with `altnamespace: no`,
    /// `INBOX/Projects`.
    pub fn personal(&self, folder: &str) -> String {
        if self.inbox_prefix {
            format!("INBOX/{folder}")
        } else {
            folder.to_string()
        }
    }

    /// Run admin commands (e.g. `CREATE "Team"`, `SETACL "Team" "anyone" "lrs"`); names as
    /// the admin sees them: `user/alice/Archive`, shared folders at the top.
    pub fn admin_commands(&self, commands: &[&str]) -> Result<()> {
        let mut session = SetupSession::login(self.imap_port, &self.admin.0, &self.admin.1)?;
        for command in commands {
            session.command(command)?;
        }
        Ok(())
    }

    /// Run commands as `user` (e.g. `SETACL "Archive" "bob" "lrs"` to share a folder).
    pub fn user_commands(&self, user: &str, commands: &[&str]) -> Result<()> {
        let pass = self.password(user).ok_or_else(|| anyhow!("no user {user}"))?;
        let mut session = SetupSession::login(self.imap_port, user, pass)?;
        for command in commands {
            session.command(command)?;
        }
        Ok(())
    }

    fn create_users(&self, opts: &CyrusOptions) -> Result<()> {
        let mut admin = SetupSession::login(self.imap_port, &self.admin.0, &self.admin.1)?;
        for (user, _) in &opts.users {
            admin.command(&format!("CREATE {}", quote(&format!("user/{user}"))))?;
        }
        drop(admin);
        if opts.special_use_folders {
            for (user, pass) in &opts.users {
                let mut session = SetupSession::login(self.imap_port, user, pass)?;
                for (name, special) in crate::dovecot::Layout::Standard.folders() {
                    session.command(&format!("CREATE {} (USE ({special}))", quote(&self.personal(name))))?;
                }
            }
        }
        Ok(())
    }

    /// Stop the server now.
    pub fn stop(&mut self) {
        self.master.stop(Duration::from_secs(10));
    }
}

/// The user Cyrus runs as: `mail` when we are root (Cyrus refuses to run as root), else us.
fn cyrus_user(dir: &Path) -> Result<(String, u32, u32)> {
    let meta = std::fs::metadata(dir)?;
    if meta.uid() == 0 {
        return Ok(("mail".into(), 8, 8));
    }
    let name = run(Command::new("id").arg("-un"))?.trim().to_string();
    Ok((name, meta.uid(), meta.gid()))
}

fn chown_tree(dir: &Path, (_, uid, gid): &(String, u32, u32)) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in walk(dir)? {
        std::os::unix::fs::lchown(&entry, Some(*uid), Some(*gid))
            .with_context(|| format!("chown {}", entry.display()))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Users and admin in a sasldb (auxprop), written with `saslpasswd2` (Debian's sasl2-bin).
fn write_sasldb(dir: &Path, opts: &CyrusOptions) -> Result<()> {
    let db = dir.join("sasldb2");
    for (user, pass) in opts.users.iter().chain(std::iter::once(&opts.admin)) {
        if [user, pass].iter().any(|s| s.contains(['\n', '\r', '"', '\\'])) {
            bail!("user {user:?}: users and passwords may not contain newlines, quotes or backslashes");
        }
        let mut child = Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-u", REALM, user])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running saslpasswd2 (apt-get install -y sasl2-bin, or run scripts/setup.sh)")?;
        if let Some(stdin) = child.stdin.as_mut() {
            std::io::Write::write_all(stdin, pass.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("saslpasswd2 for {user} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

fn imapd_conf(dir: &Path, opts: &CyrusOptions, run_as: &str, port: u16) -> String {
    let d = dir.display();
    let mut c = String::from("# Generated by mailhaul-tests: a throwaway server.\n");
    for (key, value) in [
        ("configdirectory", format!("{d}/conf")),
        ("partition-default", format!("{d}/spool")),
        ("admins", opts.admin.0.clone()),
        ("servername", REALM.to_string()),
        ("sasl_pwcheck_method", "auxprop".into()),
        ("sasl_auxprop_plugin", "sasldb".into()),
        ("sasl_sasldb_path", format!("{d}/sasldb2")),
        ("sasl_mech_list", "PLAIN LOGIN".into()),
        ("allowplaintext", "yes".into()),
        ("unixhierarchysep", "yes".into()),
        ("altnamespace", if opts.altnamespace { "yes" } else { "no" }.into()),
        ("cyrus_user", run_as.to_string()),
        ("syslog_prefix", format!("mailhaul-cyrus-{port}")),
        ("lmtpsocket", format!("{d}/run/lmtp")),
        ("idlesocket", format!("{d}/run/idle")),
        ("notifysocket", format!("{d}/run/notify")),
        // Tests log in many times in a row.
        ("imapidlepoll", "1".into()),
    ] {
        writeln!(c, "{key}: {value}").ok();
    }
    c
}

/// `dir/bin/imapd` and `dir/bin/lib/<the libcyrus libraries by soname>`.
fn reachable_copy(root: &Path, dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("lib"))?;
    let mut files = vec![(root.join("usr/lib/cyrus/bin/imapd"), bin.join("imapd"))];
    // Debian's multiarch directory: x86_64-linux-gnu, aarch64-linux-gnu, ...
    let multiarch = std::fs::read_dir(root.join("usr/lib"))
        .with_context(|| format!("reading {}/usr/lib", root.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.file_name().is_some_and(|n| n.to_string_lossy().ends_with("-linux-gnu")));
    let libs = multiarch.with_context(|| format!("no usr/lib/*-linux-gnu in {}", root.display()))?;
    for entry in std::fs::read_dir(&libs).with_context(|| format!("reading {}", libs.display()))? {
        let name = entry?.file_name();
        if name.to_string_lossy().ends_with(".so.0") {
            // The soname is a symlink: link the file it names, under the soname.
            files.push((std::fs::canonicalize(libs.join(&name))?, bin.join("lib").join(&name)));
        }
    }
    for (from, to) in files {
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(bin)
}

fn cyrus_conf(bin: &Path, conf: &Path, port: u16) -> String {
    format!(
        "START {{\n}}\nSERVICES {{\n  imap cmd=\"{} -C {}\" listen=\"127.0.0.1:{port}\" prefork=0 maxchild=100\n}}\nEVENTS {{\n}}\nDAEMON {{\n}}\n",
        bin.join("imapd").display(),
        conf.display()
    )
}
