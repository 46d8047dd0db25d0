//! Throwaway Dovecot 2.3 instances: own config, ports, TLS certificate and mail store in a temp
//! directory, stopped on drop. Several can run at once.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Which special-use folders the server pre-creates (with `auto = subscribe`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Sent, Trash, Junk, Drafts, Archive, each with its SPECIAL-USE attribute.
    #[default]
    Standard,
    /// Outlook names: "Sent Items", "Deleted Items", "Junk Email", Drafts, Archive.
    Outlook,
    /// No special folders at all: only INBOX.
    None,
    /// Gmail as IMAP shows it: `[Gmail]/All Mail` (`\All`, the test seeds it with a copy of
    /// every message) and `[Gmail]/Important` (`\Important`, RFC 8457).
    Gmail,
}

impl Layout {
    /// (folder name, special-use attribute) pairs this layout creates.
    pub fn folders(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Layout::Standard => &[
                ("Sent", "\\Sent"),
                ("Trash", "\\Trash"),
                ("Junk", "\\Junk"),
                ("Drafts", "\\Drafts"),
                ("Archive", "\\Archive"),
            ],
            Layout::Outlook => &[
                ("Sent Items", "\\Sent"),
                ("Deleted Items", "\\Trash"),
                ("Junk Email", "\\Junk"),
                ("Drafts", "\\Drafts"),
                ("Archive", "\\Archive"),
            ],
            Layout::None => &[],
            Layout::Gmail => &[("[Gmail]/All Mail", "\\All"), ("[Gmail]/Important", "\\Important")],
        }
    }
}

/// How to set up a [`Dovecot`] instance.
#[derive(Clone, Debug)]
pub struct DovecotOptions {
    /// (user, password) pairs. Neither may contain `:` or a newline (passwd-file format).
    pub users: Vec<(String, String)>,
    /// Master user (login, password): log in as `user*login` with the master password.
    pub master: Option<(String, String)>,
    /// Which special-use folders exist from the start.
    pub special_use_layout: Layout,
    /// Hierarchy separator the server announces: `/` (default) or `.`.
    pub separator: char,
    /// When false, the server announces neither LITERAL+ nor LITERAL- (plain APPEND path).
    pub literal_plus: bool,
    /// With `literal_plus` false: announce LITERAL- instead (as Gmail does).
    pub literal_minus: bool,
    /// Every folder lives under `INBOX<separator>` (Courier, many cPanel hosts).
    pub inbox_prefix: bool,
    /// Refuse APPENDs larger than this (Dovecot size syntax, e.g. `100k`).
    pub max_mail_size: Option<String>,
    /// Storage quota per user (Dovecot size syntax, e.g. `60k`): APPENDs past it get NO [OVERQUOTA].
    pub storage_quota: Option<String>,
    /// Keep the instance in this directory (created if missing, never deleted) instead of a
    /// temp directory: used by `mailhaul-testenv`, whose servers outlive a single process.
    pub dir: Option<PathBuf>,
    /// passdb extra fields per user (`user` → `nologin temp reason=...`): the 8th passwd-file
    /// field, e.g. to make a login refuse like a busy or throttling server.
    pub passdb_extra: Vec<(String, String)>,
    /// Also accept OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER) from this issuer, validated
    /// locally against its public key (`passdb oauth2`, token claim `email` = the user).
    pub oauth2: Option<OAuth2Validation>,
    /// When false, the greeting and CAPABILITY do not announce SASL-IR (as Exchange's greeting
    /// lists nothing): a client must send its SASL response as a continuation.
    pub sasl_ir: bool,
    /// Offer COMPRESS=DEFLATE (RFC 4978) after login: Dovecot's `imap_zlib` plugin.
    pub deflate: bool,
    /// Capabilities announced after login without Dovecot doing them: `COMPRESS=DEFLATE`
    /// without the plugin (the command is refused: a server, or a proxy in front of it, that
    /// offers what it cannot do), `X-GM-EXT-1` (a Gmail-like source as far as detection goes).
    pub announced_only: Vec<String>,
    /// Dovecot's mailbox list index (its default). Off unless asked for: Dovecot 2.3.19 now
    /// and then kills one of a user's sessions running side by side ("Panic: fcntl(...
    /// dovecot.list.index.log, write-lock) ... Resource deadlock avoided", a lock-order bug
    /// between the list index and a mailbox's index). mailhaul resumes after that, but most
    /// tests are not about a server crashing at random.
    pub list_index: bool,
}

