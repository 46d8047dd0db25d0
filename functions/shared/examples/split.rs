//! Benchmark (issue 8, item 5): one big mailbox through copy functions whose passes are
//! time-boxed (Lambda's 15 minutes, scaled down), copied whole (one chain of passes) and split
//! across functions (its parts side by side), against moto and two Dovecots behind a delay
//! proxy. Prints the seconds of each. Run with bench/split.sh, or
//! `cargo run -p mailhaul-aws --example split -- [MESSAGES_PER_FOLDER] [RTT_MS] [PASS_SECONDS] [FUNCTIONS] [FOLDERS]`
//! (FOLDERS 1: one big folder, split in UID ranges).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use aws_lambda_events::event::sqs::SqsMessage;
use mailhaul_aws::copy::{process_message, JobOutcome};
use mailhaul_aws::upload::{process_object, UploadOutcome};
use mailhaul_aws::Services;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
use mailhaul_tests::proxy::DelayProxy;

mod common;
use common::{BenchStack, BUCKET};

const FOLDERS: [&str; 4] = ["INBOX", "Archive", "Projects", "Receipts"];

#[tokio::main]
async fn main() -> Result<()> {
    let arg = |i: usize, default: u64| -> Result<u64> {
        Ok(std::env::args().nth(i).map(|a| a.parse()).transpose()?.unwrap_or(default))
    };
    let (per_folder, rtt_ms, pass_seconds, functions) = (arg(1, 400)?, arg(2, 50)?, arg(3, 4)?, arg(4, 4)?);
    // 1: one big folder, which the split copies in UID ranges.
    let folders = &FOLDERS[..arg(5, 4)?.clamp(1, 4) as usize];
    let src = Dovecot::start(DovecotOptions::with_users(&[("big", "pw-big-src")]).layout(Layout::None))?;
    let dst = Dovecot::start(
        DovecotOptions::with_users(&[("whole", "pw-whole-dst"), ("split", "pw-split-dst")]).layout(Layout::None),
    )?;
    for folder in folders {
        let messages = mailhaul_tests::corpus::mailbox(&format!("big-{folder}"), per_folder as u32);
        mailhaul_tests::imap::seed(&src, "big", "pw-big-src", folder, &messages).await?;
    }
    // Half the round trip each way.
    let one_way = Duration::from_millis(rtt_ms / 2);
    let src_link = DelayProxy::start(SocketAddr::from(([127, 0, 0, 1], src.imap_port)), one_way)?;
    let dst_link = DelayProxy::start(SocketAddr::from(([127, 0, 0, 1], dst.imap_port)), one_way)?;

    let stack = BenchStack::start(&[
        ("MAILHAUL_SAFETY_MARGIN_SECONDS", "0"),
        ("MAILHAUL_MIN_PASS_SECONDS", "0"),
        ("MAILHAUL_LEASE_GRACE_SECONDS", "1"),
        ("MAILHAUL_BUSY_DELAY_SECONDS", "1"),
        ("MAILHAUL_RETRY_DELAY_SECONDS", "1"),
    ])
    .await?;
    let (svc, sqs, jobs_url, bucket) = (&stack.svc, &stack.sqs, &stack.jobs_url, BUCKET);

    println!(
        "one mailbox of {} messages in {} folders, {rtt_ms} ms RTT, {pass_seconds} s passes, up to {functions} functions",
        per_folder * folders.len() as u64,
        folders.len()
    );
    let mut seconds = Vec::new();
    for (user, split_above) in [("whole", "0"), ("split", "1KB")] {
        let settings = format!(
            "split_mailboxes_above = \"{split_above}\"\nmax_parts_per_mailbox = {functions}\nmax_connections_per_source_host = {}\n\
             [source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n\
             [destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n",
            2 * functions,
            src_link.port,
            dst_link.port
        );
        let csv = format!(
            "source_user,source_password,destination_user,destination_password\nbig,pw-big-src,{user},pw-{user}-dst\n"
        );
        svc.objects.put(bucket, &format!("incoming/{user}.toml"), settings.into_bytes(), "text/plain").await?;
        svc.objects.put(bucket, &format!("incoming/{user}.csv"), csv.into_bytes(), "text/csv").await?;
        let started = Instant::now();
        let UploadOutcome::Submitted { batch, .. } =
            process_object(svc, bucket, &format!("incoming/{user}.csv"), None).await?
        else {
            anyhow::bail!("{user}: not submitted")
        };
        let (passes, parts) = run_functions(svc, sqs, jobs_url, functions as usize, pass_seconds).await?;
        ensure!(
            mailhaul_aws::finalize::finalize_batch(svc, &batch).await?.is_some(),
            "{user}: the batch did not complete"
        );
        let elapsed = started.elapsed().as_secs_f64();
        let state = svc.table.batch_state(&batch).await?.context("batch")?;
        ensure!(state.done == 1, "{user}: the mailbox did not finish done: {state:?}");
        ensure!(state.messages_copied == per_folder * folders.len() as u64, "{user}: {state:?}");
        for folder in folders {
            let mut session = mailhaul_tests::imap::login(&dst, user, &format!("pw-{user}-dst")).await?;
            let status = session.status(folder, "(MESSAGES)").await?;
            ensure!(u64::from(status.exists) == per_folder, "{user} {folder}: {} messages", status.exists);
        }
        println!("{user:>5}: {elapsed:6.1} s, {passes} passes, {parts} parts side by side");
        seconds.push(elapsed);
    }
    println!("split / whole: {:.2}x faster", seconds[0] / seconds[1]);
    Ok(())
}

