//! The upload function: an S3 CSV → validated batch → passwords in Secrets Manager → one
//! SQS job per mailbox; or, for a bad file, a validation report and a `BatchRejected` event.

use aws_lambda_events::event::s3::S3Event;
use chrono::Utc;
use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use lambda_runtime::LambdaEvent;
use mailhaul_common::batch::{validate_batch, Problem, Severity, ValidatedBatch};
use mailhaul_common::model::MailboxJob;
use mailhaul_common::ports::{BatchMeta, MailboxRecord};
use mailhaul_common::settings::Settings;
use mailhaul_common::Secret;
use tracing::{info, warn};

use crate::config::Services;
use crate::dynamo::Claim;
use crate::messages::{
    batch_id, decode_s3_key, delta_batch_id, BatchRejected, JobMessage, SecretChunk, StoredPasswords, BATCH_REJECTED,
};
use crate::ports::OutMessage;

/// Bytes of JSON per secret chunk: under Secrets Manager's 64 KB limit with room to spare.
pub const SECRET_CHUNK_BYTES: usize = 60_000;

/// DynamoDB writes one upload keeps in flight: enough to hide each call's latency, few enough
/// to stay under a new on-demand table's initial write throughput.
const TABLE_WRITES_IN_FLIGHT: usize = 32;

/// What became of one uploaded object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Jobs are queued for `mailboxes` rows; `refused` rows (their mailbox is in another
    /// running batch) are failed in this batch with the reason.
    Submitted { batch: String, mailboxes: usize, refused: usize },
    /// The file (or its settings) is invalid.
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
        // Tells two uploads of the same file apart (a retried invocation keeps it).
        let upload = record.s3.object.sequencer.clone().unwrap_or_else(|| record.event_time.to_rfc3339());
        let outcome =
            process_object(svc, &bucket, &key, Some(&upload)).await.map_err(|e| format!("s3://{bucket}/{key}: {e}"))?;
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

/// Sub-prefix (under the stack's secret prefix) of the secrets a batch may name as an admin
/// password. Batch password chunks live at `<prefix>/<batch>/<n>`, never under it, so a sidecar
/// cannot point a login at another batch's passwords.
pub const ADMIN_SECRETS: &str = "admin";

/// The batch settings: the stack's defaults, overridden by the optional sidecar TOML.
///
/// The sidecar is written by whoever uploads, so it may not reach into the function's
/// environment (`admin_password_env`: it would send e.g. AWS_SESSION_TOKEN as a password to a
/// host the uploader chooses), and may name only admin secrets under
/// `<secret_prefix>/admin/`. Errors give line and column, never the text of a line.
pub fn batch_settings(
    defaults: &toml::Table,
    sidecar: Option<&str>,
    sidecar_name: &str,
    secret_prefix: &str,
) -> Result<Settings, String> {
    let mut table = defaults.clone();
    if let Some(text) = sidecar {
        let over: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(", line {line}, column {column}")
            });
            format!("settings file {sidecar_name}{}: {}", at.unwrap_or_default(), e.message().trim())
        })?;
        for side in ["source", "destination"] {
            if over.get(side).and_then(|t| t.get("admin_password_env")).is_some() {
                return Err(format!(
                    "settings file {sidecar_name}: [{side}] admin_password_env is not available on AWS: store the admin password as a secret named {secret_prefix}/{ADMIN_SECRETS}/NAME in Secrets Manager and set admin_password_secret to that name"
                ));
            }
        }
        merge(&mut table, over);
    }
    let text = toml::to_string(&table).map_err(|e| format!("settings: {e}"))?;
    let settings =
        Settings::from_toml_str(&text).map_err(|e| format!("{e} (in the stack defaults or {sidecar_name})"))?;
    let allowed = format!("{secret_prefix}/{ADMIN_SECRETS}/");
    for (side, s) in [("source", &settings.source), ("destination", &settings.destination)] {
        if s.admin_password_env.is_some() {
            return Err(format!("[{side}] admin_password_env is not available on AWS: use admin_password_secret"));
        }
        if let Some(name) = s.admin_password_secret.as_deref() {
            let rest = name.strip_prefix(&allowed).unwrap_or("");
            let ok = !rest.is_empty()
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
                && !rest.split('/').any(|part| part.is_empty() || part == "." || part == "..");
            if !ok {
                // Not echoed: a password may have been pasted here by mistake.
                return Err(format!(
                    "[{side}] admin_password_secret must be the name of a secret under {allowed} (letters, digits and /_+=.@-): the stack's functions may read no other secret"
                ));
            }
        }
    }
    Ok(settings)
}