/// What Dovecot's `passdb oauth2` needs to validate an issuer's RS256 tokens locally.
#[derive(Clone, Debug)]
pub struct OAuth2Validation {
    /// The tokens' `iss`.
    pub issuer: String,
    /// The signing key's id (the tokens' `kid` header).
    pub kid: String,
    /// The signing key's public half (PEM).
    pub public_key_pem: String,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        DovecotOptions {
            users: Vec::new(),
            master: None,
            special_use_layout: Layout::Standard,
            separator: '/',
            literal_plus: true,
            literal_minus: false,
            max_mail_size: None,
            storage_quota: None,
            inbox_prefix: false,
            dir: None,
            passdb_extra: Vec::new(),
            oauth2: None,
            sasl_ir: true,
            deflate: false,
            announced_only: Vec::new(),
            list_index: false,
        }
    }
}

impl DovecotOptions {
    /// Default options with these users.
    pub fn with_users(users: &[(&str, &str)]) -> Self {
        DovecotOptions {
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            ..DovecotOptions::default()
        }
    }

    /// Add a master user (`user*login` logs in as `user` with the master password).
    pub fn master(mut self, login: &str, password: &str) -> Self {
        self.master = Some((login.to_string(), password.to_string()));
        self
    }

    /// Offer COMPRESS=DEFLATE after login (the `imap_zlib` plugin).
    pub fn deflate(mut self) -> Self {
        self.deflate = true;
        self
    }

    /// Announce COMPRESS=DEFLATE after login but refuse the command (no plugin).
    pub fn deflate_announced_only(self) -> Self {
        self.announce_only("COMPRESS=DEFLATE")
    }

    /// Announce `capability` after login without doing it (see `announced_only`).
    pub fn announce_only(mut self, capability: &str) -> Self {
        self.announced_only.push(capability.to_string());
        self
    }

    /// Set the special-use layout.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.special_use_layout = layout;
        self
    }

    /// Set the hierarchy separator (`/` or `.`).
    pub fn separator(mut self, separator: char) -> Self {
        self.separator = separator;
        self
    }

    /// Give `user` passdb extra fields, e.g. `nologin temp reason=...` so its (correct)
    /// login is refused with `NO [UNAVAILABLE] reason`, as a throttling server does.
    pub fn passdb_extra(mut self, user: &str, fields: &str) -> Self {
        self.passdb_extra.push((user.to_string(), fields.to_string()));
        self
    }

    /// Announce SASL-IR or not.
    pub fn sasl_ir(mut self, on: bool) -> Self {
        self.sasl_ir = on;
        self
    }

    /// Accept OAuth2 tokens of this issuer besides passwords.
    pub fn oauth2(mut self, validation: OAuth2Validation) -> Self {
        self.oauth2 = Some(validation);
        self
    }

    /// Put every folder under `INBOX<separator>`, as Courier and many cPanel hosts do.
    pub fn inbox_prefix(mut self) -> Self {
        self.inbox_prefix = true;
        self
    }

    /// A storage quota per user (e.g. `60k`).
    pub fn storage_quota(mut self, size: &str) -> Self {
        self.storage_quota = Some(size.to_string());
        self
    }

    /// Refuse messages larger than `size` (e.g. `100k`) on APPEND.
    pub fn max_mail_size(mut self, size: &str) -> Self {
        self.max_mail_size = Some(size.to_string());
        self
    }

    /// Announce LITERAL- but not LITERAL+ (implies `literal_plus(false)`).
    pub fn literal_minus(mut self) -> Self {
        self.literal_plus = false;
        self.literal_minus = true;
        self
    }

    /// Announce LITERAL+ or not.
    pub fn literal_plus(mut self, on: bool) -> Self {
        self.literal_plus = on;
        self
    }
}

