//! NAMESPACE (RFC 2342): where a server keeps the user's own folders, other users' folders
//! and shared folders, with their hierarchy delimiters. imap-proto cannot parse the reply
//! (async-imap would fail the connection on it), so the command goes straight to the stream
//! right after login, while nothing else is in flight, and the reply is parsed here.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::Session;

/// One namespace: its prefix (`INBOX.`, `Other Users/`, `""`) and delimiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    pub delimiter: Option<char>,
}

/// Which namespace a folder belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Personal,
    OtherUsers,
    Shared,
}

/// The three lists of a NAMESPACE reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub personal: Vec<Namespace>,
    pub other_users: Vec<Namespace>,
    pub shared: Vec<Namespace>,
}

impl Namespaces {
    /// The user's own folder prefix and delimiter (the first personal namespace).
    pub fn personal_prefix(&self) -> Option<&Namespace> {
        self.personal.first()
    }

    /// The namespace `name` (raw, as LIST sent it) lives in: the longest prefix that matches,
    /// so Cyrus's `altnamespace: no` (personal `INBOX/`, shared `""`) sorts `INBOX/Projects`
    /// as personal and `Team` as shared. INBOX is always personal.
    pub fn kind_of(&self, name: &str) -> Kind {
        if name.eq_ignore_ascii_case("INBOX") {
            return Kind::Personal;
        }
        let lists =
            [(Kind::Personal, &self.personal), (Kind::OtherUsers, &self.other_users), (Kind::Shared, &self.shared)];
        let mut best: Option<(usize, Kind)> = None;
        for (kind, list) in lists {
            for ns in list.iter() {
                let matches = starts_with_prefix(name, &ns.prefix, ns.delimiter);
                if matches && best.is_none_or(|(len, _)| ns.prefix.len() > len) {
                    best = Some((ns.prefix.len(), kind));
                }
            }
        }
        best.map_or(Kind::Personal, |(_, kind)| kind)
    }
}

/// `INBOX.` matches `INBOX.Sent`; a prefix is also matched by its folder itself (`#shared`
/// for `#shared.`); `INBOX` prefixes compare case-insensitively.
fn starts_with_prefix(name: &str, prefix: &str, delimiter: Option<char>) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let bare = delimiter.and_then(|d| prefix.strip_suffix(d)).unwrap_or(prefix);
    let head_matches = |p: &str| {
        name.get(..p.len()).is_some_and(|head| {
            head == p || (p.len() >= 5 && p[..5].eq_ignore_ascii_case("INBOX") && head.eq_ignore_ascii_case(p))
        })
    };
    head_matches(prefix) || (name.len() == bare.len() && head_matches(bare))
}

/// Parse the `* NAMESPACE ...` line (without CRLF). `None` when it is not one.
pub fn parse(line: &str) -> Option<Namespaces> {
    let rest = line.strip_prefix("* ")?.trim_start();
    let rest = rest.get(..9).filter(|w| w.eq_ignore_ascii_case("NAMESPACE")).map(|_| &rest[9..])?;
    let mut parser = Parser { s: rest.as_bytes(), i: 0 };
    let personal = parser.list()?;
    let other_users = parser.list()?;
    let shared = parser.list()?;
    Some(Namespaces { personal, other_users, shared })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.s.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_spaces();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn nil(&mut self) -> bool {
        self.skip_spaces();
        if self.s.get(self.i..self.i + 3).is_some_and(|w| w.eq_ignore_ascii_case(b"NIL")) {
            self.i += 3;
            true
        } else {
            false
        }
    }

    /// A quoted string, unescaped.
    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    out.push(*self.s.get(self.i + 1)?);
                    self.i += 2;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// NIL, or `(` one or more `("prefix" "d" [extensions])` `)`.
    fn list(&mut self) -> Option<Vec<Namespace>> {
        if self.nil() {
            return Some(Vec::new());
        }
        if !self.eat(b'(') {
            return None;
        }
        let mut out = Vec::new();
        while self.eat(b'(') {
            let prefix = self.quoted()?;
            let delimiter = if self.nil() { None } else { self.quoted()?.chars().next() };
            // Extensions (RFC 2342 namespace_response_extensions): skipped, nesting counted.
            let mut depth = 1;
            while depth > 0 {
                self.skip_spaces();
                match *self.s.get(self.i)? {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    b'"' => {
                        self.quoted()?;
                        continue;
                    }
                    _ => {}
                }
                self.i += 1;
            }
            out.push(Namespace { prefix, delimiter });
        }
        self.eat(b')').then_some(out)
    }
}

