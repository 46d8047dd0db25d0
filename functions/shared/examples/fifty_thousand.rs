//! Benchmark (issue 8, item 4): the upload and finalize functions on a batch of 50,000 rows,
//! against moto. Prints how long each took. Run with bench/fifty_thousand.sh, or
//! `cargo run -p mailhaul-aws --example fifty_thousand -- [ROWS]`.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use mailhaul_aws::upload::{process_object, UploadOutcome};
use mailhaul_common::model::MailboxStatus;

mod common;
use common::{BenchStack, BUCKET};

#[tokio::main]
async fn main() -> Result<()> {
    let rows: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(50_000);
    let BenchStack { sdk, svc, sqs, jobs_url, .. } = &BenchStack::start(&[]).await?;
    let bucket = BUCKET;

    let mut csv = String::from("source_user,source_password,destination_user,destination_password\n");
    for i in 0..rows {
        csv.push_str(&format!("user{i}@old.example,Src-pw-{i:06},user{i}@new.example,Dst-pw-{i:06}\n"));
    }
    let settings = "[source]\nhost = \"imap.old.example\"\n[destination]\nhost = \"imap.new.example\"\n";
    svc.objects.put(bucket, "incoming/big.toml", settings.as_bytes().to_vec(), "text/plain").await?;
    svc.objects.put(bucket, "incoming/big.csv", csv.into_bytes(), "text/csv").await?;

    let started = Instant::now();
    let outcome = process_object(svc, bucket, "incoming/big.csv", None).await?;
    let upload_seconds = started.elapsed().as_secs_f64();
    let UploadOutcome::Submitted { batch, mailboxes, .. } = outcome else {
        anyhow::bail!("not submitted: {outcome:?}")
    };
    ensure!(mailboxes == rows, "{mailboxes} of {rows} rows submitted");
    let queued = sqs
        .get_queue_attributes()
        .queue_url(jobs_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?
        .attributes
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages).cloned())
        .unwrap_or_default();
    ensure!(queued == rows.to_string(), "{queued} jobs queued for {rows} rows");

    // Every mailbox ends as copy functions would end them (not timed). Not through
    // finish_mailbox: moto deep-copies every table on each TransactWriteItems (minutes and
    // gigabytes at this size), so the records are saved, then the batch's counters set once.
    let marking = Instant::now();
    let store = svc.table.batch_store(&batch);
    let items = svc.table.mailbox_items(&batch).await?;
    stream::iter(items)
        .map(|item| {
            let store = &store;
            async move {
                let mut record = item.record;
                record.status = MailboxStatus::Done;
                record.passes = 1;
                mailhaul_common::ports::BatchStore::put_mailbox(store, &record).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let number = |v: usize| aws_sdk_dynamodb::types::AttributeValue::N(v.to_string());
    aws_sdk_dynamodb::Client::new(sdk)
        .update_item()
        .table_name("mailhaul")
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("BATCH#{batch}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("META".into()))
        .update_expression("ADD done :n, messages_copied :m, bytes_copied :b")
        .expression_attribute_values(":n", number(rows))
        .expression_attribute_values(":m", number(rows * 10))
        .expression_attribute_values(":b", number(rows * 10_000))
        .send()
        .await?;
    eprintln!("({rows} mailboxes marked done in {:.1} s)", marking.elapsed().as_secs_f64());

    // The finalize function's own peak memory: the process's peak is reset first (Linux).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let completed = mailhaul_aws::finalize::finalize_batch(svc, &batch).await?.context("batch not finalized")?;
    let finalize_seconds = started.elapsed().as_secs_f64();
    let peak_mb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or_else(|| "unknown".to_string(), |kb| format!("{} MB", kb / 1024));
    ensure!(completed.done == rows as u64, "{} of {rows} mailboxes done in the report", completed.done);
    let report = svc.objects.get(bucket, &format!("reports/{batch}/report.csv")).await?.context("report.csv")?;
    let lines = report.iter().filter(|b| **b == b'\n').count();
    ensure!(lines == rows + 1, "report.csv has {lines} lines for {rows} rows");

    println!("rows                    {rows}");
    println!("upload (validate, secrets, {rows} records, {rows} jobs)   {upload_seconds:.1} s");
    println!("finalize (report of {rows} mailboxes, {} KB)   {finalize_seconds:.1} s", report.len() / 1024);
    println!("peak memory of the process during finalize (upload's data still held)   {peak_mb}");
    Ok(())
}
