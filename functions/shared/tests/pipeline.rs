//! The serverless pipeline end to end: the real upload, copy and finalize handlers on the
//! moto server (S3, SQS, DynamoDB, Secrets Manager, EventBridge, SNS) and two real Dovecots.
//! moto cannot run Lambdas, so the test is the Lambda service: it takes real S3 event and SQS
//! messages from moto's queues and calls the handlers with `LambdaEvent`s.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_runtime::{Context, LambdaEvent};
use mailhaul_aws::config::{Config, NotifyTargets};
use mailhaul_aws::messages::JobMessage;
use mailhaul_aws::Services;
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions};
use mailhaul_tests::imap::{dump, seed};
use mailhaul_tests::moto::Moto;

/// A buffer that collects every log line the handlers write.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything a scenario needs: moto with the stack's resources, the services, the queues.
struct Stack {
    _moto: Moto,
    sdk: aws_config::SdkConfig,
    svc: Services,
    bucket: String,
    s3_events_url: String,
    events_url: String,
    /// Every SQS body the test saw (job and finalize messages), to check for passwords.
    bodies: Vec<String>,
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<(String, String)> {
    let url = sqs.create_queue().queue_name(name).send().await?.queue_url.context("queue url")?;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?;
    let arn = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .context("queue arn")?;
    Ok((url, arn))
}

impl Stack {
    async fn start() -> Result<Stack> {
        let moto = Moto::start()?;
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&moto.url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "static"))
            .load()
            .await;
        let bucket = "mailhaul-test".to_string();
        let s3 = mailhaul_aws::config::s3_client(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        s3.create_bucket().bucket(&bucket).send().await?;
        let (jobs_url, _) = queue(&sqs, "jobs").await?;
        let (finalize_url, _) = queue(&sqs, "finalize").await?;
        let (s3_events_url, s3_events_arn) = queue(&sqs, "s3-events").await?;
        let (events_url, events_arn) = queue(&sqs, "bus-events").await?;
        // S3 → SQS notification for incoming/*.csv, as the stack wires S3 → the upload Lambda.
        use aws_sdk_s3::types::{
            Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
            QueueConfiguration, S3KeyFilter,
        };
        let filter = NotificationConfigurationFilter::builder()
            .key(
                S3KeyFilter::builder()
                    .filter_rules(FilterRule::builder().name(FilterRuleName::Prefix).value("incoming/").build())
                    .filter_rules(FilterRule::builder().name(FilterRuleName::Suffix).value(".csv").build())
                    .build(),
            )
            .build();
        s3.put_bucket_notification_configuration()
            .bucket(&bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(
                        QueueConfiguration::builder()
                            .queue_arn(&s3_events_arn)
                            .events(Event::S3ObjectCreated)
                            .filter(filter)
                            .build()?,
                    )
                    .build(),
            )
            .send()
            .await?;
        // The event bus, and a rule delivering every mailhaul event to a test queue.
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        events.create_event_bus().name("mailhaul-events").send().await?;
        events
            .put_rule()
            .name("all-mailhaul")
            .event_bus_name("mailhaul-events")
            .event_pattern(r#"{"source":["mailhaul"]}"#)
            .send()
            .await?;
        events
            .put_targets()
            .rule("all-mailhaul")
            .event_bus_name("mailhaul-events")
            .targets(aws_sdk_eventbridge::types::Target::builder().id("q").arn(&events_arn).build()?)
            .send()
            .await?;
        let topic = aws_sdk_sns::Client::new(&sdk).create_topic().name("mailhaul").send().await?.topic_arn;
        let env: HashMap<&str, String> = HashMap::from([
            ("MAILHAUL_BUCKET", bucket.clone()),
            ("MAILHAUL_TABLE", "mailhaul".into()),
            ("MAILHAUL_JOBS_QUEUE_URL", jobs_url),
            ("MAILHAUL_FINALIZE_QUEUE_URL", finalize_url),
            ("MAILHAUL_SECRET_PREFIX", "mailhaul/test".into()),
            ("MAILHAUL_SAFETY_MARGIN_SECONDS", "0".into()),
            ("MAILHAUL_BUSY_DELAY_SECONDS", "1".into()),
            ("MAILHAUL_RETRY_DELAY_SECONDS", "1".into()),
            ("MAILHAUL_THROTTLE_DELAY_SECONDS", "1".into()),
            ("MAILHAUL_MAX_CONNECTIONS_PER_SOURCE_HOST", "4".into()),
        ]);
        let config = Config::from_lookup(|k| env.get(k).cloned())?;
        let svc = Services::aws(&sdk, config, NotifyTargets { bus: Some("mailhaul-events".into()), topic_arn: topic });
        svc.table.create().await?;
        Ok(Stack { _moto: moto, sdk, svc, bucket, s3_events_url, events_url, bodies: Vec::new() })
    }

    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    /// Puts the CSV (and sidecar), then feeds the S3 notification moto delivered to upload.
    async fn upload(
        &mut self,
        name: &str,
        csv: &str,
        sidecar: &str,
    ) -> Result<Vec<mailhaul_aws::upload::UploadOutcome>> {
        let s3 = mailhaul_aws::config::s3_client(&self.sdk);
        s3.put_object()
            .bucket(&self.bucket)
            .key(format!("incoming/{name}.toml"))
            .body(sidecar.as_bytes().to_vec().into())
            .send()
            .await?;
        s3.put_object()
            .bucket(&self.bucket)
            .key(format!("incoming/{name}.csv"))
            .body(csv.as_bytes().to_vec().into())
            .send()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for m in self.receive(&self.s3_events_url.clone(), 1).await? {
                let body = m.body.clone().unwrap_or_default();
                self.delete(&self.s3_events_url.clone(), &m).await?;
                let mut value: serde_json::Value = serde_json::from_str(&body)?;
                let Some(records) = value.get_mut("Records").and_then(|r| r.as_array_mut()) else { continue }; // s3:TestEvent
                for r in records {
                    // moto writes eventTime without a zone; S3 writes "...Z".
                    if let Some(t) = r.get("eventTime").and_then(|t| t.as_str()).filter(|t| !t.ends_with('Z')) {
                        r["eventTime"] = serde_json::Value::String(format!("{t}Z"));
                    }
                    // ...and leaves out fields S3 always sends.
                    for (field, v) in [
                        ("userIdentity", serde_json::json!({"principalId": "AWS:TEST"})),
                        ("requestParameters", serde_json::json!({"sourceIPAddress": "127.0.0.1"})),
                        ("responseElements", serde_json::json!({})),
                    ] {
                        if r.get(field).is_none() {
                            r[field] = v;
                        }
                    }
                }
                let event: S3Event = serde_json::from_value(value).context("S3 event from moto")?;
                let out =
                    mailhaul_aws::upload::handle(&self.svc, LambdaEvent::new(event, ctx(Duration::from_secs(60))))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!("no S3 notification for incoming/{name}.csv within 20 s");
            }
        }
    }

