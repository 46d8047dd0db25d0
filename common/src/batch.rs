//! The batch CSV: recognise its form, validate every row at once, and build one
//! [`MailboxJob`] per valid row. Problems name the row, line and column and never quote a
//! cell's value, so no password can reach a message, even one typed into the wrong column.
//! A header cell is repeated only when it is a known column name, and a row's cells are
//! shown only when they sit under known columns of a sound header with no quote gone astray.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::json;

use crate::admin::parse_source_login;
use crate::model::{Endpoint, Login, MailboxJob, Security};
use crate::secret::Secret;
use crate::settings::Settings;

/// Most mailbox rows in one file (Exchange Online's limit).
pub const MAX_ROWS: usize = 50_000;
/// Largest file accepted, in bytes (Exchange Online's limit).
pub const MAX_BYTES: usize = 10 * 1024 * 1024;

/// Which of the accepted header forms a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CsvFormat {
    /// Exchange Online IMAP migration: `EmailAddress,UserName,Password[,UserRoot]`.
    Exchange,
    /// TrekMail bulk import: `source_email,source_password,destination_email`.
    TrekMail,
    /// Every connection detail per row: `source_host,...,destination_password`.
    Full,
}

impl CsvFormat {
    /// A name for people.
    pub fn as_str(self) -> &'static str {
        match self {
            CsvFormat::Exchange => "Exchange",
            CsvFormat::TrekMail => "TrekMail",
            CsvFormat::Full => "full",
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The row (or, without a row, the whole file) cannot be used.
    Error,
    /// Worth a look; the row is still valid.
    Warning,
}

/// One thing wrong with the file or a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based data row (the first row after the header is row 1); `None` for the whole file.
    pub row: Option<usize>,
    /// The column: its header as written when that is a known column name, else `column N`.
    pub column: Option<String>,
    pub severity: Severity,
    /// Where, what, and what to do; never contains a cell's value.
    pub message: String,
    /// `Some(rows)` for a problem of the settings rather than of the file or a row (no host,
    /// no master user): said once for the batch, with how many rows it keeps from running,
    /// instead of once per row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_rows: Option<usize>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.message)
    }
}

/// One data row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRow {
    /// 1-based data row.
    pub row: usize,
    /// 1-based line of the file where the row starts (differs from `row + 1` when a quoted
    /// value spans lines or blank lines are skipped).
    pub line: u64,
    /// The row's cells with every password cell and every cell of an unknown column emptied
    /// (all cells, when the row's columns do not line up with the header, the header is
    /// broken, or a quoted value in the row does not close properly).
    pub cells: Vec<String>,
    /// The destination mailbox as written, or the best guess (empty when unknown).
    pub mailbox: String,
    /// The source login as written (empty when unknown).
    pub source_user: String,
    /// `None` when the row has an error.
    pub job: Option<MailboxJob>,
}

/// A whole file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedBatch {
    pub format: Option<CsvFormat>,
    /// The header row: each known column name as written (trimmed), `column N` for any other
    /// cell, empty for an empty one. Never an unknown cell's text: it may be a row swallowed
    /// by an unbalanced quote.
    pub headers: Vec<String>,
    pub rows: Vec<BatchRow>,
    /// Every problem, file-level first, then by row.
    pub problems: Vec<Problem>,
}

impl ValidatedBatch {
    /// No error anywhere (warnings allowed).
    pub fn is_valid(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The jobs of the valid rows, in file order.
    pub fn valid_jobs(&self) -> Vec<&MailboxJob> {
        self.rows.iter().filter_map(|r| r.job.as_ref()).collect()
    }

    /// The errors of one data row.
    pub fn errors_for(&self, row: usize) -> Vec<&Problem> {
        self.problems.iter().filter(|p| p.row == Some(row) && p.severity == Severity::Error).collect()
    }

    /// Errors and warnings counted.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self.problems.iter().filter(|p| p.severity == Severity::Error).count();
        (errors, self.problems.len() - errors)
    }

    fn problems_for(&self, row: usize) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.row == Some(row))
    }

    /// Problems of the whole file (header, size, encoding).
    pub fn file_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.row.is_none() && p.settings_rows.is_none())
    }

    /// Problems of the settings, each said once for all the rows it stops.
    pub fn settings_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.settings_rows.is_some())
    }

    /// A report for people and programs: valid rows, invalid rows with their problems and
    /// emptied password cells, and file-level problems. Holds no password.
    pub fn to_json(&self) -> serde_json::Value {
        let problem = |p: &Problem| json!({ "column": p.column, "severity": p.severity, "message": p.message });
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for r in &self.rows {
            let problems: Vec<_> = self.problems_for(r.row).map(problem).collect();
            if r.job.is_some() {
                valid.push(json!({
                    "row": r.row, "line": r.line, "mailbox": r.mailbox, "source_user": r.source_user,
                    "warnings": problems,
                }));
            } else {
                invalid.push(json!({
                    "row": r.row, "line": r.line, "mailbox": r.mailbox, "source_user": r.source_user,
                    "cells": r.cells, "problems": problems,
                }));
            }
        }
        let (errors, warnings) = self.counts();
        json!({
            "format": self.format,
            "headers": self.headers,
            "valid": self.is_valid(),
            "rows": self.rows.len(),
            "errors": errors,
            "warnings": warnings,
            "file_problems": self.file_problems().map(problem).collect::<Vec<_>>(),
            "settings": self.settings_problems().map(|p| json!({
                "severity": p.severity, "message": p.message, "rows": p.settings_rows,
            })).collect::<Vec<_>>(),
            "valid_rows": valid,
            "invalid_rows": invalid,
        })
    }

    /// A table for stderr: row, mailbox, source user, status, problems; then file-level
    /// problems and a summary line.
    pub fn render_table(&self) -> String {
        let header = ["ROW", "MAILBOX", "SOURCE USER", "STATUS", "PROBLEMS"];
        let mut lines: Vec<[String; 5]> = Vec::new();
        for r in &self.rows {
            let problems: Vec<&Problem> = self.problems_for(r.row).collect();
            let status = match (&r.job, problems.is_empty()) {
                (None, _) => "INVALID",
                (Some(_), true) => "ok",
                (Some(_), false) => "ok, warning",
            };
            let text = if r.job.is_none() && problems.is_empty() {
                // Stopped by the settings only: the settings lines below say why, once.
                "see settings below".to_string()
            } else {
                problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" | ")
            };
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            lines.push([r.row.to_string(), or_dash(&r.mailbox), or_dash(&r.source_user), status.to_string(), text]);
        }
        let mut widths = header.map(str::len);
        for l in &lines {
            for (w, cell) in widths.iter_mut().zip(l.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut push_line = |cells: [&str; 5]| {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i < 4 {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        if !self.rows.is_empty() {
            push_line(header);
            for l in &lines {
                push_line([&l[0], &l[1], &l[2], &l[3], &l[4]]);
            }
        }
        for p in self.file_problems() {
            out.push_str(&format!("file: {p}\n"));
        }
        for p in self.settings_problems() {
            // The message starts with "settings:" already.
            out.push_str(&format!("{}\n", p.message));
        }
        let (errors, warnings) = self.counts();
        let valid = self.rows.iter().filter(|r| r.job.is_some()).count();
        out.push_str(&format!(
            "{} rows: {valid} valid, {} invalid; {errors} errors, {warnings} warnings{}\n",
            self.rows.len(),
            self.rows.len() - valid,
            if self.is_valid() { "" } else { ": fix the errors above and validate again" }
        ));
        out
    }
}

/// The columns of one form (lower-case names; headers are matched ignoring case).
struct Layout {
    format: CsvFormat,
    /// As documented, for messages.
    spelled: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    passwords: &'static [&'static str],
}

const LAYOUTS: [Layout; 3] = [
    Layout {
        format: CsvFormat::Exchange,
        spelled: "EmailAddress,UserName,Password[,UserRoot]",
        required: &["emailaddress", "username", "password"],
        optional: &["userroot"],
        passwords: &["password"],
    },
    Layout {
        format: CsvFormat::TrekMail,
        spelled: "source_email,source_password,destination_email",
        required: &["source_email", "source_password", "destination_email"],
        optional: &[],
        passwords: &["source_password"],
    },
    Layout {
        format: CsvFormat::Full,
        spelled: "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password",
        required: &["source_user", "source_password", "destination_user"],
        optional: &[
            "source_host",
            "source_port",
            "source_security",
            "destination_host",
            "destination_port",
            "destination_security",
            "destination_password",
            "user_root",
        ],
        passwords: &["source_password", "destination_password"],
    },
];

impl Layout {
    /// `name` (lower-case) is one of this form's columns.
    fn has(&self, name: &str) -> bool {
        self.required.contains(&name) || self.optional.contains(&name)
    }
}

/// The known column name (of any form) that `lower` is, if any.
fn known_name(lower: &str) -> Option<&'static str> {
    LAYOUTS.iter().flat_map(|l| l.required.iter().chain(l.optional)).find(|k| **k == lower).copied()
}

