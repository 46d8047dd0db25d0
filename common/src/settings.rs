//! Batch settings from a TOML file: servers (with presets), master users, copy options.
//!
//! Passwords never live in the file: `admin_password_env` names an environment variable
//! that [`Settings::resolve_secrets`] reads; an OAuth2 side (`[source.oauth2]`) names its
//! client secret or key the same way, or a file, or a Secrets Manager secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::model::{
    AuthMechanism, Compress, CopyOptions, FolderStrategy, GmailLabels, Login, Security, ServerSpec, SplitRule,
};
use crate::oauth2::{OAuth2Config, Provider};
use crate::secret::Secret;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML is malformed, has an unknown key or a value of the wrong kind.
    #[error("settings{}: {message}", location(.path, .line))]
    Parse { path: Option<PathBuf>, line: Option<usize>, message: String },
    /// A value is well-formed TOML but not acceptable.
    #[error("settings: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("settings: [{side}] admin_password_env names the environment variable {var}, which is not set or empty: set it to the admin's password before running")]
    MissingEnv { side: &'static str, var: String },
}

fn location(path: &Option<PathBuf>, line: &Option<usize>) -> String {
    match (path, line) {
        (Some(p), Some(l)) => format!(" {}, line {l}", p.display()),
        (Some(p), None) => format!(" {}", p.display()),
        (None, Some(l)) => format!(" line {l}"),
        (None, None) => String::new(),
    }
}

/// A well-known provider's IMAP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub host: &'static str,
    pub port: u16,
    pub security: Security,
    /// The token provider implied for an `[side.oauth2]` table that names none.
    pub oauth2: Option<Provider>,
}

/// Every preset, by name (`office365` is an alias of `outlook`).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "outlook",
        host: "outlook.office365.com",
        port: 993,
        security: Security::Tls,
        oauth2: Some(Provider::Microsoft),
    },
    Preset {
        name: "office365",
        host: "outlook.office365.com",
        port: 993,
        security: Security::Tls,
        oauth2: Some(Provider::Microsoft),
    },
    Preset {
        name: "gmail",
        host: "imap.gmail.com",
        port: 993,
        security: Security::Tls,
        oauth2: Some(Provider::Google),
    },
    Preset { name: "yahoo", host: "imap.mail.yahoo.com", port: 993, security: Security::Tls, oauth2: None },
    Preset { name: "icloud", host: "imap.mail.me.com", port: 993, security: Security::Tls, oauth2: None },
];

/// Looks a preset up by name, ignoring case.
pub fn preset(name: &str) -> Option<Preset> {
    let name = name.trim();
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).copied()
}

fn preset_names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// Settings for one side (`[source]` or `[destination]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SideSettings {
    /// A provider preset (outlook, office365, gmail, yahoo, icloud).
    pub preset: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(deserialize_with = "de_security")]
    pub security: Option<Security>,
    /// Extra CA certificates (PEM) for this side.
    pub ca_file: Option<PathBuf>,
    /// Explicit opt-out of certificate checks for this side only (self-signed servers).
    pub accept_invalid_certs: bool,
    /// COMPRESS=DEFLATE after login where the server offers it: `auto` (on unless the server
    /// is on loopback), `on` or `off` (default, see [`Compress`]).
    pub compress: Compress,
    pub auth: AuthMechanism,
    /// A master/admin user that can log in as any mailbox (used when a row has no password).
    pub admin_user: Option<String>,
    /// Filled by [`Settings::resolve_secrets`], never from the file.
    #[serde(skip)]
    pub admin_password: Secret,
    /// Name of the environment variable holding the admin's password (local runs).
    pub admin_password_env: Option<String>,
    /// Name of the AWS Secrets Manager secret holding the admin's password (mailhaul on AWS,
    /// where the copy function reads it; a local run refuses it).
    pub admin_password_secret: Option<String>,
    /// Dovecot's `auth_master_user_separator` (e.g. `*`): the master login is `user*admin`.
    pub master_separator: Option<String>,
    /// `[side.oauth2]`: sign in with OAuth2 tokens (XOAUTH2 unless `auth = "oauthbearer"`).
    pub oauth2: Option<OAuth2Config>,
    /// The OAuth2 credential, filled by [`Settings::resolve_secrets`], never from the file
    /// (empty when it lives in Secrets Manager, read by the copy function).
    #[serde(skip)]
    pub oauth2_credential: Secret,
}

fn de_security<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Security>, D::Error> {
    let value: Option<String> = Option::deserialize(d)?;
    match value {
        None => Ok(None),
        Some(v) => Security::parse(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("security {v:?} is not tls, starttls or plain"))),
    }
}

