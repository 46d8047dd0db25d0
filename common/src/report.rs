//! The batch report (report.csv, report.json, report.html, failed.csv and a summary table),
//! built from the state ports so the local run and the Lambda finalizer produce the same files.

#[path = "report_html.rs"]
pub mod html;
#[path = "report_writer.rs"]
pub mod writer;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::model::{FolderCheckpoint, FolderCounts, MailboxStatus, SkippedMessage, Verdict};
use crate::ports::{BatchMeta, BatchStore, CheckpointStore, MailboxRecord, StoreError};

/// The columns of report.csv, in order.
pub const REPORT_CSV_HEADERS: [&str; 18] = [
    "row",
    "mailbox",
    "source_user",
    "status",
    "folders",
    "copied",
    "skipped_duplicate",
    "skipped_too_big",
    "skipped_by_date",
    "refused",
    "unreadable",
    "bytes",
    "seconds",
    "verify",
    "error",
    "hint",
    "folder_notes",
    "in_label_folder",
];

/// One source folder of a mailbox, as people read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FolderReport {
    /// Source folder name, decoded from modified UTF-7.
    pub source: String,
    /// Destination folder name, decoded from modified UTF-7.
    pub destination: String,
    pub counts: FolderCounts,
    /// False when the last pass stopped before the end of the folder.
    pub complete: bool,
    pub verify: Option<Verdict>,
    /// Why a listed folder was not copied (another user's or a shared folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_copied: Option<String>,
    /// Why the destination name differs from the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed: Option<String>,
}

impl FolderReport {
    /// Listed but left alone on purpose (another user's or a shared folder): nothing to copy
    /// or verify.
    pub fn left_alone(&self) -> bool {
        self.not_copied.is_some()
    }
}

/// One mailbox (CSV row) of the batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MailboxReport {
    /// 1-based data row of the CSV.
    pub row: usize,
    pub mailbox: String,
    pub source_user: String,
    pub status: MailboxStatus,
    /// Folders ordered by source name, so every state store yields the same report.
    pub folders: Vec<FolderReport>,
    /// The sum of the folders' counts.
    pub totals: FolderCounts,
    pub seconds: f64,
    pub passes: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, `mismatch in N folder(s): ...` or `not verified`.
    pub verify: String,
    pub error: Option<String>,
    /// What to do about `error`.
    pub hint: Option<String>,
    /// Every message not copied (too big, refused, unreadable), ordered by folder then UID.
    pub skipped: Vec<SkippedMessage>,
    /// The CSV row with its password cells empty, for failed.csv; not in report.json.
    #[serde(skip)]
    pub cells: Vec<String>,
}

/// Tallies over the whole batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchTotals {
    pub mailboxes: usize,
    pub done: usize,
    pub failed: usize,
    pub partial: usize,
    pub pending: usize,
    /// Mailboxes still marked running when the report was built (a run that is in progress
    /// or was killed); `done + failed + partial + pending + running = mailboxes`.
    pub running: usize,
    /// Messages copied.
    pub messages: u64,
    /// Bytes copied.
    pub bytes: u64,
    pub skipped_duplicate: u64,
    pub skipped_too_big: u64,
    pub skipped_by_date: u64,
    pub refused: u64,
    /// Source messages the source server could not deliver (tried again by the next pass).
    #[serde(default)]
    pub unreadable: u64,
    /// Gmail's All Mail: messages left to the label folders that hold them.
    #[serde(default)]
    pub in_label_folder: u64,
    /// Seconds spent copying, summed over mailboxes (more than the wall time when parallel).
    pub seconds: f64,
}

impl BatchTotals {
    /// Counts one more mailbox.
    pub fn add_mailbox(&mut self, m: &MailboxReport) {
        self.mailboxes += 1;
        match m.status {
            MailboxStatus::Done => self.done += 1,
            MailboxStatus::Failed => self.failed += 1,
            MailboxStatus::Partial => self.partial += 1,
            MailboxStatus::Pending => self.pending += 1,
            MailboxStatus::Running => self.running += 1,
        }
        let t = &m.totals;
        self.messages += t.copied;
        self.bytes += t.bytes;
        self.skipped_duplicate += t.skipped_duplicate;
        self.skipped_too_big += t.skipped_too_big;
        self.skipped_by_date += t.skipped_by_date;
        self.refused += t.refused;
        self.unreadable += t.unreadable;
        self.in_label_folder += t.in_label_folder;
        self.seconds += m.seconds;
    }

    /// Source messages not in the destination, each listed in the report with its reason.
    pub fn not_copied(&self) -> u64 {
        self.skipped_too_big + self.refused + self.unreadable
    }
}

