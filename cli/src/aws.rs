//! `mailhaul submit`, and `status` / `report` of a batch running on a deployed stack: thin
//! wrappers around `mailhaul_aws::cli`. Credentials, region and endpoint come from the
//! standard AWS configuration (profile, environment, `AWS_ENDPOINT_URL`).

use std::path::Path;

use anyhow::Context;

use crate::EXIT_DONE;

/// Uploads the CSV (and its settings sidecar) to `s3://bucket/incoming/` and prints the batch
/// id on stdout.
pub async fn submit(csv: &Path, bucket: &str, config: Option<&Path>) -> anyhow::Result<u8> {
    let sdk = mailhaul_aws::config::sdk_config().await;
    let name = csv.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = mailhaul_aws::cli::submit(&sdk, bucket, csv, config)
        .await
        .with_context(|| format!("submitting {} to s3://{bucket}/incoming/", csv.display()))?;
    eprintln!("uploaded s3://{bucket}/incoming/{name}; the stack validates it and starts batch {id}");
    eprintln!("follow it with: mailhaul status {id} --table TABLE   (the stack's TableName output)");
    println!("{id}");
    Ok(EXIT_DONE)
}

/// Prints a batch's progress from the stack's table, with the same table as a local run.
pub async fn status(batch: &str, table: &str, json: bool) -> anyhow::Result<u8> {
    let sdk = mailhaul_aws::config::sdk_config().await;
    let status = mailhaul_aws::cli::status(&sdk, table, batch)
        .await
        .with_context(|| format!("reading batch {batch} from table {table}"))?;
    let report = mailhaul_aws::cli::live_report(&sdk, table, batch)
        .await
        .with_context(|| format!("reading batch {batch} from table {table}"))?;
    if json {
        println!("{}", String::from_utf8_lossy(&report.to_json()));
        return Ok(EXIT_DONE);
    }
    let s = &status.state;
    let pending = s.total.saturating_sub(s.done + s.failed);
    eprintln!("batch {batch}: {} ({} done, {} failed, {pending} to go of {})", s.state, s.done, s.failed, s.total);
    eprint!("{}", report.summary_table());
    if s.state == "completed" {
        eprintln!("reports: mailhaul report {batch} --bucket BUCKET");
    }
    Ok(EXIT_DONE)
}

/// Downloads `reports/<batch>/` from the stack's bucket into `dir`.
pub async fn report(batch: &str, bucket: &str, dir: &Path) -> anyhow::Result<u8> {
    let sdk = mailhaul_aws::config::sdk_config().await;
    let written = mailhaul_aws::cli::download_report(&sdk, bucket, batch, dir)
        .await
        .with_context(|| format!("downloading s3://{bucket}/reports/{batch}/"))?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(EXIT_DONE)
}
