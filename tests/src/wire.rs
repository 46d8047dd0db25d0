//! Reading raw IMAP streams recorded by [`crate::proxy::FaultProxy::capture`]: which commands
//! a client sent (and how many message literals each carried), and whether a stream cut off
//! inside a literal. Plain IMAP only (a TLS stream is opaque).
//!
//! Both directions share one syntax here: a line ends with CRLF, unless it ends with a
//! literal announcement `{N}` / `{N+}` / `{N-}`; then N bytes of literal follow and the same
//! line goes on after them (RFC 9051 section 4.3, RFC 7888).

use std::collections::BTreeMap;

/// One command (or response) line, literals included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The text, literals left out (each announcement `{N+}` stays).
    pub text: String,
    /// The first word: the tag of a command, `*` or `+` for a response.
    pub tag: String,
    /// The second word, upper-cased (`APPEND`, `FETCH`, `OK`, ...). For a response with a
    /// number first (`* 3 FETCH`), the word after the number.
    pub name: String,
    /// The announced size of each literal, in order.
    pub literals: Vec<usize>,
    /// Whether the stream holds the whole line (else it was cut inside it).
    pub complete: bool,
}

/// Where a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// After a complete line (or empty).
    BetweenLines,
    /// Inside the text of a line.
    InLine,
    /// Inside a literal of `size` bytes, of which `received` arrived (`0 ≤ received < size`).
    InLiteral { size: usize, received: usize },
}

/// Split `stream` into lines (each with its literals).
pub fn lines(stream: &[u8]) -> Vec<Line> {
    parse(stream).0
}

/// Where `stream` ends: between lines, inside a line's text, or inside a literal.
pub fn end(stream: &[u8]) -> End {
    parse(stream).1
}

/// The `APPEND` commands a client sent, by mailbox (as sent: quotes removed, still modified
/// UTF-7), each as the number of messages (literals) it carried: `[5, 5, 2]` is three
/// MULTIAPPENDs, `[1, 1, 1]` three single APPENDs. A command cut off counts with the
/// literals it announced so far.
pub fn appends(client_stream: &[u8]) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for line in lines(client_stream).into_iter().filter(|l| l.name == "APPEND") {
        out.entry(first_argument(&line.text)).or_default().push(line.literals.len());
    }
    out
}

/// The word after the command name: a quoted string (unquoted here) or an atom.
fn first_argument(text: &str) -> String {
    let rest = text.splitn(3, ' ').nth(2).unwrap_or_default();
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest.split(' ').next().unwrap_or_default().to_string();
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

fn parse(stream: &[u8]) -> (Vec<Line>, End) {
    let mut out = Vec::new();
    let mut pos = 0;
    // The text of the current line (literals left out), and its literal sizes.
    let mut text: Vec<u8> = Vec::new();
    let mut literals = Vec::new();
    while pos < stream.len() {
        let Some(crlf) = find_crlf(&stream[pos..]) else {
            text.extend_from_slice(&stream[pos..]);
            out.push(line(&text, literals, false));
            return (out, End::InLine);
        };
        let segment = &stream[pos..pos + crlf];
        text.extend_from_slice(segment);
        pos += crlf + 2;
        match literal_size(segment) {
            Some(size) => {
                literals.push(size);
                let received = stream.len() - pos;
                if received < size {
                    out.push(line(&text, literals, false));
                    return (out, End::InLiteral { size, received });
                }
                pos += size;
            }
            None => {
                out.push(line(&text, std::mem::take(&mut literals), true));
                text.clear();
            }
        }
    }
    if text.is_empty() && literals.is_empty() {
        (out, End::BetweenLines)
    } else {
        // The stream ended right after a literal: the line goes on after it.
        out.push(line(&text, literals, false));
        (out, End::InLine)
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// `{123}`, `{123+}` or `{123-}` at the end of a line segment.
fn literal_size(segment: &[u8]) -> Option<usize> {
    let inner = segment.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").or_else(|| digits.strip_suffix(b"-")).unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn line(text: &[u8], literals: Vec<usize>, complete: bool) -> Line {
    let text = String::from_utf8_lossy(text);
    let mut words = text.split(' ');
    let tag = words.next().unwrap_or_default().to_string();
    let mut name = words.next().unwrap_or_default();
    if tag == "*" && !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        name = words.next().unwrap_or_default();
    }
    let name = name.to_ascii_uppercase();
    Line { tag, name, literals, complete, text: text.into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_appends_are_told_apart() {
        let stream = b"a1 LOGIN u p\r\n\
            MH1 APPEND \"INBOX\" (\\Seen) \"01-Mar-2010 08:30:00 +0000\" {5+}\r\nhello\r\n\
            MH2 APPEND \"INBOX\" {3+}\r\nabc {4+}\r\ndefg () {2}\r\nhi\r\n\
            MF3 UID FETCH 1:* (UID)\r\n";
        let all = lines(stream);
        assert_eq!(all.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["LOGIN", "APPEND", "APPEND", "UID"]);
        assert_eq!(appends(stream), BTreeMap::from([("INBOX".to_string(), vec![1, 3])]));
        assert_eq!(all[2].literals, vec![3, 4, 2]);
        assert_eq!(end(stream), End::BetweenLines);
    }

    #[test]
    fn a_literal_may_hold_crlf_and_braces() {
        let body = b"Subject: x\r\n\r\n{9}\r\nA1 APPEND fake\r\n";
        let mut stream = format!("MH1 APPEND \"Sent \\\"Mail\\\"\" {{{}+}}\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"\r\nMH2 APPEND Drafts {1+}\r\nx\r\n");
        let by_mailbox = appends(&stream);
        assert_eq!(by_mailbox["Sent \"Mail\""], vec![1]);
        assert_eq!(by_mailbox["Drafts"], vec![1]);
    }

    #[test]
    fn where_a_stream_ends() {
        let stream = b"* 1 FETCH (UID 7 BODY[] {10}\r\n0123";
        assert_eq!(end(stream), End::InLiteral { size: 10, received: 4 });
        assert_eq!(lines(stream)[0].name, "FETCH");
        assert!(!lines(stream)[0].complete);
        assert_eq!(end(b"* 1 FETCH (UID 7 BODY[] {10}\r\n"), End::InLiteral { size: 10, received: 0 });
        assert_eq!(end(b"* 1 FETCH (UID 7 BODY[] {2}\r\nab"), End::InLine);
        assert_eq!(end(b"* OK ready\r\nA1 OK"), End::InLine);
        assert_eq!(end(b""), End::BetweenLines);
    }
}
