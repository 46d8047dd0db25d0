//! What the engine tests share: jobs against the harness's Dovecot servers.

use mailhaul_common::model::{AuthMechanism, Compress, Endpoint, Login, MailboxJob, Security, ServerSpec};
use mailhaul_common::Secret;
use mailhaul_tests::dovecot::Dovecot;

/// `user` on `server` over TLS, trusting the server's own test certificate.
#[allow(dead_code)] // not every test binary uses every helper
pub fn endpoint(server: &Dovecot, user: &str, password: &str) -> Endpoint {
    let mut endpoint = plain_endpoint(server.imaps_port, user, password);
    endpoint.server.security = Security::Tls;
    endpoint.server.ca_file = Some(server.cert_path.clone());
    endpoint
}

/// alice (password `pw`) from `source` to `destination`.
#[allow(dead_code)]
pub fn job(source: &Dovecot, destination: &Dovecot) -> MailboxJob {
    MailboxJob {
        row: 1,
        mailbox: "alice".into(),
        source: endpoint(source, "alice", "pw"),
        destination: endpoint(destination, "alice", "pw"),
        user_root: None,
    }
}

/// `user` over plain IMAP on 127.0.0.1:`port` (a Cyrus or Courier test server, or a proxy).
#[allow(dead_code)] // not every test binary uses every helper
pub fn plain_endpoint(port: u16, user: &str, password: &str) -> Endpoint {
    Endpoint {
        server: ServerSpec {
            host: "127.0.0.1".into(),
            port,
            security: Security::Plain,
            ca_file: None,
            accept_invalid_certs: false,
            compress: Compress::Auto,
        },
        login: Login {
            user: user.into(),
            authz: None,
            mechanism: AuthMechanism::Login,
            password: Secret::new(password),
            oauth2: None,
        },
    }
}

/// An admin acting as `user` through AUTHENTICATE PLAIN with `user` as authorization
/// identity (Cyrus), over plain IMAP on 127.0.0.1:`port`.
#[allow(dead_code)]
pub fn admin_endpoint(port: u16, admin: &str, admin_password: &str, user: &str) -> Endpoint {
    let mut endpoint = plain_endpoint(port, admin, admin_password);
    endpoint.login.authz = Some(user.into());
    endpoint.login.mechanism = AuthMechanism::Plain;
    endpoint
}
