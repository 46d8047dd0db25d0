//! Errors of the copy engine, classified as retryable or permanent.

use std::time::Duration;

/// Which side of a migration an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Why a mailbox could not be copied (or not yet).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{side} {server}: login failed for {user}: {reply}")]
    Auth { side: Side, server: String, user: String, reply: String, hint: String },
    /// The OAuth2 token endpoint refused the client (permanent) or could not be reached.
    #[error("{side}: OAuth2 token from {provider} ({url}) {detail}")]
    Token { side: Side, provider: String, url: String, detail: String, hint: String, retryable: bool },
    #[error("{side} {server}: cannot connect: {detail}")]
    Connect { side: Side, server: String, detail: String },
    #[error("{side} {server}: TLS: {detail}")]
    Tls { side: Side, server: String, detail: String },
    #[error("{side} {server}: connection lost: {detail}")]
    ConnectionLost { side: Side, server: String, detail: String },
    #[error("{side} {server}: server busy or throttling: {detail}")]
    Throttled { side: Side, server: String, detail: String, retry_after: Option<Duration> },
    #[error("{side} folder {folder:?}: {detail}")]
    Folder { side: Side, folder: String, detail: String },
    #[error("{side} {server}: unexpected reply: {detail}")]
    Protocol { side: Side, server: String, detail: String },
    #[error("destination {server}: mailbox full: {detail}")]
    OverQuota { server: String, detail: String },
    #[error("{side} {server}: the server failed a command: {detail}")]
    ServerError { side: Side, server: String, detail: String },
    #[error(transparent)]
    Store(#[from] crate::ports::StoreError),
}

impl CopyError {
    /// Worth another try after a pause (never true for a failed login: that locks accounts).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CopyError::Token { retryable: true, .. }
                | CopyError::Connect { .. }
                | CopyError::ConnectionLost { .. }
                | CopyError::Throttled { .. }
                | CopyError::Store(_)
        )
    }

    /// The server's own backoff hint, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CopyError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            CopyError::Auth { hint, .. } | CopyError::Token { hint, .. } => hint.clone(),
            CopyError::Connect { .. } => "check host, port and security, and that the server is reachable from here".into(),
            CopyError::Tls { .. } => "check the host name and certificate; for a self-signed server set a ca_file, or accept_invalid_certs for that side only".into(),
            CopyError::ConnectionLost { .. } | CopyError::Throttled { .. } => "transient: run again to resume where it stopped".into(),
            CopyError::Folder { .. } => "rename or exclude the folder, or map it with [copy.folder_map]".into(),
            CopyError::Protocol { .. } => "run again; if it persists, report it with the log".into(),
            CopyError::OverQuota { .. } => {
                "the destination mailbox is full: raise its quota, then run again (copying resumes where it stopped)".into()
            }
            CopyError::ServerError { .. } => "run again to resume where it stopped; if it repeats, check the server's log".into(),
            CopyError::Store(_) => "check the state file or table is writable, then run again".into(),
        }
    }
}
