//! The upload function: an S3 CSV → validated batch → passwords in Secrets Manager → one
//! SQS job per mailbox; or, for a bad file, a validation report and a `BatchRejected` event.

use aws_lambda_events::event::s3::S3Event;
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use mailhaul_common::batch::{validate_batch, Problem, Severity, ValidatedBatch};
use mailhaul_common::model::MailboxJob;
use mailhaul_common::ports::{BatchMeta, MailboxRecord};
use mailhaul_common::settings::Settings;
use mailhaul_common::Secret;
use tracing::{info, warn};

use crate::config::Services;
use crate::messages::{
    batch_id, decode_s3_key, BatchRejected, JobMessage, SecretChunk, StoredPasswords, BATCH_REJECTED,
};
use crate::ports::OutMessage;

/// Bytes of JSON per secret chunk: under Secrets Manager's 64 KB limit with room to spare.
pub const SECRET_CHUNK_BYTES: usize = 60_000;

/// What became of one uploaded object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Jobs are queued for every mailbox.
    Submitted { batch: String, mailboxes: usize },
    /// The file (or its settings) is invalid, or a mailbox is in another running batch.
    Rejected { batch: String, errors: usize },
    /// This object already made a batch.
    AlreadySubmitted { batch: String },
    /// Not a CSV under incoming/, or gone already.
    Ignored { key: String, why: String },
}

/// Why an upload could not be processed (transient: the invocation is retried by S3/Lambda).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
    #[error(transparent)]
    Store(#[from] mailhaul_common::ports::StoreError),
    #[error("{0}")]
    Other(String),
}