/// A running Dovecot. Dropping it stops the server and (unless `dir` was given) deletes its files.
#[derive(Debug)]
pub struct Dovecot {
    /// Plain IMAP port on 127.0.0.1 (STARTTLS available).
    pub imap_port: u16,
    /// IMAPS port on 127.0.0.1 (TLS from the first byte).
    pub imaps_port: u16,
    /// PEM of the CA that signed the server certificate (valid for `localhost` and
    /// `127.0.0.1`): pass it as `ca_file`.
    pub cert_path: PathBuf,
    /// The hierarchy separator the server announces.
    pub separator: char,
    /// Where config, logs and mail live.
    pub dir: PathBuf,
    /// The users as configured.
    pub users: Vec<(String, String)>,
    /// The Dovecot master process id.
    pub pid: u32,
    // Keeps the temp directory alive; declared last so the server is stopped first.
    _temp: Option<tempfile::TempDir>,
}

/// Capabilities Dovecot 2.3.19 announces after login, minus LITERAL+ (used when
/// `literal_plus` is false: `imap_capability` can only replace the list, not remove from it).
const CAPS_WITHOUT_LITERAL_PLUS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT \
SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE \
UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT \
SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW \
STATUS=SIZE SAVEDATE SPECIAL-USE";

impl Dovecot {
    /// Start a fresh server. Fails (never skips) when Dovecot is not installed.
    pub fn start(opts: DovecotOptions) -> Result<Dovecot> {
        let binary = find_binary("dovecot")?;
        for (user, pass) in opts.users.iter().chain(opts.master.iter()) {
            if [user, pass].iter().any(|s| s.contains([':', '\n', '\r'])) {
                bail!("user {user:?}: users and passwords may not contain ':' or newlines (passwd-file)");
            }
        }
        if opts.separator != '/' && opts.separator != '.' {
            bail!("separator {:?}: only '/' and '.' are supported", opts.separator);
        }
        let (temp, dir) = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mailhaul-dovecot-")
                    .tempdir()
                    .context("creating a temp dir for Dovecot")?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        // Dovecot's unprivileged processes (mail uid, auth, login) must traverse the directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let (mail_uid, mail_gid, run_as) = mail_owner(&dir)?;
        let cert_path = make_certificate(&dir)?;
        write_users(&dir, &opts, mail_uid, mail_gid)?;
        if let Some(oauth2) = &opts.oauth2 {
            write_oauth2(&dir, oauth2)?;
        }

        let mut last_error = None;
        // Free ports are only probably free by the time Dovecot binds them: retry on a clash.
        for _attempt in 0..5 {
            let (imap_port, imaps_port) = (free_port()?, free_port()?);
            if imap_port == imaps_port {
                continue;
            }
            let base = dir.join("run");
            std::fs::create_dir_all(&base)?;
            std::fs::create_dir_all(dir.join("state"))?;
            let conf = dir.join("dovecot.conf");
            std::fs::write(&conf, config(&dir, &opts, imap_port, imaps_port, run_as.as_deref()))?;
            let log = dir.join("dovecot.log");
            let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            // stdin/stdout detached: a pipe we never read would keep the daemon attached to us.
            let status = Command::new(&binary)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            if !status.success() {
                if log_text.contains("Address already in use") {
                    last_error = Some(anyhow!("port clash: {log_text}"));
                    continue;
                }
                bail!("dovecot -c {} failed ({status}):\n{log_text}", conf.display());
            }
            let pid = read_pid(&base.join("master.pid"), Duration::from_secs(10))?;
            let alive = || Path::new(&format!("/proc/{pid}")).exists();
            match wait_for_greeting(imap_port, Duration::from_secs(15), alive) {
                Ok(()) => {
                    return Ok(Dovecot {
                        imap_port,
                        imaps_port,
                        cert_path,
                        separator: opts.separator,
                        dir,
                        users: opts.users,
                        pid,
                        _temp: temp,
                    })
                }
                Err(e) => {
                    stop_pid(pid, Duration::from_secs(10));
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    if log.contains("Address already in use") {
                        last_error = Some(e);
                        continue;
                    }
                    return Err(e.context(format!("Dovecot did not greet; its log:\n{log}")));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free ports")).context("could not start Dovecot after 5 attempts"))
    }

    /// Everything Dovecot logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// `127.0.0.1`, the address both ports listen on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The password of a configured user.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, p)| p.as_str())
    }

    /// The maildir directory of `user`'s `folder` (named as a client sees it, with the
    /// server's separator and prefix), as Dovecot itself resolves it (`doveadm mailbox path`).
    pub fn folder_dir(&self, user: &str, folder: &str) -> Result<PathBuf> {
        let doveadm = find_binary("doveadm")?;
        let out = Command::new(&doveadm)
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .args(["mailbox", "path", "-u", user, folder])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", doveadm.display()))?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || path.is_empty() {
            bail!("doveadm mailbox path -u {user} {folder:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(PathBuf::from(path))
    }

    /// The maildir file that holds message `uid` of `user`'s `folder`: its base name from
    /// `dovecot-uidlist`, found in `cur/` or `new/`. Look it up again after the server may
    /// have touched the message: Dovecot renames the file when it moves it to `cur/` or its
    /// flags change.
    pub fn message_file(&self, user: &str, folder: &str, uid: u32) -> Result<PathBuf> {
        let dir = self.folder_dir(user, folder)?;
        let uidlist = dir.join("dovecot-uidlist");
        let text = std::fs::read_to_string(&uidlist).with_context(|| format!("reading {}", uidlist.display()))?;
        // After the header, each line is `<uid> [<extension fields>] :<file base name>`.
        let base = text
            .lines()
            .skip(1)
            .find_map(|line| {
                let (first, rest) = line.split_once(' ')?;
                let (_, base) = rest.split_once(':')?;
                (first.parse() == Ok(uid)).then_some(base)
            })
            .ok_or_else(|| anyhow!("UID {uid} is not in {}", uidlist.display()))?;
        for sub in ["cur", "new"] {
            for entry in std::fs::read_dir(dir.join(sub))? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                // `new/` holds the bare base name; `cur/` appends `:2,<flags>`.
                if name == base || name.strip_prefix(base).is_some_and(|tail| tail.starts_with(':')) {
                    return Ok(dir.join(sub).join(&*name));
                }
            }
        }
        bail!("no file for UID {uid} ({base}) in {}/cur or new", dir.display())
    }

    /// Make message `uid` of `user`'s `folder` unreadable to the server (mode 000: the mail
    /// processes run as the mail owner, never as root). Dovecot 2.3 then answers
    /// `UID FETCH uid BODY.PEEK[]` with `* BYE FETCH failed: Internal error occurred` and
    /// closes the connection, every time; FLAGS and the other messages stay readable.
    /// Returns the file.
    pub fn make_unreadable(&self, user: &str, folder: &str, uid: u32) -> Result<PathBuf> {
        let file = self.message_file(user, folder, uid)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000))
            .with_context(|| format!("chmod 000 {}", file.display()))?;
        Ok(file)
    }

