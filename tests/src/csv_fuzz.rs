//! Valid batch CSVs in the three forms with distinctive random passwords, small mutations of
//! them (stray quotes and commas, line breaks, NUL, byte-order marks, UTF-8 fragments), and a
//! leak check: for property tests that no output about a damaged file carries a password.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngSeed};

/// Letters and signs that no message, column name or sample value strings four of together:
/// four of them in a row in any output can only come from a password.
pub const PASSWORD_CHARS: &str = "QZXJKWVYqzxjkwvy#%+=!";

/// Settings for the samples: a source host for the forms without one, a destination master
/// user for rows without a destination password. Port 9 (discard): nothing listens there.
pub const SETTINGS_TOML: &str = "[source]\nhost = \"127.0.0.1\"\nport = 9\n\n\
     [destination]\nhost = \"127.0.0.1\"\nport = 9\nadmin_user = \"admin\"\nmaster_separator = \"*\"\n\
     admin_password_env = \"MH_FUZZ_ADMIN\"\n";
/// The environment variable [`SETTINGS_TOML`] reads the master password from.
pub const ADMIN_PASSWORD_ENV: &str = "MH_FUZZ_ADMIN";
/// The destination master password: as secret as the file's own.
pub const ADMIN_PASSWORD: &str = "VqZ#kXw+JyQ=zK";

/// How many characters of a secret make a leak.
pub const LEAK_CHARS: usize = 4;

/// The accepted header forms (Exchange with and without its optional UserRoot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Exchange,
    ExchangeWithRoot,
    TrekMail,
    Full,
}

