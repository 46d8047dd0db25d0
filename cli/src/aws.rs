//! `mailhaul submit`, and `status` / `report` of a batch running on a deployed stack: thin
//! wrappers around `mailhaul_aws::cli`. Credentials, region and endpoint come from the
//! standard AWS configuration (profile, environment, `AWS_ENDPOINT_URL`).

use std::path::Path;

use anyhow::Context;

use crate::EXIT_DONE;

/// The stack output naming the bucket.
pub const BUCKET: &str = "BucketName";
/// The stack output naming the table.
pub const TABLE: &str = "TableName";

/// `explicit` (`--bucket` / `--table`) when given, else the stack's output `key` read from
/// CloudFormation (`--stack NAME`).
pub async fn stack_output(explicit: Option<String>, stack: Option<String>, key: &str) -> anyhow::Result<String> {
    let flag = if key == BUCKET { "--bucket" } else { "--table" };
    if let Some(value) = explicit {
        return Ok(value);
    }
    let Some(stack) = stack else {
        anyhow::bail!("give {flag} (the stack's {key} output) or --stack NAME (or set MAILHAUL_STACK)");
    };
    let sdk = mailhaul_aws::config::sdk_config().await;
    let described = aws_sdk_cloudformation::Client::new(&sdk)
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_cloudformation::error::DisplayErrorContext(e)))
        .with_context(|| format!("reading stack {stack:?} from CloudFormation"))?;
    let outputs = described.stacks().first().map(|s| s.outputs()).unwrap_or_default();
    outputs
        .iter()
        .find(|o| o.output_key() == Some(key))
        .and_then(|o| o.output_value())
        .map(str::to_string)
        .with_context(|| format!("stack {stack:?} has no {key} output: is it a mailhaul stack? (or give {flag})"))
}

/// Uploads the CSV (and its settings sidecar) to `s3://bucket/incoming/` and prints the batch
/// id on stdout.
pub async fn submit(csv: &Path, bucket: &str, config: Option<&Path>) -> anyhow::Result<u8> {
    let sdk = mailhaul_aws::config::sdk_config().await;
    let name = csv.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = mailhaul_aws::cli::submit(&sdk, bucket, csv, config)
        .await
        .with_context(|| format!("submitting {} to s3://{bucket}/incoming/", csv.display()))?;
    eprintln!("uploaded s3://{bucket}/incoming/{name}; the stack validates it and starts batch {id}");
    eprintln!("follow it with: mailhaul status {id} --stack STACK   (or --table TABLE, the stack's TableName output)");
    println!("{id}");
    Ok(EXIT_DONE)
}

/// `submit --delta BATCH` / `--stop BATCH`: the next scheduled delta pass now, or no more.
pub async fn schedule(batch: &str, table: &str, stop: bool) -> anyhow::Result<u8> {
    use mailhaul_aws::cli::ScheduleRequest;
    let sdk = mailhaul_aws::config::sdk_config().await;
    let request = if stop { ScheduleRequest::Stop } else { ScheduleRequest::DeltaNow };
    let schedule = mailhaul_aws::cli::schedule(&sdk, table, batch, request)
        .await
        .with_context(|| format!("batch {batch} in table {table}"))?;
    let until = chrono::DateTime::from_timestamp(schedule.until, 0).unwrap_or_default().format("%Y-%m-%d %H:%M UTC");
    if stop {
        eprintln!("batch {batch}: delta passes stopped after {} pass(es); within 5 minutes (once no pass runs) its passwords are deleted", schedule.deltas);
    } else {
        // The sweeper names the pass after the slot it fills, which is now this one.
        let delta = mailhaul_aws::messages::delta_batch_id(batch, &format!("schedule-{}", schedule.next_at));
        eprintln!("batch {batch}: a delta pass starts within 5 minutes (once no pass of it runs) as batch {delta}; passes continue until {until}");
        eprintln!("follow it with: mailhaul status {delta} --stack STACK");
        println!("{delta}");
    }
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
    if !status.parts.is_empty() {
        eprintln!("copied in parts, side by side:");
        for part in &status.parts {
            let error = part.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            eprintln!("  {}: {}, {} passes{error}", part.mailbox, part.status.as_str(), part.passes);
        }
    }
    if s.state == "completed" {
        eprintln!("reports: mailhaul report {batch} --stack STACK   (or --bucket BUCKET)");
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