impl SideSettings {
    /// The server for a row: row cells win over these settings, these over the preset;
    /// the port defaults from the security. Errors when no host is given anywhere.
    pub fn server(
        &self,
        row_host: Option<&str>,
        row_port: Option<u16>,
        row_security: Option<Security>,
    ) -> Result<ServerSpec, String> {
        let preset = match self.preset.as_deref() {
            Some(name) => {
                Some(preset(name).ok_or_else(|| format!("unknown preset {name:?}: use one of {}", preset_names()))?)
            }
            None => None,
        };
        let row_host = row_host.map(str::trim).filter(|h| !h.is_empty());
        let own_host = self.host.as_deref().map(str::trim).filter(|h| !h.is_empty());
        let host = row_host
            .or(own_host)
            .or(preset.map(|p| p.host))
            .ok_or_else(|| "no host: set host or preset in the settings, or fill the host column".to_string())?;
        let security = row_security.or(self.security).or(preset.map(|p| p.security)).unwrap_or_default();
        // A preset's port only fits the preset's own security.
        let preset_port = preset.filter(|p| p.security == security).map(|p| p.port);
        let port = row_port.or(self.port).or(preset_port).unwrap_or_else(|| security.default_port());
        Ok(ServerSpec {
            host: host.to_string(),
            port,
            security,
            ca_file: self.ca_file.clone(),
            accept_invalid_certs: self.accept_invalid_certs,
            compress: self.compress,
        })
    }

    /// The OAuth2 login of `user` when this side signs in with tokens: the mailbox's own
    /// login, with this side's token source and credential.
    pub fn oauth2_login(&self, user: &str) -> Option<Login> {
        let config = self.oauth2.clone()?;
        Some(Login {
            user: user.trim().to_string(),
            authz: None,
            mechanism: self.auth,
            password: self.oauth2_credential.clone(),
            oauth2: Some(config),
        })
    }

    /// True when a master user is configured (a row may then leave its password empty).
    pub fn has_master(&self) -> bool {
        self.admin_user.as_deref().is_some_and(|u| !u.trim().is_empty())
    }

    /// The master-user login for `user`: `user<sep>admin` with `LOGIN` when
    /// `master_separator` is set (Dovecot), else `AUTHENTICATE PLAIN` with authz = user and
    /// authc = admin_user when `auth = "plain"`. The error says what to configure; `side`
    /// (`"source"`/`"destination"`) is only used in it.
    pub fn master_login(&self, side: &str, user: &str) -> Result<Login, String> {
        let Some(admin) = self.admin_user.as_deref().map(str::trim).filter(|a| !a.is_empty()) else {
            return Err(format!(
                "no {side} password: set [{side}] admin_user and admin_password_env (a master user), or fill the {side} password"
            ));
        };
        if self.admin_password.is_empty() && self.admin_password_env.is_none() && self.admin_password_secret.is_none() {
            return Err(format!(
                "[{side}] admin_user is set but not its password: set admin_password_env to the name of an environment variable that holds it (on AWS: admin_password_secret, the name of a secret)"
            ));
        }
        if let Some(sep) = self.master_separator.as_deref().filter(|s| !s.is_empty()) {
            return Ok(Login {
                user: format!("{user}{sep}{admin}"),
                authz: None,
                mechanism: AuthMechanism::Login,
                password: self.admin_password.clone(),
                oauth2: None,
            });
        }
        match self.auth {
            AuthMechanism::Plain => Ok(Login {
                user: admin.to_string(),
                authz: Some(user.to_string()),
                mechanism: AuthMechanism::Plain,
                password: self.admin_password.clone(),
                oauth2: None,
            }),
            _ => Err(format!(
                "[{side}] admin_user is set but not how to use it: set master_separator = \"*\" (Dovecot) or auth = \"plain\""
            )),
        }
    }
}

/// Everything a batch needs besides the CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub source: SideSettings,
    pub destination: SideSettings,
    pub copy: CopyOptions,
    /// Mailboxes copied at once.
    pub workers: usize,
    /// Cap on simultaneous connections to one source host (providers throttle above ~10).
    pub max_connections_per_source_host: usize,
    /// Delta passes repeated until the cut-over (AWS: the sweeper starts them).
    pub schedule: Option<DeltaSchedule>,
    /// AWS: a mailbox with more than this left after its first pass is copied in parts, by
    /// several copy functions at once (`split_mailboxes_above`, `max_parts_per_mailbox`).
    pub split: SplitRule,
}

/// `[schedule]`: a delta pass every `delta_every` until `until` (the MX cut-over). The
/// batch's passwords are kept in Secrets Manager until then, and deleted when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaSchedule {
    pub every: std::time::Duration,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// Parts of one split mailbox at most: each holds a connection slot of the source host.
const MAX_PARTS: usize = 32;

/// Bounds of `[schedule]`: the sweeper looks every 5 minutes, and passwords should not wait
/// in Secrets Manager for months.
const SCHEDULE_EVERY_MIN: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const SCHEDULE_DAYS_MAX: i64 = 90;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    delta_every: String,
    until: String,
}