/// Acts as Lambda with up to `functions` copy invocations at once, each a pass of
/// `pass_seconds`, until the jobs queue stays empty. Returns (passes run, most parts seen).
async fn run_functions(
    svc: &Services,
    sqs: &aws_sdk_sqs::Client,
    jobs_url: &str,
    functions: usize,
    pass_seconds: u64,
) -> Result<(usize, usize)> {
    let mut running = tokio::task::JoinSet::new();
    let (mut passes, mut parts) = (0, 0);
    let mut idle_since = Instant::now();
    loop {
        let room = functions - running.len();
        let received = if room > 0 {
            sqs.receive_message()
                .queue_url(jobs_url)
                .max_number_of_messages(room.min(10) as i32)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await?
                .messages
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for m in received {
            let mut message = SqsMessage::default();
            message.message_id = m.message_id;
            message.receipt_handle = m.receipt_handle;
            message.body = m.body;
            message.attributes =
                m.attributes.unwrap_or_default().into_iter().map(|(k, v)| (k.as_str().to_string(), v)).collect();
            let (svc, sqs, url) = (svc.clone(), sqs.clone(), jobs_url.to_string());
            running.spawn(async move {
                let deadline = SystemTime::now() + Duration::from_secs(pass_seconds);
                let outcome = process_message(&svc, &message, deadline).await;
                let handle = message.receipt_handle.clone().unwrap_or_default();
                match &outcome {
                    Ok(_) => sqs.delete_message().queue_url(&url).receipt_handle(handle).send().await.map(|_| ())?,
                    // As the queue's redelivery, sooner.
                    Err(_) => sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .visibility_timeout(1)
                        .send()
                        .await
                        .map(|_| ())?,
                }
                anyhow::Ok(outcome.ok())
            });
        }
        if running.is_empty() {
            // A requeued job may still be delayed: wait a little before calling it done.
            if idle_since.elapsed() > Duration::from_secs(3) {
                return Ok((passes, parts));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Back to the queue now and then: what a split queued must start while others run.
        tokio::select! {
            Some(done) = running.join_next() => {
                idle_since = Instant::now();
                match done?? {
                    Some(JobOutcome::Split { parts: n }) => parts = parts.max(n),
                    Some(JobOutcome::Continued | JobOutcome::Done) => passes += 1,
                    _ => {}
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
