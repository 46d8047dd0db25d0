//! `mailhaul submit`, `status BATCH --table` and `report BATCH --bucket` against a stack on
//! the moto server: the real binary, the real upload handler and finalize in between.
#![cfg(feature = "aws")]

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mailhaul_aws::config::{Config, NotifyTargets};
use mailhaul_aws::Services;

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");
const BUCKET: &str = "mailhaul-cli";
const TABLE: &str = "mailhaul-cli-table";

/// A moto server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("moto_server not found: pip install \"moto[server]\"")?;
        let mut moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("moto_server did not listen on {port} within 30 s");
            }
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// The CLI, pointed at this moto server through the standard AWS environment.
    fn mailhaul(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(BIN)
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("MAILHAUL_BUCKET")
            .env_remove("MAILHAUL_TABLE")
            .output()?)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn submit_status_and_report_against_the_stack() -> Result<()> {
    let moto = Moto::start()?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto.url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
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
    let out = moto.mailhaul(&[
        "submit",
        csv_path.to_str().context("path")?,
        "--bucket",
        BUCKET,
        "--config",
        settings.to_str().context("path")?,
    ])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let batch = stdout.trim().to_string();
    assert_eq!(batch, mailhaul_aws::messages::batch_id("incoming/north.csv", csv.as_bytes()));
    assert!(stderr.contains("mailhaul status"), "tells what to do next: {stderr}");
    assert!(svc.objects.get(BUCKET, "incoming/north.toml").await?.is_some(), "the sidecar is uploaded");
    assert!(svc.objects.get(BUCKET, "incoming/north.csv").await?.is_some(), "the CSV is uploaded");

    // The stack's upload function takes it from there.
    let outcome = mailhaul_aws::upload::process_object(&svc, BUCKET, "incoming/north.csv").await?;
    assert!(
        matches!(&outcome, mailhaul_aws::upload::UploadOutcome::Submitted { batch: b, mailboxes: 2 } if *b == batch),
        "{outcome:?}"
    );

    // status: the local run's table, from DynamoDB.
    let out = moto.mailhaul(&["status", &batch, "--table", TABLE])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("batch {batch}: running (0 done, 0 failed, 2 to go of 2)")), "{stderr}");
    assert!(stderr.contains("alice") && stderr.contains("bob"), "one row per mailbox: {stderr}");
    let out = moto.mailhaul(&["status", &batch, "--table", TABLE, "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("status --json prints JSON")?;
    assert_eq!(json["batch"], batch.as_str());
    assert_eq!(json.to_string().matches("\"mailbox\":").count(), 2, "{json}");
    let out = moto.mailhaul(&["status", "no-such-batch", "--table", TABLE])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no batch no-such-batch"), "{}", text(&out).1);

    // report: nothing yet while it runs; then the finalize function's files.
    let reports = dir.path().join("reports");
    let out =
        moto.mailhaul(&["report", &batch, "--bucket", BUCKET, "--report-dir", reports.to_str().context("path")?])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("still running"), "{}", text(&out).1);
    mailhaul_aws::finalize::finalize_batch(&svc, &batch).await?.context("finalized")?;
    let out =
        moto.mailhaul(&["report", &batch, "--bucket", BUCKET, "--report-dir", reports.to_str().context("path")?])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for name in ["report.csv", "report.json", "failed.csv"] {
        assert!(reports.join(name).exists(), "{name} downloaded: {stderr}");
    }
    let report_csv = std::fs::read_to_string(reports.join("report.csv"))?;
    assert!(report_csv.contains("alice") && report_csv.contains("bob"), "{report_csv}");
    let out = moto.mailhaul(&["status", &batch, "--table", TABLE])?;
    assert!(text(&out).1.contains(": completed ("), "{}", text(&out).1);

    // No password in what the commands print or download.
    let mut seen = String::new();
    for args in
        [vec!["status", batch.as_str(), "--table", TABLE], vec!["status", batch.as_str(), "--table", TABLE, "--json"]]
    {
        let (o, e) = text(&moto.mailhaul(&args)?);
        seen.push_str(&o);
        seen.push_str(&e);
    }
    for name in ["report.csv", "report.json", "failed.csv"] {
        seen.push_str(&std::fs::read_to_string(reports.join(name))?);
    }
    assert!(
        !seen.contains("Cli-Src-pw") && !seen.contains("Cli-Dst-pw"),
        "a password leaked into the CLI's output or reports"
    );

    // Local status still works alongside the AWS form.
    let out = moto.mailhaul(&["status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--state FILE"), "{}", text(&out).1);
    Ok(())
}