/// Send NAMESPACE on a freshly logged-in session and parse the reply. Only call it when
/// nothing else is in flight (async-imap's buffer is empty right after login and
/// CAPABILITY). `Ok(None)` when the server answers with anything but a parsable reply and OK;
/// an error when the exchange did not finish (no answer in 30 s, connection lost, no tagged
/// reply in 64 KiB): the session is then out of step and must be dropped.
pub async fn ask(session: &mut Session) -> std::io::Result<Option<Namespaces>> {
    use std::io::{Error, ErrorKind};
    const TAG: &str = "MHNS";
    let exchange = async {
        let stream = session.get_mut();
        stream.write_all(format!("{TAG} NAMESPACE\r\n").as_bytes()).await?;
        stream.flush().await?;
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        // Nothing follows the tagged reply (no command after it yet), so reading in chunks
        // takes nothing from a later response.
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "closed while answering NAMESPACE"));
            }
            received.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&received);
            let tagged = text
                .match_indices(&format!("{TAG} "))
                .map(|(at, _)| at)
                .find(|at| *at == 0 || text[..*at].ends_with('\n'));
            if let Some(at) = tagged {
                if !text[at..].contains("\r\n") {
                    continue;
                }
                let ok = text[at + TAG.len() + 1..].get(..2).is_some_and(|w| w.eq_ignore_ascii_case("OK"));
                return Ok(if ok { text.lines().find_map(|line| parse(line.trim_end())) } else { None });
            }
            if received.len() > 64 * 1024 {
                return Err(Error::new(ErrorKind::InvalidData, "no tagged reply to NAMESPACE in 64 KiB"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| Err(Error::new(ErrorKind::TimedOut, "no answer to NAMESPACE within 30 s")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str, d: char) -> Namespace {
        Namespace { prefix: prefix.into(), delimiter: Some(d) }
    }

    #[test]
    fn replies_seen_on_real_servers() {
        let cases = [
            ("* NAMESPACE ((\"\" \"/\")) NIL NIL", vec![ns("", '/')], vec![], vec![]),
            (
                "* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) ((\"Shared Folders/\" \"/\"))",
                vec![ns("", '/')],
                vec![ns("Other Users/", '/')],
                vec![ns("Shared Folders/", '/')],
            ),
            (
                "* NAMESPACE ((\"INBOX/\" \"/\")) ((\"user/\" \"/\")) ((\"\" \"/\"))",
                vec![ns("INBOX/", '/')],
                vec![ns("user/", '/')],
                vec![ns("", '/')],
            ),
            (
                "* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))",
                vec![ns("INBOX.", '.')],
                vec![],
                vec![ns("#shared.", '.'), ns("shared.", '.')],
            ),
            (
                // An extension (RFC 2342 section 5) and a NIL delimiter.
                "* namespace ((\"\" NIL \"X-PARAM\" (\"FLAG1\" \"FLAG2\"))) NIL NIL",
                vec![Namespace { prefix: String::new(), delimiter: None }],
                vec![],
                vec![],
            ),
        ];
        for (line, personal, other_users, shared) in cases {
            assert_eq!(parse(line), Some(Namespaces { personal, other_users, shared }), "{line}");
        }
        assert_eq!(parse("* LIST () \"/\" INBOX"), None);
        assert_eq!(parse("* NAMESPACE ((\"\" \"/\")"), None);
    }

    #[test]
    fn folders_are_sorted_by_the_longest_matching_prefix() {
        let cyrus_old = parse("* NAMESPACE ((\"INBOX/\" \"/\")) ((\"user/\" \"/\")) ((\"\" \"/\"))").unwrap();
        assert_eq!(cyrus_old.kind_of("INBOX"), Kind::Personal);
        assert_eq!(cyrus_old.kind_of("INBOX/Projects"), Kind::Personal);
        assert_eq!(cyrus_old.kind_of("user/bob/Archive"), Kind::OtherUsers);
        assert_eq!(cyrus_old.kind_of("user"), Kind::OtherUsers);
        assert_eq!(cyrus_old.kind_of("Team"), Kind::Shared);
        let cyrus =
            parse("* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) ((\"Shared Folders/\" \"/\"))").unwrap();
        assert_eq!(cyrus.kind_of("Projects"), Kind::Personal);
        assert_eq!(cyrus.kind_of("Other Users/bob/Archive"), Kind::OtherUsers);
        assert_eq!(cyrus.kind_of("Shared Folders/Team"), Kind::Shared);
        assert_eq!(cyrus.kind_of("Shared Folders"), Kind::Shared);
        let courier = parse("* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))").unwrap();
        assert_eq!(courier.kind_of("INBOX.Sent"), Kind::Personal);
        assert_eq!(courier.kind_of("inbox.Sent"), Kind::Personal);
        assert_eq!(courier.kind_of("#shared.team"), Kind::Shared);
        assert_eq!(courier.personal_prefix(), Some(&ns("INBOX.", '.')));
    }
}