    async fn receive(&self, url: &str, wait: i32) -> Result<Vec<SqsMessage>> {
        let out = self
            .sqs()
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let mut s = SqsMessage::default();
                s.message_id = m.message_id;
                s.receipt_handle = m.receipt_handle;
                s.body = m.body;
                s.attributes =
                    m.attributes.unwrap_or_default().into_iter().map(|(k, v)| (k.as_str().to_string(), v)).collect();
                s
            })
            .collect())
    }

    async fn delete(&self, url: &str, m: &SqsMessage) -> Result<()> {
        self.sqs()
            .delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
            .send()
            .await?;
        Ok(())
    }

    /// Acts as Lambda's SQS pollers: copy jobs with a short deadline, finalize messages,
    /// until the batch is completed. Returns the number of copy invocations.
    async fn drain(&mut self, batch: &str, copy_deadline: Duration, limit: Duration) -> Result<usize> {
        let jobs = self.svc.config.jobs_queue_url.clone();
        let fin = self.svc.config.finalize_queue_url.clone();
        let start = Instant::now();
        let mut invocations = 0;
        loop {
            if self.svc.table.batch_state(batch).await?.is_some_and(|s| s.state == "completed") {
                return Ok(invocations);
            }
            if start.elapsed() > limit {
                bail!("batch {batch} not completed within {limit:?} ({invocations} copy invocations)");
            }
            for m in self.receive(&jobs, 1).await? {
                self.bodies.push(m.body.clone().unwrap_or_default());
                let mut event = SqsEvent::default();
                event.records = vec![m.clone()];
                let resp = mailhaul_aws::copy::handle(&self.svc, LambdaEvent::new(event, ctx(copy_deadline)))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                invocations += 1;
                if resp.batch_item_failures.is_empty() {
                    self.delete(&jobs, &m).await?;
                }
            }
            for m in self.receive(&fin, 0).await? {
                self.bodies.push(m.body.clone().unwrap_or_default());
                let mut event = SqsEvent::default();
                event.records = vec![m.clone()];
                let resp =
                    mailhaul_aws::finalize::handle(&self.svc, LambdaEvent::new(event, ctx(Duration::from_secs(60))))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                if resp.batch_item_failures.is_empty() {
                    self.delete(&fin, &m).await?;
                }
            }
        }
    }

    /// Every event the bus delivered to the test queue so far: (detail-type, detail).
    async fn events(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let mut out = Vec::new();
        loop {
            let batch = self.receive(&self.events_url, 1).await?;
            if batch.is_empty() {
                return Ok(out);
            }
            for m in batch {
                let v: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap_or("{}"))?;
                out.push((v["detail-type"].as_str().unwrap_or("").to_string(), v["detail"].clone()));
                self.delete(&self.events_url, &m).await?;
            }
        }
    }

    async fn object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.svc.objects.get(&self.bucket, key).await?)
    }

    /// Every object in the bucket, by key.
    async fn all_objects(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let s3 = mailhaul_aws::config::s3_client(&self.sdk);
        let list = s3.list_objects_v2().bucket(&self.bucket).send().await?;
        let mut out = BTreeMap::new();
        for o in list.contents() {
            let key = o.key().unwrap_or_default().to_string();
            if let Some(b) = self.object(&key).await? {
                out.insert(key, b);
            }
        }
        Ok(out)
    }

    /// The whole table, one debug line per item.
    async fn table_dump(&self) -> Result<String> {
        let ddb = aws_sdk_dynamodb::Client::new(&self.sdk);
        let out = ddb.scan().table_name("mailhaul").send().await?;
        Ok(out.items().iter().map(|i| format!("{i:?}\n")).collect())
    }

    async fn secret_names(&self) -> Result<Vec<String>> {
        let sm = aws_sdk_secretsmanager::Client::new(&self.sdk);
        let out = sm.list_secrets().send().await?;
        Ok(out.secret_list().iter().filter_map(|s| s.name().map(str::to_string)).collect())
    }
}