impl DeltaSchedule {
    /// Parses `[schedule]`, as of `now`: `delta_every` like `24h`, `90m`, `1d`; `until` an
    /// RFC 3339 time (`2026-12-20T18:00:00Z`) or a day (`2026-12-20`, its start in UTC).
    fn parse(file: ScheduleFile, now: chrono::DateTime<chrono::Utc>) -> Result<DeltaSchedule, SettingsError> {
        let invalid = |key: &str, message: String| SettingsError::Invalid { key: format!("schedule.{key}"), message };
        let every = parse_every(&file.delta_every).ok_or_else(|| {
            invalid(
                "delta_every",
                format!("{:?} is not a duration: write e.g. \"24h\", \"90m\" or \"1d\"", file.delta_every),
            )
        })?;
        if every < SCHEDULE_EVERY_MIN {
            return Err(invalid(
                "delta_every",
                "must be at least 15m (the sweeper starts passes every 5 minutes)".into(),
            ));
        }
        let until = chrono::DateTime::parse_from_rfc3339(&file.until)
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok()
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(&file.until, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc())
            })
            .ok_or_else(|| {
                invalid(
                    "until",
                    format!("{:?} is not a time: write e.g. \"2026-12-20T18:00:00Z\" or \"2026-12-20\"", file.until),
                )
            })?;
        if until <= now {
            return Err(invalid("until", format!("{until} is already past: set the planned cut-over")));
        }
        if until > now + chrono::Duration::days(SCHEDULE_DAYS_MAX) {
            return Err(invalid(
                "until",
                format!(
                    "more than {SCHEDULE_DAYS_MAX} days ahead: the passwords would wait that long in Secrets Manager"
                ),
            ));
        }
        Ok(DeltaSchedule { every, until })
    }
}

/// `24h`, `90m`, `1d`, `3600s`: a whole number and one unit.
fn parse_every(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(number.checked_mul(seconds)?))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            source: SideSettings::default(),
            destination: SideSettings::default(),
            copy: CopyOptions::default(),
            workers: 4,
            max_connections_per_source_host: 10,
            schedule: None,
            split: SplitRule::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    workers: Option<usize>,
    max_connections_per_source_host: Option<usize>,
    split_mailboxes_above: Option<toml::Value>,
    max_parts_per_mailbox: Option<usize>,
    #[serde(default)]
    source: SideSettings,
    #[serde(default)]
    destination: SideSettings,
    #[serde(default)]
    copy: CopyFile,
    schedule: Option<ScheduleFile>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyFile {
    folders: Option<FolderStrategy>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    folder_map: Option<BTreeMap<String, String>>,
    since: Option<toml::Value>,
    max_message_size: Option<toml::Value>,
    skip_duplicates: Option<bool>,
    pipelining: Option<bool>,
    multiappend: Option<bool>,
    sync_flags: Option<bool>,
    reverify_unchanged: Option<bool>,
    connections_per_mailbox: Option<usize>,
    batch_bytes: Option<toml::Value>,
    batch_messages: Option<usize>,
    source_prefix: Option<String>,
    destination_prefix: Option<String>,
    shared_folders: Option<String>,
    gmail_labels: Option<GmailLabels>,
}

use crate::oauth2::is_env_name;

/// Completes and checks a side's OAuth2 settings: the preset's provider, XOAUTH2 unless
/// OAUTHBEARER is asked for, and a token source for the OAuth2 mechanisms.
fn oauth2_side(name: &str, side: &mut SideSettings) -> Result<(), SettingsError> {
    let invalid = |key: &str, message: String| SettingsError::Invalid { key: format!("{name}.{key}"), message };
    let implied = side.preset.as_deref().and_then(preset).and_then(|p| p.oauth2);
    let has_master = side.has_master();
    let Some(oauth2) = side.oauth2.as_mut() else {
        if side.auth.is_oauth2() {
            return Err(invalid(
                "auth",
                format!("auth = \"{}\" signs in with OAuth2 tokens: add a [{name}.oauth2] table saying where they come from (provider = microsoft, google or generic)", side.auth.sasl_name().to_ascii_lowercase()),
            ));
        }
        return Ok(());
    };
    if oauth2.provider.is_none() {
        oauth2.provider = implied;
    }
    match side.auth {
        AuthMechanism::Login => side.auth = AuthMechanism::Xoauth2,
        AuthMechanism::Plain => {
            return Err(invalid(
                "auth",
                format!("auth = \"plain\" is a password login: with [{name}.oauth2] use xoauth2 or oauthbearer"),
            ))
        }
        AuthMechanism::Xoauth2 | AuthMechanism::Oauthbearer => {}
    }
    if has_master {
        return Err(invalid(
            "admin_user",
            format!(
                "a side signs in either with OAuth2 tokens or with a master user: remove admin_user or [{name}.oauth2]"
            ),
        ));
    }
    oauth2.validate(name).map_err(|message| invalid("oauth2", message))
}

