//! Pure planning for one folder: UID sets, message identity for duplicate detection,
//! what to copy past a checkpoint, and batches bounded in bytes.

use sha2::{Digest, Sha256};

/// What the engine knows about a source message before fetching its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    pub message_id: Option<String>,
    /// Identity for duplicate detection: the Message-ID, or a hash of identifying headers.
    pub key: String,
    /// The day of INTERNALDATE, for `since`.
    pub date: Option<chrono::NaiveDate>,
}

/// What happens to one source message in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Copy,
    SkipDuplicate,
    SkipTooBig,
    SkipByDate,
}

/// A compact UID set: `1:3,7,9:10`. `uids` must be sorted ascending.
pub fn uid_set(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = uids.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
    }
    parts.join(",")
}

/// Parse the header fields fetched with `BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)]`
/// into (Message-ID, duplicate key). Field order and folding do not change the key.
pub fn identity(header_fields: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(header_fields);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let message_id =
        fields.iter().find(|(name, value)| name == "message-id" && !value.is_empty()).map(|(_, value)| value.clone());
    // Not the size: servers that re-render MIME on APPEND (Exchange) report another
    // RFC822.SIZE for the same message, and a key that never matches there would let an
    // interrupted batch land twice. Multiplicity still keeps genuine twins apart.
    let key = match &message_id {
        Some(id) => format!("id:{id}"),
        None => {
            fields.sort();
            let mut hash = Sha256::new();
            for (name, value) in &fields {
                hash.update(name.as_bytes());
                hash.update(b":");
                hash.update(value.as_bytes());
                hash.update(b"\n");
            }
            format!("hdr:{}", hex::encode(&hash.finalize()[..12]))
        }
    };
    (message_id, key)
}

/// What to do with one source message, by size and date alone (duplicates are found by
/// identity against the destination, see [`crate::ledger::reconcile_in_flight`]).
pub fn decide_one(meta: &MessageMeta, max_size: u64, since: Option<chrono::NaiveDate>) -> Action {
    if meta.size > max_size {
        return Action::SkipTooBig;
    }
    match (since, meta.date) {
        (Some(since), Some(date)) if date < since => Action::SkipByDate,
        _ => Action::Copy,
    }
}

/// Whether a message takes part in copying at all (not too big, not before `since`).
pub fn eligible(meta: &MessageMeta, max_size: u64, since: Option<chrono::NaiveDate>) -> bool {
    meta.size <= max_size && !matches!((since, meta.date), (Some(s), Some(d)) if d < s)
}

/// Split `items` (in UID order) into consecutive batches of at most `max_count` items and
/// `max_bytes` of bodies to copy; a single larger message gets a batch of its own.
pub fn batches(items: &[(u64, Action)], max_bytes: u64, max_count: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (index, (size, action)) in items.iter().enumerate() {
        let cost = if *action == Action::Copy { *size } else { 0 };
        let count = index - start;
        if count > 0 && (count >= max_count || bytes + cost > max_bytes) {
            ranges.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < items.len() {
        ranges.push(start..items.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, key: &str, size: u64) -> MessageMeta {
        MessageMeta { uid, size, message_id: None, key: key.into(), date: None }
    }

    #[test]
    fn uid_sets_compress_runs() {
        let cases: &[(&[u32], &str)] = &[(&[], ""), (&[5], "5"), (&[1, 2, 3], "1:3"), (&[1, 2, 4, 6, 7], "1:2,4,6:7")];
        for (uids, expected) in cases {
            assert_eq!(uid_set(uids), *expected);
        }
    }

    #[test]
    fn identity_uses_message_id_else_a_stable_header_hash() {
        let (id, key) = identity(b"Message-ID: <a@b>\r\nSubject: x\r\n\r\n");
        assert_eq!(id.as_deref(), Some("<a@b>"));
        assert_eq!(key, "id:<a@b>");
        let (_, rerendered) = identity(b"Message-ID: <a@b>\r\n\r\n");
        assert_eq!(rerendered, key, "the Message-ID decides, whatever else the server re-renders");
        let (id, one) = identity(b"Subject: hello\r\n world\r\nFrom: a@b\r\n\r\n");
        let (_, two) = identity(b"FROM: a@b\r\nSubject: hello world\r\n\r\n");
        assert!(id.is_none());
        assert_eq!(one, two);
        let (_, other) = identity(b"FROM: a@b\r\nSubject: hello there\r\n\r\n");
        assert_ne!(one, other);
    }

    #[test]
    fn size_and_date_filters() {
        let mut old = meta(2, "b", 5);
        old.date = chrono::NaiveDate::from_ymd_opt(2001, 1, 1);
        let since = chrono::NaiveDate::from_ymd_opt(2020, 1, 1);
        let actions: Vec<Action> =
            [meta(1, "a", 500), old, meta(3, "c", 5)].iter().map(|m| decide_one(m, 100, since)).collect();
        assert_eq!(actions, vec![Action::SkipTooBig, Action::SkipByDate, Action::Copy]);
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_count() {
        let items = [
            (40, Action::Copy),
            (40, Action::Copy),
            (40, Action::Copy),
            (500, Action::SkipTooBig),
            (200, Action::Copy),
        ];
        assert_eq!(batches(&items, 100, 10), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(&items, 10_000, 2), vec![0..2, 2..4, 4..5]);
        assert!(batches(&[], 100, 10).is_empty());
    }
}
