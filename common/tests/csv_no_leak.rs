//! Property tests of issue 13: whatever damage a batch CSV has taken (stray quotes and
//! commas, line breaks, NUL, byte-order marks, UTF-8 fragments), validating it never panics
//! and no output about it (the table, the JSON report, the problems) holds four characters in
//! a row of any of its passwords. The cases are seeded: every run checks the same ones.

use std::sync::LazyLock;

use mailhaul_common::batch::{validate_batch, ValidatedBatch};
use mailhaul_common::settings::Settings;
use mailhaul_tests::csv_fuzz::{
    json_strings, leak, mutate, mutations, sample_csv, seeded, ADMIN_PASSWORD, SETTINGS_TOML,
};
use proptest::prelude::*;

fn settings() -> &'static Settings {
    static SETTINGS: LazyLock<Settings> = LazyLock::new(|| {
        let mut s = Settings::from_toml_str(SETTINGS_TOML).expect("sample settings");
        s.resolve_secrets(|_| Some(ADMIN_PASSWORD.into())).expect("admin password");
        s
    });
    &SETTINGS
}

/// Everything a person or a program is shown: the table, the JSON report (as text and
/// unescaped), and the whole result as Debug (jobs print their passwords as `***`).
fn shown(b: &ValidatedBatch) -> String {
    let json = b.to_json();
    format!("{}\n{json}\n{}\n{b:?}", b.render_table(), json_strings(&json))
}

/// Only the messages: problems, their columns, and the header names.
fn messages(b: &ValidatedBatch) -> String {
    let problems = b.problems.iter().map(|p| format!("{p} {:?}", p.column));
    problems.chain(b.headers.iter().cloned()).collect::<Vec<_>>().join("\n")
}

proptest! {
    #![proptest_config(seeded(500))]

    /// The samples themselves are valid and quiet: the generator is right, and the passwords
    /// are distinctive (no output of a valid file holds four characters of one).
    #[test]
    fn sample_batches_are_valid_and_show_no_password(sample in sample_csv()) {
        let b = validate_batch(&sample.text, settings());
        prop_assert!(b.is_valid(), "{:?}\n{}", sample.form, String::from_utf8_lossy(&sample.text));
        let out = shown(&b);
        prop_assert_eq!(leak(&out, &sample.secrets), None, "{}", out);
    }
}

proptest! {
    #![proptest_config(seeded(4000))]

    /// Up to three damaged lines: nothing shown holds a password, cells included.
    #[test]
    fn no_output_about_a_damaged_batch_shows_a_password(
        sample in sample_csv(),
        mutations in mutations(3),
    ) {
        let text = mutate(&sample.text, &mutations, true);
        let b = validate_batch(&text, settings());
        let out = shown(&b);
        prop_assert_eq!(leak(&out, &sample.secrets), None, "file:\n{}\noutput:\n{}", String::from_utf8_lossy(&text), out);
    }
}

proptest! {
    #![proptest_config(seeded(2000))]

    /// Up to six edits anywhere, several in one row too: the messages and header names still
    /// hold no password. (The cells of a row are not checked here: a row that lost a comma
    /// and gained one elsewhere reads like a valid row whose cells are shifted, and shows
    /// them.)
    #[test]
    fn no_message_about_a_badly_damaged_batch_shows_a_password(
        sample in sample_csv(),
        mutations in mutations(6),
    ) {
        let text = mutate(&sample.text, &mutations, false);
        let b = validate_batch(&text, settings());
        let out = messages(&b);
        prop_assert_eq!(leak(&out, &sample.secrets), None, "file:\n{}\nmessages:\n{}", String::from_utf8_lossy(&text), out);
    }
}