fn ctx(deadline_in: Duration) -> Context {
    let mut c = Context::default();
    let at = SystemTime::now() + deadline_in;
    c.deadline = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
    c.request_id = "test".into();
    c
}

fn sidecar(src: &Dovecot, dst: &Dovecot, batch_messages: usize) -> String {
    format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[copy]\nbatch_messages = {batch_messages}\n",
        src.imap_port, dst.imap_port
    )
}

/// Folder → sorted message bodies, to compare source and destination as multisets.
async fn contents(server: &Dovecot, user: &str, pass: &str) -> Result<BTreeMap<String, Vec<Vec<u8>>>> {
    let mut out = BTreeMap::new();
    for (folder, messages) in dump(server, user, pass).await? {
        let mut bodies: Vec<Vec<u8>> = messages.into_iter().map(|m| m.body).collect();
        bodies.sort();
        if !bodies.is_empty() {
            out.insert(folder, bodies);
        }
    }
    Ok(out)
}

/// The log lines of every test in this binary. A global subscriber, not a per-thread
/// `set_default`: with tests running in parallel, tracing's per-callsite interest cache can
/// otherwise leave a thread-scoped subscriber without the events (seen as a flaky test).
fn capture_logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this test binary");
        buf
    })
    .clone()
}

const SRC_ALICE: &str = "Src-Alice-pw-4411";
const SRC_BOB: &str = "Src-Bob-pw-5522";
const SRC_CAROL: &str = "Src-Carol-pw-6633";
const DST_ALICE: &str = "Dst-Alice-pw-7744";
const DST_BOB: &str = "Dst-Bob-pw-8855";
const DST_CAROL: &str = "Dst-Carol-pw-9966";
const WRONG: &str = "Wrong-Carol-pw-0077";

