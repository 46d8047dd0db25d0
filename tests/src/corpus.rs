//! Deterministic sample messages: the same (tag, n) always gives the same bytes, so tests,
//! the demo and the benchmark can predict what a copy must contain.

use chrono::{DateTime, Duration, FixedOffset, TimeZone};

use crate::imap::SeedMessage;

/// One sample message, described by options; [`SampleMessage::build`] renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleMessage {
    /// Distinguishes mailboxes/folders: part of the Message-ID, subject and text.
    pub tag: String,
    /// Sequence number within the tag.
    pub n: u32,
    /// Approximate size of the text body in bytes.
    pub body_size: usize,
    /// Body with UTF-8 text and `Content-Transfer-Encoding: 8bit`.
    pub eight_bit: bool,
    /// Whether a Message-ID header is present.
    pub message_id: bool,
    /// A base64 attachment of this many (decoded) bytes: the message becomes multipart/mixed.
    pub attachment: Option<usize>,
    /// The Date header and INTERNALDATE.
    pub date: DateTime<FixedOffset>,
}

impl SampleMessage {
    /// A ~600-byte ASCII text message with a Message-ID, dated `n` hours after 2010-03-01.
    pub fn new(tag: &str, n: u32) -> Self {
        let base = FixedOffset::east_opt(3600)
            .and_then(|tz| tz.with_ymd_and_hms(2010, 3, 1, 9, 30, 0).single())
            .unwrap_or_default();
        SampleMessage {
            tag: tag.to_string(),
            n,
            body_size: 600,
            eight_bit: false,
            message_id: true,
            attachment: None,
            date: base + Duration::hours(i64::from(n)) + Duration::seconds(i64::from(n % 60)),
        }
    }

    /// Set the approximate text body size.
    pub fn body_size(mut self, bytes: usize) -> Self {
        self.body_size = bytes;
        self
    }

    /// UTF-8 body sent as 8bit.
    pub fn eight_bit(mut self) -> Self {
        self.eight_bit = true;
        self
    }

    /// Leave out the Message-ID header.
    pub fn without_message_id(mut self) -> Self {
        self.message_id = false;
        self
    }

    /// Add a base64 attachment of `bytes` decoded bytes.
    pub fn attachment(mut self, bytes: usize) -> Self {
        self.attachment = Some(bytes);
        self
    }

    /// Set the date.
    pub fn date(mut self, date: DateTime<FixedOffset>) -> Self {
        self.date = date;
        self
    }

    /// The Message-ID value with angle brackets, if the message has one.
    pub fn message_id_value(&self) -> Option<String> {
        self.message_id.then(|| format!("<{}.{}@corpus.mailhaul.test>", self.n, sanitize(&self.tag)))
    }

    /// The subject line.
    pub fn subject(&self) -> String {
        format!("{} message {}", self.tag, self.n)
    }

    /// The date in INTERNALDATE form (`02-Jan-2006 15:04:05 +0000`), in UTC: Dovecot's maildir
    /// keeps the instant but not the offset, so UTC is what a dump gives back.
    pub fn internal_date(&self) -> String {
        self.date.with_timezone(&chrono::Utc).format("%d-%b-%Y %H:%M:%S %z").to_string()
    }

    /// The message bytes, CRLF line endings (what an IMAP server gives back).
    pub fn build(&self) -> Vec<u8> {
        let mut rng = Rng::new(&self.tag, self.n);
        let mut h = String::new();
        if let Some(id) = self.message_id_value() {
            h += &format!("Message-ID: {id}\r\n");
        }
        h += &format!("Date: {}\r\n", self.date.to_rfc2822());
        h += &format!("From: Sender {} <sender{}@example.org>\r\n", self.n % 7, self.n % 7);
        h += "To: Recipient <recipient@example.com>\r\n";
        h += &format!("Subject: {}\r\n", self.subject());
        h += "MIME-Version: 1.0\r\n";
        let text = body_text(&mut rng, self.body_size, self.eight_bit);
        let (ctype, cte) = if self.eight_bit {
            ("text/plain; charset=utf-8", "8bit")
        } else {
            ("text/plain; charset=us-ascii", "7bit")
        };
        let mut out = h;
        match self.attachment {
            None => {
                out += &format!("Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n");
                out += &text;
            }
            Some(bytes) => {
                let boundary = format!("=_mailhaul_{}_{}", sanitize(&self.tag), self.n);
                out += &format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n");
                out += "This is a multi-part message in MIME format.\r\n";
                out += &format!("--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n");
                out += &text;
                out += &format!(
                    "--{boundary}\r\nContent-Type: application/octet-stream; name=\"data{n}.bin\"\r\n\
                     Content-Disposition: attachment; filename=\"data{n}.bin\"\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n",
                    n = self.n
                );
                let data: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
                for line in base64(&data).as_bytes().chunks(76) {
                    out += std::str::from_utf8(line).unwrap_or_default();
                    out += "\r\n";
                }
                out += &format!("--{boundary}--\r\n");
            }
        }
        out.into_bytes()
    }