async fn batch_state_name(svc: &Services, batch: &str) -> Result<String, UploadError> {
    Ok(svc.table.batch_state(batch).await?.map(|s| s.state).unwrap_or_default())
}

fn file_problem(message: String) -> Problem {
    Problem { row: None, column: None, severity: Severity::Error, message, settings_rows: None }
}

/// Validates and submits one uploaded CSV. `upload` identifies this upload of the object (the
/// S3 event's sequencer): the same file uploaded again after its batch completed is a delta
/// pass, a new batch `<batch>-delta-<digest of upload>` that copies only what is new.
pub async fn process_object(
    svc: &Services,
    bucket: &str,
    key: &str,
    upload: Option<&str>,
) -> Result<UploadOutcome, UploadError> {
    if !key.starts_with("incoming/") || !key.to_ascii_lowercase().ends_with(".csv") {
        return Ok(UploadOutcome::Ignored { key: key.into(), why: "not a .csv under incoming/".into() });
    }
    let Some(bytes) = svc.objects.get(bucket, key).await? else {
        // Deleted after a successful submit: this is a redelivered event.
        return Ok(UploadOutcome::Ignored { key: key.into(), why: "object is gone (already processed)".into() });
    };
    let mut batch = batch_id(key, &bytes);
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
    let settings =
        match batch_settings(&svc.config.defaults, sidecar_text.as_deref(), &sidecar_name, &svc.config.secret_prefix) {
            Ok(s) => s,
            Err(message) => return reject(svc, bucket, key, &batch, invalid_batch(file_problem(message))).await,
        };
    let validated = validate_batch(&bytes, &settings);
    if !validated.is_valid() {
        return reject(svc, bucket, key, &batch, validated).await;
    }
    let jobs: Vec<&MailboxJob> = validated.valid_jobs();
    let mut meta =
        BatchMeta { id: batch.clone(), headers: validated.headers.clone(), total: jobs.len(), created_at: Utc::now() };
    let mut created = svc.table.create_batch(&meta, key).await?;
    let mut state = if created { String::new() } else { batch_state_name(svc, &batch).await? };
    if state == "completed" {
        // The same file again after its batch ended: a delta pass of its rows.
        let upload = upload.map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let delta = delta_batch_id(&batch, &upload);
        let first = std::mem::replace(&mut batch, delta);
        meta.id = batch.clone();
        created = svc.table.create_delta_batch(&meta, key, Some(&first)).await?;
        state = if created { String::new() } else { batch_state_name(svc, &batch).await? };
        info!(batch = %batch, delta_of = %first, "the file of a completed batch again: delta pass");
    }
    // "submitting": an earlier try died half-way; "rejected": a conflicting batch may be over.
    if !created && state != "submitting" && state != "rejected" {
        svc.objects.delete(bucket, &sidecar_name).await?;
        svc.objects.delete(bucket, key).await?;
        return Ok(UploadOutcome::AlreadySubmitted { batch });
    }

    let refused = claim_all(svc, &batch, jobs.iter().map(|j| j.mailbox.as_str())).await?;
    let runnable: Vec<&MailboxJob> = jobs.iter().copied().filter(|j| !refused.contains_key(&j.mailbox)).collect();

    // Passwords: chunked into secrets (one per row would cost $0.40 a month each).
    let mut chunks: Vec<SecretChunk> = vec![SecretChunk::new()];
    let mut size = 2;
    let mut secret_of = std::collections::BTreeMap::new();
    for job in &runnable {
        // An OAuth2 side's credential is not copied here: the copy function reads it from
        // where the settings name it (aws_secret).
        let password = |login: &mailhaul_common::model::Login| match login.oauth2 {
            Some(_) => String::new(),
            None => login.password.expose().to_string(),
        };
        let entry =
            StoredPasswords { source: password(&job.source.login), destination: password(&job.destination.login) };
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
        secret_of.insert(job.mailbox.clone(), chunks.len() - 1);
    }
    let names: Vec<String> = (0..chunks.len()).map(|i| format!("{}/{batch}/{i}", svc.config.secret_prefix)).collect();
    // Names first, so finalize deletes them even if this upload dies half-way.
    svc.table.set_secrets(&batch, &names).await?;
    for (name, chunk) in names.iter().zip(&chunks) {
        let value = Secret::new(serde_json::to_string(chunk).map_err(|e| UploadError::Other(e.to_string()))?);
        svc.secrets.put(name, &value).await?;
    }
    if let Some(schedule) = settings.schedule {
        // Delta passes until the cut-over: the sweeper starts them, and finalize leaves the
        // passwords to the schedule, which deletes them when it ends (before any job runs).
        let every = schedule.every.as_secs() as i64;
        let next_at = Utc::now().timestamp() + every;
        svc.table.create_schedule(&batch, every, schedule.until.timestamp(), next_at).await?;
        info!(batch = %batch, every, until = %schedule.until, "delta passes scheduled");
    }

    let mut messages = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let msg = JobMessage {
            batch: batch.clone(),
            seq: 0,
            job: (*job).clone(),
            options: settings.copy.clone(),
            // A refused row's job is stored, never sent: it has no secret.
            secret: secret_of.get(&job.mailbox).map(|i| names[*i].clone()).unwrap_or_default(),
            max_connections_per_source_host: settings.max_connections_per_source_host,
            source_admin_secret: settings.source.admin_password_secret.clone(),
            destination_admin_secret: settings.destination.admin_password_secret.clone(),
            split: settings.split,
            part: None,
        };
        let body = serde_json::to_string(&msg).map_err(|e| UploadError::Other(e.to_string()))?;
        messages.push(OutMessage { body, delay_seconds: 0 });
    }
    let rows = validated
        .rows
        .iter()
        .filter(|r| r.job.is_some())
        .zip(messages)
        .map(|(row, message)| QueuedRow {
            record: MailboxRecord::pending(&row.mailbox, row.row, &row.source_user, row.cells.clone()),
            message,
        })
        .collect();
    queue_rows(svc, &batch, rows, &refused).await?;
    // The passwords now live only in Secrets Manager; the settings are in the job messages.
    svc.objects.delete(bucket, &sidecar_name).await?;
    svc.objects.delete(bucket, key).await?;
    info!(batch = %batch, mailboxes = runnable.len(), refused = refused.len(), secrets = names.len(), "batch submitted");
    Ok(UploadOutcome::Submitted { batch, mailboxes: runnable.len(), refused: refused.len() })
}