/// The whole report of one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    pub batch: String,
    /// For a delta pass on AWS: the batch it follows (its counts are the mailbox pairs' totals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_of: Option<String>,
    pub generated_at: DateTime<Utc>,
    /// The batch CSV's header as the user wrote it (failed.csv uses it).
    pub headers: Vec<String>,
    /// Ordered by CSV row.
    pub mailboxes: Vec<MailboxReport>,
    pub totals: BatchTotals,
}

/// Mailboxes whose checkpoints [`build_report`] reads at once.
const STORE_READS_IN_FLIGHT: usize = 16;

/// Read the batch, every mailbox record, its folder checkpoints and skipped messages.
pub async fn build_report(
    batch: &dyn BatchStore,
    checkpoints: &dyn CheckpointStore,
) -> Result<BatchReport, StoreError> {
    let (meta, reports) = mailbox_reports(batch, checkpoints).await?;
    let mailboxes: Vec<MailboxReport> = reports.try_collect().await?;
    let mut totals = BatchTotals::default();
    mailboxes.iter().for_each(|m| totals.add_mailbox(m));
    Ok(BatchReport {
        batch: meta.id,
        delta_of: None,
        generated_at: Utc::now(),
        headers: meta.headers,
        mailboxes,
        totals,
    })
}

/// The batch and its mailboxes' reports in CSV-row order, read as they are taken (a few
/// mailboxes at a time), so a writer can hand them on without holding them all.
pub async fn mailbox_reports<'a>(
    batch: &'a dyn BatchStore,
    checkpoints: &'a dyn CheckpointStore,
) -> Result<(BatchMeta, impl Stream<Item = Result<MailboxReport, StoreError>> + 'a), StoreError> {
    let meta = batch
        .batch()
        .await?
        .ok_or_else(|| StoreError::new("the state holds no batch: nothing to report (was the batch submitted?)"))?;
    let mut records = batch.mailboxes().await?;
    records.sort_by(|a, b| (a.row, &a.mailbox).cmp(&(b.row, &b.mailbox)));

    // Two reads per mailbox: several at once, so 50,000 mailboxes on DynamoDB take seconds.
    let reports = stream::iter(records)
        .map(move |record| async move {
            let folders = checkpoints.load_folders(&record.mailbox).await?;
            let skipped = checkpoints.skipped(&record.mailbox).await?;
            Ok::<_, StoreError>(mailbox_report(record, folders, skipped))
        })
        .buffered(STORE_READS_IN_FLIGHT);
    Ok((meta, reports))
}

fn mailbox_report(
    record: MailboxRecord,
    mut checkpoints_of: Vec<FolderCheckpoint>,
    mut skipped: Vec<SkippedMessage>,
) -> MailboxReport {
    checkpoints_of.sort_by(|a, b| a.source_folder.cmp(&b.source_folder));
    skipped.sort_by(|a, b| (&a.folder, a.uid, a.reason).cmp(&(&b.folder, b.uid, b.reason)));

    let folders: Vec<FolderReport> = checkpoints_of
        .into_iter()
        .map(|c| FolderReport {
            source: crate::mutf7::decode(&c.source_folder),
            destination: crate::mutf7::decode(&c.destination_folder),
            counts: c.counts,
            complete: c.complete,
            verify: c.verify,
            not_copied: c.not_copied,
            renamed: c.renamed,
        })
        .collect();
    let mut totals = FolderCounts::default();
    for folder in &folders {
        totals.add(&folder.counts);
    }
    MailboxReport {
        row: record.row,
        verify: verify_summary(&folders),
        mailbox: record.mailbox,
        source_user: record.source_user,
        status: record.status,
        folders,
        totals,
        seconds: record.seconds,
        passes: record.passes,
        started_at: record.started_at,
        finished_at: record.finished_at,
        error: record.error,
        hint: record.hint,
        skipped,
        cells: record.cells,
    }
}

/// `ok` when every folder verified fine, `mismatch in N folder(s): ...` when any did not,
/// `not verified` otherwise (no folder, or some folder without a verdict).
fn verify_summary(folders: &[FolderReport]) -> String {
    // A folder left alone on purpose (shared) has nothing to verify.
    let folders: Vec<&FolderReport> = folders.iter().filter(|f| !f.left_alone()).collect();
    let mismatches: Vec<String> = folders
        .iter()
        .filter_map(|f| match &f.verify {
            Some(v) if !v.ok => Some(if v.detail.is_empty() {
                format!("{} ({} in source, {} in destination)", f.source, v.source_messages, v.destination_messages)
            } else {
                format!("{} ({})", f.source, v.detail)
            }),
            _ => None,
        })
        .collect();
    if !mismatches.is_empty() {
        format!("mismatch in {} folder(s): {}", mismatches.len(), mismatches.join("; "))
    } else if !folders.is_empty() && folders.iter().all(|f| f.verify.is_some()) {
        "ok".to_string()
    } else {
        "not verified".to_string()
    }
}

