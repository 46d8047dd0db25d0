//! Batch CSVs for end-to-end runs of the `mailhaul` binary against local servers.

/// The header of a full-form batch CSV.
pub const FULL_FORM_HEADER: &str = "source_host,source_port,source_security,source_user,source_password,\
destination_host,destination_port,destination_security,destination_user,destination_password";

/// A full-form batch CSV that copies each (user, password) to the same user and password,
/// both servers on 127.0.0.1 with `security` (`plain`, `tls` or `starttls`).
pub fn loopback_batch(source_port: u16, destination_port: u16, security: &str, users: &[(&str, &str)]) -> String {
    let mut csv = format!("{FULL_FORM_HEADER}\n");
    for (user, password) in users {
        let password = format!("\"{}\"", password.replace('"', "\"\""));
        csv.push_str(&format!(
            "127.0.0.1,{source_port},{security},{user},{password},127.0.0.1,{destination_port},{security},{user},{password}\n"
        ));
    }
    csv
}