/// A column's name as the forms spell it (`EmailAddress` for `emailaddress`).
fn spelled_name(key: &'static str) -> &'static str {
    LAYOUTS
        .iter()
        .flat_map(|l| l.spelled.split(','))
        .map(|s| s.trim_matches(['[', ']']))
        .find(|s| s.eq_ignore_ascii_case(key))
        .unwrap_or(key)
}

/// The known column name an unknown header cell was most likely meant to be: one a typo
/// or two away, or one that contains it or that it contains (a name split by a comma, or
/// run into the next). The form's own names win a tie.
fn closest_known(lower: &str, layout: &Layout) -> Option<&'static str> {
    if lower.is_empty() || lower.chars().count() > MAX_NAME_CHARS {
        return None;
    }
    let all = LAYOUTS.iter().flat_map(|l| l.required.iter().chain(l.optional));
    layout
        .required
        .iter()
        .chain(layout.optional)
        .chain(all)
        .filter_map(|&k| {
            let distance = edit_distance(lower, k);
            let close = distance <= 2 || lower.contains(k) || (lower.len() >= 3 && k.contains(lower));
            close.then_some((distance, k))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| spelled_name(k))
}

/// Longest header cell still taken for a column name rather than swallowed data.
const MAX_NAME_CHARS: usize = 40;

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// What an unknown header cell is like, without a character of it: its length and anything
/// odd in it.
fn describe_cell(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    let count = text.chars().count();
    let mut parts = vec![format!("{count} character{}", if count == 1 { "" } else { "s" })];
    if std::str::from_utf8(raw).is_err() {
        parts.push("not valid UTF-8".into());
    }
    if text.contains(['\n', '\r']) {
        parts.push("contains line breaks".into());
    } else if text.chars().any(char::is_control) {
        parts.push("contains control characters".into());
    }
    if text.contains('\u{feff}') {
        parts.push("contains an invisible byte-order mark".into());
    }
    if text.contains('"') {
        parts.push("contains a quote".into());
    }
    parts.join(", ")
}

/// A header cell that no one would name a column: damaged text rather than an extra column.
fn is_odd_name(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    std::str::from_utf8(raw).is_err()
        || text.chars().count() > MAX_NAME_CHARS
        || text.chars().any(|c| c.is_control() || c == '\u{feff}' || c == '"')
}

/// How messages name column `i` (0-based): its header (a known name, or `column N` for any
/// other), or its number when it has no name.
fn column_label(headers: &[String], i: usize) -> String {
    match headers.get(i) {
        Some(h) if !h.is_empty() => h.clone(),
        _ => format!("column {}", i + 1),
    }
}

const QUOTE_HINT: &str = "put a value that contains a comma or a quote in double quotes as a whole (\"a,b\"), write a quote inside it as two (\"\"), and remove stray quotes";

/// A quote out of place: a quoted value that does not end the way one must (on the line it
/// opened on, right before a comma or the end of the line), or a quote inside a value that
/// is not quoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QuoteFault {
    /// Byte of the opening quote.
    start: usize,
    /// 0-based cell of its record.
    field: usize,
    /// 1-based line of the opening quote.
    line: u64,
    kind: QuoteFaultKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QuoteFaultKind {
    /// Closed on a later line: it holds line breaks, and whatever rows were between.
    SpansLines { end_line: u64 },
    /// Never closed: it runs to the end of the file.
    Unclosed,
    /// Text after the closing quote (`"ab"cd`), which the csv reader quietly joins on.
    TextAfterClose,
    /// A quote inside a value that does not start with one (`ab"cd`): the csv reader keeps
    /// it as a character, but it is most often what is left of a quoted value whose opening
    /// quote or the comma before it was lost, and the cells after it have moved.
    InsideUnquoted,
}

impl QuoteFault {
    /// Where and what, never the value.
    fn describe(&self, line_offset: u64) -> String {
        let line = self.line + line_offset;
        match self.kind {
            QuoteFaultKind::SpansLines { end_line } => format!(
                "a quoted value opens on line {line} and closes only on line {}, taking in the line breaks between (an unbalanced quote?)",
                end_line + line_offset
            ),
            QuoteFaultKind::Unclosed => format!(
                "a quoted value opens on line {line} and is never closed, so the rest of the file is inside it (an unbalanced quote?)"
            ),
            QuoteFaultKind::TextAfterClose => {
                format!("a quoted value opens on line {line} and has text after its closing quote (an unbalanced quote?)")
            }
            QuoteFaultKind::InsideUnquoted => {
                format!("a value on line {line} has a quote inside but does not start with one (an unbalanced quote?)")
            }
        }
    }
}

/// Every quote out of place in `data`, one at most a value. Reads the bytes by the same
/// rules as the csv reader (a quote opens a value only as its first byte, `""` inside is
/// a quote, CR, LF and CRLF end a record), which accepts all of these without a word.
fn quote_faults(data: &[u8]) -> Vec<QuoteFault> {
    let mut faults = Vec::new();
    let (mut i, mut line, mut field, mut at_field_start) = (0usize, 1u64, 0usize, true);
    // One fault a value is enough.
    let mut faulted = false;
    while i < data.len() {
        if at_field_start && data[i] == b'"' {
            let (start, start_line) = (i, line);
            i += 1;
            let closed = loop {
                match data.get(i) {
                    None => break false,
                    Some(b'"') if data.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break true;
                    }
                    Some(b) => {
                        line += u64::from(*b == b'\n');
                        i += 1;
                    }
                }
            };
            let kind = if !closed {
                Some(QuoteFaultKind::Unclosed)
            } else if line > start_line || data[start..i].contains(&b'\r') {
                // A lone CR ends a record too.
                Some(QuoteFaultKind::SpansLines { end_line: line })
            } else if !matches!(data.get(i), None | Some(b',' | b'\r' | b'\n')) {
                Some(QuoteFaultKind::TextAfterClose)
            } else {
                None
            };
            if let Some(kind) = kind {
                faults.push(QuoteFault { start, field, line: start_line, kind });
                faulted = true;
            }
            at_field_start = false;
            continue;
        }
        match data[i] {
            b',' => {
                field += 1;
                (at_field_start, faulted) = (true, false);
            }
            b'\n' | b'\r' => {
                line += u64::from(data[i] == b'\n');
                field = 0;
                (at_field_start, faulted) = (true, false);
            }
            b'"' if !faulted => {
                faults.push(QuoteFault { start: i, field, line, kind: QuoteFaultKind::InsideUnquoted });
                (at_field_start, faulted) = (false, true);
            }
            _ => at_field_start = false,
        }
        i += 1;
    }
    faults
}

fn forms_list() -> String {
    LAYOUTS.iter().map(|l| format!("{} ({})", l.format.as_str(), l.spelled)).collect::<Vec<_>>().join("; ")
}

fn file_error(message: String) -> Problem {
    Problem { row: None, column: None, severity: Severity::Error, message, settings_rows: None }
}

fn where_(row: usize, line: u64) -> String {
    format!("row {row} (line {line})")
}