    /// Undo [`Dovecot::make_unreadable`]: the mode Dovecot gives new files in that directory
    /// (the directory's, without execute bits). Returns the file.
    pub fn make_readable(&self, user: &str, folder: &str, uid: u32) -> Result<PathBuf> {
        let file = self.message_file(user, folder, uid)?;
        let dir = file.parent().ok_or_else(|| anyhow!("{} has no parent", file.display()))?;
        let mode = std::fs::metadata(dir)?.mode() & 0o666;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", file.display()))?;
        Ok(file)
    }

    /// Stop the server now and wait until its master process is gone.
    pub fn stop(&self) {
        stop_pid(self.pid, Duration::from_secs(10));
    }
}

impl crate::servers::ImapServer for Dovecot {
    fn imap_port(&self) -> u16 {
        self.imap_port
    }
    fn separator(&self) -> char {
        self.separator
    }
    fn kind(&self) -> &'static str {
        "Dovecot"
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
        // libtest shows a test's output only when it fails: then this says what the server
        // saw (a disconnect, an error) when the client only saw a lost connection.
        let log = std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default();
        let unusual: Vec<&str> = log.lines().filter(|line| is_unusual(line)).collect();
        if !unusual.is_empty() {
            eprintln!("Dovecot on port {} logged:", self.imap_port);
            for line in &unusual[unusual.len().saturating_sub(40)..] {
                eprintln!("  {line}");
            }
        }
    }
}

