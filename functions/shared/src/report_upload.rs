//! The batch report written to S3 as it is read: mailboxes come from the table a few at a
//! time, and each file goes out in parts of [`PART_BYTES`] (S3 multipart upload) once it is
//! that big, so the finalize function holds a few mailboxes and a part per file, however
//! many rows the batch has. A file smaller than a part is one PutObject.

use std::io::Read;

use chrono::Utc;
use futures::TryStreamExt;
use mailhaul_common::ports::{BatchStore, CheckpointStore};
use mailhaul_common::report::writer::{ReadyBytes, ReportWriter};
use mailhaul_common::report::{mailbox_reports, BatchTotals};
use tracing::warn;

use crate::finalize::FinalizeError;
use crate::ports::{ObjectStore, PortError};

/// Bytes per part: S3 takes at least 5 MiB for every part but the last.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

const CSV: &str = "text/csv; charset=utf-8";

/// Writes report.csv, report.json, report.html and failed.csv of the batch under `prefix`,
/// in parts of `part_bytes` ([`PART_BYTES`]; S3 refuses less than 5 MiB); returns the totals
/// of the mailboxes written. On an error, parts already sent are dropped.
pub async fn write_report(
    objects: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    batch: &dyn BatchStore,
    checkpoints: &dyn CheckpointStore,
    delta_of: Option<String>,
    part_bytes: usize,
) -> Result<BatchTotals, FinalizeError> {
    let object = |name: &str, content_type: &'static str| ObjectWriter {
        objects,
        part_bytes,
        bucket,
        key: format!("{prefix}/{name}"),
        content_type,
        pending: Vec::new(),
        upload: None,
        etags: Vec::new(),
    };
    let mut files = [
        object("report.csv", CSV),
        object("report.json", "application/json"),
        object("report.html", "text/html; charset=utf-8"),
        object("failed.csv", CSV),
    ];
    let written = write_files(&mut files, batch, checkpoints, delta_of).await;
    if written.is_err() {
        for file in &mut files {
            file.abort().await;
        }
    }
    written
}

async fn write_files(
    [csv, json, html, failed]: &mut [ObjectWriter<'_>; 4],
    batch: &dyn BatchStore,
    checkpoints: &dyn CheckpointStore,
    delta_of: Option<String>,
) -> Result<BatchTotals, FinalizeError> {
    let (meta, reports) = mailbox_reports(batch, checkpoints).await?;
    // report.html's entries wait in the function's /tmp until the page's top can be written.
    let mut writer = ReportWriter::new(&meta.id, delta_of, Utc::now(), meta.headers, Some(&std::env::temp_dir()))?;
    writer.expect_mailboxes(meta.total);
    let mut reports = std::pin::pin!(reports);
    while let Some(mailbox) = reports.try_next().await? {
        writer.add(&mailbox)?;
        if writer.ready_len() >= csv.part_bytes {
            let ready = writer.take_ready();
            write_ready(csv, json, failed, ready).await?;
        }
    }
    let mut finished = writer.finish(None)?;
    write_ready(csv, json, failed, finished.rest).await?;
    let mut piece = vec![0; html.part_bytes];
    loop {
        let n = finished.html.read(&mut piece)?;
        if n == 0 {
            break;
        }
        html.write(&piece[..n]).await?;
    }
    for file in [csv, json, html, failed] {
        file.finish().await?;
    }
    Ok(finished.totals)
}

async fn write_ready(
    csv: &mut ObjectWriter<'_>,
    json: &mut ObjectWriter<'_>,
    failed: &mut ObjectWriter<'_>,
    ready: ReadyBytes,
) -> Result<(), PortError> {
    csv.write(&ready.csv).await?;
    json.write(&ready.json).await?;
    failed.write(&ready.failed).await
}

/// One object written in pieces: held until a part's worth, then sent part by part.
struct ObjectWriter<'a> {
    objects: &'a dyn ObjectStore,
    part_bytes: usize,
    bucket: &'a str,
    key: String,
    content_type: &'static str,
    pending: Vec<u8>,
    /// The multipart upload, once the object has needed one.
    upload: Option<String>,
    etags: Vec<String>,
}

impl ObjectWriter<'_> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= self.part_bytes {
            let rest = self.pending.split_off(self.part_bytes);
            let part = std::mem::replace(&mut self.pending, rest);
            self.send(part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, part: Vec<u8>) -> Result<(), PortError> {
        let upload = match &self.upload {
            Some(upload) => upload.clone(),
            None => {
                let upload = self.objects.start_parts(self.bucket, &self.key, self.content_type).await?;
                self.upload.insert(upload).clone()
            }
        };
        let number = self.etags.len() as i32 + 1;
        let etag = self.objects.send_part(self.bucket, &self.key, &upload, number, part).await?;
        self.etags.push(etag);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), PortError> {
        let rest = std::mem::take(&mut self.pending);
        let Some(upload) = self.upload.clone() else {
            return self.objects.put(self.bucket, &self.key, rest, self.content_type).await;
        };
        if !rest.is_empty() {
            self.send(rest).await?;
        }
        self.objects.finish_parts(self.bucket, &self.key, &upload, std::mem::take(&mut self.etags)).await?;
        self.upload = None;
        Ok(())
    }

    /// Drops the parts sent (S3 bills them until then); the bucket's lifecycle rule
    /// catches what this misses.
    async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = self.objects.abort_parts(self.bucket, &self.key, &upload).await {
                warn!(key = %self.key, error = %e, "could not drop the parts of an unfinished report");
            }
        }
    }
}
