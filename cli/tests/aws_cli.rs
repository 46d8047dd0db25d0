//! `mailhaul submit`, `status BATCH --table` and `report BATCH --bucket` against a stack on
//! the moto server: the real binary, the real upload handler and finalize in between.
#![cfg(feature = "aws")]

use std::process::{Command, Output};

use anyhow::{Context, Result};
use mailhaul_aws::config::{Config, NotifyTargets};
use mailhaul_aws::Services;
use mailhaul_tests::moto::Moto;

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");
const BUCKET: &str = "mailhaul-cli";
const TABLE: &str = "mailhaul-cli-table";

/// The CLI, pointed at the moto server through the standard AWS environment.
fn mailhaul(moto: &Moto, args: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("MAILHAUL_BUCKET")
        .env_remove("MAILHAUL_TABLE")
        .env_remove("MAILHAUL_STACK")
        .output()?)
}

/// The SDK's configuration for the moto server.
async fn sdk(moto: &Moto) -> aws_config::SdkConfig {
    mailhaul_aws::config::local_sdk_config(&moto.url).await
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn submit_status_and_report_against_the_stack() -> Result<()> {
    let moto = Moto::start()?;
    let sdk = sdk(&moto).await;
    mailhaul_aws::config::s3_client(&sdk).create_bucket().bucket(BUCKET).send().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let jobs = sqs.create_queue().queue_name("jobs").send().await?.queue_url.context("jobs url")?;
    let finalize = sqs.create_queue().queue_name("finalize").send().await?.queue_url.context("finalize url")?;
    let env = [
        ("MAILHAUL_BUCKET", BUCKET.to_string()),
        ("MAILHAUL_TABLE", TABLE.to_string()),
        ("MAILHAUL_JOBS_QUEUE_URL", jobs),
        ("MAILHAUL_FINALIZE_QUEUE_URL", finalize),
        ("MAILHAUL_SECRET_PREFIX", "mailhaul/cli".to_string()),
    ];
    let config = Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    let svc = Services::aws(&sdk, config, NotifyTargets::default());
    svc.table.create().await?;

    let dir = tempfile::tempdir()?;
    let csv_path = dir.path().join("north.csv");
    let csv = "source_user,source_password,destination_user,destination_password\nalice,Cli-Src-pw-111,alice,Cli-Dst-pw-222\nbob,Cli-Src-pw-333,bob,Cli-Dst-pw-444\n";
    std::fs::write(&csv_path, csv)?;
    let settings = dir.path().join("north.toml");
    std::fs::write(
        &settings,
        "[source]\nhost = \"imap.old.example\"\nport = 993\n[destination]\nhost = \"imap.new.example\"\nport = 993\n",
    )?;

    // submit: the batch id on stdout, the CSV and its sidecar in incoming/.
    let out = mailhaul(
        &moto,
        &[
            "submit",
            csv_path.to_str().context("path")?,
            "--bucket",
            BUCKET,
            "--config",
            settings.to_str().context("path")?,
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let batch = stdout.trim().to_string();
    assert_eq!(batch, mailhaul_aws::messages::batch_id("incoming/north.csv", csv.as_bytes()));
    assert!(stderr.contains("mailhaul status"), "tells what to do next: {stderr}");
    assert!(svc.objects.get(BUCKET, "incoming/north.toml").await?.is_some(), "the sidecar is uploaded");
    assert!(svc.objects.get(BUCKET, "incoming/north.csv").await?.is_some(), "the CSV is uploaded");

    // The stack's upload function takes it from there.
    let outcome = mailhaul_aws::upload::process_object(&svc, BUCKET, "incoming/north.csv", None).await?;
    assert!(
        matches!(&outcome, mailhaul_aws::upload::UploadOutcome::Submitted { batch: b, mailboxes: 2, .. } if *b == batch),
        "{outcome:?}"
    );

    // status: the local run's table, from DynamoDB.
    let out = mailhaul(&moto, &["status", &batch, "--table", TABLE])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("batch {batch}: running (0 done, 0 failed, 2 to go of 2)")), "{stderr}");
    assert!(stderr.contains("alice") && stderr.contains("bob"), "one row per mailbox: {stderr}");
    let out = mailhaul(&moto, &["status", &batch, "--table", TABLE, "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("status --json prints JSON")?;
    assert_eq!(json["batch"], batch.as_str());
    assert_eq!(json.to_string().matches("\"mailbox\":").count(), 2, "{json}");
    let out = mailhaul(&moto, &["status", "no-such-batch", "--table", TABLE])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no batch no-such-batch"), "{}", text(&out).1);

    // report: nothing yet while it runs; then the finalize function's files.
    let reports = dir.path().join("reports");
    let out =
        mailhaul(&moto, &["report", &batch, "--bucket", BUCKET, "--report-dir", reports.to_str().context("path")?])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("still running"), "{}", text(&out).1);
    // The hosts do not exist: end both mailboxes as a copy function would, then finalize.
    for item in svc.table.mailbox_items(&batch).await? {
        let mut record = item.record;
        record.status = mailhaul_common::model::MailboxStatus::Failed;
        record.error = Some("connection refused".into());
        assert!(svc.table.finish_mailbox(&batch, &record, 0, 0).await?);
    }
    mailhaul_aws::finalize::finalize_batch(&svc, &batch).await?.context("finalized")?;
    let out =
        mailhaul(&moto, &["report", &batch, "--bucket", BUCKET, "--report-dir", reports.to_str().context("path")?])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for name in ["report.html", "report.csv", "report.json", "failed.csv"] {
        let object = svc.objects.get(BUCKET, &format!("reports/{batch}/{name}")).await?.context("in S3")?;
        assert_eq!(std::fs::read(reports.join(name))?, object, "{name} downloaded whole: {stderr}");
    }
    assert_eq!(std::fs::read_dir(&reports)?.count(), 4, "the four files and nothing else (no .part left)");
    let report_csv = std::fs::read_to_string(reports.join("report.csv"))?;
    assert!(report_csv.contains("alice") && report_csv.contains("bob"), "{report_csv}");
    let out = mailhaul(&moto, &["status", &batch, "--table", TABLE])?;
    assert!(text(&out).1.contains(": completed ("), "{}", text(&out).1);

    // No password in what the commands print or download.
    let mut seen = String::new();
    for args in
        [vec!["status", batch.as_str(), "--table", TABLE], vec!["status", batch.as_str(), "--table", TABLE, "--json"]]
    {
        let (o, e) = text(&mailhaul(&moto, &args)?);
        seen.push_str(&o);
        seen.push_str(&e);
    }
    for name in ["report.html", "report.csv", "report.json", "failed.csv"] {
        seen.push_str(&std::fs::read_to_string(reports.join(name))?);
    }
    assert!(
        !seen.contains("Cli-Src-pw") && !seen.contains("Cli-Dst-pw"),
        "a password leaked into the CLI's output or reports"
    );

    // Local status still works alongside the AWS form.
    let out = mailhaul(&moto, &["status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--state FILE"), "{}", text(&out).1);
    Ok(())
}

/// `--stack NAME` reads the bucket and table from the stack's outputs (a stack created in
/// moto's CloudFormation with the same output names as infra/template.yaml).
#[tokio::test]
async fn the_stack_name_is_enough() -> Result<()> {
    const STACK_BUCKET: &str = "mailhaul-stack-bucket";
    const STACK_TABLE: &str = "mailhaul-stack-table";
    let moto = Moto::start()?;
    let sdk = sdk(&moto).await;
    let template = serde_json::json!({
        "Resources": { "Bucket": { "Type": "AWS::S3::Bucket", "Properties": { "BucketName": STACK_BUCKET } } },
        "Outputs": {
            "BucketName": { "Value": { "Ref": "Bucket" } },
            "TableName": { "Value": STACK_TABLE }
        }
    });
    aws_sdk_cloudformation::Client::new(&sdk)
        .create_stack()
        .stack_name("mailhaul-test")
        .template_body(template.to_string())
        .send()
        .await?;
    let outputs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/template.yaml"))?;
    for key in ["BucketName:", "TableName:"] {
        assert!(outputs.contains(&format!("\n  {key}")), "the template's outputs still include {key}");
    }
    let config = Config::from_lookup(|k| match k {
        "MAILHAUL_BUCKET" => Some(STACK_BUCKET.into()),
        "MAILHAUL_TABLE" => Some(STACK_TABLE.into()),
        "MAILHAUL_JOBS_QUEUE_URL" | "MAILHAUL_FINALIZE_QUEUE_URL" => Some("unused".into()),
        "MAILHAUL_SECRET_PREFIX" => Some("mailhaul/stack".into()),
        _ => None,
    })?;
    let svc = Services::aws(&sdk, config, NotifyTargets::default());
    svc.table.create().await?;

    let dir = tempfile::tempdir()?;
    let csv_path = dir.path().join("east.csv");
    std::fs::write(
        &csv_path,
        "source_user,source_password,destination_user,destination_password\nann,Stack-pw-1,ann,Stack-pw-2\n",
    )?;
    let out = mailhaul(&moto, &["submit", csv_path.to_str().context("path")?, "--stack", "mailhaul-test"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(svc.objects.get(STACK_BUCKET, "incoming/east.csv").await?.is_some(), "uploaded to the stack's bucket");

    // status and report find the table and the bucket the same way.
    let out = mailhaul(&moto, &["status", "no-such-batch", "--stack", "mailhaul-test"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no batch no-such-batch"), "the stack's table was read: {}", text(&out).1);
    let reports = dir.path().join("reports");
    let out = mailhaul(
        &moto,
        &["report", "no-such-batch", "--stack", "mailhaul-test", "--report-dir", reports.to_str().context("path")?],
    )?;
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out).1.contains("CloudFormation"), "the stack's bucket was read: {}", text(&out).1);

    // A stack that does not exist, or none given: a clear error naming what to give.
    let out = mailhaul(&moto, &["submit", csv_path.to_str().context("path")?, "--stack", "no-such-stack"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("reading stack \"no-such-stack\" from CloudFormation"), "{}", text(&out).1);
    let out = mailhaul(&moto, &["submit", csv_path.to_str().context("path")?])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("give --bucket"), "{}", text(&out).1);
    Ok(())
}

#[tokio::test]
async fn submit_delta_and_stop_act_on_a_batch_s_schedule() -> Result<()> {
    use mailhaul_aws::dynamo::Table;
    use mailhaul_common::ports::BatchMeta;
    let moto = Moto::start()?;
    let table = Table::new(aws_sdk_dynamodb::Client::new(&sdk(&moto).await), TABLE);
    table.create().await?;
    let meta = |id: &str| BatchMeta { id: id.into(), headers: Vec::new(), total: 1, created_at: chrono::Utc::now() };
    let now = chrono::Utc::now().timestamp();
    for batch in ["planned", "plain"] {
        table.create_batch(&meta(batch), "incoming/x.csv").await?;
        table.complete_batch(batch, chrono::Utc::now()).await?;
    }
    table.create_schedule("planned", 86_400, now + 7 * 86_400, now + 86_400).await?;

    // --delta: the next pass is due now, under the id the sweeper will give it.
    let out = mailhaul(&moto, &["submit", "--delta", "planned", "--table", TABLE])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let due = table.schedule("planned").await?.context("schedule")?;
    assert!(due.next_at <= chrono::Utc::now().timestamp(), "{due:?}");
    let id = mailhaul_aws::messages::delta_batch_id("planned", &format!("schedule-{}", due.next_at));
    assert_eq!(stdout.trim(), id);
    assert!(stderr.contains("within 5 minutes"), "{stderr}");

    // --stop ends it; after that neither has anything to act on, and says what to do instead.
    let out = mailhaul(&moto, &["submit", "--stop", "planned", "--table", TABLE])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(table.schedule("planned").await?.context("schedule")?.state, "stopped");
    for (args, batch) in
        [(["--delta", "planned"], "planned"), (["--stop", "planned"], "planned"), (["--delta", "plain"], "plain")]
    {
        let out = mailhaul(&moto, &["submit", args[0], args[1], "--table", TABLE])?;
        let stderr = text(&out).1;
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("batch {batch} has no delta passes scheduled"))
                && stderr.contains("upload its CSV again"),
            "{stderr}"
        );
    }
    let out = mailhaul(&moto, &["submit", "--delta", "nonesuch", "--table", TABLE])?;
    assert!(!out.status.success() && text(&out).1.contains("no batch nonesuch"), "{}", text(&out).1);
    // A CSV or --delta/--stop, not both.
    let out = mailhaul(&moto, &["submit", "x.csv", "--delta", "planned", "--table", TABLE])?;
    assert!(!out.status.success());
    Ok(())
}
