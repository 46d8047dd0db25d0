//! Admin ("master user") credential forms found in a migration CSV's UserName cell, as
//! Microsoft documents them for IMAP migrations: Dovecot `user*admin`, Exchange
//! `Domain/Admin/User`, Mirapoint `#user@domain#admin#`.

use crate::model::{AuthMechanism, Login};
use crate::secret::Secret;

/// Which admin credential form a UserName cell uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminForm {
    /// A plain login: the mailbox owner logs in with their own password.
    Plain,
    /// Dovecot (SASL master user): `user*admin`.
    Dovecot,
    /// Exchange IMAP: `Domain/Admin/User`.
    Exchange {
        /// The Windows domain in front of the admin name.
        domain: String,
    },
    /// Mirapoint: `#user@domain#admin#`.
    Mirapoint,
}

/// A source login as written in the CSV, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminLogin {
    /// The UserName cell as written (trimmed): sent verbatim with `LOGIN`.
    pub raw: String,
    /// The mailbox owner whose mail is copied.
    pub user: String,
    /// The admin who logs in on the owner's behalf, for the admin forms.
    pub admin: Option<String>,
    pub form: AdminForm,
}

/// Recognises the admin forms in a UserName cell; anything else is a plain user.
///
/// The mechanism is not needed to parse, but is taken so callers state which one they use:
/// a form is only *interpreted* with [`AuthMechanism::Plain`] (see [`AdminLogin::to_login`]).
pub fn parse_source_login(username: &str, _mechanism: AuthMechanism) -> AdminLogin {
    let raw = username.trim().to_string();
    let plain = |raw: String| AdminLogin { user: raw.clone(), raw, admin: None, form: AdminForm::Plain };

    // Mirapoint first: its user part holds an `@`, and it could otherwise hold a `*` or `/`.
    if let Some(inner) = raw.strip_prefix('#').and_then(|s| s.strip_suffix('#')) {
        if let Some((user, admin)) = inner.split_once('#') {
            if !user.is_empty() && !admin.is_empty() && !admin.contains('#') {
                return AdminLogin {
                    user: user.to_string(),
                    admin: Some(admin.to_string()),
                    form: AdminForm::Mirapoint,
                    raw,
                };
            }
        }
        return plain(raw);
    }
    if let Some((user, admin)) = raw.split_once('*') {
        if !user.is_empty() && !admin.is_empty() && !admin.contains('*') {
            return AdminLogin {
                user: user.to_string(),
                admin: Some(admin.to_string()),
                form: AdminForm::Dovecot,
                raw,
            };
        }
        return plain(raw);
    }
    let parts: Vec<&str> = raw.split('/').collect();
    if let [domain, admin, user] = parts.as_slice() {
        if !domain.is_empty() && !admin.is_empty() && !user.is_empty() {
            return AdminLogin {
                user: user.to_string(),
                admin: Some(admin.to_string()),
                form: AdminForm::Exchange { domain: domain.to_string() },
                raw,
            };
        }
    }
    plain(raw)
}

impl AdminLogin {
    /// True for the Dovecot, Exchange and Mirapoint forms.
    pub fn is_admin_form(&self) -> bool {
        self.admin.is_some()
    }

    /// The login to send. With [`AuthMechanism::Login`] the cell goes out verbatim, because
    /// that is how those servers parse it themselves. With [`AuthMechanism::Plain`] and an
    /// admin form, the admin authenticates (authc) and acts as the owner (authz).
    pub fn to_login(&self, password: Secret, mechanism: AuthMechanism) -> Login {
        match (mechanism, &self.admin) {
            (AuthMechanism::Plain, Some(admin)) => {
                Login { user: admin.clone(), authz: Some(self.user.clone()), mechanism, password, oauth2: None }
            }
            _ => Login { user: self.raw.clone(), authz: None, mechanism, password, oauth2: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(domain: &str) -> AdminForm {
        AdminForm::Exchange { domain: domain.to_string() }
    }

    #[test]
    fn recognises_each_form() {
        let cases: &[(&str, &str, Option<&str>, AdminForm)] = &[
            ("alice@example.com", "alice@example.com", None, AdminForm::Plain),
            ("terry.adams", "terry.adams", None, AdminForm::Plain),
            ("  bob  ", "bob", None, AdminForm::Plain),
            ("alice*admin", "alice", Some("admin"), AdminForm::Dovecot),
            ("alice@example.com*admin", "alice@example.com", Some("admin"), AdminForm::Dovecot),
            ("contoso/admin/alberta", "alberta", Some("admin"), ex("contoso")),
            ("#alice@example.com#admin#", "alice@example.com", Some("admin"), AdminForm::Mirapoint),
            // Incomplete forms are plain logins, sent as written.
            ("*admin", "*admin", None, AdminForm::Plain),
            ("alice*", "alice*", None, AdminForm::Plain),
            ("a*b*c", "a*b*c", None, AdminForm::Plain),
            ("contoso//alberta", "contoso//alberta", None, AdminForm::Plain),
            ("a/b", "a/b", None, AdminForm::Plain),
            ("a/b/c/d", "a/b/c/d", None, AdminForm::Plain),
            ("#alice@example.com#", "#alice@example.com#", None, AdminForm::Plain),
            ("##admin#", "##admin#", None, AdminForm::Plain),
        ];
        for (cell, user, admin, form) in cases {
            let parsed = parse_source_login(cell, AuthMechanism::Login);
            assert_eq!(parsed.user, *user, "user of {cell:?}");
            assert_eq!(parsed.admin.as_deref(), *admin, "admin of {cell:?}");
            assert_eq!(&parsed.form, form, "form of {cell:?}");
            assert_eq!(parsed.raw, cell.trim());
            assert_eq!(parsed.is_admin_form(), admin.is_some());
        }
    }

    #[test]
    fn login_mechanism_sends_the_cell_verbatim() {
        for cell in ["alice*admin", "contoso/admin/alberta", "#alice@example.com#admin#", "bob"] {
            let login =
                parse_source_login(cell, AuthMechanism::Login).to_login(Secret::new("pw"), AuthMechanism::Login);
            assert_eq!(login.user, cell);
            assert_eq!(login.authz, None);
            assert_eq!(login.mechanism, AuthMechanism::Login);
            assert_eq!(login.password.expose(), "pw");
        }
    }

    #[test]
    fn plain_mechanism_splits_admin_and_user() {
        let cases = [
            ("alice*admin", "admin", Some("alice")),
            ("contoso/admin/alberta", "admin", Some("alberta")),
            ("#alice@example.com#admin#", "admin", Some("alice@example.com")),
            ("bob@example.com", "bob@example.com", None),
        ];
        for (cell, authc, authz) in cases {
            let login =
                parse_source_login(cell, AuthMechanism::Plain).to_login(Secret::new("pw"), AuthMechanism::Plain);
            assert_eq!(login.user, authc, "{cell}");
            assert_eq!(login.authz.as_deref(), authz, "{cell}");
            assert_eq!(login.mechanism, AuthMechanism::Plain);
        }
    }
}