/// The Lambda handler: every record of the S3 event.
pub async fn handle(svc: &Services, event: LambdaEvent<S3Event>) -> Result<Vec<UploadOutcome>, lambda_runtime::Error> {
    let mut outcomes = Vec::new();
    for record in event.payload.records {
        let (Some(bucket), Some(raw_key)) = (record.s3.bucket.name.clone(), record.s3.object.key.clone()) else {
            warn!("S3 record without bucket or key: ignored");
            continue;
        };
        let key = decode_s3_key(&raw_key);
        let outcome = process_object(svc, &bucket, &key).await.map_err(|e| format!("s3://{bucket}/{key}: {e}"))?;
        info!(bucket = %bucket, key = %key, outcome = ?outcome, "upload processed");
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn sidecar_key(key: &str) -> String {
    format!("{}.toml", key.strip_suffix(".csv").unwrap_or(key))
}

/// Deep-merges `over` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The batch settings: the stack's defaults, overridden by the optional sidecar TOML.
pub fn batch_settings(defaults: &toml::Table, sidecar: Option<&str>, sidecar_name: &str) -> Result<Settings, String> {
    let mut table = defaults.clone();
    if let Some(text) = sidecar {
        let over: toml::Table = toml::from_str(text).map_err(|e| format!("settings file {sidecar_name}: {e}"))?;
        merge(&mut table, over);
    }
    let text = toml::to_string(&table).map_err(|e| format!("settings: {e}"))?;
    let mut settings =
        Settings::from_toml_str(&text).map_err(|e| format!("{e} (in the stack defaults or {sidecar_name})"))?;
    settings.resolve_secrets(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    Ok(settings)
}

fn file_problem(message: String) -> Problem {
    Problem { row: None, column: None, severity: Severity::Error, message }
}

/// Validates and submits one uploaded CSV.
pub async fn process_object(svc: &Services, bucket: &str, key: &str) -> Result<UploadOutcome, UploadError> {
    if !key.starts_with("incoming/") || !key.to_ascii_lowercase().ends_with(".csv") {
        return Ok(UploadOutcome::Ignored { key: key.into(), why: "not a .csv under incoming/".into() });
    }
    let Some(bytes) = svc.objects.get(bucket, key).await? else {
        // Deleted after a successful submit: this is a redelivered event.
        return Ok(UploadOutcome::Ignored { key: key.into(), why: "object is gone (already processed)".into() });
    };
    let batch = batch_id(key, &bytes);
    let sidecar_name = sidecar_key(key);
    let sidecar = svc.objects.get(bucket, &sidecar_name).await?;
    let sidecar_text = match sidecar.map(String::from_utf8) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            let v = invalid_batch(file_problem(format!(
                "settings file {sidecar_name} is not UTF-8 text: save it as UTF-8"
            )));
            return reject(svc, bucket, key, &batch, v).await;
        }
    };
    let settings = match batch_settings(&svc.config.defaults, sidecar_text.as_deref(), &sidecar_name) {
        Ok(s) => s,
        Err(message) => return reject(svc, bucket, key, &batch, invalid_batch(file_problem(message))).await,
    };
    let validated = validate_batch(&bytes, &settings);
    if !validated.is_valid() {
        return reject(svc, bucket, key, &batch, validated).await;
    }
    let jobs: Vec<&MailboxJob> = validated.valid_jobs();
    let meta =
        BatchMeta { id: batch.clone(), headers: validated.headers.clone(), total: jobs.len(), created_at: Utc::now() };
    if !svc.table.create_batch(&meta, key).await? {
        let state = svc.table.batch_state(&batch).await?.map(|s| s.state).unwrap_or_default();
        // "submitting": an earlier try died half-way; "rejected": a conflicting batch may be over.
        if state != "submitting" && state != "rejected" {
            svc.objects.delete(bucket, key).await?;
            return Ok(UploadOutcome::AlreadySubmitted { batch });
        }
    }

    // A mailbox in another running batch is refused, as Exchange does.
    let mut claimed = Vec::new();
    let mut conflicts = Vec::new();
    for job in &jobs {
        match svc.table.claim_mailbox(&job.mailbox, &batch).await? {
            None => claimed.push(job.mailbox.clone()),
            Some(other) => conflicts.push(Problem {
                row: Some(job.row),
                column: None,
                severity: Severity::Error,
                message: format!(
                    "row {}: mailbox {} is already being migrated by batch {other}: remove the row, or upload again when that batch is complete",
                    job.row, job.mailbox
                ),
            }),
        }
    }
    if !conflicts.is_empty() {
        for m in &claimed {
            svc.table.release_mailbox(m, &batch).await?;
        }
        svc.table.set_batch_state(&batch, "rejected").await?;
        let mut v = validated.clone();
        v.problems.extend(conflicts);
        return reject(svc, bucket, key, &batch, v).await;
    }

    for row in &validated.rows {
        let record = MailboxRecord::pending(&row.mailbox, row.row, &row.source_user, row.cells.clone());
        svc.table.create_mailbox(&batch, &record).await?;
    }

    // Passwords: chunked into secrets (one per row would cost $0.40 a month each).
    let mut chunks: Vec<SecretChunk> = vec![SecretChunk::new()];
    let mut size = 2;
    let mut secret_of = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let entry = StoredPasswords {
            source: job.source.login.password.expose().to_string(),
            destination: job.destination.login.password.expose().to_string(),
        };
        let entry_size =
            serde_json::to_string(&entry).map_err(|e| UploadError::Other(e.to_string()))?.len() + job.mailbox.len() + 4;
        if size + entry_size > SECRET_CHUNK_BYTES && !chunks.last().is_some_and(|c| c.is_empty()) {
            chunks.push(SecretChunk::new());
            size = 2;
        }
        size += entry_size;
        if let Some(c) = chunks.last_mut() {
            c.insert(job.mailbox.clone(), entry);
        }
        secret_of.push(chunks.len() - 1);
    }
    let names: Vec<String> = (0..chunks.len()).map(|i| format!("{}/{batch}/{i}", svc.config.secret_prefix)).collect();
    // Names first, so finalize deletes them even if this upload dies half-way.
    svc.table.set_secrets(&batch, &names).await?;
    for (name, chunk) in names.iter().zip(&chunks) {
        let value = Secret::new(serde_json::to_string(chunk).map_err(|e| UploadError::Other(e.to_string()))?);
        svc.secrets.put(name, &value).await?;
    }

    let mut messages = Vec::with_capacity(jobs.len());
    for (job, chunk) in jobs.iter().zip(&secret_of) {
        let msg = JobMessage {
            batch: batch.clone(),
            seq: 0,
            job: (*job).clone(),
            options: settings.copy.clone(),
            secret: names[*chunk].clone(),
            max_connections_per_source_host: settings.max_connections_per_source_host,
        };
        let body = serde_json::to_string(&msg).map_err(|e| UploadError::Other(e.to_string()))?;
        messages.push(OutMessage { body, delay_seconds: 0 });
    }
    svc.queue.send(&svc.config.jobs_queue_url, messages).await?;
    svc.table.set_batch_state(&batch, "running").await?;
    // The passwords now live only in Secrets Manager.
    svc.objects.delete(bucket, key).await?;
    info!(batch = %batch, mailboxes = jobs.len(), secrets = names.len(), "batch submitted");
    Ok(UploadOutcome::Submitted { batch, mailboxes: jobs.len() })
}