#[tokio::test]
async fn csv_to_report_through_the_whole_pipeline() -> Result<()> {
    let logs = capture_logs();
    let src =
        Dovecot::start(DovecotOptions::with_users(&[("alice", SRC_ALICE), ("bob", SRC_BOB), ("carol", SRC_CAROL)]))?;
    let dst =
        Dovecot::start(DovecotOptions::with_users(&[("alice", DST_ALICE), ("bob", DST_BOB), ("carol", DST_CAROL)]))?;
    seed(&src, "alice", SRC_ALICE, "INBOX", &corpus::mailbox("alice-in", 30)).await?;
    seed(&src, "alice", SRC_ALICE, "Projects/2024", &corpus::mailbox("alice-proj", 12)).await?;
    seed(&src, "bob", SRC_BOB, "INBOX", &corpus::mailbox("bob-in", 25)).await?;
    seed(&src, "carol", SRC_CAROL, "INBOX", &corpus::mailbox("carol-in", 3)).await?;

    let mut stack = Stack::start().await?;
    let csv = format!(
        "source_user,source_password,destination_user,destination_password\nalice,{SRC_ALICE},alice,{DST_ALICE}\nbob,{SRC_BOB},bob,{DST_BOB}\ncarol,{WRONG},carol,{DST_CAROL}\n"
    );
    let outcomes = stack.upload("spring batch", &csv, &sidecar(&src, &dst, 4)).await?;
    let batch = match outcomes.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, mailboxes: 3 }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    assert_eq!(
        batch,
        mailhaul_aws::messages::batch_id("incoming/spring batch.csv", csv.as_bytes()),
        "the CLI computes the same id"
    );
    assert!(
        stack.object("incoming/spring batch.csv").await?.is_none(),
        "the CSV is deleted once the passwords are in Secrets Manager"
    );
    let secrets_during = stack.secret_names().await?;
    assert_eq!(secrets_during.len(), 1, "3 rows fit one secret chunk: {secrets_during:?}");

    // Short deadlines: each mailbox needs several continuations.
    let invocations = stack.drain(&batch, Duration::from_millis(150), Duration::from_secs(240)).await?;

    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.total, state.done, state.failed), (3, 2, 1));
    let records = stack.svc.table.batch_store(&batch);
    let records = mailhaul_common::ports::BatchStore::mailboxes(&records).await?;
    let carol = records.iter().find(|r| r.mailbox == "carol").context("carol")?;
    assert_eq!(carol.status, mailhaul_common::model::MailboxStatus::Failed);
    assert!(carol.error.as_deref().unwrap_or("").contains("login failed"), "{:?}", carol.error);
    assert!(carol.hint.is_some());
    let max_passes = records.iter().map(|r| r.passes).max().unwrap_or(0);
    assert!(max_passes > 1, "a mailbox should need several continuations with a 150 ms deadline ({invocations} invocations, passes {max_passes})");

    // All mail copied exactly once.
    for (user, sp, dp) in [("alice", SRC_ALICE, DST_ALICE), ("bob", SRC_BOB, DST_BOB)] {
        let want = contents(&src, user, sp).await?;
        let got = contents(&dst, user, dp).await?;
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{user}: folders");
        for (folder, bodies) in &want {
            assert_eq!(got[folder].len(), bodies.len(), "{user} {folder}: message count");
            assert!(got[folder] == *bodies, "{user} {folder}: messages differ");
        }
    }
    assert!(contents(&dst, "carol", DST_CAROL).await?.is_empty(), "carol's login failed: nothing copied");

    // Reports in S3, same formats as a local run.
    let report_csv =
        String::from_utf8(stack.object(&format!("reports/{batch}/report.csv")).await?.context("report.csv")?)?;
    assert!(report_csv.lines().count() >= 4, "{report_csv}");
    let report_json: serde_json::Value =
        serde_json::from_slice(&stack.object(&format!("reports/{batch}/report.json")).await?.context("report.json")?)?;
    assert_eq!(report_json["batch"], batch.as_str());
    let failed_csv =
        String::from_utf8(stack.object(&format!("reports/{batch}/failed.csv")).await?.context("failed.csv")?)?;
    assert!(failed_csv.contains("carol") && !failed_csv.contains("alice"), "{failed_csv}");

    // Events through the EventBridge rule.
    let events = stack.events().await?;
    let completed: Vec<_> = events.iter().filter(|(t, _)| t == "MailboxCompleted").collect();
    assert_eq!(completed.len(), 3, "{events:?}");
    let done = events.iter().find(|(t, _)| t == "BatchCompleted").context("BatchCompleted delivered")?;
    assert_eq!(done.1["batch"], batch.as_str());
    assert_eq!((done.1["done"].as_u64(), done.1["failed"].as_u64()), (Some(2), Some(1)));
    assert_eq!(done.1["report_csv"], format!("s3://mailhaul-test/reports/{batch}/report.csv"));
    assert!(done.1["bytes_copied"].as_u64().unwrap_or(0) > 0);

    // Secrets deleted; no password anywhere.
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    let mut haystacks =
        vec![("sqs", stack.bodies.join("\n")), ("dynamodb", stack.table_dump().await?), ("logs", logs.text())];
    for (key, body) in stack.all_objects().await? {
        haystacks.push(("s3", format!("{key}: {}", String::from_utf8_lossy(&body))));
    }
    haystacks.push(("events", format!("{events:?}")));
    assert!(stack.bodies.iter().any(|b| b.contains("\"mailbox\":\"alice\"")), "job bodies were seen");
    assert!(logs.text().contains("mailbox finished"), "logs were captured");
    for (what, text) in &haystacks {
        for pw in [SRC_ALICE, SRC_BOB, SRC_CAROL, DST_ALICE, DST_BOB, DST_CAROL, WRONG] {
            assert!(!text.contains(pw), "a password leaked into {what}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_invalid_csv_is_rejected_with_a_report() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("dave", "pw-dave-1")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("dave", "pw-dave-2")]))?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\ndave,Secret-Dave-123,,Secret-Dave-456\n,,x,\n";
    let outcomes = stack.upload("bad", csv, &sidecar(&src, &dst, 50)).await?;
    let batch = match outcomes.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Rejected { batch, errors }] if *errors > 0 => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    let json: serde_json::Value = serde_json::from_slice(
        &stack.object(&format!("reports/{batch}/validation.json")).await?.context("validation.json")?,
    )?;
    assert!(json.to_string().contains("destination_user"), "{json}");
    let txt =
        String::from_utf8(stack.object(&format!("reports/{batch}/validation.txt")).await?.context("validation.txt")?)?;
    assert!(!txt.is_empty());
    let events = stack.events().await?;
    let rejected = events.iter().find(|(t, _)| t == "BatchRejected").context("BatchRejected delivered")?;
    assert_eq!(rejected.1["batch"], batch.as_str());
    assert!(stack.receive(&stack.svc.config.jobs_queue_url, 1).await?.is_empty(), "nothing started");
    assert!(stack.secret_names().await?.is_empty(), "no secret for a rejected file");
    assert!(stack.object("incoming/bad.csv").await?.is_none(), "the rejected CSV (with passwords) is deleted too");
    for (key, body) in stack.all_objects().await? {
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("Secret-Dave"), "password in {key}");
    }
    Ok(())
}