/// A warning, error, fatal error or panic, but for the stop this harness asked for.
fn is_unusual(line: &str) -> bool {
    ["Warning:", "Error:", "Fatal:", "Panic:"].iter().any(|level| line.contains(level))
        && !line.contains("Killed with signal 15")
}

/// Send SIGTERM to a Dovecot master and wait (up to `wait`) for it to exit, then SIGKILL.
/// Used by `Drop` and by `mailhaul-testenv down`. Returns whether it was running.
pub fn stop_pid(pid: u32, wait: Duration) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if !is_dovecot(pid) {
        // Never signal a pid that was recycled by some other program.
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if !is_dovecot(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid_t, libc::SIGKILL) };
    true
}

/// True while `pid` is a live (not zombie) dovecot process.
fn is_dovecot(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) state ..."; zombies ("Z") are gone for our purposes.
    let Some((head, rest)) = stat.split_once(") ") else {
        return false;
    };
    head.ends_with("(dovecot") && !rest.starts_with('Z')
}

/// A Dovecot program (`dovecot`, `doveadm`) from the sbin directories or PATH.
fn find_binary(name: &str) -> Result<PathBuf> {
    let sbin = ["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from);
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    sbin.into_iter().chain(path).map(|dir| dir.join(name)).find(|candidate| candidate.exists()).ok_or_else(|| {
        anyhow!(
            "{name} is not installed; the end-to-end tests need a real server. \
             Install it with: apt-get install -y dovecot-imapd (or run .ci/run)"
        )
    })
}

/// Who owns the mail: uid/gid 8 (`mail`) when we are root, else ourselves (then Dovecot's
/// internal and login users must be us too: returned as the user name to run as).
fn mail_owner(dir: &Path) -> Result<(u32, u32, Option<String>)> {
    let meta = std::fs::metadata(dir)?;
    if meta.uid() == 0 {
        return Ok((8, 8, None));
    }
    let name = Command::new("id").arg("-un").output().context("running id -un")?;
    let name = String::from_utf8_lossy(&name.stdout).trim().to_string();
    Ok((meta.uid(), meta.gid(), Some(name)))
}

/// A port no server of this process was given before. The kernel hands a just-released
/// port out again soon, so two servers started at once by tests running in parallel could be
/// given the same one; the loser's retry then costs a server start.
pub(crate) fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    bail!("no port this process has not handed out already")
}

