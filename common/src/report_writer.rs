//! The report files written one mailbox at a time: report.csv, report.json and failed.csv
//! grow as the mailboxes go by (the caller takes what is ready and sends it on), report.html's
//! entries are kept per standing, worst first, until the glance at the top of the page can be
//! written. The report of 50,000 mailboxes then needs the memory of a few of them, not of all
//! (built whole it took ~950 MB with 20 folders each: `examples/report_memory.rs`).
//!
//! [`BatchReport`]'s files are written by this same code, so both give the same bytes.

use std::io::{self, Cursor, Read, Seek, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::html::{self, Standing, Tally};
use super::{csv_row, failed_row, is_password_header, BatchTotals, MailboxReport, REPORT_CSV_HEADERS};

/// Writes the four report files of one batch, mailbox by mailbox in CSV-row order.
pub struct ReportWriter {
    batch: String,
    delta_of: Option<String>,
    generated_at: DateTime<Utc>,
    headers: Vec<String>,
    secret_columns: Vec<bool>,
    tally: Tally,
    added: usize,
    csv: Vec<u8>,
    json: Vec<u8>,
    failed: Vec<u8>,
    /// report.html's mailbox entries, one spool per [`Standing`].
    html: Vec<Spool>,
    /// Whether report.html shows the folders of mailboxes done without warnings.
    done_folders_shown: bool,
}

/// The bytes of the three files that grow as mailboxes are added, not taken yet.
#[derive(Debug, Default)]
pub struct ReadyBytes {
    pub csv: Vec<u8>,
    pub json: Vec<u8>,
    pub failed: Vec<u8>,
}

/// The rest of every file once the last mailbox is in; report.html whole, as a reader.
pub struct FinishedReport {
    pub rest: ReadyBytes,
    pub html: Box<dyn Read + Send>,
    pub totals: BatchTotals,
}

/// Where report.html's entries of one standing wait: memory, or an unnamed file that
/// disappears when dropped.
enum Spool {
    Memory(Vec<u8>),
    File(io::BufWriter<std::fs::File>),
}

impl Spool {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Spool::Memory(buffer) => buffer.extend_from_slice(bytes),
            Spool::File(file) => file.write_all(bytes)?,
        }
        Ok(())
    }

    fn into_reader(self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Spool::Memory(buffer) => Box::new(Cursor::new(buffer)),
            Spool::File(file) => {
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                file.rewind()?;
                Box::new(io::BufReader::new(file))
            }
        })
    }
}

#[derive(Serialize)]
struct JsonHead<'a> {
    batch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_of: &'a Option<String>,
    generated_at: &'a DateTime<Utc>,
    headers: &'a [String],
}

impl ReportWriter {
    /// `spool_dir`: where report.html's entries wait on disk (None: in memory).
    pub fn new(
        batch: &str,
        delta_of: Option<String>,
        generated_at: DateTime<Utc>,
        headers: Vec<String>,
        spool_dir: Option<&Path>,
    ) -> io::Result<ReportWriter> {
        let html = Standing::ALL
            .iter()
            .map(|_| match spool_dir {
                Some(dir) => Ok(Spool::File(io::BufWriter::new(tempfile::tempfile_in(dir)?))),
                None => Ok(Spool::Memory(Vec::new())),
            })
            .collect::<io::Result<_>>()?;
        let mut writer = ReportWriter {
            batch: batch.to_string(),
            secret_columns: headers.iter().map(|h| is_password_header(h)).collect(),
            delta_of,
            generated_at,
            headers,
            tally: Tally::default(),
            added: 0,
            csv: Vec::new(),
            json: Vec::new(),
            failed: Vec::new(),
            html,
            done_folders_shown: true,
        };
        write_csv_record(&mut writer.csv, REPORT_CSV_HEADERS.iter().map(|h| h.to_string()).collect())?;
        if !writer.headers.is_empty() {
            write_csv_record(&mut writer.failed, writer.headers.clone())?;
        }
        // The JSON of BatchReport as serde_json's pretty printer writes it, its fields in order:
        // the head, then the mailboxes one by one, then the totals.
        let head = JsonHead {
            batch: &writer.batch,
            delta_of: &writer.delta_of,
            generated_at: &writer.generated_at,
            headers: &writer.headers,
        };
        let head = serde_json::to_vec_pretty(&head).map_err(io::Error::other)?;
        writer.json.extend_from_slice(head.strip_suffix(b"\n}").unwrap_or(&head));
        writer.json.extend_from_slice(b",\n  \"mailboxes\": [");
        Ok(writer)
    }