/// Claims every mailbox for `batch`: the ones another running batch holds, with its id.
/// A mailbox another batch is running is refused, by row: the others go ahead. Claims are
/// conditional writes (no BatchWriteItem), so they go out concurrently: 50,000 rows in
/// seconds, not minutes.
pub(crate) async fn claim_all<'a>(
    svc: &Services,
    batch: &str,
    mailboxes: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, UploadError> {
    let claims: Vec<(String, Claim)> = stream::iter(mailboxes)
        .map(|mailbox| async move {
            let claim = svc.table.claim_mailbox(mailbox, batch).await?;
            Ok::<_, UploadError>((mailbox.to_string(), claim))
        })
        .buffer_unordered(TABLE_WRITES_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(claims
        .into_iter()
        .filter_map(|(mailbox, claim)| match claim {
            Claim::HeldBy(other) => Some((mailbox, other)),
            Claim::Ours => None,
        })
        .collect())
}

/// A row to queue: its record (no passwords) and its job message.
pub(crate) struct QueuedRow {
    pub record: MailboxRecord,
    pub message: OutMessage,
}

/// Records every row, fails the `refused` ones with the reason, queues the others' jobs and
/// marks the batch running (finalized at once when nothing runs).
pub(crate) async fn queue_rows(
    svc: &Services,
    batch: &str,
    rows: Vec<QueuedRow>,
    refused: &BTreeMap<String, String>,
) -> Result<(), UploadError> {
    // Records before messages: a job never arrives for a mailbox the table does not know.
    let to_send: Vec<Option<OutMessage>> = stream::iter(rows)
        .map(|QueuedRow { mut record, message }| async move {
            svc.table.create_mailbox(batch, &record, &message.body).await?;
            let Some(other) = refused.get(&record.mailbox) else { return Ok(Some(message)) };
            record.status = mailhaul_common::model::MailboxStatus::Failed;
            record.error = Some(format!(
                "not started: mailbox {} is being migrated by batch {other}, which is still running",
                record.mailbox
            ));
            record.hint = Some(format!("upload this row again when batch {other} is complete"));
            record.finished_at = Some(Utc::now());
            svc.table.finish_mailbox(batch, &record, 0, 0).await?;
            Ok::<_, UploadError>(None)
        })
        .buffer_unordered(TABLE_WRITES_IN_FLIGHT)
        .try_collect()
        .await?;
    let to_send: Vec<OutMessage> = to_send.into_iter().flatten().collect();
    svc.table.watch_batch(batch).await?;
    svc.queue.send(&svc.config.jobs_queue_url, to_send).await?;
    svc.table.set_batch_state(batch, "running").await?;
    // Every row refused: nothing will finish it, so it is finalized now.
    crate::copy::maybe_finalize(svc, batch).await.map_err(|e| UploadError::Other(e.to_string()))?;
    Ok(())
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
    svc.objects.delete(bucket, &sidecar_key(key)).await?;
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
            "mailhaul/s",
        )
        .unwrap();
        assert_eq!(s.source.host.as_deref(), Some("a.example"));
        assert_eq!(s.source.port, Some(143));
        assert!(!s.copy.skip_duplicates);
        assert_eq!(s.destination.host.as_deref(), Some("b.example"));
    }

    #[test]
    fn bad_sidecar_names_the_file_line_and_column_but_never_the_line() {
        let text = "[copy]\nbatch_messages = 5\n[destination\nadmin_user = \"Hunter2-pw\"\n";
        let err = batch_settings(&toml::Table::new(), Some(text), "incoming/b.toml", "mailhaul/s").unwrap_err();
        assert!(err.contains("incoming/b.toml, line 3, column"), "{err}");
        let text = "[source]\nhost = \"x\"\nport = Hunter2-pw\n";
        let err = batch_settings(&toml::Table::new(), Some(text), "incoming/b.toml", "mailhaul/s").unwrap_err();
        assert!(err.contains("line 3, column 8") && !err.contains("Hunter2"), "{err}");
    }

    #[test]
    fn a_sidecar_cannot_read_the_functions_environment_or_other_secrets() {
        let env =
            "[destination]\nadmin_user = \"a\"\nmaster_separator = \"*\"\nadmin_password_env = \"AWS_SESSION_TOKEN\"\n";
        let err = batch_settings(&toml::Table::new(), Some(env), "b.toml", "mailhaul/s").unwrap_err();
        assert!(
            err.contains("admin_password_env is not available on AWS") && err.contains("mailhaul/s/admin/"),
            "{err}"
        );
        for name in [
            "mailhaul/s/sales-0123456789/0",
            "mailhaul/s/admin/",
            "mailhaul/s/admin/../sales-0123456789/0",
            "other/admin/x",
            "mailhaul/s/adminx",
            "Hunter2 pw",
        ] {
            let text = format!(
                "[destination]\nadmin_user = \"a\"\nmaster_separator = \"*\"\nadmin_password_secret = \"{name}\"\n"
            );
            let err = batch_settings(&toml::Table::new(), Some(&text), "b.toml", "mailhaul/s").unwrap_err();
            assert!(err.contains("under mailhaul/s/admin/"), "{name}: {err}");
            // Never echoed: it may be a password pasted in the wrong place.
            assert!(!err.contains("sales-") && !err.contains("other/") && !err.contains("Hunter2"), "{err}");
        }
        let ok = "[destination]\nadmin_user = \"a\"\nmaster_separator = \"*\"\nadmin_password_secret = \"mailhaul/s/admin/dst\"\n";
        let s = batch_settings(&toml::Table::new(), Some(ok), "b.toml", "mailhaul/s").unwrap();
        assert_eq!(s.destination.admin_password_secret.as_deref(), Some("mailhaul/s/admin/dst"));
    }

    #[test]
    fn sidecar_name() {
        assert_eq!(sidecar_key("incoming/a b.csv"), "incoming/a b.toml");
    }
}