/// report.csv's short account of folders renamed on the way and folders left alone:
/// `"A/B" copied as "A_B" ("A/B" contains '/', ...); "Other Users/bob/Archive" not copied: ...`.
fn folder_notes(folders: &[FolderReport]) -> String {
    folders
        .iter()
        .filter_map(|f| match (&f.not_copied, &f.renamed) {
            (Some(why), _) => Some(format!("{:?} {why}", f.source)),
            (None, Some(why)) => Some(format!("{:?} copied as {:?} ({why})", f.source, f.destination)),
            (None, None) => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// True for a CSV header naming a password column: such cells are blanked in failed.csv even
/// if a caller forgot to, because that file is handed around for editing.
fn is_password_header(header: &str) -> bool {
    let h = header.trim().to_ascii_lowercase();
    h.contains("password") || h.contains("passwd") || h == "pass" || h == "pwd" || h.ends_with("_pwd")
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

impl BatchReport {
    /// The four files, written by [`writer::ReportWriter`] like the finalize function's.
    pub fn files(&self) -> ReportFiles {
        // Into memory: neither writing nor reading back can fail.
        let mut taken = writer::ReadyBytes::default();
        let mut finished = self
            .written(None, |ready| {
                taken.csv.extend(ready.csv);
                taken.json.extend(ready.json);
                taken.failed.extend(ready.failed);
                Ok(())
            })
            .expect("report to memory");
        let mut html = Vec::new();
        finished.html.read_to_end(&mut html).expect("report to memory");
        taken.csv.extend(finished.rest.csv);
        taken.json.extend(finished.rest.json);
        taken.failed.extend(finished.rest.failed);
        ReportFiles { csv: taken.csv, json: taken.json, html, failed: taken.failed }
    }

    /// Every mailbox through a [`writer::ReportWriter`] (report.html's entries spooled in
    /// `spool_dir`, or memory), `take` handed what is ready after each; the rest at the end.
    fn written(
        &self,
        spool_dir: Option<&Path>,
        mut take: impl FnMut(writer::ReadyBytes) -> std::io::Result<()>,
    ) -> std::io::Result<writer::FinishedReport> {
        let mut writer = writer::ReportWriter::new(
            &self.batch,
            self.delta_of.clone(),
            self.generated_at,
            self.headers.clone(),
            spool_dir,
        )?;
        writer.expect_mailboxes(self.mailboxes.len());
        for m in &self.mailboxes {
            writer.add(m)?;
            take(writer.take_ready())?;
        }
        writer.finish(Some(self.totals.clone()))
    }

    /// report.csv: one line per mailbox with the columns of [`REPORT_CSV_HEADERS`].
    pub fn to_csv(&self) -> Vec<u8> {
        self.files().csv
    }

    /// report.json: everything, including per-folder details and every message not copied.
    pub fn to_json(&self) -> Vec<u8> {
        // The bytes ReportWriter writes (a test holds them equal), without the other files.
        let mut out = serde_json::to_vec_pretty(self).expect("report serializes");
        out.push(b'\n');
        out
    }

    /// report.html: the batch at a glance, then every mailbox (worst first), each expanding to
    /// its folders, the messages not copied and what to do about every problem.
    pub fn to_html(&self) -> Vec<u8> {
        // The other files are dropped as they are written.
        let mut finished = self.written(None, |_| Ok(())).expect("report to memory");
        let mut html = Vec::new();
        finished.html.read_to_end(&mut html).expect("report to memory");
        html
    }

    /// failed.csv: every mailbox not `done`, in the batch's own CSV form (its header and the
    /// row's cells, password cells empty), ready to fix and resubmit. Header only when all are done.
    pub fn failed_csv(&self) -> Vec<u8> {
        self.files().failed
    }

    /// A fixed-width table for stderr: mailbox, status, messages, MB, time, verify, error, and
    /// a totals line.
    pub fn summary_table(&self) -> String {
        const VERIFY_WIDTH: usize = 32;
        const ERROR_WIDTH: usize = 70;
        let rows: Vec<[String; 7]> = self
            .mailboxes
            .iter()
            .map(|m| {
                [
                    m.mailbox.clone(),
                    m.status.as_str().to_string(),
                    m.totals.copied.to_string(),
                    megabytes(m.totals.bytes),
                    human_seconds(m.seconds),
                    truncate(&m.verify, VERIFY_WIDTH),
                    truncate(opt(&m.error), ERROR_WIDTH),
                ]
            })
            .collect();
        let header = ["mailbox", "status", "messages", "MB", "time", "verify", "error"];
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        // Numbers right-aligned, text left-aligned; the last column is not padded.
        let right = [false, false, true, true, true, false, false];
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else if right[i] {
                    out.push_str(&format!("{cell:>w$}", w = widths[i]));
                } else {
                    out.push_str(&format!("{cell:<w$}", w = widths[i]));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&header.map(String::from));
        for row in &rows {
            out.push_str(&line(row));
        }
        let t = &self.totals;
        let mut states = vec![
            format!("{} done", t.done),
            format!("{} failed", t.failed),
            format!("{} partial", t.partial),
            format!("{} pending", t.pending),
        ];
        if t.running > 0 {
            states.push(format!("{} running", t.running));
        }
        out.push_str(&format!(
            "total: {} mailbox(es): {}; {} messages, {} MB, {}",
            t.mailboxes,
            states.join(", "),
            t.messages,
            megabytes(t.bytes),
            human_seconds(t.seconds),
        ));
        let not_copied = t.not_copied();
        if not_copied > 0 {
            out.push_str(&format!("; {not_copied} not copied (listed in report.json)"));
        }
        out.push('\n');
        out
    }

    /// Write report.csv, report.json, report.html and failed.csv into `dir` (created if
    /// missing). Each file is written aside and renamed, so a reader never sees half a report.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let names = ["report.csv", "report.json", "report.html", "failed.csv"];
        let aside = |name: &str| dir.join(format!(".{name}.tmp"));
        let open = |name: &str| std::fs::File::create(aside(name)).map(std::io::BufWriter::new);
        let (mut csv, mut json, mut html, mut failed) =
            (open(names[0])?, open(names[1])?, open(names[2])?, open(names[3])?);
        // Written as they grow: the files are never all in memory at once.
        let mut write_ready = |ready: writer::ReadyBytes| {
            csv.write_all(&ready.csv)?;
            json.write_all(&ready.json)?;
            failed.write_all(&ready.failed)
        };
        let mut finished = self.written(Some(dir), &mut write_ready)?;
        write_ready(finished.rest)?;
        std::io::copy(&mut finished.html, &mut html)?;
        let mut written = Vec::with_capacity(names.len());
        for (name, file) in names.into_iter().zip([csv, json, html, failed]) {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            let path = dir.join(name);
            std::fs::rename(aside(name), &path)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The bytes of report.csv, report.json, report.html and failed.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportFiles {
    pub csv: Vec<u8>,
    pub json: Vec<u8>,
    pub html: Vec<u8>,
    pub failed: Vec<u8>,
}

/// A mailbox's line of report.csv.
fn csv_row(m: &MailboxReport) -> Vec<String> {
    let t = &m.totals;
    vec![
        m.row.to_string(),
        m.mailbox.clone(),
        m.source_user.clone(),
        m.status.as_str().to_string(),
        m.folders.iter().filter(|f| !f.left_alone()).count().to_string(),
        t.copied.to_string(),
        t.skipped_duplicate.to_string(),
        t.skipped_too_big.to_string(),
        t.skipped_by_date.to_string(),
        t.refused.to_string(),
        t.unreadable.to_string(),
        t.bytes.to_string(),
        format!("{:.1}", m.seconds),
        m.verify.clone(),
        opt(&m.error).to_string(),
        opt(&m.hint).to_string(),
        folder_notes(&m.folders),
        t.in_label_folder.to_string(),
    ]
}

/// A mailbox's line of failed.csv (None when it is done): its CSV cells, password cells
/// empty, as wide as the header so spreadsheet tools and our own parser accept the file.
fn failed_row(headers: &[String], secret_columns: &[bool], m: &MailboxReport) -> Option<Vec<String>> {
    if m.status == MailboxStatus::Done {
        return None;
    }
    let mut cells = m.cells.clone();
    if !headers.is_empty() {
        cells.resize(headers.len(), String::new());
    }
    for (cell, secret) in cells.iter_mut().zip(secret_columns) {
        if *secret {
            cell.clear();
        }
    }
    Some(cells)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_000_000.0)
}

fn human_seconds(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 { seconds.round() as u64 } else { 0 };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn truncate(text: &str, max: usize) -> String {
    // One line per mailbox: a multi-line server reply is flattened.
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SkipReason;
    use crate::sqlite::SqliteStore;

    const HEADERS: [&str; 5] = ["SourceUser", "SourcePassword", "Mailbox", "DestPassword", "Note"];

    fn counts(copied: u64, too_big: u64, refused: u64, bytes: u64) -> FolderCounts {
        FolderCounts {
            copied,
            skipped_duplicate: 1,
            skipped_too_big: too_big,
            skipped_by_date: 2,
            refused,
            bytes,
            ..FolderCounts::default()
        }
    }

    fn folder(source: &str, c: FolderCounts, verify: Option<Verdict>) -> FolderCheckpoint {
        FolderCheckpoint {
            source_folder: source.to_string(),
            destination_folder: source.to_string(),
            uid_validity: 7,
            last_uid: 100,
            uid_next: 101,
            counts: c,
            complete: true,
            verify,
            ..Default::default()
        }
    }

    fn verdict(ok: bool, detail: &str) -> Option<Verdict> {
        Some(Verdict {
            ok,
            source_messages: 10,
            destination_messages: if ok { 10 } else { 9 },
            not_copied: 0,
            detail: detail.to_string(),
        })
    }

    fn record(row: usize, mailbox: &str, status: MailboxStatus) -> MailboxRecord {
        MailboxRecord {
            mailbox: mailbox.to_string(),
            row,
            source_user: format!("old-{mailbox}"),
            cells: vec![
                format!("old-{mailbox}"),
                String::new(),
                mailbox.to_string(),
                String::new(),
                format!("note {row}"),
            ],
            status,
            error: None,
            hint: None,
            started_at: None,
            finished_at: None,
            seconds: 10.0 * row as f64,
            passes: 1,
        }
    }

    fn skipped(folder: &str, uid: u32, reason: SkipReason, detail: &str) -> SkippedMessage {
        SkippedMessage {
            folder: folder.to_string(),
            uid,
            size: 50_000_000,
            message_id: Some(format!("<m{uid}@example.com>")),
            reason,
            detail: detail.to_string(),
        }
    }

    /// Row 1 done, row 2 failed with error and hint, row 3 partial; saved out of order.
    async fn three_mailboxes() -> BatchReport {
        let store = SqliteStore::in_memory().unwrap();
        store
            .put_batch(&BatchMeta {
                id: "batch-7".into(),
                headers: HEADERS.iter().map(|h| h.to_string()).collect(),
                total: 3,
                created_at: Utc::now(),
            })
            .await
            .unwrap();

        store.put_mailbox(&record(3, "carol@new.example", MailboxStatus::Partial)).await.unwrap();
        store.put_mailbox(&record(1, "alice@new.example", MailboxStatus::Done)).await.unwrap();
        let mut bob = record(2, "bob@new.example", MailboxStatus::Failed);
        bob.error = Some("source login refused for row 2 (old-bob@new.example)".into());
        bob.hint = Some("check the SourcePassword cell, or create an app password".into());
        // A caller that forgot to blank a password cell: failed.csv still must not carry it.
        bob.cells[3] = "leaked-dest-pw".into();
        store.put_mailbox(&bob).await.unwrap();

        let alice = "alice@new.example";
        store.save_folder(alice, &folder("INBOX", counts(100, 1, 0, 5_000_000), verdict(true, ""))).await.unwrap();
        store.save_folder(alice, &folder("Migr&AOk-", counts(20, 0, 1, 1_000_000), verdict(true, ""))).await.unwrap();
        store
            .record_skipped(alice, &skipped("INBOX", 42, SkipReason::TooBig, "50000000 bytes > 35 MB limit"))
            .await
            .unwrap();
        store
            .record_skipped(alice, &skipped("Migré", 7, SkipReason::Refused, "NO [LIMIT] message too large"))
            .await
            .unwrap();

        let carol = "carol@new.example";
        store.save_folder(carol, &folder("Sent", counts(5, 0, 0, 300_000), verdict(false, "1 missing"))).await.unwrap();
        let mut inbox = folder("INBOX", counts(3, 0, 0, 100_000), None);
        inbox.complete = false;
        store.save_folder(carol, &inbox).await.unwrap();

        build_report(&store, &store).await.unwrap()
    }

    #[tokio::test]
    async fn totals_add_up() {
        let report = three_mailboxes().await;
        assert_eq!(report.batch, "batch-7");
        assert_eq!(report.headers, HEADERS);
        let rows: Vec<_> = report.mailboxes.iter().map(|m| (m.row, m.mailbox.as_str(), m.status)).collect();
        assert_eq!(
            rows,
            vec![
                (1, "alice@new.example", MailboxStatus::Done),
                (2, "bob@new.example", MailboxStatus::Failed),
                (3, "carol@new.example", MailboxStatus::Partial),
            ]
        );
        let t = &report.totals;
        assert_eq!((t.mailboxes, t.done, t.failed, t.partial, t.pending, t.running), (3, 1, 1, 1, 0, 0));
        assert_eq!(t.messages, 100 + 20 + 5 + 3);
        assert_eq!(t.bytes, 5_000_000 + 1_000_000 + 300_000 + 100_000);
        assert_eq!((t.skipped_too_big, t.refused, t.skipped_duplicate, t.skipped_by_date), (1, 1, 4, 8));
        assert_eq!(t.seconds, 60.0);
        let sum: u64 = report.mailboxes.iter().map(|m| m.totals.copied).sum();
        assert_eq!(sum, t.messages);
        assert_eq!(report.mailboxes[0].totals, {
            let mut c = counts(100, 1, 0, 5_000_000);
            c.add(&counts(20, 0, 1, 1_000_000));
            c
        });
    }

    #[tokio::test]
    async fn folders_are_decoded_sorted_and_verified() {
        let report = three_mailboxes().await;
        let alice = &report.mailboxes[0];
        let names: Vec<_> = alice.folders.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(names, ["INBOX", "Migré"]);
        assert_eq!(alice.verify, "ok");
        assert_eq!(report.mailboxes[1].verify, "not verified");
        assert!(report.mailboxes[1].folders.is_empty());
        let carol = &report.mailboxes[2];
        assert_eq!(carol.folders.iter().map(|f| f.source.as_str()).collect::<Vec<_>>(), ["INBOX", "Sent"]);
        assert!(!carol.folders[0].complete);
        assert_eq!(carol.verify, "mismatch in 1 folder(s): Sent (1 missing)");
    }

    #[test]
    fn folder_notes_name_renamed_and_not_copied_folders() {
        let folder = |source: &str, destination: &str, not_copied: Option<&str>, renamed: Option<&str>| FolderReport {
            source: source.into(),
            destination: destination.into(),
            counts: FolderCounts::default(),
            complete: true,
            verify: None,
            not_copied: not_copied.map(String::from),
            renamed: renamed.map(String::from),
        };
        let folders = [
            folder("INBOX", "INBOX", None, None),
            folder("Clients A/B", "INBOX/Clients A_B", None, Some("'/' refused")),
            folder("Shared Folders/Team", "", Some("not copied: shared namespace"), None),
        ];
        assert_eq!(
            folder_notes(&folders),
            "\"Clients A/B\" copied as \"INBOX/Clients A_B\" ('/' refused); \"Shared Folders/Team\" not copied: shared namespace"
        );
        // Left alone on purpose: nothing to verify there.
        assert_eq!(verify_summary(&[folders[2].clone()]), "not verified");
        let verified = FolderReport { verify: verdict(true, ""), ..folders[0].clone() };
        assert_eq!(verify_summary(&[verified, folders[2].clone()]), "ok");
    }

    #[tokio::test]
    async fn report_csv_has_one_line_per_mailbox() {
        let report = three_mailboxes().await;
        let bytes = report.to_csv();
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), REPORT_CSV_HEADERS);
        let rows: Vec<Vec<String>> = reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            [
                "1",
                "alice@new.example",
                "old-alice@new.example",
                "done",
                "2",
                "120",
                "2",
                "1",
                "4",
                "1",
                "0",
                "6000000",
                "10.0",
                "ok",
                "",
                "",
                "",
                "0"
            ]
        );
        assert_eq!(rows[1][3], "failed");
        assert_eq!(rows[1][4], "0");
        assert_eq!(rows[1][13], "not verified");
        assert_eq!(rows[1][14], "source login refused for row 2 (old-bob@new.example)");
        assert_eq!(rows[1][15], "check the SourcePassword cell, or create an app password");
        assert_eq!(rows[2][..6], ["3", "carol@new.example", "old-carol@new.example", "partial", "2", "8"]);
        assert_eq!(rows[2][13], "mismatch in 1 folder(s): Sent (1 missing)");
    }

    #[tokio::test]
    async fn report_json_lists_every_message_not_copied() {
        let report = three_mailboxes().await;
        let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(json["batch"], "batch-7");
        assert_eq!(json["totals"]["messages"], 128);
        assert_eq!(json["totals"]["failed"], 1);
        let alice = &json["mailboxes"][0];
        assert_eq!(alice["status"], "done");
        assert_eq!(alice["folders"][1]["source"], "Migré");
        assert_eq!(alice["folders"][0]["counts"]["copied"], 100);
        assert_eq!(alice["folders"][0]["verify"]["ok"], true);
        let skipped = alice["skipped"].as_array().unwrap();
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0]["folder"], "INBOX");
        assert_eq!(skipped[0]["uid"], 42);
        assert_eq!(skipped[0]["size"], 50_000_000);
        assert_eq!(skipped[0]["message_id"], "<m42@example.com>");
        assert_eq!(skipped[0]["reason"], "too_big");
        assert_eq!(skipped[0]["detail"], "50000000 bytes > 35 MB limit");
        assert_eq!(skipped[1]["reason"], "refused");
        let bob = &json["mailboxes"][1];
        assert_eq!(bob["error"], "source login refused for row 2 (old-bob@new.example)");
        assert_eq!(bob["hint"], "check the SourcePassword cell, or create an app password");
        // Cells stay out of report.json (failed.csv is where they belong).
        assert!(bob.get("cells").is_none());
        assert!(!String::from_utf8(report.to_json()).unwrap().contains("leaked-dest-pw"));
        // And it reads back.
        let back: BatchReport = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(back.mailboxes.len(), 3);
        assert_eq!(back.totals, report.totals);
    }

    #[tokio::test]
    async fn failed_csv_is_the_batch_form_of_every_unfinished_row() {
        let report = three_mailboxes().await;
        let text = String::from_utf8(report.failed_csv()).unwrap();
        assert_eq!(
            text,
            "SourceUser,SourcePassword,Mailbox,DestPassword,Note\n\
             old-bob@new.example,,bob@new.example,,note 2\n\
             old-carol@new.example,,carol@new.example,,note 3\n"
        );
    }

    #[tokio::test]
    async fn failed_csv_is_header_only_when_all_done() {
        let mut report = three_mailboxes().await;
        for m in &mut report.mailboxes {
            m.status = MailboxStatus::Done;
        }
        assert_eq!(
            String::from_utf8(report.failed_csv()).unwrap(),
            "SourceUser,SourcePassword,Mailbox,DestPassword,Note\n"
        );
    }

    #[tokio::test]
    async fn summary_table_is_aligned_with_a_totals_line() {
        let report = three_mailboxes().await;
        let table = report.summary_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("mailbox"), "{table}");
        // Every column after the first starts at the same offset on every line.
        let status_at = lines[0].find("status").unwrap();
        assert_eq!(&lines[1][status_at..status_at + 4], "done", "{table}");
        assert_eq!(&lines[2][status_at..status_at + 6], "failed", "{table}");
        assert!(lines[1].contains("  120  ") && lines[1].contains("  6.0  "), "{table}");
        assert!(lines[1].contains("10s"), "{table}");
        assert!(lines[2].ends_with("source login refused for row 2 (old-bob@new.example)"), "{table}");
        assert_eq!(
            lines[4],
            "total: 3 mailbox(es): 1 done, 1 failed, 1 partial, 0 pending; 128 messages, 6.4 MB, 1m00s; \
             2 not copied (listed in report.json)"
        );
    }

    #[tokio::test]
    async fn write_dir_writes_four_files() {
        let report = three_mailboxes().await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("reports/batch-7");
        let paths = report.write_dir(&out).unwrap();
        let names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["report.csv", "report.json", "report.html", "failed.csv"]);
        assert_eq!(std::fs::read(out.join("report.csv")).unwrap(), report.to_csv());
        assert_eq!(std::fs::read(out.join("report.html")).unwrap(), report.to_html());
        assert_eq!(std::fs::read(out.join("failed.csv")).unwrap(), report.failed_csv());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4, "no temporary files left");
    }

    #[tokio::test]
    async fn report_html_shows_the_worst_first_with_fixes_and_escapes_what_servers_say() {
        let mut report = three_mailboxes().await;
        let alice = &mut report.mailboxes[0];
        alice.folders[1].destination = "<img src=x onerror=alert(1)>".into();
        alice.skipped[1].detail = "NO </td><script>alert('refused')</script>".into();
        let html = String::from_utf8(report.to_html()).unwrap();

        // Worst first: bob failed, carol stopped before the end, alice done with warnings.
        let order: Vec<usize> = ["bob@new.example", "carol@new.example", "alice@new.example"]
            .iter()
            .map(|m| html.find(&format!("data-mailbox=\"{m}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(html.contains("data-standing=\"failed\""));
        assert!(html.contains("data-standing=\"warnings\""), "alice has messages not copied");
        // Every error with its fix.
        assert!(html.contains(
            "source login refused for row 2 (old-bob@new.example)<span class=\"fix\">check the SourcePassword cell"
        ));
        assert!(html.contains(crate::model::SkipReason::TooBig.hint()));
        assert!(html.contains("Verification: mismatch in 1 folder(s): Sent (1 missing)"));
        // Folder names and server words are text, never markup.
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("NO &lt;/td&gt;&lt;script&gt;alert(&#39;refused&#39;)&lt;/script&gt;"));
        assert_eq!(html.matches("<script").count(), 1, "only the page's own script");
        assert!(html.contains("Migré"));
        // Self-contained: nothing to fetch.
        for outside in ["http://", "https://", "src=\"", "<link", "@import", "url("] {
            assert!(!html.contains(outside), "{outside} in report.html");
        }
        assert!(!html.contains("leaked-dest-pw"));
        assert!(html.contains("first pass"));
        report.delta_of = Some("batch-6".into());
        assert!(String::from_utf8(report.to_html()).unwrap().contains("delta pass after batch batch-6"));
    }

    #[tokio::test]
    async fn a_big_batchs_page_keeps_folders_only_for_mailboxes_that_need_a_look() {
        let mut report = three_mailboxes().await;
        // Alice with nothing left out: simply done.
        let mut clean = report.mailboxes[0].clone();
        clean.skipped.clear();
        clean.totals = counts(120, 0, 0, 6_000_000);
        for folder in &mut clean.folders {
            folder.counts = counts(60, 0, 0, 3_000_000);
        }
        let entry_of = |html: &str, mailbox: &str| -> String {
            let start = html.find(&format!("data-mailbox=\"{mailbox}\"")).expect(mailbox);
            html[start..].split("</details>").next().unwrap_or_default().to_string()
        };
        let folder_table = "<table class=\"folders\">";

        report.mailboxes.push(MailboxReport { row: 4, mailbox: "dora@new.example".into(), ..clean.clone() });
        let small = String::from_utf8(report.to_html()).unwrap();
        assert!(entry_of(&small, "dora@new.example").contains(folder_table), "a small batch shows every folder");
        assert!(!small.contains("not on this page"));

        let first_extra = report.mailboxes.len() + 1;
        for row in first_extra..=html::FOLDERS_OF_DONE_MAILBOXES_UP_TO + 1 {
            report.mailboxes.push(MailboxReport { row, mailbox: format!("user{row}@new.example"), ..clean.clone() });
        }
        let big = String::from_utf8(report.to_html()).unwrap();
        assert!(big.contains("the folders of mailboxes done without warnings are in report.json, not on this page"));
        let dora = entry_of(&big, "dora@new.example");
        assert!(!dora.contains(folder_table) && dora.contains("2 folder(s)"), "{dora}");
        // Done with warnings (alice) and stopped before the end (carol) keep their folders.
        assert!(entry_of(&big, "alice@new.example").contains(folder_table));
        assert!(entry_of(&big, "carol@new.example").contains("1 missing"));
        assert_eq!(big.matches(folder_table).count(), 2);
        // report.json keeps everything.
        let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(json["mailboxes"][3]["folders"].as_array().map(Vec::len), Some(2));
    }

    #[tokio::test]
    async fn files_written_mailbox_by_mailbox_are_the_whole_reports_files() {
        let report = three_mailboxes().await;
        let mut delta = report.clone();
        delta.delta_of = Some("batch-6".into());
        let empty = BatchReport {
            mailboxes: Vec::new(),
            headers: Vec::new(),
            totals: BatchTotals::default(),
            ..report.clone()
        };
        for report in [report, delta, empty] {
            let files = report.files();
            // report.json is what serde_json writes of the whole report, and reads back.
            let mut whole = serde_json::to_vec_pretty(&report).unwrap();
            whole.push(b'\n');
            assert_eq!(String::from_utf8_lossy(&files.json), String::from_utf8_lossy(&whole));
            let back: BatchReport = serde_json::from_slice(&files.json).unwrap();
            assert_eq!(back.mailboxes.len(), report.mailboxes.len());

            // As the finalize function writes them: entries spooled on disk, the bytes taken
            // every mailbox; the same files.
            let dir = tempfile::tempdir().unwrap();
            let mut writer = writer::ReportWriter::new(
                &report.batch,
                report.delta_of.clone(),
                report.generated_at,
                report.headers.clone(),
                Some(dir.path()),
            )
            .unwrap();
            let mut taken = writer::ReadyBytes::default();
            for m in &report.mailboxes {
                writer.add(m).unwrap();
                let ready = writer.take_ready();
                assert_eq!(writer.ready_len(), 0);
                taken.csv.extend(ready.csv);
                taken.json.extend(ready.json);
                taken.failed.extend(ready.failed);
            }
            let mut finished = writer.finish(None).unwrap();
            assert_eq!(finished.totals, report.totals, "the tally of the mailboxes is the report's totals");
            taken.csv.extend(finished.rest.csv);
            taken.json.extend(finished.rest.json);
            taken.failed.extend(finished.rest.failed);
            let mut html = Vec::new();
            finished.html.read_to_end(&mut html).unwrap();
            assert_eq!(taken.csv, files.csv);
            assert_eq!(taken.json, files.json);
            assert_eq!(taken.failed, files.failed);
            assert_eq!(String::from_utf8_lossy(&html), String::from_utf8_lossy(&files.html));
        }
    }

    #[tokio::test]
    async fn an_empty_state_is_an_error() {
        let store = SqliteStore::in_memory().unwrap();
        let err = build_report(&store, &store).await.unwrap_err().to_string();
        assert!(err.contains("no batch"), "{err}");
    }

    #[test]
    fn password_headers_are_recognised() {
        for h in ["Password", "SourcePassword", "dest_password", "UserPasswd", "pwd", "pass"] {
            assert!(is_password_header(h), "{h}");
        }
        for h in ["SourceUser", "Mailbox", "passes", "Compass"] {
            assert!(!is_password_header(h), "{h}");
        }
    }
}