    /// How many mailboxes will be added: above [`html::FOLDERS_OF_DONE_MAILBOXES_UP_TO`],
    /// report.html leaves the folders of mailboxes done without warnings to report.json.
    pub fn expect_mailboxes(&mut self, mailboxes: usize) {
        self.done_folders_shown = mailboxes <= html::FOLDERS_OF_DONE_MAILBOXES_UP_TO;
    }

    pub fn add(&mut self, m: &MailboxReport) -> io::Result<()> {
        write_csv_record(&mut self.csv, csv_row(m))?;
        if let Some(cells) = failed_row(&self.headers, &self.secret_columns, m) {
            write_csv_record(&mut self.failed, cells)?;
        }
        self.json.extend_from_slice(if self.added == 0 { b"\n" } else { b",\n" });
        write_indented(&mut self.json, &serde_json::to_vec_pretty(m).map_err(io::Error::other)?, "    ", true);
        let mut entry = String::with_capacity(2_048);
        html::mailbox(&mut entry, m, self.done_folders_shown);
        self.html[Standing::of(m) as usize].write(entry.as_bytes())?;
        self.tally.add(m);
        self.added += 1;
        Ok(())
    }

    /// What report.csv, report.json and failed.csv have gained since the last take.
    pub fn take_ready(&mut self) -> ReadyBytes {
        ReadyBytes {
            csv: std::mem::take(&mut self.csv),
            json: std::mem::take(&mut self.json),
            failed: std::mem::take(&mut self.failed),
        }
    }

    /// Bytes written and not taken yet (report.html's spool aside).
    pub fn ready_len(&self) -> usize {
        self.csv.len() + self.json.len() + self.failed.len()
    }

    /// Ends the files. `totals` replaces the tally of the mailboxes added (a report built
    /// elsewhere keeps its own); the finished report says which were written.
    pub fn finish(mut self, totals: Option<BatchTotals>) -> io::Result<FinishedReport> {
        if let Some(totals) = totals {
            self.tally.totals = totals;
        }
        self.json.extend_from_slice(if self.added == 0 { b"]" } else { b"\n  ]" });
        self.json.extend_from_slice(b",\n  \"totals\": ");
        let totals = serde_json::to_vec_pretty(&self.tally.totals).map_err(io::Error::other)?;
        write_indented(&mut self.json, &totals, "  ", false);
        self.json.extend_from_slice(b"\n}\n");

        let head = html::page_head(
            &self.batch,
            self.delta_of.as_deref(),
            self.generated_at,
            &self.tally,
            self.done_folders_shown,
        );
        let mut page: Box<dyn Read + Send> = Box::new(Cursor::new(head.into_bytes()));
        for spool in self.html.drain(..) {
            page = Box::new(page.chain(spool.into_reader()?));
        }
        page = Box::new(page.chain(Cursor::new(html::page_tail().into_bytes())));
        let totals = self.tally.totals.clone();
        Ok(FinishedReport { rest: self.take_ready(), html: page, totals })
    }
}

/// One CSV record appended to `out` (quoted as the csv crate quotes).
fn write_csv_record(out: &mut Vec<u8>, cells: Vec<String>) -> io::Result<()> {
    let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(out);
    writer.write_record(&cells)?;
    writer.flush()
}

/// `pretty` (serde_json's pretty output) appended with `indent` before every line but the
/// first (and the first too when `first_line` is set): what it looks like nested that deep.
/// JSON strings hold no raw newline, so lines are exactly the printer's lines.
fn write_indented(out: &mut Vec<u8>, pretty: &[u8], indent: &str, first_line: bool) {
    for (i, line) in pretty.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if i > 0 || first_line {
            out.extend_from_slice(indent.as_bytes());
        }
        out.extend_from_slice(line);
    }
}
