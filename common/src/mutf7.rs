//! IMAP modified UTF-7 folder names (RFC 3501 5.1.3).
//!
//! Encoding goes through the utf7-imap crate. Decoding is our own: the crate's decoder
//! `unwrap()`s on malformed base64, and a folder name is server input — one odd name must not
//! panic a migration. A malformed name is kept as the server sent it.

/// Encode a folder name for the wire.
pub fn encode(name: &str) -> String {
    utf7_imap::encode_utf7_imap(name.to_string())
}

/// Decode an IMAP modified UTF-7 folder name (RFC 3501 5.1.3) for people; a malformed name is
/// shown as the server sent it rather than failing the report.
pub fn decode(raw: &str) -> String {
    fn decode(raw: &str) -> Option<String> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find('&') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('-')?;
            let encoded = &after[..end];
            if encoded.is_empty() {
                out.push('&');
            } else {
                let mut bits: u32 = 0;
                let mut nbits = 0;
                let mut units = Vec::with_capacity(encoded.len() * 6 / 16);
                for c in encoded.bytes() {
                    let value = match c {
                        b'A'..=b'Z' => c - b'A',
                        b'a'..=b'z' => c - b'a' + 26,
                        b'0'..=b'9' => c - b'0' + 52,
                        b'+' => 62,
                        b',' => 63,
                        _ => return None,
                    };
                    bits = (bits << 6) | u32::from(value);
                    nbits += 6;
                    if nbits >= 16 {
                        nbits -= 16;
                        units.push((bits >> nbits) as u16);
                        bits &= (1 << nbits) - 1;
                    }
                }
                out.push_str(&String::from_utf16(&units).ok()?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
    decode(raw).unwrap_or_else(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf7_names_decode() {
        let cases = [
            ("INBOX", "INBOX"),
            ("Migr&AOk-", "Migré"),
            ("&ZeVnLIqe-", "日本語"),
            ("Tom &- Jerry", "Tom & Jerry"),
            ("&AOk-t&AOk-/Re&AOc-us", "été/Reçus"),
            // Malformed: shown raw, never a panic.
            ("Bad&AOk", "Bad&AOk"),
            ("Bad&!!-", "Bad&!!-"),
        ];
        for (raw, want) in cases {
            assert_eq!(decode(raw), want, "{raw}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        for name in ["INBOX", "Migré", "日本語/Sub", "Tom & Jerry", "été"] {
            assert_eq!(decode(&encode(name)), name);
        }
    }
}