fn read_pid(path: &Path, wait: Duration) -> Result<u32> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            bail!("Dovecot wrote no pid to {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn wait_for_greeting(port: u16, wait: Duration, mut alive: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + wait;
    let mut last = String::new();
    while Instant::now() < deadline {
        // A server that died will not greet: say so now, not after the whole wait.
        if !alive() {
            bail!("the server exited before greeting on 127.0.0.1:{port}");
        }
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut line = String::new();
                let _ = BufReader::new(stream).read_line(&mut line);
                if line.starts_with("* OK") {
                    return Ok(());
                }
                last = format!("greeting was {line:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no `* OK` greeting on 127.0.0.1:{port} ({last})")
}

/// A private CA and a server certificate it signs (EC P-256: fast to generate), valid for
/// `localhost` and `127.0.0.1`. Returns the CA's PEM path, what a client trusts.
fn make_certificate(dir: &Path) -> Result<PathBuf> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[&["req", "-x509", "-days", "3650"][..], &ec, &["-subj", "/CN=mailhaul test CA"]].concat(),
        &[("-keyout", &ca_key), ("-out", &ca)],
    )?;
    openssl(&[&["req", "-new"][..], &ec, &["-subj", "/CN=localhost"]].concat(), &[("-keyout", &key), ("-out", &csr)])?;
    openssl(
        &["x509", "-req", "-days", "3650", "-set_serial", "1"],
        &[("-in", &csr), ("-CA", &ca), ("-CAkey", &ca_key), ("-extfile", &ext), ("-out", &cert)],
    )?;
    Ok(ca)
}