/// Parses a size: an integer number of bytes, or a string such as `"35MB"`, `"512 KB"`,
/// `"1GB"` (binary multiples: 1 KB = 1024 bytes, like the default of 35 MB).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn size_value(key: &str, v: &toml::Value) -> Result<u64, SettingsError> {
    let bad = || SettingsError::Invalid {
        key: key.to_string(),
        message: "expected a number of bytes or a size such as \"35MB\" (KB, MB, GB)".to_string(),
    };
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| bad()),
        toml::Value::String(s) => parse_size(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn date_value(key: &str, v: &toml::Value) -> Result<chrono::NaiveDate, SettingsError> {
    // Both `since = "2024-01-31"` and the bare TOML date `since = 2024-01-31` are accepted.
    let text = match v {
        toml::Value::String(s) => s.trim().to_string(),
        toml::Value::Datetime(d) if d.time.is_none() && d.offset.is_none() => d.to_string(),
        _ => String::new(),
    };
    chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| SettingsError::Invalid {
        key: key.to_string(),
        message: "expected a day as \"YYYY-MM-DD\"".to_string(),
    })
}

impl Settings {
    /// Parses settings from TOML text. Secrets are not read: call [`Settings::resolve_secrets`].
    pub fn from_toml_str(text: &str) -> Result<Settings, SettingsError> {
        Self::parse(text, None)
    }