#[tokio::test]
async fn the_same_job_delivered_twice_at_once_copies_nothing_twice() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("erin", "pw-erin-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("erin", "pw-erin-dst")]))?;
    seed(&src, "erin", "pw-erin-src", "INBOX", &corpus::mailbox("erin", 40)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\nerin,pw-erin-src,erin,pw-erin-dst\n";
    let batch = match stack.upload("dup", csv, &sidecar(&src, &dst, 5)).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    // The same object's event delivered again makes no second batch.
    let again = mailhaul_aws::upload::process_object(&stack.svc, &stack.bucket, "incoming/dup.csv").await?;
    assert!(matches!(again, mailhaul_aws::upload::UploadOutcome::Ignored { .. }), "{again:?}");

    let jobs_url = stack.svc.config.jobs_queue_url.clone();
    let mut first = stack.receive(&jobs_url, 1).await?;
    let message = first.pop().context("one job")?;
    let job: JobMessage = serde_json::from_str(message.body.as_deref().unwrap_or(""))?;
    assert_eq!(job.seq, 0);
    let deadline = SystemTime::now() + Duration::from_secs(30);
    let (a, b) = tokio::join!(
        mailhaul_aws::copy::process_message(&stack.svc, &message, deadline),
        mailhaul_aws::copy::process_message(&stack.svc, &message, deadline)
    );
    let (a, b) = (a?, b?);
    let busy = |o: &mailhaul_aws::copy::JobOutcome| matches!(o, mailhaul_aws::copy::JobOutcome::Busy { .. });
    assert!(busy(&a) != busy(&b), "exactly one delivery copies, the other waits: {a:?} / {b:?}");
    stack.delete(&jobs_url, &message).await?;
    stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(120)).await?;

    let want = contents(&src, "erin", "pw-erin-src").await?;
    let got = contents(&dst, "erin", "pw-erin-dst").await?;
    assert_eq!(got, want, "every message exactly once");
    Ok(())
}