/// Validates a whole batch file and builds the jobs of its valid rows. Every problem is
/// listed at once; nothing here fails early except what makes the rest unreadable (an
/// empty file, another delimiter, an unknown header row).
pub fn validate_batch(bytes: &[u8], settings: &Settings) -> ValidatedBatch {
    let mut out = ValidatedBatch { format: None, headers: Vec::new(), rows: Vec::new(), problems: Vec::new() };
    if bytes.len() > MAX_BYTES {
        out.problems.push(file_error(format!(
            "the file is {} bytes, larger than 10 MB ({MAX_BYTES} bytes): split it into several batches",
            bytes.len()
        )));
    }
    let mut data = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(bytes);
    if data.iter().all(u8::is_ascii_whitespace) {
        out.problems.push(file_error(format!(
            "the file is empty: put a header row and one row per mailbox in it, in one of these forms: {}",
            forms_list()
        )));
        return out;
    }
    // Excel writes a `sep=` hint line when asked to; only a comma is accepted.
    let mut line_offset = 0u64;
    let first_line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let first_line = data[..first_line_end].trim_ascii();
    if first_line.len() >= 4 && first_line[..4].eq_ignore_ascii_case(b"sep=") {
        if first_line.eq_ignore_ascii_case(b"sep=,") {
            data = &data[(first_line_end + 1).min(data.len())..];
            line_offset = 1;
        } else {
            out.problems.push(not_comma_separated());
            return out;
        }
    }

    // Every record with the byte it starts at, so that a quote problem found in the raw
    // bytes can be pinned to its row.
    let mut records: Vec<(Option<csv::ByteRecord>, usize)> = Vec::new();
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data);
    for record in reader.byte_records() {
        let previous = records.last().map_or(0, |(_, start)| *start);
        match record {
            Ok(r) => {
                let start = r.position().map_or(previous, |p| p.byte() as usize).min(data.len());
                records.push((Some(r), start));
            }
            Err(_) => records.push((None, previous)),
        }
    }
    let mut faults: Vec<Vec<QuoteFault>> = vec![Vec::new(); records.len()];
    for fault in quote_faults(data) {
        // The quoted value belongs to the last record that starts at or before it.
        let k = records.partition_point(|(_, start)| *start <= fault.start).saturating_sub(1);
        if let Some(f) = faults.get_mut(k) {
            f.push(fault);
        }
    }
    let mut records = records.into_iter().zip(faults);
    let (header, header_faults) = match records.next() {
        Some(((Some(h), _), f)) => (h, f),
        _ => {
            out.problems
                .push(file_error("the header row cannot be read: save the file as CSV (comma delimited)".into()));
            return out;
        }
    };
    let raw_headers: Vec<&[u8]> = header.iter().collect();
    let written: Vec<String> = raw_headers.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect();
    let header_width = written.len();
    let faulty = |i: usize| header_faults.iter().find(|f| f.field == i);
    // Spreadsheets often end the header with empty cells (`...,Password,,`): not columns.
    let mut named = header_width;
    while named > 1 && written[named - 1].is_empty() && faulty(named - 1).is_none() {
        named -= 1;
    }
    if named == 1 && written[0].contains([';', '\t', '|']) {
        out.problems.push(not_comma_separated());
        return out;
    }
    let lower: Vec<String> = written[..named].iter().map(|h| h.to_ascii_lowercase()).collect();
    // A header cell is only ever repeated when it is a known column name: anything else may
    // be a row swallowed by an unbalanced quote, or a password moved there by a lost comma.
    let known_at: Vec<Option<&'static str>> =
        (0..named).map(|i| if faulty(i).is_some() { None } else { known_name(&lower[i]) }).collect();

    // The form whose column names appear most.
    let best = LAYOUTS
        .iter()
        .map(|l| (l, known_at.iter().flatten().filter(|k| l.has(k)).count()))
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n > 0)
        .map(|(l, _)| l);
    let Some(layout) = best else {
        // Do not echo the header row: if it is really a data row, it holds a password.
        let looks_like_data = written.iter().any(|h| h.contains('@'));
        out.problems.push(file_error(if looks_like_data {
            format!(
                "the first line looks like a mailbox row, not a header: add a header row first, one of: {}",
                forms_list()
            )
        } else {
            format!("the header row names none of the expected columns: use one of: {}", forms_list())
        }));
        return out;
    };
    out.format = Some(layout.format);
    out.headers = (0..named)
        .map(|i| match known_at[i] {
            Some(_) => written[i].clone(),
            None if written[i].is_empty() => String::new(),
            None => format!("column {}", i + 1),
        })
        .collect();

    let mut cols: HashMap<&'static str, usize> = HashMap::new();
    let mut header_ok = true;
    for i in 0..named {
        let n = i + 1;
        let form = layout.format.as_str();
        let columns = layout.spelled;
        let mut problem = |severity, message| {
            out.problems.push(Problem {
                row: None,
                column: Some(column_label(&out.headers, i)),
                severity,
                message,
                settings_rows: None,
            })
        };
        if let Some(fault) = faulty(i) {
            header_ok = false;
            problem(
                Severity::Error,
                format!(
                    "column {n}: not a known column name ({}): {}: fix the quotes of the header row; the {form} form has {columns}",
                    describe_cell(raw_headers[i]),
                    fault.describe(line_offset)
                ),
            );
            continue;
        }
        match known_at[i] {
            Some(k) if layout.has(k) && cols.contains_key(k) => {
                header_ok = false;
                problem(Severity::Error, format!("column {} appears twice in the header: keep one", written[i]));
            }
            Some(k) if layout.has(k) => {
                cols.insert(k, i);
            }
            Some(_) => problem(
                Severity::Warning,
                format!(
                    "column {n}, {}, is not part of the {form} form ({columns}) and is ignored: remove it",
                    written[i]
                ),
            ),
            None if written[i].is_empty() => {
                // Named columns after it would be read one cell off if a comma were lost.
                header_ok = false;
                problem(
                    Severity::Error,
                    format!(
                        "column {n} has no name: remove the empty column (a comma too many in the header row?), or name it; the {form} form has {columns}"
                    ),
                );
            }
            None => {
                let closest = closest_known(&lower[i], layout);
                let what = format!("column {n}: not a known column name ({})", describe_cell(raw_headers[i]));
                match closest {
                    Some(k) => {
                        header_ok = false;
                        problem(
                            Severity::Error,
                            format!("{what}; the closest known name is {k}: fix the name in the header row; the {form} form has {columns}"),
                        );
                    }
                    None if is_odd_name(raw_headers[i]) => {
                        header_ok = false;
                        problem(Severity::Error, format!("{what}: fix the header row; the {form} form has {columns}"));
                    }
                    None => problem(
                        Severity::Warning,
                        format!(
                            "{what}: it is ignored; the {form} form has {columns}: remove the column or fix its name"
                        ),
                    ),
                }
            }
        }
    }
    for req in layout.required {
        if !cols.contains_key(req) {
            header_ok = false;
            let spelled = spelled_name(req);
            out.problems.push(Problem {
                row: None,
                column: Some(spelled.to_string()),
                severity: Severity::Error,
                message: format!(
                    "missing required header {spelled}: the {} form needs {} in the first row",
                    layout.format.as_str(),
                    layout.spelled
                ),
                settings_rows: None,
            });
        }
    }
    let password_cols: Vec<usize> = layout.passwords.iter().filter_map(|p| cols.get(p).copied()).collect();
    // Only the cells of known columns other than passwords are ever shown.
    let shown_cols: Vec<bool> =
        (0..named).map(|i| cols.values().any(|&c| c == i) && !password_cols.contains(&i)).collect();

    let mut row_no = 0usize;
    let (mut counted_to, mut line_at) = (0usize, 1u64);
    let mut row_problems: Vec<Problem> = Vec::new();
    // Each settings problem with the number of rows it stops, in the order first met.
    let mut settings_problems: Vec<(String, usize)> = Vec::new();
    for ((record, start), row_faults) in records {
        row_no += 1;
        let Some(record) = record else {
            // The csv error text could quote data; say where instead.
            row_problems.push(Problem {
                row: Some(row_no),
                column: None,
                severity: Severity::Error,
                message: format!("row {row_no} cannot be read: save the file as CSV (comma delimited)"),
                settings_rows: None,
            });
            continue;
        };
        // Lines are counted from the byte offset: csv-core's own line counter misses line
        // breaks inside quoted values.
        let mut byte = start;
        // After a CRLF the reported start is the `\n`; blank lines before a record count too.
        while byte < data.len() && (data[byte] == b'\n' || data[byte] == b'\r') {
            byte += 1;
        }
        if byte > counted_to {
            line_at += data[counted_to..byte].iter().filter(|&&b| b == b'\n').count() as u64;
            counted_to = byte;
        }
        let line = line_at + line_offset;
        let mut raw: Vec<&[u8]> = record.iter().collect();
        if raw.iter().all(|c| c.trim_ascii().is_empty()) && row_faults.is_empty() {
            // Spreadsheets leave rows of empty cells (`,,,`) behind: not a mailbox.
            continue;
        }
        // Rows padded like the header (`...,Password,,`) lose the padding. Any other extra
        // cell is an error, even an empty one: `pa,ss,` may be an unquoted comma in a
        // password, and shifting cells would move part of it into another column.
        if raw.len() == header_width && raw[named..].iter().all(|c| c.trim_ascii().is_empty()) {
            raw.truncate(named);
        }
        // A row whose cells cannot be trusted to sit in their columns shows none of them.
        let unread = BatchRow {
            row: row_no,
            line,
            cells: vec![String::new(); raw.len()],
            mailbox: String::new(),
            source_user: String::new(),
            job: None,
        };
        if !row_faults.is_empty() {
            for fault in &row_faults {
                let column = column_label(&out.headers, fault.field);
                row_problems.push(Problem {
                    row: Some(row_no),
                    column: Some(column.clone()),
                    severity: Severity::Error,
                    message: format!(
                        "{}, {column}: {}: {QUOTE_HINT}",
                        where_(row_no, line),
                        fault.describe(line_offset)
                    ),
                    settings_rows: None,
                });
            }
            out.rows.push(unread);
            continue;
        }
        if raw.len() != named {
            row_problems.push(Problem {
                row: Some(row_no),
                column: None,
                severity: Severity::Error,
                message: format!(
                    "{}: has {} columns but the header has {named}: {QUOTE_HINT}",
                    where_(row_no, line),
                    raw.len(),
                ),
                settings_rows: None,
            });
            out.rows.push(unread);
            continue;
        }
        if !header_ok {
            // The rows cannot be read without their columns; the header problem says why.
            out.rows.push(unread);
            continue;
        }
        let mut ctx = RowCtx {
            row: row_no,
            line,
            headers: &out.headers,
            cols: &cols,
            cells: Vec::new(),
            hidden: Vec::new(),
            problems: Vec::new(),
            settings_problems: Vec::new(),
        };
        for (i, cell) in raw.iter().enumerate() {
            match std::str::from_utf8(cell) {
                Ok(s) => ctx.cells.push(Some(s.to_string())),
                Err(_) => {
                    ctx.cells.push(None);
                    ctx.problem_at(i, Severity::Error, "is not valid UTF-8 text: save the file as \"CSV UTF-8\"");
                }
            }
        }
        let (mailbox, source_user, job) = match layout.format {
            CsvFormat::Exchange => ctx.exchange(settings),
            CsvFormat::TrekMail => ctx.trekmail(settings),
            CsvFormat::Full => ctx.full(settings),
        };
        let cells: Vec<String> = ctx
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                Some(c) if shown_cols[i] && !ctx.hidden.contains(&i) => c.clone(),
                _ => String::new(),
            })
            .collect();
        let has_error = ctx.problems.iter().any(|p| p.severity == Severity::Error) || !ctx.settings_problems.is_empty();
        row_problems.append(&mut ctx.problems);
        for text in ctx.settings_problems.drain(..) {
            match settings_problems.iter_mut().find(|(t, _)| *t == text) {
                Some((_, rows)) => *rows += 1,
                None => settings_problems.push((text, 1)),
            }
        }
        out.rows.push(BatchRow {
            row: row_no,
            line,
            cells,
            mailbox,
            source_user,
            job: if has_error { None } else { job },
        });
    }

    if out.rows.len() > MAX_ROWS {
        out.problems.push(file_error(format!(
            "the file has {} mailbox rows, more than {MAX_ROWS}: split it into several batches",
            out.rows.len()
        )));
    }
    if out.rows.is_empty() && header_ok {
        out.problems.push(file_error(
            "the file has a header but no mailbox rows: add one row per mailbox below the header".into(),
        ));
    }

    // The mailbox is the state key: two rows for one mailbox would fight over it.
    let mailbox_col = ["emailaddress", "destination_email", "destination_user"]
        .iter()
        .find_map(|k| cols.get(k))
        .map(|&i| out.headers[i].clone());
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in out.rows.iter().enumerate() {
        if !r.mailbox.is_empty() {
            seen.entry(r.mailbox.to_lowercase()).or_default().push(i);
        }
    }
    for group in seen.values().filter(|g| g.len() > 1) {
        for &i in group {
            let others: Vec<String> =
                group.iter().filter(|&&j| j != i).map(|&j| where_(out.rows[j].row, out.rows[j].line)).collect();
            let r = &mut out.rows[i];
            r.job = None;
            row_problems.push(Problem {
                row: Some(r.row),
                column: mailbox_col.clone(),
                severity: Severity::Error,
                message: format!(
                    "{}, {}: the same destination mailbox is also in {} (compared ignoring case): keep one row per mailbox",
                    where_(r.row, r.line),
                    mailbox_col.as_deref().unwrap_or("mailbox"),
                    others.join(", ")
                ),
                settings_rows: None,
            });
        }
    }
    let total_rows = out.rows.len();
    for (text, rows) in settings_problems {
        let affected = match (rows, total_rows) {
            (1, 1) => "the only row".to_string(),
            (r, t) if r == t => format!("all {r} rows"),
            (r, t) => format!("{r} of {t} rows"),
        };
        out.problems.push(Problem {
            row: None,
            column: None,
            severity: Severity::Error,
            message: format!("settings: {text} (affects {affected})"),
            settings_rows: Some(rows),
        });
    }
    row_problems.sort_by_key(|p| p.row);
    out.problems.append(&mut row_problems);
    out
}

fn not_comma_separated() -> Problem {
    file_error(
        "the file is not comma-separated (the header uses ';', tabs or '|'): save it as \"CSV (comma delimited)\" or \"CSV UTF-8\"".into(),
    )
}