    /// Reads a TOML file and resolves `admin_password_env` from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Settings, SettingsError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        let mut settings = Self::parse(&text, Some(path))?;
        settings.resolve_secrets(|var| std::env::var(var).ok())?;
        Ok(settings)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Settings, SettingsError> {
        let parse_error = |e: toml::de::Error| {
            // Built from message and span, not the error's Display, which quotes the
            // offending line: that line could hold a password someone pasted in by mistake.
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            SettingsError::Parse { path: path.map(Path::to_path_buf), line, message: e.message().trim().to_string() }
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        for side in ["source", "destination"] {
            let oauth2 = table.get(side).and_then(|t| t.get("oauth2"));
            for key in ["client_secret", "private_key", "service_account", "service_account_key", "token"] {
                if oauth2.and_then(|t| t.get(key)).is_some() {
                    return Err(SettingsError::Invalid {
                        key: format!("{side}.oauth2.{key}"),
                        message: "secrets do not belong in the settings file: remove it, put it in an environment variable (client_secret_env, service_account_env), a key file, or a Secrets Manager secret (aws_secret)"
                            .to_string(),
                    });
                }
            }
            if table.get(side).and_then(|t| t.get("admin_password")).is_some() {
                return Err(SettingsError::Invalid {
                    key: format!("{side}.admin_password"),
                    message: format!(
                        "passwords do not belong in the settings file: remove it, put the password in an environment variable and name it with [{side}] admin_password_env"
                    ),
                });
            }
        }
        let file: SettingsFile = toml::from_str(text).map_err(parse_error)?;
        let schedule = file.schedule.map(|f| DeltaSchedule::parse(f, chrono::Utc::now())).transpose()?;
        let mut settings =
            Settings { source: file.source, destination: file.destination, schedule, ..Settings::default() };
        if let Some(w) = file.workers {
            if w == 0 {
                return Err(SettingsError::Invalid { key: "workers".into(), message: "must be at least 1".into() });
            }
            settings.workers = w;
        }
        if let Some(m) = file.max_connections_per_source_host {
            if m == 0 {
                return Err(SettingsError::Invalid {
                    key: "max_connections_per_source_host".into(),
                    message: "must be at least 1".into(),
                });
            }
            settings.max_connections_per_source_host = m;
        }
        if let Some(v) = &file.split_mailboxes_above {
            // 0 (or "0") never splits.
            settings.split.above_bytes = size_value("split_mailboxes_above", v)?;
        }
        if let Some(parts) = file.max_parts_per_mailbox {
            if !(1..=MAX_PARTS).contains(&parts) {
                return Err(SettingsError::Invalid {
                    key: "max_parts_per_mailbox".into(),
                    message: format!("must be 1 to {MAX_PARTS} (1: never split)"),
                });
            }
            settings.split.max_parts = parts;
        }
        for (name, side) in [("source", &settings.source), ("destination", &settings.destination)] {
            if let Some(p) = side.preset.as_deref() {
                if preset(p).is_none() {
                    return Err(SettingsError::Invalid {
                        key: format!("{name}.preset"),
                        message: format!("unknown preset {p:?}: use one of {}", preset_names()),
                    });
                }
            }
            if side.port == Some(0) {
                return Err(SettingsError::Invalid { key: format!("{name}.port"), message: "must be 1-65535".into() });
            }
        }
        for (name, side) in [("source", &mut settings.source), ("destination", &mut settings.destination)] {
            oauth2_side(name, side)?;
        }
        let c = file.copy;
        let copy = &mut settings.copy;
        if let Some(f) = c.folders {
            copy.folders = f;
        }
        for (key, patterns) in [("copy.include", &c.include), ("copy.exclude", &c.exclude)] {
            for p in patterns.iter().flatten() {
                glob::Pattern::new(p).map_err(|e| SettingsError::Invalid {
                    key: key.to_string(),
                    message: format!("pattern {p:?} is not a valid glob: {}", e.msg),
                })?;
            }
        }
        if let Some(v) = c.include {
            copy.include = v;
        }
        if let Some(v) = c.exclude {
            copy.exclude = v;
        }
        if let Some(v) = c.folder_map {
            copy.folder_map = v;
        }
        if let Some(v) = &c.since {
            copy.since = Some(date_value("copy.since", v)?);
        }
        if let Some(v) = &c.max_message_size {
            copy.max_message_size = size_value("copy.max_message_size", v)?;
        }
        if let Some(v) = c.skip_duplicates {
            copy.skip_duplicates = v;
        }
        if let Some(v) = c.pipelining {
            copy.pipelining = v;
        }
        if let Some(v) = c.multiappend {
            copy.multiappend = v;
        }
        if let Some(v) = c.sync_flags {
            copy.sync_flags = v;
        }
        if let Some(v) = c.reverify_unchanged {
            copy.reverify_unchanged = v;
        }
        if let Some(v) = c.connections_per_mailbox {
            if v == 0 {
                return Err(SettingsError::Invalid {
                    key: "copy.connections_per_mailbox".into(),
                    message: "must be at least 1".into(),
                });
            }
            copy.connections_per_mailbox = v;
        }
        if let Some(v) = &c.batch_bytes {
            copy.batch_bytes = size_value("copy.batch_bytes", v)?;
        }
        if let Some(v) = c.batch_messages {
            copy.batch_messages = v.max(1);
        }
        copy.source_prefix = c.source_prefix;
        copy.destination_prefix = c.destination_prefix;
        copy.shared_folders = c.shared_folders.filter(|f| !f.trim_matches('/').is_empty());
        if let Some(labels) = c.gmail_labels {
            copy.gmail_labels = labels;
        }
        Ok(settings)
    }

    /// Fills each side's admin password from the variable named by `admin_password_env`,
    /// looked up through `env` (tests pass a map; [`Settings::load`] the real environment).
    pub fn resolve_secrets(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), SettingsError> {
        for (name, side) in [("source", &mut self.source), ("destination", &mut self.destination)] {
            if let Some(oauth2) = &side.oauth2 {
                let credential = oauth2
                    .local_credential(name, &env)
                    .map_err(|message| SettingsError::Invalid { key: format!("{name}.oauth2"), message })?;
                side.oauth2_credential = credential.unwrap_or_default();
            }
            if side.admin_password_secret.is_some() {
                return Err(SettingsError::Invalid {
                    key: format!("[{name}] admin_password_secret"),
                    message: "names an AWS Secrets Manager secret, which only mailhaul on AWS reads: for a local run put the password in an environment variable and name it with admin_password_env".into(),
                });
            }
            if let Some(var) = side.admin_password_env.as_deref() {
                match env(var) {
                    Some(value) if !value.is_empty() => side.admin_password = Secret::new(value),
                    // Echo the name only if it looks like one: someone may have pasted the
                    // password itself here.
                    _ if is_env_name(var) => {
                        return Err(SettingsError::MissingEnv { side: name, var: var.to_string() })
                    }
                    _ => {
                        return Err(SettingsError::Invalid {
                            key: format!("[{name}] admin_password_env"),
                            message: "the value is not an environment variable name (letters, digits, _): put the password in an environment variable and give its name here".into(),
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let s = Settings::from_toml_str("").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.workers, 4);
        assert_eq!(s.max_connections_per_source_host, 10);
        assert_eq!(s.copy, CopyOptions::default());
    }

    #[test]
    fn a_delta_schedule_runs_until_the_cut_over_within_bounds() {
        let now = chrono::Utc::now();
        let day = (now + chrono::Duration::days(10)).format("%Y-%m-%d").to_string();
        let s = Settings::from_toml_str(&format!("[schedule]\ndelta_every = \"24h\"\nuntil = \"{day}\"\n")).unwrap();
        let schedule = s.schedule.expect("schedule");
        assert_eq!(schedule.every, std::time::Duration::from_secs(86_400));
        assert_eq!(schedule.until.format("%Y-%m-%d %H:%M").to_string(), format!("{day} 00:00"));
        let at = (now + chrono::Duration::hours(30)).to_rfc3339();
        let s = Settings::from_toml_str(&format!("[schedule]\ndelta_every = \"90m\"\nuntil = \"{at}\"\n")).unwrap();
        assert_eq!(s.schedule.unwrap().every, std::time::Duration::from_secs(5400));
        assert_eq!(Settings::from_toml_str("").unwrap().schedule, None);
        let refused = |every: &str, until: String, words: &str| {
            let text = format!("[schedule]\ndelta_every = \"{every}\"\nuntil = \"{until}\"\n");
            let e = Settings::from_toml_str(&text).unwrap_err().to_string();
            assert!(e.contains(words), "{every} {until}: {e}");
        };
        refused("5m", day.clone(), "at least 15m");
        refused("daily", day.clone(), "not a duration");
        refused("24h", "next friday".into(), "not a time");
        refused("24h", "2020-01-01".into(), "already past");
        refused("24h", (now + chrono::Duration::days(200)).format("%Y-%m-%d").to_string(), "90 days");
        // Both keys, nothing else.
        assert!(Settings::from_toml_str("[schedule]\ndelta_every = \"24h\"\n").is_err());
    }

    #[test]
    fn split_rule_defaults_sizes_and_bounds() {
        assert_eq!(Settings::from_toml_str("").unwrap().split, SplitRule::default());
        let s = Settings::from_toml_str("split_mailboxes_above = \"2GB\"\nmax_parts_per_mailbox = 4\n").unwrap();
        assert_eq!(s.split, SplitRule { above_bytes: 2 << 30, max_parts: 4 });
        assert_eq!(Settings::from_toml_str("split_mailboxes_above = 0\n").unwrap().split.above_bytes, 0);
        for (bad, key) in [
            ("split_mailboxes_above = \"big\"", "split_mailboxes_above"),
            ("max_parts_per_mailbox = 0", "max_parts_per_mailbox"),
            ("max_parts_per_mailbox = 33", "max_parts_per_mailbox"),
        ] {
            let e = Settings::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn shared_folders_are_opt_in() {
        assert_eq!(Settings::from_toml_str("").unwrap().copy.shared_folders, None);
        let s = Settings::from_toml_str("[copy]\nshared_folders = \"Shared/From old server\"\n").unwrap();
        assert_eq!(s.copy.shared_folders.as_deref(), Some("Shared/From old server"));
        assert_eq!(s.copy.gmail_labels, GmailLabels::All);
        let s = Settings::from_toml_str("[copy]\ngmail_labels = \"first\"\n").unwrap();
        assert_eq!(s.copy.gmail_labels, GmailLabels::First);
        assert!(Settings::from_toml_str("[copy]\ngmail_labels = \"some\"\n").is_err());
        // An empty name would put other people's folders among the user's own: not taken.
        assert_eq!(Settings::from_toml_str("[copy]\nshared_folders = \"/\"\n").unwrap().copy.shared_folders, None);
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
workers = 8
max_connections_per_source_host = 5

[source]
preset = "gmail"
auth = "plain"
admin_user = "root"
admin_password_env = "SRC_ADMIN_PW"
compress = "auto"

[destination]
host = "imap.example.net"
port = 1143
security = "starttls"
ca_file = "/etc/ca.pem"
accept_invalid_certs = true
compress = "off"
admin_user = "admin"
master_separator = "*"

[copy]
folders = "standard"
include = ["INBOX*", "Projects/**"]
exclude = ["Junk"]
since = "2024-01-31"
max_message_size = "20MB"
skip_duplicates = false
pipelining = false

[copy.folder_map]
"Sent Items" = "Sent"
"#;
        let s = Settings::from_toml_str(text).unwrap();
        assert_eq!(s.workers, 8);
        assert_eq!(s.max_connections_per_source_host, 5);
        assert_eq!(s.source.preset.as_deref(), Some("gmail"));
        assert_eq!(s.source.auth, AuthMechanism::Plain);
        assert_eq!(s.source.admin_password_env.as_deref(), Some("SRC_ADMIN_PW"));
        assert!(s.source.admin_password.is_empty());
        assert_eq!(s.destination.port, Some(1143));
        assert_eq!(s.destination.security, Some(Security::Starttls));
        assert_eq!(s.destination.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(s.destination.accept_invalid_certs);
        assert_eq!((s.source.compress, s.destination.compress), (Compress::Auto, Compress::Off));
        assert_eq!(s.destination.master_separator.as_deref(), Some("*"));
        assert_eq!(s.copy.folders, FolderStrategy::Standard);
        assert_eq!(s.copy.include, vec!["INBOX*", "Projects/**"]);
        assert_eq!(s.copy.exclude, vec!["Junk"]);
        assert_eq!(s.copy.since, chrono::NaiveDate::from_ymd_opt(2024, 1, 31));
        assert_eq!(s.copy.max_message_size, 20 * 1024 * 1024);
        assert!(!s.copy.skip_duplicates);
        assert!(!s.copy.pipelining);
        assert_eq!(s.copy.folder_map.get("Sent Items").map(String::as_str), Some("Sent"));
        // Untouched options keep their defaults.
        assert_eq!(s.copy.batch_messages, CopyOptions::default().batch_messages);
    }

    #[test]
    fn sizes_and_dates() {
        for (text, bytes) in [
            ("max_message_size = 1000", 1000),
            ("max_message_size = \"35MB\"", 35 << 20),
            ("max_message_size = \"35 mb\"", 35 << 20),
            ("max_message_size = \"512KB\"", 512 << 10),
            ("max_message_size = \"1GB\"", 1 << 30),
            ("max_message_size = \"77\"", 77),
        ] {
            let s = Settings::from_toml_str(&format!("[copy]\n{text}")).unwrap();
            assert_eq!(s.copy.max_message_size, bytes, "{text}");
        }
        for bad in [
            "max_message_size = \"35 furlongs\"",
            "max_message_size = -1",
            "max_message_size = \"MB\"",
            "max_message_size = 1.5",
        ] {
            let err = Settings::from_toml_str(&format!("[copy]\n{bad}")).unwrap_err().to_string();
            assert!(err.contains("copy.max_message_size"), "{bad}: {err}");
        }
        let s = Settings::from_toml_str("[copy]\nsince = 2023-05-06").unwrap();
        assert_eq!(s.copy.since, chrono::NaiveDate::from_ymd_opt(2023, 5, 6));
        let err = Settings::from_toml_str("[copy]\nsince = \"06/05/2023\"").unwrap_err().to_string();
        assert!(err.contains("copy.since") && err.contains("YYYY-MM-DD"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("worker = 3", "worker"),
            ("[source]\nhots = \"x\"", "hots"),
            ("[copy]\nfolder = \"all\"", "folder"),
            ("[sorce]\nhost = \"x\"", "sorce"),
        ] {
            let err = Settings::from_toml_str(text).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SettingsError::Parse { .. }), "{text}");
            assert!(msg.contains(&format!("`{key}`")), "{text}: {msg}");
            assert!(msg.contains("line"), "{text}: {msg}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("[source]\nsecurity = \"ssl3\"", "not tls, starttls or plain"),
            ("[source]\npreset = \"hotmail\"", "source.preset"),
            ("[destination]\nport = 0", "destination.port"),
            ("[destination]\nport = 70000", "line 2"),
            ("workers = 0", "workers"),
            ("[copy]\ninclude = [\"[abc\"]", "copy.include"),
            ("[copy]\nfolders = \"some\"", "line 2"),
            ("workers = ", "line 1"),
        ] {
            let err = Settings::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn password_in_file_is_refused_without_echoing_it() {
        let err = Settings::from_toml_str("[destination]\nadmin_password = \"S3cr3t!\"\n").unwrap_err().to_string();
        assert!(err.contains("destination.admin_password") && err.contains("admin_password_env"), "{err}");
        assert!(!err.contains("S3cr3t!"));
        // Even a syntax error on that line does not quote it.
        let err = Settings::from_toml_str("[destination]\nadmin_password = \"S3cr3t!\n").unwrap_err().to_string();
        assert!(!err.contains("S3cr3t!"), "{err}");
    }

    #[test]
    fn security_aliases() {
        let s = Settings::from_toml_str("[source]\nsecurity = \"SSL\"\n[destination]\nsecurity = \"none\"").unwrap();
        assert_eq!(s.source.security, Some(Security::Tls));
        assert_eq!(s.destination.security, Some(Security::Plain));
    }

    #[test]
    fn a_local_run_refuses_an_aws_secret() {
        let mut s = Settings::from_toml_str(
            "[destination]\nadmin_user = \"admin\"\nmaster_separator = \"*\"\nadmin_password_secret = \"mailhaul/x/admin/dst\"",
        )
        .unwrap();
        assert_eq!(s.destination.admin_password_secret.as_deref(), Some("mailhaul/x/admin/dst"));
        // Enough for validation (the password is filled in later, by the copy function) ...
        assert_eq!(s.destination.master_login("destination", "bob").unwrap().user, "bob*admin");
        // ... but not for a local run, which has no Secrets Manager.
        let err = s.resolve_secrets(|_| None).unwrap_err().to_string();
        assert!(err.contains("admin_password_secret") && err.contains("admin_password_env"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_named_variable() {
        let mut s =
            Settings::from_toml_str("[destination]\nadmin_user = \"admin\"\nadmin_password_env = \"DST_PW\"").unwrap();
        let err = s.resolve_secrets(|_| None).unwrap_err().to_string();
        assert!(err.contains("DST_PW") && err.contains("[destination]"), "{err}");
        let err = s.resolve_secrets(|_| Some(String::new())).unwrap_err().to_string();
        assert!(err.contains("DST_PW"), "{err}");
        s.resolve_secrets(|v| (v == "DST_PW").then(|| "hunter2".to_string())).unwrap();
        assert_eq!(s.destination.admin_password.expose(), "hunter2");
        assert!(s.source.admin_password.is_empty());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailhaul.toml");
        std::fs::write(&path, "workers = 2\n[source]\npreset = \"outlook\"\n").unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.workers, 2);
        let err = Settings::load(dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("mailhaul.toml, line 1") && err.contains("bogus"), "{err}");
    }

    fn side(text: &str) -> SideSettings {
        Settings::from_toml_str(&format!("[source]\n{text}")).unwrap().source
    }

    #[test]
    fn presets_and_precedence() {
        let tls = Security::Tls;
        type Case<'a> = (&'a str, Option<&'a str>, Option<u16>, Option<Security>, (&'a str, u16, Security));
        let cases: &[Case] = &[
            ("preset = \"outlook\"", None, None, None, ("outlook.office365.com", 993, tls)),
            ("preset = \"Office365\"", None, None, None, ("outlook.office365.com", 993, tls)),
            ("preset = \"gmail\"", None, None, None, ("imap.gmail.com", 993, tls)),
            ("preset = \"yahoo\"", None, None, None, ("imap.mail.yahoo.com", 993, tls)),
            ("preset = \"icloud\"", None, None, None, ("imap.mail.me.com", 993, tls)),
            // Settings override the preset.
            ("preset = \"gmail\"\nhost = \"imap.corp\"", None, None, None, ("imap.corp", 993, tls)),
            (
                "preset = \"gmail\"\nsecurity = \"starttls\"",
                None,
                None,
                None,
                ("imap.gmail.com", 143, Security::Starttls),
            ),
            ("preset = \"gmail\"\nport = 1993", None, None, None, ("imap.gmail.com", 1993, tls)),
            // Row cells override the settings.
            ("host = \"a\"\nport = 1\nsecurity = \"plain\"", Some("b"), Some(2), Some(tls), ("b", 2, tls)),
            ("host = \"a\"\nsecurity = \"plain\"", Some(" "), None, None, ("a", 143, Security::Plain)),
            ("", Some("mail.x"), None, Some(Security::Starttls), ("mail.x", 143, Security::Starttls)),
            ("", Some("mail.x"), None, None, ("mail.x", 993, tls)),
        ];
        for (text, host, port, security, (h, p, sec)) in cases {
            let spec = side(text).server(*host, *port, *security).unwrap();
            assert_eq!((spec.host.as_str(), spec.port, spec.security), (*h, *p, *sec), "{text}");
        }
        let err = SideSettings::default().server(None, None, None).unwrap_err();
        assert!(err.contains("no host"), "{err}");
        let s =
            side("host = \"x\"\nca_file = \"/ca.pem\"\naccept_invalid_certs = true").server(None, None, None).unwrap();
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert!(s.accept_invalid_certs);
        assert_eq!(s.compress, Compress::Auto, "auto unless set: on where the server is not on loopback");
        assert_eq!(side("host = \"x\"\ncompress = \"on\"").server(None, None, None).unwrap().compress, Compress::On);
        assert!(Settings::from_toml_str("[source]\ncompress = \"yes\"").is_err(), "only auto, on or off");
        // auto: on unless the server is on loopback.
        for (compress, loopback, wanted) in [
            (Compress::Auto, false, true),
            (Compress::Auto, true, false),
            (Compress::On, true, true),
            (Compress::Off, false, false),
        ] {
            assert_eq!(compress.wanted(loopback), wanted, "{compress:?} loopback {loopback}");
        }
    }

    #[test]
    fn master_logins() {
        let mut dovecot = side("admin_user = \"admin\"\nmaster_separator = \"*\"");
        dovecot.admin_password = Secret::new("apw");
        let l = dovecot.master_login("destination", "alice@example.com").unwrap();
        assert_eq!(l.user, "alice@example.com*admin");
        assert_eq!(l.authz, None);
        assert_eq!(l.mechanism, AuthMechanism::Login);
        assert_eq!(l.password.expose(), "apw");

        let plain = side("admin_user = \"admin\"\nauth = \"plain\"\nadmin_password_env = \"X\"");
        let l = plain.master_login("destination", "bob").unwrap();
        assert_eq!((l.user.as_str(), l.authz.as_deref(), l.mechanism), ("admin", Some("bob"), AuthMechanism::Plain));

        let err = side("admin_user = \"admin\"").master_login("destination", "bob").unwrap_err();
        assert!(err.contains("admin_password_env"), "{err}");
        let err =
            side("admin_user = \"admin\"\nadmin_password_env = \"X\"").master_login("destination", "bob").unwrap_err();
        assert!(err.contains("master_separator") && err.contains("auth = \"plain\""), "{err}");
        let err = SideSettings::default().master_login("destination", "bob").unwrap_err();
        assert!(err.contains("no destination password") && err.contains("[destination] admin_user"), "{err}");
        assert!(!SideSettings::default().has_master());
        assert!(plain.has_master());
    }
}

#[cfg(test)]
mod readme_example {
    use super::*;

    #[test]
    fn a_password_pasted_as_env_name_is_not_echoed() {
        let mut s = Settings::from_toml_str("[destination]\nadmin_password_env = \"s3cr3t pass!\"\n").expect("parses");
        let error = s.resolve_secrets(|_| None).expect_err("not a variable name").to_string();
        assert!(!error.contains("s3cr3t"), "{error}");
        let mut s = Settings::from_toml_str("[destination]\nadmin_password_env = \"MH_ADMIN\"\n").expect("parses");
        assert!(s.resolve_secrets(|_| None).expect_err("unset").to_string().contains("MH_ADMIN"));
    }

    /// The settings example in the README stays valid.
    #[test]
    fn readme_settings_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in the README") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("end of the toml block");
        let settings = Settings::from_toml_str(&readme[start..end]).expect("README example parses");
        assert_eq!(settings.destination.admin_user.as_deref(), Some("admin"));
        assert_eq!(settings.copy.folder_map.get("Old Stuff/2019").map(String::as_str), Some("Archive/2019"));
        assert_eq!(settings.copy.max_message_size, 35 * 1024 * 1024);
    }
}