#[tokio::test]
async fn a_throttled_login_goes_back_to_the_queue_with_the_servers_delay() -> Result<()> {
    capture_logs();
    // Dovecot refuses frank's (correct) login as a busy provider does, with a backoff hint.
    let src = Dovecot::start(
        DovecotOptions::with_users(&[("frank", "pw-frank-src")])
            .passdb_extra("frank", &format!("nologin reason={}", BUSY_REPLY.replace(' ', "\u{a0}"))),
    )?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("frank", "pw-frank-dst")]))?;
    let mut stack = Stack::start().await?;
    let csv =
        "source_user,source_password,destination_user,destination_password\nfrank,pw-frank-src,frank,pw-frank-dst\n";
    let batch = match stack.upload("busy", csv, &sidecar(&src, &dst, 5)).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    let jobs_url = stack.svc.config.jobs_queue_url.clone();
    let message = stack.receive(&jobs_url, 1).await?.pop().context("one job")?;
    let first: JobMessage = serde_json::from_str(message.body.as_deref().unwrap_or(""))?;

    // The real handler, as Lambda calls it: the delivery succeeds (no batch item failure).
    let mut event = SqsEvent::default();
    event.records = vec![message.clone()];
    let resp = mailhaul_aws::copy::handle(&stack.svc, LambdaEvent::new(event, ctx(Duration::from_secs(30))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        resp.batch_item_failures.is_empty(),
        "a throttled job is not a failed delivery: {:?}",
        resp.batch_item_failures
    );
    stack.delete(&jobs_url, &message).await?;
    let sent_at = Instant::now();

    // Neither failed nor done; the reason is on the record for `mailhaul status`.
    let (record, seq) = stack.svc.table.mailbox_item(&batch, "frank").await?.context("frank's record")?;
    assert_eq!(record.status, mailhaul_common::model::MailboxStatus::Running, "{record:?}");
    assert!(record.error.as_deref().unwrap_or("").contains("Try"), "the server's words are kept: {:?}", record.error);
    assert_eq!(seq, first.seq + 1, "the re-sent job is the next pass");
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.done, state.failed, state.state.as_str()), (0, 0, "running"));

    // The job is back on the queue, invisible for the server's 3 s, then delivered.
    let early = stack.receive(&jobs_url, 1).await?;
    assert!(
        early.is_empty() || sent_at.elapsed() >= Duration::from_millis(2500),
        "the job came back before the server's delay: {early:?}"
    );
    let mut again = None;
    while again.is_none() && sent_at.elapsed() < Duration::from_secs(15) {
        again = stack.receive(&jobs_url, 1).await?.pop();
    }
    let again = again.context("the throttled job was re-sent")?;
    let waited = sent_at.elapsed();
    assert!(waited >= Duration::from_millis(2500), "re-sent with DelaySeconds = 3 (came after {waited:?})");
    let job: JobMessage = serde_json::from_str(again.body.as_deref().unwrap_or(""))?;
    assert_eq!((job.batch.as_str(), job.job.mailbox.as_str(), job.seq), (batch.as_str(), "frank", first.seq + 1));
    assert!(stack.receive(&jobs_url, 0).await?.is_empty(), "exactly one job was re-sent");
    Ok(())
}

/// What frank's source server says. passwd-file splits extra fields on spaces, so the test
/// writes them as no-break spaces, which Dovecot passes through and which still separate words.
const BUSY_REPLY: &str = "[THROTTLED] Too many logins. Try again in 3 seconds";