fn invalid_batch(problem: Problem) -> ValidatedBatch {
    ValidatedBatch { format: None, headers: Vec::new(), rows: Vec::new(), problems: vec![problem] }
}

/// Writes the validation report, announces the rejection and deletes the CSV (it holds passwords).
async fn reject(
    svc: &Services,
    bucket: &str,
    key: &str,
    batch: &str,
    validated: ValidatedBatch,
) -> Result<UploadOutcome, UploadError> {
    let json_key = format!("reports/{batch}/validation.json");
    let txt_key = format!("reports/{batch}/validation.txt");
    let json = serde_json::to_vec_pretty(&validated.to_json()).map_err(|e| UploadError::Other(e.to_string()))?;
    svc.objects.put(bucket, &json_key, json, "application/json").await?;
    svc.objects.put(bucket, &txt_key, validated.render_table().into_bytes(), "text/plain; charset=utf-8").await?;
    let errors: Vec<&Problem> = validated.problems.iter().filter(|p| p.severity == Severity::Error).collect();
    let detail = BatchRejected {
        batch: batch.to_string(),
        csv: format!("s3://{bucket}/{key}"),
        errors: errors.len(),
        problems: errors.iter().take(10).map(|p| p.message.clone()).collect(),
        report_json: format!("s3://{bucket}/{json_key}"),
        report_txt: format!("s3://{bucket}/{txt_key}"),
    };
    let value = serde_json::to_value(&detail).map_err(|e| UploadError::Other(e.to_string()))?;
    svc.notifier.event(BATCH_REJECTED, &value).await?;
    let text = format!(
        "mailhaul rejected {key} ({} errors); nothing was copied.\nFix the file and upload it again.\nReport: {}\n\n{}",
        errors.len(),
        detail.report_txt,
        detail.problems.join("\n")
    );
    svc.notifier.notify(&format!("mailhaul: batch {batch} rejected"), &text).await?;
    svc.objects.delete(bucket, key).await?;
    warn!(batch = %batch, errors = errors.len(), "batch rejected");
    Ok(UploadOutcome::Rejected { batch: batch.to_string(), errors: errors.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_overrides_stack_defaults() {
        let defaults: toml::Table =
            toml::from_str("[source]\nhost = \"a.example\"\nport = 993\n[destination]\nhost = \"b.example\"\n")
                .unwrap();
        let s = batch_settings(
            &defaults,
            Some("[source]\nport = 143\nsecurity = \"plain\"\n[copy]\nskip_duplicates = false\n"),
            "x.toml",
        )
        .unwrap();
        assert_eq!(s.source.host.as_deref(), Some("a.example"));
        assert_eq!(s.source.port, Some(143));
        assert!(!s.copy.skip_duplicates);
        assert_eq!(s.destination.host.as_deref(), Some("b.example"));
    }

    #[test]
    fn bad_sidecar_names_the_file() {
        let err = batch_settings(&toml::Table::new(), Some("[source\n"), "incoming/b.toml").unwrap_err();
        assert!(err.contains("incoming/b.toml"), "{err}");
    }

    #[test]
    fn sidecar_name() {
        assert_eq!(sidecar_key("incoming/a b.csv"), "incoming/a b.toml");
    }
}