    /// The message as a [`SeedMessage`] with its date as INTERNALDATE and no flags.
    pub fn seed(&self) -> SeedMessage {
        SeedMessage::new(self.build()).date(&self.internal_date())
    }
}

/// `count` varied messages for one folder: every 3rd \Seen, every 5th \Flagged, every 7th
/// keyword `$Label1`, #4 8-bit, #6 without Message-ID, #8 with a 20 KB attachment.
pub fn mailbox(tag: &str, count: u32) -> Vec<SeedMessage> {
    (1..=count)
        .map(|n| {
            let mut sample = SampleMessage::new(tag, n);
            match n % 10 {
                4 => sample = sample.eight_bit(),
                6 => sample = sample.without_message_id(),
                8 => sample = sample.attachment(20_000),
                _ => {}
            }
            let mut seed = sample.seed();
            if n.is_multiple_of(3) {
                seed.flags.push("\\Seen".into());
            }
            if n.is_multiple_of(5) {
                seed.flags.push("\\Flagged".into());
            }
            if n.is_multiple_of(7) {
                seed.flags.push("$Label1".into());
            }
            seed
        })
        .collect()
}

fn sanitize(tag: &str) -> String {
    tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

const WORDS: &[&str] = &[
    "invoice", "meeting", "project", "budget", "report", "schedule", "review", "draft", "quarter", "client",
    "delivery", "contract", "update", "team", "office", "travel", "agenda", "notes",
];
const WORDS_8BIT: &[&str] = &["café", "Grüße", "naïve", "señor", "Ærø", "日本語", "smörgåsbord"];

fn body_text(rng: &mut Rng, size: usize, eight_bit: bool) -> String {
    let mut out = String::new();
    let mut line = String::new();
    while out.len() + line.len() < size.max(1) {
        let word = if eight_bit && rng.next().is_multiple_of(4) {
            WORDS_8BIT[rng.next() as usize % WORDS_8BIT.len()]
        } else {
            WORDS[rng.next() as usize % WORDS.len()]
        };
        if !line.is_empty() && line.len() + word.len() >= 72 {
            out += &line;
            out += "\r\n";
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out += &line;
    out += "\r\n";
    out
}

/// xorshift64*, seeded from (tag, n): deterministic across runs and platforms.
struct Rng(u64);

impl Rng {
    fn new(tag: &str, n: u32) -> Self {
        let mut seed = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(n);
        for b in tag.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(v >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_bytes() {
        assert_eq!(SampleMessage::new("a", 3).build(), SampleMessage::new("a", 3).build());
        assert_ne!(SampleMessage::new("a", 3).build(), SampleMessage::new("b", 3).build());
    }

    #[test]
    fn options_show_in_the_bytes() {
        let plain = String::from_utf8(SampleMessage::new("t", 1).build()).unwrap();
        assert!(plain.starts_with("Message-ID: <1.t@corpus.mailhaul.test>\r\n"));
        assert!(plain.is_ascii());
        assert!(!plain.replace("\r\n", "").contains('\n'), "bare LF");
        let no_id = String::from_utf8(SampleMessage::new("t", 1).without_message_id().build()).unwrap();
        assert!(!no_id.contains("Message-ID"));
        let eight = SampleMessage::new("t", 1).eight_bit().body_size(2000).build();
        assert!(!eight.is_ascii());
        let big = SampleMessage::new("t", 1).attachment(30_000).build();
        assert!(big.len() > 40_000 && big.len() < 45_000, "{}", big.len());
        let sized = SampleMessage::new("t", 1).body_size(10_000).build();
        assert!((10_000..10_600).contains(&sized.len()), "{}", sized.len());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn internal_date_is_imap_form() {
        assert_eq!(SampleMessage::new("t", 0).internal_date(), "01-Mar-2010 08:30:00 +0000");
    }
}