fn openssl(args: &[&str], paths: &[(&str, &Path)]) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.stdin(Stdio::null()).output().context("running openssl (apt-get install -y openssl)")?;
    if !out.status.success() {
        bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn write_users(dir: &Path, opts: &DovecotOptions, uid: u32, gid: u32) -> Result<()> {
    let mut passwd = String::new();
    for (user, pass) in &opts.users {
        let home = dir.join("home").join(user);
        std::fs::create_dir_all(&home)?;
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).with_context(|| format!("chown {}", home.display()))?;
        let extra =
            opts.passdb_extra.iter().filter(|(u, _)| u == user).map(|(_, f)| f.as_str()).collect::<Vec<_>>().join(" ");
        writeln!(passwd, "{user}:{{PLAIN}}{pass}:{uid}:{gid}::{}::{extra}", home.display())?;
    }
    std::fs::write(dir.join("users"), passwd)?;
    let masters = opts.master.iter().map(|(user, pass)| format!("{user}:{{PLAIN}}{pass}\n")).collect::<String>();
    std::fs::write(dir.join("masters"), masters)?;
    for file in ["users", "masters"] {
        // Read by the auth process, which runs as the unprivileged `dovecot` user.
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The key where `local_validation_key_dict` looks for it (`<azp>/<alg>/<kid>`, azp `default`),
/// and the oauth2 passdb's settings.
fn write_oauth2(dir: &Path, oauth2: &OAuth2Validation) -> Result<()> {
    if oauth2.kid.contains(['/', '.', '\n']) {
        bail!("kid {:?} cannot be a file name", oauth2.kid);
    }
    let keys = dir.join("oauth2-keys");
    let key_dir = keys.join("default").join("RS256");
    std::fs::create_dir_all(&key_dir)?;
    for d in [&keys, &keys.join("default"), &key_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(key_dir.join(&oauth2.kid), &oauth2.public_key_pem)?;
    std::fs::set_permissions(key_dir.join(&oauth2.kid), std::fs::Permissions::from_mode(0o644))?;
    let ext = dir.join("oauth2.conf.ext");
    std::fs::write(
        &ext,
        format!(
            "introspection_mode = local\nlocal_validation_key_dict = fs:posix:prefix={}/\nissuers = {}\nusername_attribute = email\nusername_format = %Lu\n",
            keys.display(),
            oauth2.issuer
        ),
    )?;
    std::fs::set_permissions(&ext, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn config(dir: &Path, opts: &DovecotOptions, imap: u16, imaps: u16, run_as: Option<&str>) -> String {
    let d = dir.display();
    let list_index = if opts.list_index { "yes" } else { "no" };
    let mechanisms = if opts.oauth2.is_some() { " xoauth2 oauthbearer" } else { "" };
    // Tokens first: passwd-file would only compare a token with a password.
    let oauth2_passdb = if opts.oauth2.is_some() {
        format!(
            "# Logs why each token is refused (expired, signature, user).\nauth_verbose = yes\npassdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf.ext\n}}\n"
        )
    } else {
        String::new()
    };
    let mut c = format!(
        r#"# Generated by mailhaul-tests: a throwaway server.
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = mailhaul-{imap}
disable_plaintext_auth = no
# Tests try wrong passwords on purpose; the default 2 s penalty only slows them down.
auth_failure_delay = 0
# Loopback is trusted so anvil's growing per-IP penalty (2, 4, 8, 15 s) does not apply.
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login{mechanisms}
first_valid_uid = 1
mail_location = maildir:~/Maildir:LAYOUT=fs
mail_max_userip_connections = 100
mailbox_list_index = {list_index}
default_process_limit = 200
ssl = yes
ssl_cert = <{d}/server.pem
ssl_key = <{d}/server.key
{oauth2_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
"#
    );
    if let Some(user) = run_as {
        writeln!(c, "default_internal_user = {user}\ndefault_login_user = {user}").ok();
    }
    if opts.master.is_some() {
        // Tried before the ordinary passdb for `user*master` logins; `pass = yes` then
        // looks the user up in the ordinary passdb (without its password).
        c.push_str(&format!(
            "auth_master_user_separator = *\npassdb {{\n  driver = passwd-file\n  args = {d}/masters\n  master = yes\n  pass = yes\n}}\n"
        ));
    }
    if opts.max_mail_size.is_some() || opts.storage_quota.is_some() {
        // The quota plugin: quota_max_mail_size refuses one larger APPEND while taking the
        // rest; a storage quota answers NO [OVERQUOTA] once the mailbox is full.
        c.push_str("mail_plugins = $mail_plugins quota\nplugin {\n  quota = maildir:User quota\n");
        if let Some(size) = &opts.max_mail_size {
            writeln!(c, "  quota_max_mail_size = {size}").ok();
        }
        if let Some(storage) = &opts.storage_quota {
            writeln!(c, "  quota_rule = *:storage={storage}").ok();
        }
        c.push_str("}\n");
    }
    if !opts.literal_plus || !opts.sasl_ir {
        // LITERAL- (RFC 7888, as Gmail): non-synchronizing literals up to 4096 bytes only.
        let minus = if opts.literal_minus { " LITERAL-" } else { "" };
        let plus = if opts.literal_plus { " LITERAL+" } else { "" };
        // imap-login announces this list before login too, SASL-IR included or not.
        let caps = if opts.sasl_ir {
            CAPS_WITHOUT_LITERAL_PLUS.to_string()
        } else {
            CAPS_WITHOUT_LITERAL_PLUS.replace(" SASL-IR", "")
        };
        writeln!(c, "imap_capability = {caps}{minus}{plus}").ok();
    } else if !opts.announced_only.is_empty() {
        // `+` adds to the list Dovecot announces after login.
        writeln!(c, "protocol imap {{\n  imap_capability = +{}\n}}", opts.announced_only.join(" ")).ok();
    }
    writeln!(c, "namespace inbox {{\n  inbox = yes\n  separator = {}", opts.separator).ok();
    if opts.inbox_prefix {
        writeln!(c, "  prefix = INBOX{}", opts.separator).ok();
    }
    for (name, special) in opts.special_use_layout.folders() {
        writeln!(c, "  mailbox \"{name}\" {{\n    auto = subscribe\n    special_use = {special}\n  }}").ok();
    }
    c.push_str("}\n");
    if opts.deflate {
        // Last, so `$mail_plugins` already holds every plugin set above.
        c.push_str("mail_plugins = $mail_plugins zlib\nprotocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n");
    }
    c
}