#[tokio::test]
async fn a_job_in_the_dead_letter_queue_fails_its_mailbox_and_the_batch_completes() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("gina", "pw-gina-src"), ("hugo", "pw-hugo-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("gina", "pw-gina-dst"), ("hugo", "pw-hugo-dst")]))?;
    seed(&src, "gina", "pw-gina-src", "INBOX", &corpus::mailbox("gina", 6)).await?;
    seed(&src, "hugo", "pw-hugo-src", "INBOX", &corpus::mailbox("hugo", 6)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\ngina,pw-gina-src,gina,pw-gina-dst\nhugo,pw-hugo-src,hugo,pw-hugo-dst\n";
    let batch = match stack.upload("dead", csv, &sidecar(&src, &dst, 50)).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    // Hugo's job "crashes the copy function on every delivery": SQS moves it to the DLQ. Here
    // the test moves it, as the redrive policy would, and copies only gina normally.
    let jobs_url = stack.svc.config.jobs_queue_url.clone();
    let mut jobs = Vec::new();
    while jobs.len() < 2 {
        let got = stack.receive(&jobs_url, 1).await?;
        if got.is_empty() {
            bail!("expected two jobs, got {}", jobs.len());
        }
        jobs.extend(got);
    }
    let is_hugo = |m: &SqsMessage| m.body.as_deref().unwrap_or("").contains("\"mailbox\":\"hugo\"");
    let hugo = jobs.iter().find(|m| is_hugo(m)).context("hugo's job")?.clone();
    let gina = jobs.iter().find(|m| !is_hugo(m)).context("gina's job")?.clone();
    let sqs = stack.sqs();
    let (dlq_url, _) = queue(&sqs, "jobs-dlq").await?;
    sqs.send_message().queue_url(&dlq_url).message_body(hugo.body.clone().unwrap_or_default()).send().await?;
    stack.delete(&jobs_url, &hugo).await?;
    // Gina's job goes back to be copied by drain() below.
    sqs.change_message_visibility()
        .queue_url(&jobs_url)
        .receipt_handle(gina.receipt_handle.clone().unwrap_or_default())
        .visibility_timeout(0)
        .send()
        .await?;

    // Gina finishes; the batch waits for hugo.
    let err = stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(20)).await;
    assert!(err.is_err(), "the batch cannot complete while hugo's job is dead");
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.done, state.failed, state.state.as_str()), (1, 0, "running"));

    // The finalize function drains the DLQ: it gets the real dead message from SQS.
    let dead = stack.receive(&dlq_url, 1).await?;
    assert_eq!(dead.len(), 1);
    let mut event = SqsEvent::default();
    event.records = dead.clone();
    let resp = mailhaul_aws::finalize::handle(&stack.svc, LambdaEvent::new(event, ctx(Duration::from_secs(60))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(resp.batch_item_failures.is_empty(), "{:?}", resp.batch_item_failures);
    stack.delete(&dlq_url, &dead[0]).await?;

    let (record, _) = stack.svc.table.mailbox_item(&batch, "hugo").await?.context("hugo")?;
    assert_eq!(record.status, mailhaul_common::model::MailboxStatus::Failed);
    assert!(record.error.as_deref().unwrap_or("").contains("crashed or timed out 5 times"), "{:?}", record.error);
    assert!(record.hint.is_some());
    // The same dead message delivered again changes nothing.
    let again = mailhaul_aws::dead_letter::process_dead_letter(&stack.svc, &dead[0]).await?;
    assert_eq!(again, mailhaul_aws::dead_letter::DeadLetterOutcome::Stale);

    // It was the last mailbox: finalize was queued, and the batch completes with hugo failed.
    stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(30)).await?;
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.total, state.done, state.failed, state.state.as_str()), (2, 1, 1, "completed"));
    let failed_csv =
        String::from_utf8(stack.object(&format!("reports/{batch}/failed.csv")).await?.context("failed.csv")?)?;
    assert!(failed_csv.contains("hugo") && !failed_csv.contains("gina"), "{failed_csv}");
    let events = stack.events().await?;
    let hugo_done = events
        .iter()
        .find(|(t, d)| t == "MailboxCompleted" && d["mailbox"] == "hugo")
        .context("MailboxCompleted for hugo")?;
    assert_eq!(hugo_done.1["status"], "failed");
    assert!(events.iter().any(|(t, _)| t == "BatchCompleted"), "{events:?}");
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    Ok(())
}