/// Looks like `local@domain.tld`. Deliberately simple: it catches typos and swapped
/// columns, the server decides the rest.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let bad_local = |c: char| c.is_whitespace() || c.is_control() || "@,;:<>()[]\\\"".contains(c);
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && !local.contains(bad_local)
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

struct RowCtx<'a> {
    row: usize,
    line: u64,
    headers: &'a [String],
    cols: &'a HashMap<&'static str, usize>,
    /// `None` where the cell is not UTF-8 (already reported).
    cells: Vec<Option<String>>,
    /// Cells kept out of the reports because they may hold part of a password.
    hidden: Vec<usize>,
    problems: Vec<Problem>,
    /// What the settings lack for this row, whatever its cells say (no host column and no
    /// host set, no master user for a form without passwords): gathered over the rows and
    /// said once.
    settings_problems: Vec<String>,
}

impl RowCtx<'_> {
    fn problem_at(&mut self, col: usize, severity: Severity, text: &str) {
        let column = column_label(self.headers, col);
        self.problems.push(Problem {
            row: Some(self.row),
            message: format!("{}, {column}: {text}", where_(self.row, self.line)),
            column: Some(column),
            severity,
            settings_rows: None,
        });
    }

    fn problem(&mut self, key: &str, severity: Severity, text: &str) {
        match self.cols.get(key) {
            Some(&i) => self.problem_at(i, severity, text),
            None => self.row_error(text),
        }
    }

    fn row_error(&mut self, text: &str) {
        self.problems.push(Problem {
            row: Some(self.row),
            column: None,
            severity: Severity::Error,
            message: format!("{}: {text}", where_(self.row, self.line)),
            settings_rows: None,
        });
    }

    /// The raw cell; `None` when the column is absent or the cell is not UTF-8.
    fn raw(&self, key: &str) -> Option<&str> {
        self.cols.get(key).and_then(|&i| self.cells[i].as_deref())
    }

    /// The trimmed cell, empty when absent.
    fn text(&self, key: &str) -> String {
        self.raw(key).unwrap_or("").trim().to_string()
    }

    /// The trimmed cell for the mailbox and source user columns of the reports, empty when
    /// it holds a control character.
    fn shown(&self, key: &str) -> String {
        Some(self.text(key)).filter(|v| !v.contains(char::is_control)).unwrap_or_default()
    }

    fn is_bad_utf8(&self, key: &str) -> bool {
        self.cols.get(key).is_some_and(|&i| self.cells[i].is_none())
    }

    fn required(&mut self, key: &str, what: &str) -> Option<String> {
        let v = self.text(key);
        if v.is_empty() {
            if !self.is_bad_utf8(key) {
                self.problem(key, Severity::Error, &format!("is empty: fill in {what}"));
            }
            return None;
        }
        if v.chars().any(char::is_control) {
            self.problem(key, Severity::Error, "contains a line break or control character: remove it");
            return None;
        }
        Some(v)
    }

    fn email(&mut self, key: &str, what: &str) -> Option<String> {
        let v = self.required(key, what)?;
        if !is_email(&v) {
            self.problem(key, Severity::Error, &format!("is not an email address (name@domain.tld): fill in {what}"));
            return None;
        }
        Some(v)
    }

    /// A password kept exactly as written; `Ok(None)` when empty.
    fn password(&mut self, key: &str) -> Result<Option<Secret>, ()> {
        if self.is_bad_utf8(key) {
            return Err(());
        }
        let v = self.raw(key).unwrap_or("");
        if v.is_empty() {
            return Ok(None);
        }
        if v.trim() != v {
            let secret = Secret::new(v);
            self.problem(
                key,
                Severity::Warning,
                "has spaces at the start or end, kept as written: remove them unless they are really part of the password",
            );
            return Ok(Some(secret));
        }
        Ok(Some(Secret::new(v)))
    }

    fn port(&mut self, key: &str) -> Result<Option<u16>, ()> {
        let v = self.text(key);
        if v.is_empty() {
            return if self.is_bad_utf8(key) { Err(()) } else { Ok(None) };
        }
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => {
                self.problem(
                    key,
                    Severity::Error,
                    "is not a port number from 1 to 65535: fix it, or leave it empty for the default",
                );
                Err(())
            }
        }
    }

    fn security(&mut self, key: &str) -> Result<Option<Security>, ()> {
        let v = self.text(key);
        if v.is_empty() {
            return if self.is_bad_utf8(key) { Err(()) } else { Ok(None) };
        }
        Security::parse(&v).map(Some).ok_or_else(|| {
            self.problem(
                key,
                Severity::Error,
                "is not tls, starttls or plain: fix it, or leave it empty for the batch default",
            );
        })
    }

    fn host(&mut self, key: &str) -> Result<Option<String>, ()> {
        let v = self.text(key);
        if v.is_empty() {
            return if self.is_bad_utf8(key) { Err(()) } else { Ok(None) };
        }
        if v.contains("://") || v.contains(['/', ',', ';', '@']) || v.contains(char::is_whitespace) {
            self.problem(
                key,
                Severity::Error,
                "is not a host name: write only the server name, such as imap.example.com",
            );
            return Err(());
        }
        if let Some((_, port)) = v.rsplit_once(':') {
            if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && v.matches(':').count() == 1 {
                self.problem(
                    key,
                    Severity::Error,
                    "holds a port: put the port in its own port column and only the name here",
                );
                return Err(());
            }
        }
        Ok(Some(v))
    }

    fn source_server(
        &mut self,
        settings: &Settings,
        host: Option<&str>,
        port: Option<u16>,
        sec: Option<Security>,
        in_row: bool,
    ) -> Option<crate::model::ServerSpec> {
        settings.source.server(host, port, sec).map_err(|e| self.server_error("source", &e, in_row)).ok()
    }

    fn destination_server(
        &mut self,
        settings: &Settings,
        host: Option<&str>,
        port: Option<u16>,
        sec: Option<Security>,
        in_row: bool,
    ) -> Option<crate::model::ServerSpec> {
        settings.destination.server(host, port, sec).map_err(|e| self.server_error("destination", &e, in_row)).ok()
    }

    fn server_error(&mut self, side: &str, detail: &str, in_row: bool) {
        let key = format!("{side}_host");
        if !detail.starts_with("no host") {
            self.settings_problems.push(format!("[{side}] {detail}"));
        } else if in_row && self.cols.contains_key(key.as_str()) {
            // The row's own host cell can fix it: a problem of this row.
            self.problem(
                &key,
                Severity::Error,
                &format!("no {side} host: set [{side}] host or preset in the settings, or fill {side}_host"),
            );
        } else {
            let fix = if in_row { format!("or add a {key} column") } else { "this CSV form has no host column".into() };
            self.settings_problems.push(format!("no {side} host: set [{side}] host or preset ({fix})"));
        }
    }

    /// The login for a side: the row's own password, else the side's master user.
    fn login(
        &mut self,
        settings: &Settings,
        side: &str,
        user: &str,
        password: Result<Option<Secret>, ()>,
        password_key: &str,
        full_form: bool,
    ) -> Option<Login> {
        let side_settings = if side == "source" { &settings.source } else { &settings.destination };
        // An OAuth2 side needs no password: a cell that holds one anyway is not used.
        if let Some(login) = side_settings.oauth2_login(user) {
            if matches!(password, Ok(Some(_))) && self.cols.contains_key(password_key) {
                let note = format!("not used: the {side} signs in with OAuth2 tokens ([{side}.oauth2])");
                self.problem(password_key, Severity::Warning, &note);
            }
            return Some(login);
        }
        match password {
            Err(()) => None,
            Ok(Some(pw)) => {
                if side == "source" {
                    Some(parse_source_login(user, side_settings.auth).to_login(pw, side_settings.auth))
                } else {
                    Some(Login {
                        user: user.to_string(),
                        authz: None,
                        mechanism: side_settings.auth,
                        password: pw,
                        oauth2: None,
                    })
                }
            }
            Ok(None) => match side_settings.master_login(side, user) {
                Ok(l) => Some(l),
                Err(e) => {
                    if side_settings.has_master() {
                        // The master user is set up wrong: no cell of any row can fix that.
                        self.settings_problems.push(e);
                    } else if self.cols.contains_key(password_key) {
                        self.problem(password_key, Severity::Error, &format!("no {side} password: fill {password_key}, or set [{side}] admin_user and admin_password_env (a master user) in the settings"));
                    } else if full_form {
                        self.settings_problems.push(format!("no {side} password: add a {password_key} column, or set [{side}] admin_user and admin_password_env (a master user) in the settings"));
                    } else {
                        self.settings_problems.push(format!("no {side} password: set [{side}] admin_user and admin_password_env (a master user) in the settings, or use the full CSV form with {side}_password"));
                    }
                    None
                }
            },
        }
    }

    fn exchange(&mut self, settings: &Settings) -> (String, String, Option<MailboxJob>) {
        let mailbox = self.email("emailaddress", "the destination mailbox's address");
        let user = self.required("username", "the source login (or an admin form such as user*admin)");
        let password = self.password("password");
        let user_root = Some(self.text("userroot")).filter(|s| !s.is_empty());
        if user_root.as_deref().is_some_and(|root| !root.starts_with('/')) {
            // Also catches `pa,ss` written without quotes, whose second half lands here.
            self.hidden.extend(self.cols.get("userroot"));
            self.problem(
                "userroot",
                Severity::Error,
                "UserRoot must be a folder path such as /users/alberta; if the password contains a comma, put it in double quotes",
            );
        }
        let source_server = self.source_server(settings, None, None, None, false);
        let destination_server = self.destination_server(settings, None, None, None, false);
        let source_login = match &user {
            Some(u) => self.login(settings, "source", u, password, "password", false),
            None => None,
        };
        let destination_login = match &mailbox {
            Some(m) => self.login(settings, "destination", m, Ok(None), "destination_password", false),
            None => None,
        };
        let job =
            build(self.row, &mailbox, source_server, source_login, destination_server, destination_login, user_root);
        (mailbox.unwrap_or_else(|| self.shown("emailaddress")), user.unwrap_or_else(|| self.shown("username")), job)
    }

    fn trekmail(&mut self, settings: &Settings) -> (String, String, Option<MailboxJob>) {
        let user = self.email("source_email", "the source mailbox's address (its login)");
        let password = self.password("source_password");
        let mailbox = self.email("destination_email", "the destination mailbox's address");
        let source_server = self.source_server(settings, None, None, None, false);
        let destination_server = self.destination_server(settings, None, None, None, false);
        let source_login = match (&user, password) {
            (Some(u), Ok(Some(pw))) if settings.source.oauth2.is_none() => Some(Login {
                user: u.clone(),
                authz: None,
                mechanism: settings.source.auth,
                password: pw,
                oauth2: None,
            }),
            (Some(u), pw) => self.login(settings, "source", u, pw, "source_password", false),
            (None, _) => None,
        };
        let destination_login = match &mailbox {
            Some(m) => self.login(settings, "destination", m, Ok(None), "destination_password", false),
            None => None,
        };
        let job = build(self.row, &mailbox, source_server, source_login, destination_server, destination_login, None);
        (
            mailbox.unwrap_or_else(|| self.shown("destination_email")),
            user.unwrap_or_else(|| self.shown("source_email")),
            job,
        )
    }

    fn full(&mut self, settings: &Settings) -> (String, String, Option<MailboxJob>) {
        let s_host = self.host("source_host");
        let s_port = self.port("source_port");
        let s_sec = self.security("source_security");
        let user = self.required("source_user", "the source login");
        let s_password = self.password("source_password");
        let d_host = self.host("destination_host");
        let d_port = self.port("destination_port");
        let d_sec = self.security("destination_security");
        let mailbox = self.required("destination_user", "the destination login (the mailbox)");
        let d_password = self.password("destination_password");
        let user_root = Some(self.text("user_root")).filter(|s| !s.is_empty());
        let source_server = match (s_host, s_port, s_sec) {
            (Ok(h), Ok(p), Ok(s)) => self.source_server(settings, h.as_deref(), p, s, true),
            _ => None,
        };
        let destination_server = match (d_host, d_port, d_sec) {
            (Ok(h), Ok(p), Ok(s)) => self.destination_server(settings, h.as_deref(), p, s, true),
            _ => None,
        };
        let source_login = match &user {
            Some(u) => self.login(settings, "source", u, s_password, "source_password", true),
            None => None,
        };
        let destination_login = match &mailbox {
            Some(m) => self.login(settings, "destination", m, d_password, "destination_password", true),
            None => None,
        };
        let job =
            build(self.row, &mailbox, source_server, source_login, destination_server, destination_login, user_root);
        (
            mailbox.unwrap_or_else(|| self.shown("destination_user")),
            user.unwrap_or_else(|| self.shown("source_user")),
            job,
        )
    }
}