/// A valid batch file and the secrets in it.
#[derive(Clone)]
pub struct SampleCsv {
    pub form: Form,
    pub text: Vec<u8>,
    /// Every password of the file, and the master password of [`SETTINGS_TOML`].
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for SampleCsv {
    /// The text as text, so that a failing case reads as the file it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleCsv")
            .field("form", &self.form)
            .field("text", &String::from_utf8_lossy(&self.text))
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// One row's random parts; the rest follows from its number.
#[derive(Clone, Debug)]
struct RowSeed {
    source_password: String,
    destination_password: Option<String>,
    /// Picks among the sample hosts, ports, security values, admin forms and user roots.
    picks: [u8; 4],
}

/// The signs that make a password need quotes, put somewhere inside some of them.
const QUOTED_SIGNS: [char; 3] = [',', '"', ' '];

fn password() -> impl Strategy<Value = String> {
    let chars: Vec<char> = PASSWORD_CHARS.chars().collect();
    (prop::collection::vec(select(chars), 10..=16), prop::option::of((select(&QUOTED_SIGNS[..]), any::<Index>())))
        .prop_map(|(chars, sign)| {
            let mut pw: String = chars.into_iter().collect();
            if let Some((sign, at)) = sign {
                // Inside, not at an end: the sign is what the test is about, not outer spaces.
                pw.insert(1 + at.index(pw.len() - 1), sign);
            }
            pw
        })
}

fn row_seed() -> impl Strategy<Value = RowSeed> {
    (password(), prop::option::of(password()), any::<[u8; 4]>()).prop_map(
        |(source_password, destination_password, picks)| RowSeed { source_password, destination_password, picks },
    )
}

/// A valid CSV: one of the forms, one to four rows, LF or CRLF, with or without a BOM, with
/// passwords quoted where they must be (and sometimes where they need not be).
pub fn sample_csv() -> impl Strategy<Value = SampleCsv> {
    let forms = vec![Form::Exchange, Form::ExchangeWithRoot, Form::TrekMail, Form::Full];
    (select(forms), prop::collection::vec(row_seed(), 1..=4), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(form, rows, crlf, bom, quote_all)| build(form, &rows, crlf, bom, quote_all))
}

fn build(form: Form, rows: &[RowSeed], crlf: bool, bom: bool, quote_all: bool) -> SampleCsv {
    let quote = |v: &str| {
        if quote_all || v.contains(QUOTED_SIGNS) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    let pick = |choices: &[&'static str], p: u8| choices[usize::from(p) % choices.len()];
    let header = match form {
        Form::Exchange => "EmailAddress,UserName,Password",
        Form::ExchangeWithRoot => "EmailAddress,UserName,Password,UserRoot",
        Form::TrekMail => "source_email,source_password,destination_email",
        Form::Full => "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password",
    };
    let mut lines = vec![header.to_string()];
    let mut secrets = vec![ADMIN_PASSWORD.to_string()];
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        let [host, port, security, extra] = r.picks;
        let pw = quote(&r.source_password);
        secrets.push(r.source_password.clone());
        lines.push(match form {
            Form::Exchange | Form::ExchangeWithRoot => {
                let user = pick(&["user", "user*admin"], extra).replace("user", &format!("user{n}"));
                let root = pick(&["", "/users/"], host);
                let root = if root.is_empty() { String::new() } else { format!("{root}user{n}") };
                let mut line = format!("user{n}@new.example,{user},{pw}");
                if form == Form::ExchangeWithRoot {
                    line.push_str(&format!(",{root}"));
                }
                line
            }
            Form::TrekMail => format!("user{n}@old.example,{pw},user{n}@new.example"),
            Form::Full => {
                let destination_pw = r.destination_password.as_deref().map(&quote).unwrap_or_default();
                secrets.extend(r.destination_password.clone());
                format!(
                    "{},{},{},user{n},{pw},{},{},{},user{n}@new.example,{destination_pw}",
                    pick(&["127.0.0.1", "imap.old.example", ""], host),
                    pick(&["993", "143", ""], port),
                    pick(&["tls", "starttls", "plain", ""], security),
                    pick(&["127.0.0.1", "imap.new.example", ""], extra),
                    pick(&["", "993", "143"], host),
                    pick(&["", "tls", "starttls"], port),
                )
            }
        });
    }
    let newline = if crlf { "\r\n" } else { "\n" };
    let mut text = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
    text.extend(lines.join(newline).into_bytes());
    text.extend(newline.as_bytes());
    SampleCsv { form, text, secrets }
}

/// What a mutation puts in: the bytes that break CSV files in practice.
pub const TOKENS: [&[u8]; 12] = [
    b"\"",
    b",",
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\0",
    b"\xEF\xBB\xBF",
    b"\xC3",
    b"\xE2\x82",
    b"\xA9",
    "\u{e9}".as_bytes(),
];

#[derive(Clone, Debug)]
pub enum Edit {
    Insert(&'static [u8]),
    /// Removes one to three bytes.
    Delete(usize),
    /// Replaces one byte.
    Replace(&'static [u8]),
}

/// One edit at a line and a place in it, both picked relative to the file's size.
#[derive(Clone, Debug)]
pub struct Mutation {
    line: Index,
    at: Index,
    edit: Edit,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = || select(&TOKENS[..]);
    let edit = prop_oneof![
        token().prop_map(Edit::Insert),
        (1usize..=3).prop_map(Edit::Delete),
        token().prop_map(Edit::Replace)
    ];
    (any::<Index>(), any::<Index>(), edit).prop_map(|(line, at, edit)| Mutation { line, at, edit })
}

/// One to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

/// `text` with the mutations made. With `one_per_line`, a line of the original gets at most
/// one (later ones on a line already hit are dropped): two edits in one row that cancel out
/// (a comma lost, another added) make a row no validator can tell from a valid one.
pub fn mutate(text: &[u8], mutations: &[Mutation], one_per_line: bool) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in text.iter().enumerate() {
        if *b == b'\n' {
            lines.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < text.len() || lines.is_empty() {
        lines.push(start..text.len().max(start + 1));
    }
    let mut used = Vec::new();
    let mut edits: Vec<(usize, &Edit)> = Vec::new();
    for m in mutations {
        let line = m.line.index(lines.len());
        if one_per_line && used.contains(&line) {
            continue;
        }
        used.push(line);
        let range = &lines[line];
        edits.push((range.start + m.at.index(range.len()), &m.edit));
    }
    // From the end, so that each place is still where it was picked.
    edits.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let mut out = text.to_vec();
    for (at, edit) in edits {
        let at = at.min(out.len());
        match edit {
            Edit::Insert(token) => {
                out.splice(at..at, token.iter().copied());
            }
            Edit::Delete(n) => {
                out.drain(at..(at + n).min(out.len()));
            }
            Edit::Replace(token) => {
                out.splice(at..(at + 1).min(out.len()), token.iter().copied());
            }
        }
    }
    out
}

/// The first run of [`LEAK_CHARS`] characters of a secret found in `output`, if any.
pub fn leak<'a>(output: &str, secrets: &'a [String]) -> Option<&'a str> {
    secrets.iter().find_map(|s| {
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        chars.windows(LEAK_CHARS).find_map(|w| {
            let (from, last) = (w[0].0, w[LEAK_CHARS - 1]);
            let window = &s[from..last.0 + last.1.len_utf8()];
            output.contains(window).then_some(window)
        })
    })
}

/// Every string of a JSON document (keys too), unescaped, one a line: a password with a
/// quote in it is escaped in the document's text.
pub fn json_strings(value: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push_str(k);
                    out.push('\n');
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    out
}

/// A proptest configuration that runs the same cases on every machine: a fixed seed and no
/// failure file (a failure prints its minimal case instead).
pub fn seeded(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(13), failure_persistence: None, ..Config::default() }
}