fn build(
    row: usize,
    mailbox: &Option<String>,
    source_server: Option<crate::model::ServerSpec>,
    source_login: Option<Login>,
    destination_server: Option<crate::model::ServerSpec>,
    destination_login: Option<Login>,
    user_root: Option<String>,
) -> Option<MailboxJob> {
    Some(MailboxJob {
        row,
        mailbox: mailbox.clone()?,
        source: Endpoint { server: source_server?, login: source_login? },
        destination: Endpoint { server: destination_server?, login: destination_login? },
        user_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AuthMechanism;

    /// Source by host, destination Office 365 with a Dovecot-style master user.
    fn settings() -> Settings {
        let mut s = Settings::from_toml_str(
            r#"
[source]
host = "imap.source.example"
[destination]
preset = "outlook"
admin_user = "admin"
master_separator = "*"
admin_password_env = "DST_ADMIN"
"#,
        )
        .unwrap();
        s.resolve_secrets(|_| Some("adminpw".into())).unwrap();
        s
    }

    fn no_master() -> Settings {
        let mut s = settings();
        s.destination.admin_user = None;
        s
    }

    fn v(text: &str) -> ValidatedBatch {
        validate_batch(text.as_bytes(), &settings())
    }

    fn messages(b: &ValidatedBatch) -> Vec<String> {
        b.problems.iter().map(|p| p.message.clone()).collect()
    }

    fn has(b: &ValidatedBatch, row: Option<usize>, column: Option<&str>, severity: Severity, needle: &str) -> bool {
        b.problems.iter().any(|p| {
            p.row == row && p.column.as_deref() == column && p.severity == severity && p.message.contains(needle)
        })
    }

    #[test]
    fn exchange_form_with_admin_forms_and_user_root() {
        let b = v("EmailAddress,UserName,Password,UserRoot\n\
                   alberta@contoso.com,contoso/admin/alberta,P@ssw0rd,/users/alberta\n\
                   bobby@contoso.com,bobby*admin,P@ssw0rd,\n\
                   irwin@contoso.com,#irwin@contoso.com#admin#,P@ssw0rd,\n\
                   terry@contoso.com,terry.adams,1091990,\n");
        assert!(b.is_valid(), "{:?}", b.problems);
        assert_eq!(b.format, Some(CsvFormat::Exchange));
        assert_eq!(b.headers, vec!["EmailAddress", "UserName", "Password", "UserRoot"]);
        let jobs = b.valid_jobs();
        assert_eq!(jobs.len(), 4);
        let j = jobs[0];
        assert_eq!((j.row, j.mailbox.as_str()), (1, "alberta@contoso.com"));
        assert_eq!(j.user_root.as_deref(), Some("/users/alberta"));
        assert_eq!(j.source.server.host, "imap.source.example");
        assert_eq!(j.source.server.port, 993);
        // LOGIN sends the admin form verbatim.
        assert_eq!(j.source.login.user, "contoso/admin/alberta");
        assert_eq!(j.source.login.password.expose(), "P@ssw0rd");
        assert_eq!(j.destination.server.host, "outlook.office365.com");
        assert_eq!(j.destination.login.user, "alberta@contoso.com*admin");
        assert_eq!(j.destination.login.password.expose(), "adminpw");
        assert_eq!(jobs[1].source.login.user, "bobby*admin");
        assert_eq!(jobs[1].user_root, None);
        assert_eq!(jobs[2].source.login.user, "#irwin@contoso.com#admin#");
        assert_eq!(b.rows[3].source_user, "terry.adams");
        assert_eq!(b.rows[3].cells, vec!["terry@contoso.com", "terry.adams", "", ""]);
    }

    #[test]
    fn exchange_admin_forms_with_authenticate_plain() {
        let mut s = settings();
        s.source.auth = AuthMechanism::Plain;
        let b = validate_batch(
            b"EmailAddress,UserName,Password\nalice@x.example,alice*admin,pw\nbob@x.example,bob,pw2\n",
            &s,
        );
        let jobs = b.valid_jobs();
        assert_eq!(jobs[0].source.login.user, "admin");
        assert_eq!(jobs[0].source.login.authz.as_deref(), Some("alice"));
        assert_eq!(jobs[0].source.login.mechanism, AuthMechanism::Plain);
        assert_eq!(jobs[1].source.login.user, "bob");
        assert_eq!(jobs[1].source.login.authz, None);
    }

    #[test]
    fn trekmail_form() {
        let b = v("source_email,source_password,destination_email\n\
                   alice@company.onmicrosoft.com,app-pw-1,alice@yourdomain.com\n\
                   bob@company.onmicrosoft.com,app-pw-2,bob@yourdomain.com\n");
        assert!(b.is_valid(), "{:?}", b.problems);
        assert_eq!(b.format, Some(CsvFormat::TrekMail));
        let j = b.valid_jobs()[1];
        assert_eq!(j.mailbox, "bob@yourdomain.com");
        assert_eq!(j.source.login.user, "bob@company.onmicrosoft.com");
        assert_eq!(j.source.login.password.expose(), "app-pw-2");
        assert_eq!(j.destination.login.user, "bob@yourdomain.com*admin");
        assert_eq!(b.rows[1].source_user, "bob@company.onmicrosoft.com");
        assert_eq!(b.rows[1].cells[1], "");
    }

    #[test]
    fn full_form_takes_defaults_and_master_user() {
        let b = v("source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n\
                   old.example,143,starttls,u1,pw1,new.example,1993,tls,u1@new.example,dpw1\n\
                   ,,,u2,pw2,,,,u2@new.example,\n\
                   old.example,,plain,u3,pw3,new.example,,STARTTLS,u3,dpw3\n");
        assert!(b.is_valid(), "{:?}", b.problems);
        assert_eq!(b.format, Some(CsvFormat::Full));
        let jobs = b.valid_jobs();
        let j = jobs[0];
        assert_eq!(
            (j.source.server.host.as_str(), j.source.server.port, j.source.server.security),
            ("old.example", 143, Security::Starttls)
        );
        assert_eq!((j.destination.server.host.as_str(), j.destination.server.port), ("new.example", 1993));
        assert_eq!(
            (j.destination.login.user.as_str(), j.destination.login.password.expose()),
            ("u1@new.example", "dpw1")
        );
        // Empty cells: batch defaults, and the master user for the destination.
        let j = jobs[1];
        assert_eq!(
            (j.source.server.host.as_str(), j.source.server.port, j.source.server.security),
            ("imap.source.example", 993, Security::Tls)
        );
        assert_eq!(j.destination.server.host, "outlook.office365.com");
        assert_eq!(
            (j.destination.login.user.as_str(), j.destination.login.password.expose()),
            ("u2@new.example*admin", "adminpw")
        );
        let j = jobs[2];
        assert_eq!((j.source.server.port, j.source.server.security), (143, Security::Plain));
        assert_eq!((j.destination.server.port, j.destination.server.security), (143, Security::Starttls));
        assert_eq!(j.mailbox, "u3");
        assert_eq!(b.rows[0].cells[4], "");
        assert_eq!(b.rows[0].cells[9], "");
        assert_eq!(b.rows[0].cells[8], "u1@new.example");
    }

    #[test]
    fn full_form_with_plain_master_user() {
        let mut s = no_master();
        s.destination.admin_user = Some("root".into());
        s.destination.master_separator = None;
        s.destination.auth = AuthMechanism::Plain;
        let b = validate_batch(b"source_user,source_password,destination_user,destination_password\nu1,pw,d1,\n", &s);
        let j = b.valid_jobs()[0];
        assert_eq!((j.destination.login.user.as_str(), j.destination.login.authz.as_deref()), ("root", Some("d1")));
        assert_eq!(j.destination.login.mechanism, AuthMechanism::Plain);
    }

    #[test]
    fn full_form_needs_a_host_somewhere() {
        // No source_host column: no cell can fix it, the settings must.
        let b = validate_batch(b"source_user,source_password,destination_host,destination_user,destination_password\nu1,pw,new.example,d1,dpw\n", &Settings::default());
        assert_eq!(
            messages(&b),
            ["settings: no source host: set [source] host or preset (or add a source_host column) (affects the only row)"]
        );
        let b = validate_batch(b"source_host,source_user,source_password,destination_host,destination_user,destination_password\n,u1,pw,new.example,d1,dpw\n", &Settings::default());
        assert!(has(&b, Some(1), Some("source_host"), Severity::Error, "no source host"), "{:?}", messages(&b));
        assert!(b.valid_jobs().is_empty());
    }

    #[test]
    fn headers_match_ignoring_case_order_and_spaces() {
        let b = v("password , USERNAME,emailaddress\npw,alice,alice@x.example\n");
        assert!(b.is_valid(), "{:?}", b.problems);
        assert_eq!(b.valid_jobs()[0].source.login.user, "alice");
        assert_eq!(b.rows[0].cells, vec!["", "alice", "alice@x.example"]);
    }

    #[test]
    fn bom_crlf_and_quoted_passwords() {
        let text = "\u{feff}EmailAddress,UserName,Password\r\n\
                    a@x.example,alice,\"pa,ss \"\"word\"\"\"\r\n\
                    b@x.example,bob,\"with space inside\"\r\n\
                    c@x.example,carol,\"multi\nline\"\r\n\
                    d@x.example,dan,plain\r\n";
        let b = v(text);
        assert_eq!(b.format, Some(CsvFormat::Exchange));
        assert_eq!(b.headers[0], "EmailAddress");
        // A value over two lines is what an unbalanced quote makes: an error, at its line.
        assert!(
            has(
                &b,
                Some(3),
                Some("Password"),
                Severity::Error,
                "row 3 (line 4), Password: a quoted value opens on line 4 and closes only on line 5"
            ),
            "{:?}",
            messages(&b)
        );
        assert_eq!(b.problems.len(), 1, "{:?}", messages(&b));
        let jobs = b.valid_jobs();
        assert_eq!(jobs[0].source.login.password.expose(), "pa,ss \"word\"");
        assert_eq!(jobs[1].source.login.password.expose(), "with space inside");
        assert_eq!(jobs[2].source.login.password.expose(), "plain");
        assert_eq!(jobs[2].mailbox, "d@x.example");
        assert_eq!(b.rows[2].cells, vec!["", "", ""]);
        // The quoted line break moves the next row's line number.
        assert_eq!((b.rows[3].row, b.rows[3].line), (4, 6));
        for r in &b.rows {
            assert_eq!(r.cells[2], "");
        }
    }

    #[test]
    fn empty_files() {
        for text in ["", "   \n\r\n", "\u{feff}", "\u{feff}\n"] {
            let b = v(text);
            assert!(!b.is_valid());
            assert_eq!(b.problems.len(), 1, "{text:?}");
            assert!(has(&b, None, None, Severity::Error, "the file is empty"), "{:?}", messages(&b));
        }
        let b = v("EmailAddress,UserName,Password\n");
        assert!(has(&b, None, None, Severity::Error, "no mailbox rows"), "{:?}", messages(&b));
    }

    #[test]
    fn other_delimiters_are_refused() {
        for text in [
            "EmailAddress;UserName;Password\na@x.example;alice;pw\n",
            "EmailAddress\tUserName\tPassword\na@x.example\talice\tpw\n",
            "sep=;\nEmailAddress;UserName;Password\n",
        ] {
            let b = v(text);
            assert_eq!(b.problems.len(), 1, "{text:?}");
            assert!(has(&b, None, None, Severity::Error, "not comma-separated"), "{:?}", messages(&b));
            assert!(b.rows.is_empty());
        }
        // Excel's comma hint line is fine, and line numbers count it.
        let b = v("sep=,\nEmailAddress,UserName,Password\na@x.example,alice,pw\nb@x.example,,pw\n");
        assert!(
            has(&b, Some(2), Some("UserName"), Severity::Error, "row 2 (line 4), UserName: is empty"),
            "{:?}",
            messages(&b)
        );
        assert_eq!(b.valid_jobs().len(), 1);
    }

    #[test]
    fn size_and_row_limits() {
        let mut text = String::from("EmailAddress,UserName,Password,UserRoot\n");
        let root = "r".repeat(200);
        for i in 0..=MAX_ROWS {
            text.push_str(&format!("u{i}@x.example,u{i},pw,/{root}\n"));
        }
        assert!(text.len() > MAX_BYTES);
        let b = v(&text);
        assert!(!b.is_valid());
        assert!(has(&b, None, None, Severity::Error, "more than 50000"), "{:?}", &messages(&b)[..2]);
        assert!(has(&b, None, None, Severity::Error, "larger than 10 MB"), "{:?}", &messages(&b)[..2]);
        assert_eq!(b.problems.len(), 2);
        assert_eq!(b.rows.len(), MAX_ROWS + 1);
    }

    #[test]
    fn missing_headers_are_named() {
        let b = v("EmailAddress,Password\na@x.example,pw\n");
        assert!(
            has(&b, None, Some("UserName"), Severity::Error, "missing required header UserName"),
            "{:?}",
            messages(&b)
        );
        assert_eq!(b.problems.iter().filter(|p| p.severity == Severity::Error).count(), 1, "{:?}", messages(&b));
        assert_eq!(b.rows.len(), 1);
        assert!(b.rows[0].job.is_none());
        // Without all of its columns the header cannot say where each cell belongs: no cell
        // is shown.
        assert_eq!(b.rows[0].mailbox, "");
        assert_eq!(b.rows[0].cells, vec!["", ""]);

        let b = v("source_email,destination_email\na@x.example,b@y.example\n");
        assert!(
            has(&b, None, Some("source_password"), Severity::Error, "missing required header source_password"),
            "{:?}",
            messages(&b)
        );

        let b = v("mail,login,secret\na@x.example,alice,pw\n");
        assert!(has(&b, None, None, Severity::Error, "names none of the expected columns"), "{:?}", messages(&b));
        assert!(b.rows.is_empty());

        // A file without its header row: the first row is data and must not be echoed.
        let b = v("a@x.example,alice,Sup3rSecret!\n");
        assert!(has(&b, None, None, Severity::Error, "looks like a mailbox row"), "{:?}", messages(&b));
        assert!(!format!("{b:?}").contains("Sup3rSecret!"));
    }

    #[test]
    fn duplicate_and_unknown_headers() {
        let b = v("EmailAddress,UserName,Password,username,Notes\na@x.example,alice,pw,alice,hi\n");
        assert!(has(&b, None, Some("username"), Severity::Error, "appears twice"), "{:?}", messages(&b));
        // An unknown name is described, never repeated: it may be a row swallowed by a quote.
        assert!(
            has(
                &b,
                None,
                Some("column 5"),
                Severity::Warning,
                "column 5: not a known column name (5 characters): it is ignored"
            ),
            "{:?}",
            messages(&b)
        );
        let b = v("EmailAddress,UserName,Password,Notes\na@x.example,alice,pw,hi\n");
        assert!(b.is_valid());
        assert_eq!(b.valid_jobs().len(), 1);
        assert_eq!(b.headers, vec!["EmailAddress", "UserName", "Password", "column 4"]);
        assert_eq!(b.rows[0].cells, vec!["a@x.example", "alice", "", ""], "an ignored column is not shown");
        assert!(!format!("{b:?}").contains("Notes") && !format!("{b:?}").contains("hi\""));
        // A name of another form is known: it may be named.
        let b = v("EmailAddress,UserName,Password,source_host\na@x.example,alice,pw,old.example\n");
        assert!(
            has(
                &b,
                None,
                Some("source_host"),
                Severity::Warning,
                "column 4, source_host, is not part of the Exchange form"
            ),
            "{:?}",
            messages(&b)
        );
        assert!(b.is_valid());
    }

    #[test]
    fn an_unquoted_comma_in_a_password_never_becomes_a_user_root() {
        let b = v("EmailAddress,UserName,Password,UserRoot\na@x.example,alice,pa,ss\nb@x.example,bob,pw,/users/bob\n");
        assert!(
            has(&b, Some(1), Some("UserRoot"), Severity::Error, "UserRoot must be a folder path"),
            "{:?}",
            messages(&b)
        );
        assert!(b.rows[0].job.is_none());
        assert_eq!(b.valid_jobs().len(), 1);
        assert_eq!(b.valid_jobs()[0].user_root.as_deref(), Some("/users/bob"));
    }

    #[test]
    fn rows_with_other_column_counts() {
        let b = v("EmailAddress,UserName,Password\n\
                   a@x.example,alice,pa,ss\n\
                   b@x.example,bob\n\
                   c@x.example,carol,pw,\n\
                   ,,\n\
                   d@x.example,dan,pw\n");
        assert!(
            has(&b, Some(1), None, Severity::Error, "row 1 (line 2): has 4 columns but the header has 3"),
            "{:?}",
            messages(&b)
        );
        assert!(has(&b, Some(2), None, Severity::Error, "row 2 (line 3): has 2 columns"), "{:?}", messages(&b));
        // A trailing empty cell is not dropped (it may be half of an unquoted password);
        // a row of empty cells is skipped.
        assert!(has(&b, Some(3), None, Severity::Error, "row 3 (line 4): has 4 columns"), "{:?}", messages(&b));
        assert_eq!(b.rows[2].cells, vec!["", "", "", ""]);
        assert_eq!(b.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![1, 2, 3, 5]);
        assert_eq!(b.rows[3].line, 6);
        assert_eq!(b.valid_jobs().len(), 1);
        // The misaligned row's cells are all blanked: which one is the password is unknown.
        assert_eq!(b.rows[0].cells, vec!["", "", "", ""]);
        assert_eq!(b.rows[0].mailbox, "");
    }

    #[test]
    fn malformed_values() {
        let b = v("source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n\
                   old.example,0,tls,u1,pw,new.example,,,d1,dpw\n\
                   old.example,70000,tls,u2,pw,new.example,abc,,d2,dpw\n\
                   old.example,,ssl3,u3,pw,new.example,,bogus,d3,dpw\n\
                   old.example:993,,,u4,pw,imap://new.example,,,d4,dpw\n\
                   old.example,,,,pw,new.example,,,,dpw\n\
                   old.example,,,u6,,new.example,,,d6,dpw\n");
        let e = |row, col: &str, needle| {
            assert!(has(&b, Some(row), Some(col), Severity::Error, needle), "row {row} {col}: {:#?}", messages(&b))
        };
        e(1, "source_port", "row 1 (line 2), source_port: is not a port number from 1 to 65535");
        e(2, "source_port", "not a port number");
        e(2, "destination_port", "not a port number");
        e(3, "source_security", "is not tls, starttls or plain");
        e(3, "destination_security", "is not tls, starttls or plain");
        e(4, "source_host", "holds a port");
        e(4, "destination_host", "is not a host name");
        e(5, "source_user", "is empty: fill in the source login");
        e(5, "destination_user", "is empty");
        e(6, "source_password", "no source password: fill source_password");
        assert!(b.valid_jobs().is_empty());
        assert!(b.rows.iter().all(|r| r.job.is_none()));

        let b = v("EmailAddress,UserName,Password\nnot-an-address,alice,pw\nb@x,bob,pw\n,carol,pw\nd@x.example,,pw\ne@x.example,eve,\n");
        assert!(
            has(&b, Some(1), Some("EmailAddress"), Severity::Error, "is not an email address"),
            "{:?}",
            messages(&b)
        );
        assert!(has(&b, Some(2), Some("EmailAddress"), Severity::Error, "is not an email address"));
        assert!(has(
            &b,
            Some(3),
            Some("EmailAddress"),
            Severity::Error,
            "is empty: fill in the destination mailbox's address"
        ));
        assert!(has(&b, Some(4), Some("UserName"), Severity::Error, "is empty"));
        assert!(has(&b, Some(5), Some("Password"), Severity::Error, "no source password"));
        assert!(b.valid_jobs().is_empty());

        let b = v("source_email,source_password,destination_email\nalice,pw,a@y.example\na@x.example,pw,nope\n");
        assert!(has(&b, Some(1), Some("source_email"), Severity::Error, "not an email address"));
        assert!(has(&b, Some(2), Some("destination_email"), Severity::Error, "not an email address"));
    }

    #[test]
    fn line_numbers_count_blank_lines_and_crlf() {
        for nl in ["\n", "\r\n"] {
            let text = [
                "EmailAddress,UserName,Password,,",
                "",
                "a@x.example,alice,pw",
                "",
                "",
                "b@x.example,,pw",
                "c@x.example,carol,\"two",
                "lines\"",
                "d@x.example,,pw",
            ]
            .join(nl);
            let b = v(&text);
            assert_eq!(b.headers.len(), 3, "trailing empty header cells dropped");
            assert!(b.errors_for(1).is_empty());
            assert!(
                has(&b, Some(2), Some("UserName"), Severity::Error, "row 2 (line 6), UserName"),
                "{nl:?}: {:?}",
                messages(&b)
            );
            assert!(
                has(&b, Some(4), Some("UserName"), Severity::Error, "row 4 (line 9), UserName"),
                "{nl:?}: {:?}",
                messages(&b)
            );
            assert_eq!(b.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![3, 6, 7, 9]);
        }
    }

    /// Asserts that `b` has the problem, listing all of them when not.
    #[track_caller]
    fn expect(b: &ValidatedBatch, row: Option<usize>, column: &str, severity: Severity, needle: &str) {
        assert!(has(b, row, Some(column), severity, needle), "{needle:?} not in {:#?}", messages(b));
    }

    /// Every output of a validation, for leak checks.
    fn everything(b: &ValidatedBatch) -> String {
        format!("{b:?}\n{}\n{}", b.to_json(), b.render_table())
    }

    const FULL_HEADER: &str = "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password";

    #[test]
    fn a_quote_that_swallows_rows_into_the_header_is_described_not_echoed() {
        // Issue 13: a quote before source_security and one inside the last password.
        let text = format!(
            "{}\n127.0.0.1,993,tls,a1,Sec-A1,127.0.0.1,993,tls,d1,Sec-D1\n127.0.0.1,143,starttls,a2,Sec-A2,127.0.0.1,993,tls,d2,S\"ec-D2\n",
            FULL_HEADER.replace("source_security", "\"source_security")
        );
        let b = v(&text);
        assert!(!b.is_valid());
        let e = "column 3: not a known column name (253 characters, contains line breaks): a quoted value opens on line 1 and closes only on line 3";
        expect(&b, None, "column 3", Severity::Error, e);
        assert_eq!(b.headers, vec!["source_host", "source_port", "column 3"]);
        let out = everything(&b);
        for secret in ["Sec-A1", "Sec-D1", "Sec-A2", "ec-D2"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
    }

    #[test]
    fn a_header_run_into_the_first_row_does_not_echo_its_cells() {
        // The line break after the header lost: the row's cells become header cells.
        let text = format!(
            "{FULL_HEADER}127.0.0.1,993,tls,a1,Sec-A1,127.0.0.1,993,tls,d1,Sec-D1\nh,,,a2,Sec-A2,,,,d2,Sec-D2\n"
        );
        let b = v(&text);
        assert!(!b.is_valid());
        expect(
            &b,
            None,
            "column 10",
            Severity::Error,
            "column 10: not a known column name (29 characters); the closest known name is destination_password",
        );
        assert!(has(
            &b,
            None,
            Some("column 19"),
            Severity::Warning,
            "column 19: not a known column name (6 characters)"
        ));
        let out = everything(&b);
        for secret in ["Sec-A1", "Sec-D1", "Sec-A2", "Sec-D2"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
    }

    #[test]
    fn a_damaged_column_name_is_an_error_with_the_closest_name() {
        // A misspelt optional column would silently drop its cells: an error, not a warning.
        let b = v("EmailAddress,UserName,Password,UserRot\na@x.example,alice,pw,/users/alice\n");
        expect(
            &b,
            None,
            "column 4",
            Severity::Error,
            "column 4: not a known column name (7 characters); the closest known name is UserRoot",
        );
        assert!(b.valid_jobs().is_empty());
        // A mangled password column: its cells are not shown as if they were ordinary.
        let b = v("EmailAddress,UserName,Passw\u{feff}ord\na@x.example,alice,Hidden-Pw\n");
        expect(
            &b,
            None,
            "column 3",
            Severity::Error,
            "(9 characters, contains an invisible byte-order mark); the closest known name is Password",
        );
        assert!(!everything(&b).contains("Hidden-Pw"));
        // A name split in two by a comma.
        let b = v(&format!("{},x\n", FULL_HEADER.replace("source_host", "source,host")));
        expect(&b, None, "column 1", Severity::Error, "closest known name is source_");
        // Odd bytes are named, not shown.
        let b = v("EmailAddress,UserName,Password,No\0tes\na@x.example,alice,pw,x\n");
        expect(
            &b,
            None,
            "column 4",
            Severity::Error,
            "(6 characters, contains control characters): fix the header row",
        );
    }

    #[test]
    fn an_empty_column_between_named_ones_is_an_error() {
        // With the header one column too wide and a row one cell too wide (an unquoted comma
        // in its password), the password's first half would land under UserName.
        let b = v("EmailAddress,,UserName,Password,UserRoot\na@x.example,alice,Hid,den-Pw,/users/alice\n");
        expect(&b, None, "column 2", Severity::Error, "column 2 has no name: remove the empty column");
        assert!(b.valid_jobs().is_empty());
        assert_eq!(b.rows[0].cells, vec!["", "", "", "", ""]);
        assert!(!everything(&b).contains("Hid"));
    }

    #[test]
    fn unbalanced_quotes_in_rows_are_reported_at_their_line() {
        let b = v("EmailAddress,UserName,Password\n\
                   a@x.example,alice,\"Hidden-A\"x\n\
                   b@x.example,\"bob,Hidden-B\n\
                   c@x.example,carol,Hidden-C\n\
                   d@x.example,dan,\"Hidden-D\"\n\
                   e@x.example,\"eve,Hidden-E\n");
        let e = |row, col, needle| expect(&b, Some(row), col, Severity::Error, needle);
        e(1, "Password", "row 1 (line 2), Password: a quoted value opens on line 2 and has text after its closing quote (an unbalanced quote?)");
        e(2, "UserName", "row 2 (line 3), UserName: a quoted value opens on line 3 and closes only on line 5");
        e(3, "UserName", "row 3 (line 6), UserName: a quoted value opens on line 6 and is never closed");
        assert_eq!(b.rows.len(), 3, "rows 2 to 4 of the file were read as one");
        assert!(b.rows.iter().all(|r| r.job.is_none() && r.cells.iter().all(String::is_empty) && r.mailbox.is_empty()));
        let out = everything(&b);
        assert!(!out.contains("Hidden"), "{out}");

        // The comma before a quoted password lost: the quote is now inside the first cell,
        // and the password's own comma makes up the count, one cell off.
        let b = v("source_email,source_password,destination_email\na@x.exampl\"Hidden,Pw\",a@y.example\n");
        let e = "row 1 (line 2), source_email: a value on line 2 has a quote inside but does not start with one";
        expect(&b, Some(1), "source_email", Severity::Error, e);
        assert!(!everything(&b).contains("Hidden"), "{}", everything(&b));
    }

    #[test]
    fn quote_faults_table() {
        let kinds = |text: &str| -> Vec<(usize, u64, QuoteFaultKind)> {
            quote_faults(text.as_bytes()).iter().map(|f| (f.field, f.line, f.kind)).collect()
        };
        use QuoteFaultKind::*;
        for (text, expected) in [
            ("a,\"b,c\",d\n\"e\"\"f\",g\n", vec![]),
            ("a,b\"c,d\"\"\n", vec![(1, 1, InsideUnquoted), (2, 1, InsideUnquoted)]),
            ("a,\"\"\n\"x\"\r\n", vec![]),
            ("a,\"b\"c,d\n", vec![(1, 1, TextAfterClose)]),
            ("a,\"b\nc\",d\n", vec![(1, 1, SpansLines { end_line: 2 })]),
            ("a,\"b\rc\",d\n", vec![(1, 1, SpansLines { end_line: 1 })]),
            ("a\nb,c,\"d\n\ne", vec![(2, 2, Unclosed)]),
            ("\"a\"\"\n", vec![(0, 1, Unclosed)]),
            ("x\n\"a\"b\"c,\"d\"\n", vec![(0, 2, TextAfterClose)]),
            ("a@x.exampl\"pa,ss\",b\n", vec![(0, 1, InsideUnquoted), (1, 1, InsideUnquoted)]),
        ] {
            assert_eq!(kinds(text), expected, "{text:?}");
        }
    }

    #[test]
    fn email_shapes() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org", "x@bücher.example"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "@b.co",
            "a@",
            "a@b",
            "a@@b.co",
            "a b@c.co",
            "a@b..co",
            "a@-b.co",
            "a@b.co.",
            "<a@b.co>",
            "a@b.co,c@d.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn duplicate_mailboxes_name_both_rows() {
        let b = v("EmailAddress,UserName,Password\nAlice@X.example,alice,pw\nbob@x.example,bob,pw\nalice@x.example,alice2,pw\n");
        assert!(
            has(&b, Some(1), Some("EmailAddress"), Severity::Error, "also in row 3 (line 4)"),
            "{:?}",
            messages(&b)
        );
        assert!(
            has(&b, Some(3), Some("EmailAddress"), Severity::Error, "also in row 1 (line 2)"),
            "{:?}",
            messages(&b)
        );
        assert_eq!(b.valid_jobs().len(), 1);
        assert_eq!(b.valid_jobs()[0].mailbox, "bob@x.example");
        // Problems come out in row order.
        let rows: Vec<_> = b.problems.iter().map(|p| p.row).collect();
        assert_eq!(rows, vec![Some(1), Some(3)]);
    }

    #[test]
    fn password_with_outer_spaces_is_a_warning() {
        let b = v("EmailAddress,UserName,Password\na@x.example,alice, pw \n");
        assert!(b.is_valid());
        assert!(
            has(&b, Some(1), Some("Password"), Severity::Warning, "spaces at the start or end"),
            "{:?}",
            messages(&b)
        );
        assert_eq!(b.valid_jobs()[0].source.login.password.expose(), " pw ");
        assert!(b.render_table().contains("ok, warning"));
    }

    #[test]
    fn settings_problems_on_every_row() {
        for text in [
            "EmailAddress,UserName,Password\na@x.example,alice,pw\nb@x.example,bob,pw\n",
            "source_email,source_password,destination_email\na@x.example,pw,a@y.example\nb@x.example,pw,b@y.example\n",
        ] {
            // Said once for the batch, not once per row.
            let b = validate_batch(text.as_bytes(), &no_master());
            assert_eq!(
                messages(&b),
                ["settings: no destination password: set [destination] admin_user and admin_password_env (a master user) in the settings, or use the full CSV form with destination_password (affects all 2 rows)"]
            );
            assert_eq!(b.problems[0].settings_rows, Some(2));
            assert!(b.errors_for(1).is_empty() && b.errors_for(2).is_empty());
            assert!(b.valid_jobs().is_empty() && !b.is_valid());
            assert_eq!(b.counts(), (1, 0));
            let table = b.render_table();
            assert_eq!(table.matches("no destination password").count(), 1, "{table}");
            assert_eq!(table.matches("see settings below").count(), 2, "{table}");
            let json = b.to_json();
            assert_eq!(json["settings"][0]["rows"], 2);
            assert_eq!(json["file_problems"], serde_json::json!([]));
            assert_eq!(json["invalid_rows"][1]["problems"], serde_json::json!([]));

            let mut s = no_master();
            s.source.host = None;
            let b = validate_batch(text.as_bytes(), &s);
            assert!(
                has(&b, None, None, Severity::Error, "settings: no source host: set [source] host or preset (this CSV form has no host column) (affects all 2 rows)"),
                "{:?}",
                messages(&b)
            );
            assert_eq!(b.settings_problems().count(), 2, "{:?}", messages(&b));
        }
        // A row with a problem of its own keeps it, and the settings line counts only the
        // rows it stops.
        let b = validate_batch(
            b"EmailAddress,UserName,Password\na@x.example,alice,pw\nnot-an-address,bob,pw\n",
            &no_master(),
        );
        assert!(
            has(&b, Some(2), Some("EmailAddress"), Severity::Error, "is not an email address"),
            "{:?}",
            messages(&b)
        );
        assert!(messages(&b)[0].ends_with("(affects 1 of 2 rows)"), "{:?}", messages(&b));
        // Full form with an empty destination_password and no master user.
        let b = validate_batch(
            b"source_user,source_password,destination_user,destination_password\nu1,pw,d1,\n",
            &no_master(),
        );
        assert!(
            has(
                &b,
                Some(1),
                Some("destination_password"),
                Severity::Error,
                "no destination password: fill destination_password"
            ),
            "{:?}",
            messages(&b)
        );
    }

    #[test]
    fn empty_source_password_uses_a_source_master_user() {
        let mut s = settings();
        s.source.admin_user = Some("srcadmin".into());
        s.source.master_separator = Some("*".into());
        s.source.admin_password = Secret::new("srcpw");
        let b = validate_batch(b"EmailAddress,UserName,Password\na@x.example,alice,\n", &s);
        let j = b.valid_jobs()[0];
        assert_eq!((j.source.login.user.as_str(), j.source.login.password.expose()), ("alice*srcadmin", "srcpw"));
    }

    #[test]
    fn invalid_utf8_is_reported_by_column() {
        let b = validate_batch(b"EmailAddress,UserName,Password\na@x.example,al\xffice,p\xe9w\n", &settings());
        assert!(has(&b, Some(1), Some("UserName"), Severity::Error, "not valid UTF-8"), "{:?}", messages(&b));
        assert!(has(&b, Some(1), Some("Password"), Severity::Error, "not valid UTF-8"));
        assert_eq!(b.problems.len(), 2, "{:?}", messages(&b));
        assert!(b.valid_jobs().is_empty());
    }

    #[test]
    fn no_output_ever_contains_a_password() {
        // Passwords that look like the other fields, in every form and every kind of row.
        let passwords = [
            "carol@example.org",
            "993",
            "imap.evil.example",
            "65536",
            "  spaced@pw.example ",
            "q,u\"o;te",
            "/users/alberta",
            "alice*admin",
        ];
        let mut exchange = String::from("EmailAddress,UserName,Password\n");
        let mut full = String::from("source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password\n");
        let mut trek = String::from("source_email,source_password,destination_email\n");
        for (i, pw) in passwords.iter().enumerate() {
            let q = format!("\"{}\"", pw.replace('"', "\"\""));
            // Valid, invalid, duplicate and misaligned rows alike.
            exchange.push_str(&format!(
                "u{i}@x.example,u{i},{q}\nbad{i},,{q}\ndup@x.example,d{i},{q}\nu{i}@y.example,{q},{q},extra\n"
            ));
            full.push_str(&format!("h{i}.example,0,ssl3,u{i},{q},,,,,{q}\n,,,,{q},,,,d{i},\n"));
            trek.push_str(&format!("s{i},{q},d{i}\n"));
        }
        for (text, settings) in
            [(exchange, settings()), (full.clone(), settings()), (full, no_master()), (trek, no_master())]
        {
            let b = validate_batch(text.as_bytes(), &settings);
            assert!(!b.problems.is_empty());
            let outputs = [
                b.problems.iter().map(|p| format!("{p} {:?}", p.column)).collect::<Vec<_>>().join("\n"),
                b.to_json().to_string(),
                b.render_table(),
                b.rows.iter().map(|r| r.cells.join(",")).collect::<Vec<_>>().join("\n"),
            ];
            for out in &outputs {
                for pw in passwords {
                    let pw_json = serde_json::to_string(pw).unwrap();
                    assert!(
                        !out.contains(pw) && !out.contains(pw_json.trim_matches('"')),
                        "password {pw:?} leaked in:\n{out}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_and_table_reports() {
        let b = v(
            "EmailAddress,UserName,Password\na@x.example,alice,secretA\nbad,bob,secretB\nc@x.example,carol, secretC\n",
        );
        let j = b.to_json();
        assert_eq!(j["format"], "exchange");
        assert_eq!(j["valid"], false);
        assert_eq!(j["rows"], 3);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["warnings"], 1);
        assert_eq!(j["valid_rows"].as_array().unwrap().len(), 2);
        assert_eq!(j["valid_rows"][1]["warnings"][0]["severity"], "warning");
        let inv = &j["invalid_rows"][0];
        assert_eq!(inv["row"], 2);
        assert_eq!(inv["line"], 3);
        assert_eq!(inv["cells"], json!(["bad", "bob", ""]));
        assert_eq!(inv["problems"][0]["column"], "EmailAddress");
        let text = j.to_string();
        assert!(!text.contains("secret"), "{text}");

        let table = b.render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("ROW")
                && lines[0].contains("MAILBOX")
                && lines[0].contains("SOURCE USER")
                && lines[0].contains("STATUS")
        );
        assert!(lines[1].contains("a@x.example") && lines[1].contains("alice") && lines[1].contains(" ok"), "{table}");
        assert!(lines[2].contains("INVALID") && lines[2].contains("is not an email address"), "{table}");
        assert!(lines[4].starts_with("3 rows: 2 valid, 1 invalid; 1 errors, 1 warnings"), "{table}");
        assert!(!table.contains("secret"));
    }

    #[test]
    fn file_problems_show_in_the_table() {
        let b = v("");
        assert!(b.render_table().contains("file: error: the file is empty"));
        assert_eq!(b.to_json()["file_problems"][0]["severity"], "error");
    }
}
