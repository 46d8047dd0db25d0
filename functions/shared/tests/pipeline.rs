//! The serverless pipeline end to end: the real upload, copy and finalize handlers on the
//! moto server (S3, SQS, DynamoDB, Secrets Manager, EventBridge, SNS) and two real Dovecots.
//! moto cannot run Lambdas, so the test is the Lambda service: it takes real S3 event and SQS
//! messages from moto's queues and calls the handlers with `LambdaEvent`s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_runtime::{Context, LambdaEvent};
use mailhaul_aws::config::{Config, NotifyTargets};
use mailhaul_aws::copy::{JobError, JobOutcome};
use mailhaul_aws::messages::JobMessage;
use mailhaul_aws::Services;
use mailhaul_tests::corpus;
use mailhaul_tests::dovecot::{Dovecot, DovecotOptions, Layout};
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
    /// Receives what the SNS topic publishes (the completion notice people get by e-mail).
    notices_url: String,
    /// Every SQS body the test saw (job and finalize messages), to check for passwords.
    bodies: Vec<String>,
    /// The functions' environment as the stack would set it (for the real binaries).
    env: HashMap<String, String>,
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
        Stack::start_with(&[]).await
    }

    /// A stack whose functions see these environment variables besides the test defaults.
    async fn start_with(overrides: &[(&'static str, &str)]) -> Result<Stack> {
        let moto = Moto::start()?;
        let sdk = mailhaul_aws::config::local_sdk_config(&moto.url).await;
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
        let sns = aws_sdk_sns::Client::new(&sdk);
        let topic = sns.create_topic().name("mailhaul").send().await?.topic_arn;
        let (notices_url, notices_arn) = queue(&sqs, "notices").await?;
        sns.subscribe()
            .topic_arn(topic.as_deref().context("topic arn")?)
            .protocol("sqs")
            .endpoint(&notices_arn)
            .send()
            .await?;
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
            // 150 ms time boxes force continuations; a lease outlives its pass by 1 s.
            ("MAILHAUL_MIN_PASS_SECONDS", "0".into()),
            ("MAILHAUL_LEASE_GRACE_SECONDS", "1".into()),
            ("MAILHAUL_MAX_THROTTLED_PASSES", "3".into()),
            ("MAILHAUL_MAX_CRASHED_PASSES", "2".into()),
        ]);
        let mut env = env;
        for (k, v) in overrides {
            env.insert(k, v.to_string());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned())?;
        let mut function_env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        function_env.insert("MAILHAUL_EVENT_BUS".into(), "mailhaul-events".into());
        function_env.insert("MAILHAUL_TOPIC_ARN".into(), topic.clone().unwrap_or_default());
        for (k, v) in [
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            function_env.insert(k.into(), v.into());
        }
        let svc = Services::aws(&sdk, config, NotifyTargets { bus: Some("mailhaul-events".into()), topic_arn: topic });
        svc.table.create().await?;
        Ok(Stack {
            _moto: moto,
            sdk,
            svc,
            bucket,
            s3_events_url,
            events_url,
            notices_url,
            bodies: Vec::new(),
            env: function_env,
        })
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
        let value = self.s3_event(name, csv, sidecar).await?;
        let event: S3Event = serde_json::from_value(value).context("S3 event from moto")?;
        mailhaul_aws::upload::handle(&self.svc, LambdaEvent::new(event, ctx(Duration::from_secs(60))))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Puts the CSV (and sidecar) and returns the S3 notification moto delivered for it, as
    /// the JSON S3 gives a Lambda.
    async fn s3_event(&mut self, name: &str, csv: &str, sidecar: &str) -> Result<serde_json::Value> {
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
                return Ok(value);
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
                } else {
                    self.redeliver_soon(&jobs, &m).await?;
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
                } else {
                    self.redeliver_soon(&fin, &m).await?;
                }
            }
        }
    }

    /// A failed delivery comes back, as after the queue's visibility timeout, but in 1 s.
    async fn redeliver_soon(&self, url: &str, m: &SqsMessage) -> Result<()> {
        self.sqs()
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
            .visibility_timeout(1)
            .send()
            .await?;
        Ok(())
    }

    /// One run of the scheduled sweep, as EventBridge invokes the finalize function.
    async fn sweep(&self) -> Result<mailhaul_aws::sweep::SweepOutcome> {
        let event: serde_json::Value = serde_json::from_str(include_str!("fixtures/scheduled-event.json"))?;
        let out = mailhaul_aws::finalize::handle_any(&self.svc, LambdaEvent::new(event, ctx(Duration::from_secs(60))))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::from_value(out)?)
    }

    /// The next `count` jobs on the queue, by mailbox (or part of one).
    async fn first_jobs(&self, count: usize) -> Result<BTreeMap<String, SqsMessage>> {
        let url = self.svc.config.jobs_queue_url.clone();
        let mut jobs = BTreeMap::new();
        while jobs.len() < count {
            let got = self.receive(&url, 1).await?;
            if got.is_empty() {
                bail!("expected {count} jobs, got {}", jobs.len());
            }
            for m in got {
                let job: JobMessage = serde_json::from_str(m.body.as_deref().unwrap_or(""))?;
                jobs.insert(job.unit(), m);
            }
        }
        Ok(jobs)
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

    /// Every notice the topic published so far: (subject, message).
    async fn notices(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            let batch = self.receive(&self.notices_url, 1).await?;
            if batch.is_empty() {
                return Ok(out);
            }
            for m in batch {
                let v: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap_or("{}"))?;
                let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
                out.push((field("Subject"), field("Message")));
                self.delete(&self.notices_url, &m).await?;
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
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, mailboxes: 3, refused: 0 }] => batch.clone(),
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
    assert_eq!(done.1["report_html"], format!("s3://mailhaul-test/reports/{batch}/report.html"));
    assert!(done.1["bytes_copied"].as_u64().unwrap_or(0) > 0);

    // report.html, and a presigned link to it that works without credentials, valid 7 days.
    let html = String::from_utf8(stack.object(&format!("reports/{batch}/report.html")).await?.context("report.html")?)?;
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains(&batch), "report.html");
    let link = done.1["report_link"].as_str().context("report_link")?.to_string();
    assert!(link.contains(&format!("reports/{batch}/report.html")) && link.contains("X-Amz-Expires=604800"), "{link}");
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let response = reqwest::get(&link).await?;
    assert!(response.status().is_success(), "GET {link}: {}", response.status());
    assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/html; charset=utf-8"));
    assert_eq!(response.text().await?, html, "the link serves report.html");
    let unsigned = link.split('?').next().unwrap_or_default().to_string();
    assert!(!reqwest::get(&unsigned).await?.status().is_success(), "only the signature opens it");

    // The notice people get by e-mail: the counts and the link.
    let notices = stack.notices().await?;
    let (subject, notice) = notices.iter().find(|(s, _)| s.contains("complete")).context("completion notice")?;
    assert_eq!(subject, &format!("mailhaul: batch {batch} complete (1 failed)"));
    assert!(notice.contains("2 of 3 mailboxes done, 1 failed"), "{notice}");
    assert!(notice.contains(&link), "{notice}");

    // Secrets deleted; no password anywhere.
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    let mut haystacks =
        vec![("sqs", stack.bodies.join("\n")), ("dynamodb", stack.table_dump().await?), ("logs", logs.text())];
    for (key, body) in stack.all_objects().await? {
        haystacks.push(("s3", format!("{key}: {}", String::from_utf8_lossy(&body))));
    }
    haystacks.push(("events", format!("{events:?}")));
    haystacks.push(("notices", format!("{notices:?}")));
    assert!(stack.bodies.iter().any(|b| b.contains("\"mailbox\":\"alice\"")), "job bodies were seen");
    assert!(logs.text().contains("mailbox finished"), "logs were captured");
    for (what, text) in &haystacks {
        for pw in [SRC_ALICE, SRC_BOB, SRC_CAROL, DST_ALICE, DST_BOB, DST_CAROL, WRONG] {
            assert!(!text.contains(pw), "a password leaked into {what}");
        }
    }
    Ok(())
}

/// An OAuth2 source: the client secret lives in a Secrets Manager secret the batch settings
/// name; the copy function reads it, tokens come from a real OAuth2 server and Dovecot
/// validates them. The secret and the tokens reach no queue, table, object or log.
#[tokio::test]
async fn an_oauth2_side_signs_in_with_the_secret_the_settings_name() -> Result<()> {
    const APP_SECRET: &str = "Entra-App-Secret-2718";
    let logs = capture_logs();
    let mock = mailhaul_tests::oauth2::OAuthMock::start(serde_json::json!({
        "clients": { "app-aws": { "secret": APP_SECRET, "email": "alice", "jwt_ttl": 3600 } }
    }))?;
    let src = Dovecot::start(DovecotOptions::with_users(&[("alice", SRC_ALICE)]).oauth2(mock.validation()))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("alice", DST_ALICE)]))?;
    seed(&src, "alice", SRC_ALICE, "INBOX", &corpus::mailbox("oauth-in", 9)).await?;

    let mut stack = Stack::start().await?;
    let secrets = aws_sdk_secretsmanager::Client::new(&stack.sdk);
    secrets.create_secret().name("mailhaul-oauth2/entra-app").secret_string(APP_SECRET).send().await?;
    let settings = format!(
        "{}[source.oauth2]\nprovider = \"generic\"\ntoken_url = \"{}\"\nclient_id = \"app-aws\"\naws_secret = \"mailhaul-oauth2/entra-app\"\nscope = \"mail\"\n",
        sidecar(&src, &dst, 4),
        mock.token_url()
    );
    // The source password cell is empty: the source signs in with tokens.
    let csv = format!("source_user,source_password,destination_user,destination_password\nalice,,alice,{DST_ALICE}\n");
    let batch = match stack.upload("oauth batch", &csv, &settings).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, mailboxes: 1, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    let mut chunks = String::new();
    for name in stack.secret_names().await?.iter().filter(|n| n.starts_with("mailhaul/test/")) {
        let value = secrets.get_secret_value().secret_id(name).send().await?;
        chunks.push_str(value.secret_string().unwrap_or_default());
    }
    assert!(
        chunks.contains("alice") && !chunks.contains(APP_SECRET),
        "the batch's secret holds no copy of it: {chunks}"
    );

    stack.drain(&batch, Duration::from_secs(60), Duration::from_secs(120)).await?;
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    let records = mailhaul_common::ports::BatchStore::mailboxes(&stack.svc.table.batch_store(&batch)).await?;
    assert_eq!((state.done, state.failed), (1, 0), "{records:?}");
    assert_eq!(contents(&dst, "alice", DST_ALICE).await?, contents(&src, "alice", SRC_ALICE).await?);
    assert!(src.log().contains("method=XOAUTH2"), "{}", src.log());
    let requests = mock.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0]["client_id"].as_str(), requests[0]["status"].as_u64()), (Some("app-aws"), Some(200)));

    let job: JobMessage = serde_json::from_str(stack.bodies.first().context("a job body")?)?;
    assert_eq!(
        job.job.source.login.oauth2.as_ref().and_then(|o| o.aws_secret.as_deref()),
        Some("mailhaul-oauth2/entra-app"),
        "the job names the secret"
    );
    let mut haystacks =
        vec![("sqs", stack.bodies.join("\n")), ("dynamodb", stack.table_dump().await?), ("logs", logs.text())];
    for (key, body) in stack.all_objects().await? {
        haystacks.push(("s3", format!("{key}: {}", String::from_utf8_lossy(&body))));
    }
    for (what, text) in &haystacks {
        assert!(!text.contains(APP_SECRET), "the app's secret leaked into {what}");
        // No token either. Not a bare "eyJ" (base64 of `{"`): the SDK's debug logs of other
        // tests' calls carry such strings.
        if let Some(token) = jwt_in(text) {
            panic!("a token leaked into {what}: {token}");
        }
    }

    // A secret that is not there fails the mailbox at once, saying which.
    let csv =
        format!("source_user,source_password,destination_user,destination_password\nalice,,alice,{DST_ALICE}\n\n");
    let missing = settings.replace("mailhaul-oauth2/entra-app", "mailhaul-oauth2/nope");
    let batch = match stack.upload("oauth missing", &csv, &missing).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    stack.drain(&batch, Duration::from_secs(60), Duration::from_secs(120)).await?;
    let records = mailhaul_common::ports::BatchStore::mailboxes(&stack.svc.table.batch_store(&batch)).await?;
    let error = records[0].error.clone().unwrap_or_default();
    assert!(error.contains("mailhaul-oauth2/nope") && error.contains("Secrets Manager"), "{records:?}");
    Ok(())
}

/// The first JWT-shaped string in `text`: a header and a payload, each base64url JSON
/// (so starting "eyJ"), joined by a dot.
fn jwt_in(text: &str) -> Option<&str> {
    let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").find_map(|(at, _)| {
        let rest = &text[at..];
        let header = rest.find(|c| !base64url(c)).unwrap_or(rest.len());
        let payload = rest[header..].strip_prefix('.')?;
        payload.starts_with("eyJ").then(|| &rest[..header + 4])
    })
}

#[test]
fn a_jwt_is_told_from_other_base64_json() {
    assert_eq!(jwt_in("x eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln y"), Some("eyJhbGciOiJSUzI1NiJ9.eyJ"));
    assert_eq!(jwt_in("body eyJzb3VyY2UiOlsibWFpbGhhdWwiXX0= done"), None);
    assert_eq!(jwt_in("eyJ"), None);
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
    // With Dovecot's list index, whose lock-order bug now and then kills a session mid-pass.
    let shipped =
        |password: &str| DovecotOptions { list_index: true, ..DovecotOptions::with_users(&[("erin", password)]) };
    let src = Dovecot::start(shipped("pw-erin-src"))?;
    let dst = Dovecot::start(shipped("pw-erin-dst"))?;
    seed(&src, "erin", "pw-erin-src", "INBOX", &corpus::mailbox("erin", 40)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\nerin,pw-erin-src,erin,pw-erin-dst\n";
    let batch = match stack.upload("dup", csv, &sidecar(&src, &dst, 5)).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    // The same object's event delivered again makes no second batch.
    let again = mailhaul_aws::upload::process_object(&stack.svc, &stack.bucket, "incoming/dup.csv", None).await?;
    assert!(matches!(again, mailhaul_aws::upload::UploadOutcome::Ignored { .. }), "{again:?}");

    let jobs_url = stack.svc.config.jobs_queue_url.clone();
    let mut first = stack.receive(&jobs_url, 1).await?;
    let message = first.pop().context("one job")?;
    let job: JobMessage = serde_json::from_str(message.body.as_deref().unwrap_or(""))?;
    assert_eq!(job.seq, 0);
    let deadline = SystemTime::now() + Duration::from_secs(30);
    // moto serves requests on threads with no lock around a conditional write, so two puts
    // at the same instant can both pass its condition (DynamoDB's are atomic): the second
    // delivery starts once the first holds the lease, while it copies.
    let second = async {
        while !stack.svc.table.lease_held(&job.job.mailbox).await? {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok::<_, anyhow::Error>(mailhaul_aws::copy::process_message(&stack.svc, &message, deadline).await?)
    };
    let (a, b) = tokio::join!(mailhaul_aws::copy::process_message(&stack.svc, &message, deadline), second);
    let b = b?;
    let (a_busy, b_busy) = (matches!(a, Ok(JobOutcome::Busy { .. })), matches!(b, JobOutcome::Busy { .. }));
    assert!(a_busy != b_busy, "exactly one delivery copies, the other waits: {a:?} / {b:?}");
    match a {
        // Dovecot 2.3.19 now and then kills a session of a user whose other sessions hold
        // its index locks ("Panic: fcntl(...) Resource deadlock avoided"). The pass ends on the
        // lost connection and asks SQS for the message again, as the handler does.
        Err(JobError::Copy(reason)) if reason.contains("connection lost") => {
            eprintln!("the copying delivery ended on a lost connection ({reason}): delivered again");
            stack.redeliver_soon(&jobs_url, &message).await?
        }
        Err(e) => bail!("the copying delivery: {e}"),
        Ok(_) => stack.delete(&jobs_url, &message).await?,
    }
    stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(120)).await?;

    let want = contents(&src, "erin", "pw-erin-src").await?;
    let got = contents(&dst, "erin", "pw-erin-dst").await?;
    assert_eq!(got, want, "every message exactly once");
    Ok(())
}

/// A pass whose destination connection drops after it copied messages ends in a new pass
/// (a new message, its receive count from 1), not a redelivery: SQS would send a mailbox that
/// keeps getting further to the dead-letter queue after maxReceiveCount drops.
#[tokio::test]
async fn a_pass_cut_off_after_copying_continues_in_a_new_pass_not_a_redelivery() -> Result<()> {
    use mailhaul_tests::proxy::{Direction, FaultPlan, FaultPolicy, FaultProxy};
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("gus", "pw-gus-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("gus", "pw-gus-dst")]))?;
    seed(&src, "gus", "pw-gus-src", "INBOX", &corpus::mailbox("gus", 60)).await?;
    // The first connection to the destination drops after about two batches of appends.
    let cut = FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: 70_000 };
    let policy = FaultPolicy::from_fn(move |index| if index == 0 { cut } else { FaultPlan::Pass });
    let proxy = FaultProxy::start(([127, 0, 0, 1], dst.imap_port).into(), policy)?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\ngus,pw-gus-src,gus,pw-gus-dst\n";
    let settings = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[copy]\nbatch_messages = 5\nconnections_per_mailbox = 1\n",
        src.imap_port, proxy.port
    );
    let batch = submitted(&stack.upload("drop", csv, &settings).await?)?;
    let jobs_url = stack.svc.config.jobs_queue_url.clone();
    let first = stack.first_jobs(1).await?.remove("gus").context("gus's job")?;

    let later = SystemTime::now() + Duration::from_secs(60);
    let out = mailhaul_aws::copy::process_message(&stack.svc, &first, later).await;
    assert!(matches!(out, Ok(JobOutcome::Continued)), "a new pass, not an error for SQS to redeliver: {out:?}");
    assert_eq!(proxy.fired().len(), 1, "the one drop happened");
    stack.delete(&jobs_url, &first).await?;
    // Queued with the retry delay (1 s here).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let next = stack.first_jobs(1).await?.remove("gus").context("the next pass")?;
    let job: JobMessage = serde_json::from_str(next.body.as_deref().unwrap_or(""))?;
    assert_eq!(job.seq, 1, "the next pass's own message");
    let item = stack.svc.table.mailbox_item(&batch, "gus").await?.context("gus")?;
    assert!(item.record.error.as_deref().is_some_and(|e| e.contains("connection lost")), "{:?}", item.record);
    stack.redeliver_soon(&jobs_url, &next).await?;
    stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(120)).await?;

    let want = contents(&src, "gus", "pw-gus-src").await?;
    assert_eq!(contents(&dst, "gus", "pw-gus-dst").await?, want, "every message exactly once");
    let item = stack.svc.table.mailbox_item(&batch, "gus").await?.context("gus")?;
    assert_eq!((item.record.status, item.record.error), (mailhaul_common::model::MailboxStatus::Done, None));
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
    let item = stack.svc.table.mailbox_item(&batch, "frank").await?.context("frank's record")?;
    let (record, seq) = (item.record, item.seq);
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

    let record = stack.svc.table.mailbox_item(&batch, "hugo").await?.context("hugo")?.record;
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

/// The real SQS adapter, except that the next send to an armed queue fails: the function
/// died, or SQS refused, between two steps of a handler.
struct FlakyQueue {
    inner: Arc<dyn mailhaul_aws::JobQueue>,
    armed: Mutex<Vec<String>>,
    failed: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl mailhaul_aws::JobQueue for FlakyQueue {
    async fn send(
        &self,
        queue_url: &str,
        messages: Vec<mailhaul_aws::OutMessage>,
    ) -> Result<(), mailhaul_aws::PortError> {
        let fire = {
            let mut armed = self.armed.lock().unwrap();
            let hit = armed.iter().position(|u| u == queue_url);
            hit.map(|i| armed.remove(i)).is_some()
        };
        if fire {
            self.failed.lock().unwrap().push(queue_url.to_string());
            return Err(mailhaul_aws::PortError::new("sqs", "SendMessageBatch", "injected failure"));
        }
        self.inner.send(queue_url, messages).await
    }

    async fn retry_after(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: u32,
    ) -> Result<(), mailhaul_aws::PortError> {
        self.inner.retry_after(queue_url, receipt_handle, seconds).await
    }
}

fn submitted(outcomes: &[mailhaul_aws::upload::UploadOutcome]) -> Result<String> {
    match outcomes {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, .. }] => Ok(batch.clone()),
        other => bail!("upload: {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_continuation_or_finalize_message_is_sent_again_and_the_batch_ends_once() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("jane", "pw-jane-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("jane", "pw-jane-dst")]))?;
    seed(&src, "jane", "pw-jane-src", "INBOX", &corpus::mailbox("jane", 30)).await?;
    let mut stack = Stack::start().await?;
    let flaky =
        Arc::new(FlakyQueue { inner: stack.svc.queue.clone(), armed: Mutex::default(), failed: Mutex::default() });
    stack.svc.queue = flaky.clone();
    let csv = "source_user,source_password,destination_user,destination_password\njane,pw-jane-src,jane,pw-jane-dst\n";
    let batch = submitted(&stack.upload("lost", csv, &sidecar(&src, &dst, 5)).await?)?;
    // The first continuation and the first finalize message both fail to go out.
    let (jobs_url, fin_url) = (stack.svc.config.jobs_queue_url.clone(), stack.svc.config.finalize_queue_url.clone());
    flaky.armed.lock().unwrap().extend([jobs_url.clone(), fin_url.clone()]);

    stack.drain(&batch, Duration::from_millis(150), Duration::from_secs(120)).await?;

    assert_eq!(*flaky.failed.lock().unwrap(), vec![jobs_url, fin_url], "both sends failed once");
    let got = contents(&dst, "jane", "pw-jane-dst").await?;
    assert_eq!(got, contents(&src, "jane", "pw-jane-src").await?, "every message exactly once");
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.done, state.failed, state.state.as_str(), state.announced), (1, 0, "completed", true));
    let events = stack.events().await?;
    let completed = events.iter().filter(|(t, _)| t == "BatchCompleted").count();
    assert_eq!(completed, 1, "{events:?}");
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    // A sweep afterwards finds nothing to do and announces nothing again.
    let swept = stack.sweep().await?;
    assert!(swept.redriven.is_empty() && swept.finalized.is_empty(), "{swept:?}");
    assert!(stack.events().await?.is_empty());
    Ok(())
}

/// Starts a pass of `message` and kills it as a Lambda timeout or out-of-memory would, once
/// the pass is marked in the table. Returns the end of its lease (epoch s).
async fn crash_a_pass(stack: &Stack, message: &SqsMessage, deadline_in: Duration) -> Result<i64> {
    let job: JobMessage = serde_json::from_str(message.body.as_deref().unwrap_or(""))?;
    let svc = stack.svc.clone();
    let m = message.clone();
    let pass = tokio::spawn(async move {
        let _ = mailhaul_aws::copy::process_message(&svc, &m, SystemTime::now() + deadline_in).await;
    });
    let started = Instant::now();
    let until = loop {
        let item = stack.svc.table.mailbox_item(&job.batch, &job.unit()).await?.context("mailbox")?;
        if let Some(until) = item.pass_until {
            break until;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the pass of {} never started", job.unit());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!pass.is_finished(), "the pass of {} ended before it could be killed", job.unit());
    pass.abort();
    let _ = pass.await;
    // SQS would hand the message out again only after its visibility timeout (90 min).
    stack.delete(&stack.svc.config.jobs_queue_url, message).await?;
    Ok(until)
}

/// Sleeps until the lease that ends at `until` (epoch s) has run out.
async fn wait_past(until: i64) {
    while chrono::Utc::now().timestamp() <= until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_sweeper_re_drives_a_crashed_pass_fails_a_mailbox_that_keeps_crashing_and_the_batch_ends_once() -> Result<()>
{
    capture_logs();
    let users = [("kim", "pw-kim-src"), ("leo", "pw-leo-src")];
    let src = Dovecot::start(DovecotOptions::with_users(&users))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("kim", "pw-kim-dst"), ("leo", "pw-leo-dst")]))?;
    seed(&src, "kim", "pw-kim-src", "INBOX", &corpus::mailbox("kim", 80)).await?;
    seed(&src, "leo", "pw-leo-src", "INBOX", &corpus::mailbox("leo", 20)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\nkim,pw-kim-src,kim,pw-kim-dst\nleo,pw-leo-src,leo,pw-leo-dst\n";
    let batch = submitted(&stack.upload("crash", csv, &sidecar(&src, &dst, 2)).await?)?;
    let jobs = stack.first_jobs(2).await?;
    // A running mailbox stays claimed by its batch.
    let other = stack.svc.table.claim_mailbox("kim", "other-batch").await?;
    assert_eq!(other, mailhaul_aws::dynamo::Claim::HeldBy(batch.clone()));

    // Both first passes die mid-copy; their messages stay invisible in SQS.
    let deadline_in = Duration::from_secs(3);
    let kim_until = crash_a_pass(&stack, &jobs["kim"], deadline_in).await?;
    let leo_until = crash_a_pass(&stack, &jobs["leo"], deadline_in).await?;
    // While their leases run, the passes may still be alive: nothing is re-driven.
    let early = stack.sweep().await?;
    assert!(early.redriven.is_empty() && early.failed.is_empty(), "{early:?}");
    // Lease = deadline + 1 s grace; the sweep after that re-drives both at once.
    wait_past(kim_until.max(leo_until)).await;
    let swept = stack.sweep().await?;
    let mut redriven = swept.redriven.clone();
    redriven.sort();
    assert_eq!(redriven, vec![format!("{batch}/kim"), format!("{batch}/leo")], "{swept:?}");
    assert!(stack.sweep().await?.redriven.is_empty(), "a crash is re-driven once");

    // Leo's second pass dies too: with MAILHAUL_MAX_CRASHED_PASSES = 2 the sweeper fails him.
    let again = stack.first_jobs(2).await?;
    let leo_until = crash_a_pass(&stack, &again["leo"], Duration::from_secs(2)).await?;
    stack.redeliver_soon(&stack.svc.config.jobs_queue_url.clone(), &again["kim"]).await?;
    wait_past(leo_until).await;
    let swept = stack.sweep().await?;
    assert_eq!(swept.failed, vec![format!("{batch}/leo")], "{swept:?}");
    let leo = stack.svc.table.mailbox_item(&batch, "leo").await?.context("leo")?;
    assert_eq!(leo.record.status, mailhaul_common::model::MailboxStatus::Failed);
    assert!(
        leo.record.error.as_deref().unwrap_or("").contains("crashed or timed out 2 times"),
        "{:?}",
        leo.record.error
    );

    // Kim resumes from the crashed pass's checkpoints and the batch completes, once.
    stack.drain(&batch, Duration::from_secs(20), Duration::from_secs(120)).await?;
    let got = contents(&dst, "kim", "pw-kim-dst").await?;
    assert_eq!(got, contents(&src, "kim", "pw-kim-src").await?, "kim: every message exactly once");
    let kim = stack.svc.table.mailbox_item(&batch, "kim").await?.context("kim")?;
    assert_eq!((kim.record.status, kim.crashes), (mailhaul_common::model::MailboxStatus::Done, 1));
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.done, state.failed, state.state.as_str()), (1, 1, "completed"));
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    let after = stack.sweep().await?;
    assert!(after.redriven.is_empty() && after.finalized.is_empty(), "{after:?}");
    // The old messages of the crashed passes, delivered at last, change nothing.
    for m in [&jobs["kim"], &jobs["leo"], &again["leo"]] {
        let out =
            mailhaul_aws::copy::process_message(&stack.svc, m, SystemTime::now() + Duration::from_secs(20)).await?;
        assert_eq!(out, mailhaul_aws::copy::JobOutcome::Stale);
    }
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1, "{events:?}");
    assert_eq!(events.iter().filter(|(t, _)| t == "MailboxCompleted").count(), 2, "{events:?}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_always_throttles_fails_the_mailbox_after_the_bound_with_its_words() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(
        DovecotOptions::with_users(&[("mona", "pw-mona-src")])
            .passdb_extra("mona", &format!("nologin reason={}", BUSY_REPLY_SHORT.replace(' ', "\u{a0}"))),
    )?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("mona", "pw-mona-dst")]))?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\nmona,pw-mona-src,mona,pw-mona-dst\n";
    let batch = submitted(&stack.upload("throttled", csv, &sidecar(&src, &dst, 5)).await?)?;
    // MAILHAUL_MAX_THROTTLED_PASSES = 3: two passes go back to the queue, the third fails.
    let invocations = stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(60)).await?;
    assert_eq!(invocations, 3);
    let mona = stack.svc.table.mailbox_item(&batch, "mona").await?.context("mona")?;
    assert_eq!(mona.record.status, mailhaul_common::model::MailboxStatus::Failed);
    // The server's last words (Dovecot passes the test's no-break spaces through).
    let error = mona.record.error.unwrap_or_default().replace('\u{a0}', " ");
    assert!(error.contains("throttled 3 passes") && error.contains("Too many logins"), "{error}");
    assert!(mona.record.hint.unwrap_or_default().contains("limits"));
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1, "{events:?}");
    assert!(stack.secret_names().await?.is_empty());
    Ok(())
}

const BUSY_REPLY_SHORT: &str = "[THROTTLED] Too many logins. Try again in 1 seconds";

#[tokio::test]
async fn a_time_box_shorter_than_the_safety_margin_fails_the_mailbox_once_with_a_hint() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("ned", "pw-ned-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("ned", "pw-ned-dst")]))?;
    seed(&src, "ned", "pw-ned-src", "INBOX", &corpus::mailbox("ned", 5)).await?;
    // A 30 s function with the default 60 s margin (and the default 10 s minimum pass).
    let mut stack =
        Stack::start_with(&[("MAILHAUL_SAFETY_MARGIN_SECONDS", "60"), ("MAILHAUL_MIN_PASS_SECONDS", "10")]).await?;
    let csv = "source_user,source_password,destination_user,destination_password\nned,pw-ned-src,ned,pw-ned-dst\n";
    let batch = submitted(&stack.upload("short", csv, &sidecar(&src, &dst, 5)).await?)?;
    let invocations = stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(30)).await?;
    assert_eq!(invocations, 1, "one pass, no loop of empty passes");
    let ned = stack.svc.table.mailbox_item(&batch, "ned").await?.context("ned")?;
    assert_eq!((ned.record.status, ned.record.passes), (mailhaul_common::model::MailboxStatus::Failed, 0));
    assert!(ned.record.error.unwrap_or_default().contains("time box"));
    let hint = ned.record.hint.unwrap_or_default();
    assert!(hint.contains("Timeout") && hint.contains("MAILHAUL_SAFETY_MARGIN_SECONDS"), "{hint}");
    assert!(contents(&dst, "ned", "pw-ned-dst").await?.is_empty(), "nothing copied");
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1, "{events:?}");
    Ok(())
}

const OLGA_SRC: &str = "Src-Olga-pw-1357";
const DST_ADMIN: &str = "Dst-Admin-pw-2468";

#[tokio::test]
async fn the_exchange_form_logs_in_to_the_destination_as_the_master_user_from_a_secret() -> Result<()> {
    let logs = capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("olga@example.com", OLGA_SRC)]))?;
    // Olga's own destination password is nowhere in the CSV: the admin logs in for her.
    let dst = Dovecot::start(
        DovecotOptions::with_users(&[("olga@example.com", "Dst-Olga-unknown-pw")]).master("admin", DST_ADMIN),
    )?;
    seed(&src, "olga@example.com", OLGA_SRC, "INBOX", &corpus::mailbox("olga-in", 12)).await?;
    seed(&src, "olga@example.com", OLGA_SRC, "Archive", &corpus::mailbox("olga-arch", 5)).await?;
    // The stack parameters name the master user and the secret of its password.
    let mut stack = Stack::start_with(&[
        ("MAILHAUL_DESTINATION_ADMIN_USER", "admin"),
        ("MAILHAUL_DESTINATION_MASTER_SEPARATOR", "*"),
        ("MAILHAUL_DESTINATION_ADMIN_PASSWORD_SECRET", "mailhaul/test/admin/destination"),
    ])
    .await?;
    stack.svc.secrets.put("mailhaul/test/admin/destination", &mailhaul_common::Secret::new(DST_ADMIN)).await?;

    // A sidecar may not hand the function's environment to a login (the old hole: on AWS,
    // AWS_SESSION_TOKEN; here HOME, which every test process has, so only the rule refuses it).
    let evil = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nadmin_user = \"admin\"\nmaster_separator = \"*\"\nadmin_password_env = \"HOME\"\n",
        src.imap_port, dst.imap_port
    );
    let csv = format!("EmailAddress,UserName,Password\nolga@example.com,olga@example.com,{OLGA_SRC}\n");
    match stack.upload("evil", &csv, &evil).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Rejected { .. }] => {}
        other => bail!("a sidecar naming an environment variable must be rejected: {other:?}"),
    }
    assert!(stack.object("incoming/evil.toml").await?.is_none(), "a rejected sidecar is deleted too");
    assert!(stack.receive(&stack.svc.config.jobs_queue_url, 0).await?.is_empty(), "nothing queued");
    let rejected = stack.events().await?;
    let problems = format!("{rejected:?}");
    assert!(problems.contains("admin_password_secret"), "{problems}");

    // ... the Exchange form with the stack's master user runs.
    let batch = submitted(&stack.upload("exchange", &csv, &sidecar(&src, &dst, 50)).await?)?;
    assert!(stack.object("incoming/exchange.toml").await?.is_none(), "the sidecar is deleted after ingest");
    assert!(stack.object("incoming/exchange.csv").await?.is_none());
    stack.drain(&batch, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!(
        (state.done, state.failed),
        (1, 0),
        "{:?}",
        stack.svc.table.mailbox_item(&batch, "olga@example.com").await?
    );
    let got = contents(&dst, "olga@example.com", "Dst-Olga-unknown-pw").await?;
    assert_eq!(got, contents(&src, "olga@example.com", OLGA_SRC).await?, "every message exactly once");
    // The batch's own secrets are gone; the operator's admin secret stays.
    assert_eq!(stack.secret_names().await?, vec!["mailhaul/test/admin/destination".to_string()]);
    let mut haystacks =
        vec![("sqs", stack.bodies.join("\n")), ("dynamodb", stack.table_dump().await?), ("logs", logs.text())];
    for (key, body) in stack.all_objects().await? {
        haystacks.push(("s3", format!("{key}: {}", String::from_utf8_lossy(&body))));
    }
    haystacks.push(("events", format!("{:?}", stack.events().await?)));
    for (what, text) in &haystacks {
        for pw in [OLGA_SRC, DST_ADMIN] {
            assert!(!text.contains(pw), "a password leaked into {what}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_same_csv_uploaded_again_is_a_delta_pass_that_copies_only_new_mail() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("pia", "pw-pia-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("pia", "pw-pia-dst")]))?;
    seed(&src, "pia", "pw-pia-src", "INBOX", &corpus::mailbox("pia-in", 20)).await?;
    seed(&src, "pia", "pw-pia-src", "Work", &corpus::mailbox("pia-work", 6)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\npia,pw-pia-src,pia,pw-pia-dst\n";
    // No duplicate detection: only the pair's checkpoints keep the delta from copying again.
    let settings = format!("{}skip_duplicates = false\n", sidecar(&src, &dst, 50));
    let first = submitted(&stack.upload("cutover", csv, &settings).await?)?;
    stack.drain(&first, Duration::from_secs(30), Duration::from_secs(60)).await?;
    assert_eq!(contents(&dst, "pia", "pw-pia-dst").await?, contents(&src, "pia", "pw-pia-src").await?);
    stack.events().await?;

    // A finisher that died before giving the mailbox's claim back leaves it held by the first
    // batch; the claim expired with that batch and does not block the next one.
    assert_eq!(stack.svc.table.claim_mailbox("pia", &first).await?, mailhaul_aws::dynamo::Claim::Ours);
    assert_eq!(
        stack.svc.table.claim_mailbox("pia", "another-batch").await?,
        mailhaul_aws::dynamo::Claim::Ours,
        "a claim of a completed batch is taken over"
    );
    stack.svc.table.release_mailbox("pia", "another-batch").await?;
    assert_eq!(stack.svc.table.claim_mailbox("pia", &first).await?, mailhaul_aws::dynamo::Claim::Ours);

    // New mail arrives before the cut-over; the same CSV is uploaded again.
    seed(&src, "pia", "pw-pia-src", "INBOX", &corpus::mailbox("pia-late", 3)).await?;
    let delta = submitted(&stack.upload("cutover", csv, &settings).await?)?;
    assert_ne!(delta, first, "a new batch");
    assert!(delta.starts_with(&format!("{first}-delta-")), "{delta}");
    stack.drain(&delta, Duration::from_secs(30), Duration::from_secs(60)).await?;

    // Exactly the source: the 26 messages copied before are not copied twice.
    let got = contents(&dst, "pia", "pw-pia-dst").await?;
    assert_eq!(got, contents(&src, "pia", "pw-pia-src").await?, "every message exactly once");
    assert_eq!(got["INBOX"].len(), 23);
    let events = stack.events().await?;
    let done = events.iter().find(|(t, _)| t == "BatchCompleted").context("BatchCompleted")?;
    assert_eq!((done.1["batch"].as_str(), done.1["delta_of"].as_str()), (Some(delta.as_str()), Some(first.as_str())));
    assert_eq!(done.1["messages_copied"].as_u64(), Some(3), "the delta counts only its own messages");
    let mailbox = events.iter().find(|(t, _)| t == "MailboxCompleted").context("MailboxCompleted")?;
    assert_eq!(mailbox.1["messages_copied"].as_u64(), Some(3));
    // Its own report, which says it is a delta; the first batch's report is untouched.
    let report: serde_json::Value =
        serde_json::from_slice(&stack.object(&format!("reports/{delta}/report.json")).await?.context("report")?)?;
    assert_eq!(report["delta_of"], first.as_str());
    assert!(stack.object(&format!("reports/{first}/report.json")).await?.is_some());
    assert!(stack.secret_names().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_row_whose_mailbox_another_batch_is_running_is_refused_alone_with_the_reason() -> Result<()> {
    capture_logs();
    let users = [("quinn", "pw-quinn-src"), ("rosa", "pw-rosa-src")];
    let src = Dovecot::start(DovecotOptions::with_users(&users))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("quinn", "pw-quinn-dst"), ("rosa", "pw-rosa-dst")]))?;
    seed(&src, "quinn", "pw-quinn-src", "INBOX", &corpus::mailbox("quinn", 8)).await?;
    seed(&src, "rosa", "pw-rosa-src", "INBOX", &corpus::mailbox("rosa", 5)).await?;
    let mut stack = Stack::start().await?;
    let header = "source_user,source_password,destination_user,destination_password\n";
    let quinn = "quinn,pw-quinn-src,quinn,pw-quinn-dst\n";
    let first = submitted(&stack.upload("quinn-only", &format!("{header}{quinn}"), &sidecar(&src, &dst, 50)).await?)?;
    let first_job = stack.first_jobs(1).await?;

    // While quinn runs in the first batch, a second file with quinn and rosa: rosa goes ahead.
    let second_csv = format!("{header}{quinn}rosa,pw-rosa-src,rosa,pw-rosa-dst\n");
    let second = match stack.upload("both", &second_csv, &sidecar(&src, &dst, 50)).await?.as_slice() {
        [mailhaul_aws::upload::UploadOutcome::Submitted { batch, mailboxes: 1, refused: 1 }] => batch.clone(),
        other => bail!("upload: {other:?}"),
    };
    stack.drain(&second, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let state = stack.svc.table.batch_state(&second).await?.context("batch")?;
    assert_eq!((state.done, state.failed), (1, 1));
    assert_eq!(contents(&dst, "rosa", "pw-rosa-dst").await?, contents(&src, "rosa", "pw-rosa-src").await?);
    let failed_csv =
        String::from_utf8(stack.object(&format!("reports/{second}/failed.csv")).await?.context("failed.csv")?)?;
    assert!(failed_csv.contains("quinn") && !failed_csv.contains("rosa"), "{failed_csv}");
    let report = String::from_utf8(stack.object(&format!("reports/{second}/report.csv")).await?.context("report")?)?;
    assert!(report.contains(&format!("being migrated by batch {first}")), "{report}");

    // The first batch was not disturbed: quinn is copied there, once.
    stack.redeliver_soon(&stack.svc.config.jobs_queue_url.clone(), &first_job["quinn"]).await?;
    stack.drain(&first, Duration::from_secs(30), Duration::from_secs(60)).await?;
    assert_eq!(contents(&dst, "quinn", "pw-quinn-dst").await?, contents(&src, "quinn", "pw-quinn-src").await?);
    let state = stack.svc.table.batch_state(&first).await?.context("batch")?;
    assert_eq!((state.done, state.failed), (1, 0));
    Ok(())
}

/// A loopback TCP proxy in front of an IMAP server that records the command of every line
/// the client sends (`SELECT`, `UID FETCH`, ...), to count what a pass costs the server.
struct CommandLog {
    port: u16,
    /// (connection number, command name) in the order sent.
    commands: Arc<Mutex<Vec<(usize, String)>>>,
}

impl CommandLog {
    async fn start(target: u16) -> Result<CommandLog> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let log = commands.clone();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                connection += 1;
                tokio::spawn(async move {
                    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let (client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut lines = tokio::io::BufReader::new(client_read);
                    let mut line = Vec::new();
                    while lines.read_until(b'\n', &mut line).await.is_ok_and(|n| n > 0) {
                        let text = String::from_utf8_lossy(&line);
                        let words: Vec<&str> = text.split_whitespace().take(3).collect();
                        if let [_tag, cmd, rest @ ..] = words.as_slice() {
                            let cmd = cmd.to_ascii_uppercase();
                            let name = match (cmd.as_str(), rest.first()) {
                                ("UID", Some(sub)) => format!("UID {}", sub.to_ascii_uppercase()),
                                _ => cmd,
                            };
                            log.lock().unwrap().push((connection, name));
                        }
                        if server_write.write_all(&line).await.is_err() {
                            break;
                        }
                        line.clear();
                    }
                    down.abort();
                });
            }
        });
        Ok(CommandLog { port, commands })
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap()).into_iter().map(|(_, name)| name).collect()
    }

    /// The connections that sent `command`.
    fn connections_sending(&self, command: &str) -> BTreeSet<usize> {
        self.commands.lock().unwrap().iter().filter(|(_, name)| name == command).map(|(c, _)| *c).collect()
    }
}

/// A big mailbox goes `connections_per_mailbox` wide in one copy function, one source-host
/// slot per pair of connections, as far as the host has free slots: here three pairs are
/// asked for and the host allows two, so two connections append to the one folder. The
/// slots are given back after the pass.
#[tokio::test]
async fn a_copy_pass_takes_a_host_slot_per_connection_pair_as_far_as_free() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("wide", "pw-wide-src")]).layout(Layout::None))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("wide", "pw-wide-dst")]).layout(Layout::None))?;
    seed(&src, "wide", "pw-wide-src", "INBOX", &corpus::mailbox("wide", 120)).await?;
    let log = CommandLog::start(dst.imap_port).await?;
    let mut stack = Stack::start().await?;
    let settings = format!(
        "max_connections_per_source_host = 2\n[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[copy]\nbatch_messages = 4\nconnections_per_mailbox = 3\n",
        src.imap_port, log.port
    );
    let csv = "source_user,source_password,destination_user,destination_password\nwide,pw-wide-src,wide,pw-wide-dst\n";
    let batch = submitted(&stack.upload("wide", csv, &settings).await?)?;
    stack.drain(&batch, Duration::from_secs(60), Duration::from_secs(60)).await?;
    let appending = log.connections_sending("APPEND");
    assert_eq!(appending.len(), 2, "two slots, two connections appending: {appending:?}");
    assert_eq!(stack.svc.table.slots_held(&format!("127.0.0.1:{}", src.imap_port)).await?, 0, "slots given back");
    let records = mailhaul_common::ports::BatchStore::mailboxes(&stack.svc.table.batch_store(&batch)).await?;
    assert_eq!(records[0].status, mailhaul_common::model::MailboxStatus::Done, "{records:?}");
    assert_eq!(contents(&dst, "wide", "pw-wide-dst").await?, contents(&src, "wide", "pw-wide-src").await?);
    Ok(())
}

/// An unchanged folder costs its EXAMINE and nothing else: its verdict is kept from the
/// pass that verified it (`reverify_unchanged` off, the default).
#[tokio::test]
async fn a_delta_of_an_unchanged_mailbox_fetches_nothing_and_costs_one_command_per_folder() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("sam", "pw-sam-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("sam", "pw-sam-dst")]))?;
    for (folder, n) in [("INBOX", 30), ("Work", 8), ("Archive/2024", 5)] {
        seed(&src, "sam", "pw-sam-src", folder, &corpus::mailbox(&format!("sam-{folder}"), n)).await?;
    }
    // Every batch reaches the source through the same counting proxy (same pair).
    let log = CommandLog::start(src.imap_port).await?;
    let mut stack = Stack::start().await?;
    let settings = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n[destination]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n",
        log.port, dst.imap_port
    );
    let csv = "source_user,source_password,destination_user,destination_password\nsam,pw-sam-src,sam,pw-sam-dst\n";
    let first = submitted(&stack.upload("sam", csv, &settings).await?)?;
    stack.drain(&first, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let full = log.take();
    let delta = submitted(&stack.upload("sam", csv, &settings).await?)?;
    stack.drain(&delta, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let first_delta = log.take();
    assert!(!first_delta.iter().any(|c| c.contains("FETCH") || c == "APPEND"), "{first_delta:?}");
    // Dovecot lists the parent "Archive" as \Noselect at first and as an empty folder later:
    // the first delta may copy (and verify) it as new. The second finds everything unchanged.
    let delta = submitted(&stack.upload("sam", csv, &settings).await?)?;
    stack.drain(&delta, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let unchanged = log.take();
    eprintln!("first pass: {} commands; unchanged delta: {unchanged:?}", full.len());
    let per_folder: Vec<&String> = unchanged
        .iter()
        .filter(|c| {
            !["CAPABILITY", "LOGIN", "AUTHENTICATE", "LOGOUT", "NAMESPACE", "LIST", "ID", "ENABLE", "NOOP", "COMPRESS"]
                .contains(&c.as_str())
        })
        .collect();
    let folders = dump(&src, "sam", "pw-sam-src").await?.len();
    assert!(folders >= 3, "{folders}");
    assert_eq!(per_folder.len(), folders, "one command per folder, nothing new: {per_folder:?}");
    let records = mailhaul_common::ports::BatchStore::mailboxes(&stack.svc.table.batch_store(&delta)).await?;
    assert_eq!(records[0].status, mailhaul_common::model::MailboxStatus::Done, "{records:?}");
    let report = stack.object(&format!("reports/{delta}/report.csv")).await?.context("the delta's report")?;
    let report = String::from_utf8(report)?;
    assert!(report.lines().nth(1).is_some_and(|row| row.contains(",ok,")), "still verified: {report}");
    assert!(!unchanged.iter().any(|c| c.contains("FETCH") || c == "APPEND"), "{unchanged:?}");
    assert_eq!(contents(&dst, "sam", "pw-sam-dst").await?, contents(&src, "sam", "pw-sam-src").await?);
    Ok(())
}

/// `[schedule]` in the batch settings: delta passes of the same rows until the cut-over.
fn scheduled(src: &Dovecot, dst: &Dovecot, until: chrono::DateTime<chrono::Utc>) -> String {
    format!("{}\n[schedule]\ndelta_every = \"24h\"\nuntil = \"{}\"\n", sidecar(src, dst, 50), until.to_rfc3339())
}

#[tokio::test]
async fn scheduled_delta_passes_run_on_request_until_stopped_then_the_passwords_are_deleted() -> Result<()> {
    use mailhaul_aws::cli::{schedule, ScheduleRequest};
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("uma", "pw-uma-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("uma", "pw-uma-dst")]))?;
    seed(&src, "uma", "pw-uma-src", "INBOX", &corpus::mailbox("uma-in", 12)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\numa,pw-uma-src,uma,pw-uma-dst\n";
    let until = chrono::Utc::now() + chrono::Duration::hours(2);
    let first = submitted(&stack.upload("cutover-plan", csv, &scheduled(&src, &dst, until)).await?)?;
    stack.drain(&first, Duration::from_secs(30), Duration::from_secs(60)).await?;
    assert_eq!(contents(&dst, "uma", "pw-uma-dst").await?, contents(&src, "uma", "pw-uma-src").await?);
    // The passwords stay for the passes to come, and the completion says when the next starts.
    let secrets = stack.secret_names().await?;
    assert!(!secrets.is_empty(), "kept for the scheduled passes");
    let events = stack.events().await?;
    let done = events.iter().find(|(t, _)| t == "BatchCompleted").context("BatchCompleted")?;
    assert!(done.1["next_delta_at"].is_string(), "{:?}", done.1);
    assert!(stack.sweep().await?.deltas_started.is_empty(), "not due for 24 hours");

    // New mail before the cut-over; the admin wants a pass now (mailhaul submit --delta).
    seed(&src, "uma", "pw-uma-src", "INBOX", &corpus::mailbox("uma-late", 3)).await?;
    let table = stack.svc.table.name().to_string();
    let now = schedule(&stack.sdk, &table, &first, ScheduleRequest::DeltaNow).await?;
    let swept = stack.sweep().await?;
    let expected = mailhaul_aws::messages::delta_batch_id(&first, &format!("schedule-{}", now.next_at));
    assert_eq!(swept.deltas_started, vec![expected.clone()], "the id `submit --delta` printed: {swept:?}");
    assert!(stack.sweep().await?.deltas_started.is_empty(), "one pass per slot, one at a time");
    stack.drain(&expected, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let got = contents(&dst, "uma", "pw-uma-dst").await?;
    assert_eq!(got, contents(&src, "uma", "pw-uma-src").await?, "every message exactly once");
    assert_eq!(got["INBOX"].len(), 15);
    let events = stack.events().await?;
    let done = events.iter().find(|(t, _)| t == "BatchCompleted").context("delta's BatchCompleted")?;
    assert_eq!(done.1["batch"].as_str(), Some(expected.as_str()));
    assert_eq!(done.1["delta_of"].as_str(), Some(first.as_str()));
    assert_eq!(done.1["messages_copied"].as_u64(), Some(3), "only the new mail");
    assert_eq!(stack.secret_names().await?, secrets, "still kept: the schedule runs until the cut-over");
    let report: serde_json::Value =
        serde_json::from_slice(&stack.object(&format!("reports/{expected}/report.json")).await?.context("report")?)?;
    assert_eq!(report["delta_of"], first.as_str());

    // mailhaul submit --stop: the next sweep ends the schedule and deletes the passwords.
    schedule(&stack.sdk, &table, &first, ScheduleRequest::Stop).await?;
    let swept = stack.sweep().await?;
    assert_eq!(swept.schedules_ended, vec![first.clone()], "{swept:?}");
    assert!(stack.secret_names().await?.is_empty(), "the passwords are gone with the schedule");
    let events = stack.events().await?;
    let ended = events.iter().find(|(t, _)| t == "DeltaScheduleEnded").context("DeltaScheduleEnded")?;
    assert_eq!((ended.1["reason"].as_str(), ended.1["deltas"].as_u64()), (Some("stopped"), Some(1)));
    // Over: nothing more starts, and asking for a pass says what to do instead.
    let refused = schedule(&stack.sdk, &table, &first, ScheduleRequest::DeltaNow).await.unwrap_err();
    assert!(refused.to_string().contains("upload its CSV again"), "{refused}");
    let swept = stack.sweep().await?;
    assert!(swept.deltas_started.is_empty() && swept.schedules_ended.is_empty(), "{swept:?}");
    Ok(())
}

#[tokio::test]
async fn a_delta_schedule_ends_at_the_cut_over_and_deletes_the_passwords() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("val", "pw-val-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("val", "pw-val-dst")]))?;
    seed(&src, "val", "pw-val-src", "INBOX", &corpus::mailbox("val-in", 5)).await?;
    let mut stack = Stack::start().await?;
    let csv = "source_user,source_password,destination_user,destination_password\nval,pw-val-src,val,pw-val-dst\n";
    let until = chrono::Utc::now() + chrono::Duration::seconds(20);
    let first = submitted(&stack.upload("short-plan", csv, &scheduled(&src, &dst, until)).await?)?;
    stack.drain(&first, Duration::from_secs(30), Duration::from_secs(60)).await?;
    wait_past(until.timestamp() + 1).await;
    // Past the cut-over the passwords are not kept (finalize, or else the sweeper, deletes them).
    let swept = stack.sweep().await?;
    assert!(swept.deltas_started.is_empty(), "no pass after the cut-over: {swept:?}");
    assert_eq!(swept.schedules_ended, vec![first.clone()], "{swept:?}");
    assert!(stack.secret_names().await?.is_empty());
    let events = stack.events().await?;
    let ended = events.iter().find(|(t, _)| t == "DeltaScheduleEnded").context("DeltaScheduleEnded")?;
    assert_eq!((ended.1["reason"].as_str(), ended.1["deltas"].as_u64()), (Some("until"), Some(0)));
    assert_eq!(contents(&dst, "val", "pw-val-dst").await?, contents(&src, "val", "pw-val-src").await?);
    Ok(())
}

// ---- through a real Lambda runtime ----

/// One function of the stack, its real binary served by `cargo lambda watch` (a Lambda
/// Runtime API) and invoked over HTTP as Lambda's invoke API is.
struct Function {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Function {
    /// Serves the binary `package` (also its name) with the stack's environment. It runs in
    /// the package's directory: the workspace's default members leave the functions out, so
    /// `cargo run --bin` must start there. The first invocation compiles it.
    fn start(package: &str, env: &HashMap<String, String>) -> Result<Function> {
        Function::start_instances(package, env, 1)
    }

    /// As [`Function::start`], with up to `instances` invocations served at once (Lambda's
    /// concurrency).
    fn start_instances(package: &str, env: &HashMap<String, String>, instances: usize) -> Result<Function> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(package.trim_start_matches("mailhaul-"));
        // scripts/setup.sh installs cargo-lambda into its lint virtualenv ($MAILHAUL_LINT_VENV).
        let venv = std::env::var_os("MAILHAUL_LINT_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mailhaul/lint-venv")
        });
        let installed = venv.join("bin/cargo-lambda");
        let program = if installed.exists() { installed } else { "cargo-lambda".into() };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = tempfile::NamedTempFile::new()?.into_temp_path().keep()?;
        let child = std::process::Command::new(&program)
            .args(["lambda", "watch", "-A", "127.0.0.1", "-P", &port.to_string(), "--ignore-changes"])
            .args(["--concurrency", &instances.to_string()])
            .current_dir(&dir)
            .envs(env)
            // The functions log JSON at info; enough to read a failure from the log file.
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("{}: install it with scripts/setup.sh", program.display()))?;
        let function =
            Function { child, url: format!("http://127.0.0.1:{port}/2015-03-31/functions/{package}/invocations"), log };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("cargo lambda watch for {package} did not listen within 60 s: {}", function.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(function)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Invokes the function with `event` and returns what it answered.
    async fn invoke(&self, event: &serde_json::Value) -> Result<serde_json::Value> {
        let response = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(event)?)
            // The first invocation compiles the binary (with the function package's own
            // feature set, so after `cargo test` shared crates too: about 90 s here).
            .timeout(Duration::from_secs(900))
            .send()
            .await
            .with_context(|| format!("invoking {}", self.url))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{} answered {status}: {text}\n{}", self.url, self.log_text());
        }
        serde_json::from_str(&text).with_context(|| format!("{} answered {text}", self.url))
    }
}

impl Drop for Function {
    /// Kills the watcher and everything it started (cargo, the function, which the watcher
    /// runs in a process group of its own): also the test's way of killing a function
    /// mid-pass.
    fn drop(&mut self) {
        let mut doomed = descendants(self.child.id());
        doomed.push(self.child.id());
        for pid in doomed {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.child.wait();
    }
}

/// Every process below `root`, from /proc (parent = field 4 of /proc/PID/stat).
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// SQS messages as the event source mapping hands them to a function.
fn sqs_event(messages: &[SqsMessage], queue_arn: &str) -> Result<serde_json::Value> {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .cloned()
        .map(|mut m| {
            m.event_source = Some("aws:sqs".into());
            m.event_source_arn = Some(queue_arn.to_string());
            m.aws_region = Some("us-east-1".into());
            m
        })
        .collect();
    Ok(serde_json::to_value(event)?)
}

impl Stack {
    /// As Lambda's SQS pollers with the real copy and finalize binaries: each delivery is an
    /// invocation of one record (the stack's BatchSize is 1), those received together invoked
    /// side by side; messages the partial batch response does not list as failed are deleted.
    async fn drain_through(
        &mut self,
        copy: &Function,
        finalize: &Function,
        batch: &str,
        limit: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        for (url, function) in std::iter::repeat([
            (self.svc.config.jobs_queue_url.clone(), copy),
            (self.svc.config.finalize_queue_url.clone(), finalize),
        ])
        .flatten()
        {
            if self.svc.table.batch_state(batch).await?.is_some_and(|s| s.state == "completed") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("batch {batch} not completed within {limit:?} through the Lambda runtime");
            }
            let messages = self.receive(&url, 1).await?;
            self.bodies.extend(messages.iter().map(|m| m.body.clone().unwrap_or_default()));
            let responses = futures::future::join_all(messages.iter().map(|m| async move {
                function.invoke(&sqs_event(std::slice::from_ref(m), "arn:aws:sqs:us-east-1:123456789012:q")?).await
            }))
            .await;
            for (m, response) in messages.iter().zip(responses) {
                let response = response?;
                let failed = response["batchItemFailures"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|f| f["itemIdentifier"].as_str() == m.message_id.as_deref()));
                if failed {
                    self.redeliver_soon(&url, m).await?;
                } else {
                    self.delete(&url, m).await?;
                }
            }
        }
        unreachable!("the loop above only returns")
    }
}

/// Source messages in INBOX, as its STATUS says.
async fn inbox_count(server: &Dovecot, user: &str, pass: &str) -> Result<u32> {
    let mut session = mailhaul_tests::imap::login(server, user, pass).await?;
    let status = session.status("INBOX", "(MESSAGES)").await?;
    session.logout().await.ok();
    Ok(status.exists)
}

/// The three real binaries behind `cargo lambda watch`, driven with S3 and SQS event JSON and
/// partial batch responses as AWS drives them: a first pass whose copy function is killed
/// mid-pass (the sweeper re-drives it, and the copy is exact), then a delta pass by uploading
/// the same CSV again.
#[tokio::test]
async fn the_real_binaries_behind_a_lambda_runtime_copy_resume_after_a_kill_and_run_a_delta() -> Result<()> {
    capture_logs();
    let src = Dovecot::start(DovecotOptions::with_users(&[("wes", "pw-wes-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("wes", "pw-wes-dst")]))?;
    seed(&src, "wes", "pw-wes-src", "INBOX", &corpus::mailbox("wes-in", 150)).await?;
    seed(&src, "wes", "pw-wes-src", "Work", &corpus::mailbox("wes-work", 10)).await?;
    // A pass is time-boxed by the fallback (cargo lambda watch sends no real deadline): a few
    // seconds, so the mailbox takes continuations and a crashed pass's lease ends soon.
    let mut stack =
        Stack::start_with(&[("MAILHAUL_DEADLINE_FALLBACK_SECONDS", "4"), ("MAILHAUL_MAX_CRASHED_PASSES", "3")]).await?;
    let upload = Function::start("mailhaul-upload", &stack.env)?;
    let finalize = Function::start("mailhaul-finalize", &stack.env)?;
    let mut copy = Function::start("mailhaul-copy", &stack.env)?;

    let csv = "source_user,source_password,destination_user,destination_password\nwes,pw-wes-src,wes,pw-wes-dst\n";
    // The source 20 ms of round trip away, so the first pass is still copying when killed.
    let slow = mailhaul_tests::proxy::DelayProxy::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], src.imap_port)),
        Duration::from_millis(10),
    )?;
    let settings =
        sidecar(&src, &dst, 2).replace(&format!("port = {}\n", src.imap_port), &format!("port = {}\n", slow.port));
    let event = stack.s3_event("runtime", csv, &settings).await?;
    let outcomes = upload.invoke(&event).await?;
    assert_eq!(outcomes[0]["outcome"], "submitted", "{outcomes}");
    let batch = outcomes[0]["batch"].as_str().context("batch id")?.to_string();

    // The first pass: killed once some messages landed, long before all did.
    let jobs = stack.first_jobs(1).await?;
    let first = sqs_event(&[jobs["wes"].clone()], "arn:aws:sqs:us-east-1:123456789012:jobs")?;
    let pass = {
        let (url, client) = (copy.url.clone(), reqwest::Client::new());
        let body = serde_json::to_vec(&first)?;
        tokio::spawn(async move { client.post(url).body(body).timeout(Duration::from_secs(600)).send().await })
    };
    let started = Instant::now();
    loop {
        let landed = inbox_count(&dst, "wes", "pw-wes-dst").await.unwrap_or(0);
        if landed >= 4 {
            assert!(landed < 150, "the pass finished before it could be killed ({landed} landed)");
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("nothing landed within 300 s: {}", copy.log_text());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(copy);
    assert!(pass.await?.is_err(), "the invocation died with its function");
    // cargo lambda watch starts no new instance after one died: a new one, as Lambda would.
    copy = Function::start("mailhaul-copy", &stack.env)?;

    // Its lease (deadline + 1 s) runs out; the sweep re-drives it at once.
    let swept = loop {
        let swept = finalize.invoke(&serde_json::from_str(include_str!("fixtures/scheduled-event.json"))?).await?;
        if swept["redriven"].as_array().is_some_and(|r| !r.is_empty()) {
            break swept;
        }
        if started.elapsed() > Duration::from_secs(360) {
            bail!("the crashed pass was never re-driven: {swept}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(swept["redriven"], serde_json::json!([format!("{batch}/wes")]));
    stack.drain_through(&copy, &finalize, &batch, Duration::from_secs(240)).await?;
    let got = contents(&dst, "wes", "pw-wes-dst").await?;
    assert_eq!(got, contents(&src, "wes", "pw-wes-src").await?, "every message exactly once after the kill");
    let item = stack.svc.table.mailbox_item(&batch, "wes").await?.context("wes")?;
    assert_eq!((item.record.status, item.crashes), (mailhaul_common::model::MailboxStatus::Done, 1));
    assert!(stack.object(&format!("reports/{batch}/report.html")).await?.is_some());
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");

    // New mail; the same CSV again: a delta pass that copies only it.
    seed(&src, "wes", "pw-wes-src", "INBOX", &corpus::mailbox("wes-late", 4)).await?;
    let event = stack.s3_event("runtime", csv, &settings).await?;
    let outcomes = upload.invoke(&event).await?;
    let delta = outcomes[0]["batch"].as_str().context("delta id")?.to_string();
    assert!(delta.starts_with(&format!("{batch}-delta-")), "{outcomes}");
    stack.drain_through(&copy, &finalize, &delta, Duration::from_secs(240)).await?;
    assert_eq!(contents(&dst, "wes", "pw-wes-dst").await?, contents(&src, "wes", "pw-wes-src").await?);
    let events = stack.events().await?;
    let done = events
        .iter()
        .find(|(t, d)| t == "BatchCompleted" && d["batch"] == delta.as_str())
        .context("the delta's BatchCompleted")?;
    assert_eq!(done.1["messages_copied"].as_u64(), Some(4), "only the new mail");
    // Nothing the runtime carried holds a password.
    for body in &stack.bodies {
        assert!(!body.contains("pw-wes"), "a password in a queue message: {body}");
    }
    Ok(())
}

/// The Exchange CSV form through the real binaries: the destination login is the stack's
/// master user, its password read by the copy function from the secret the stack parameters
/// name. No password shows up in what the functions logged, queued or stored.
#[tokio::test]
async fn the_exchange_form_runs_through_the_real_binaries_without_a_password_in_their_logs() -> Result<()> {
    let src = Dovecot::start(DovecotOptions::with_users(&[("pat@example.com", OLGA_SRC)]))?;
    let dst = Dovecot::start(
        DovecotOptions::with_users(&[("pat@example.com", "Dst-Pat-unknown-pw")]).master("admin", DST_ADMIN),
    )?;
    seed(&src, "pat@example.com", OLGA_SRC, "INBOX", &corpus::mailbox("pat-in", 9)).await?;
    seed(&src, "pat@example.com", OLGA_SRC, "Archive", &corpus::mailbox("pat-arch", 3)).await?;
    let mut stack = Stack::start_with(&[
        ("MAILHAUL_DESTINATION_ADMIN_USER", "admin"),
        ("MAILHAUL_DESTINATION_MASTER_SEPARATOR", "*"),
        ("MAILHAUL_DESTINATION_ADMIN_PASSWORD_SECRET", "mailhaul/test/admin/destination"),
        ("MAILHAUL_DEADLINE_FALLBACK_SECONDS", "30"),
    ])
    .await?;
    stack.svc.secrets.put("mailhaul/test/admin/destination", &mailhaul_common::Secret::new(DST_ADMIN)).await?;
    let upload = Function::start("mailhaul-upload", &stack.env)?;
    let finalize = Function::start("mailhaul-finalize", &stack.env)?;
    let copy = Function::start("mailhaul-copy", &stack.env)?;

    let csv = format!("EmailAddress,UserName,Password\npat@example.com,pat@example.com,{OLGA_SRC}\n");
    let event = stack.s3_event("exchange-runtime", &csv, &sidecar(&src, &dst, 5)).await?;
    let outcomes = upload.invoke(&event).await?;
    assert_eq!(outcomes[0]["outcome"], "submitted", "{outcomes}");
    let batch = outcomes[0]["batch"].as_str().context("batch id")?.to_string();
    stack.drain_through(&copy, &finalize, &batch, Duration::from_secs(300)).await?;
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!(
        (state.done, state.failed),
        (1, 0),
        "{:?}",
        stack.svc.table.mailbox_item(&batch, "pat@example.com").await?
    );
    let got = contents(&dst, "pat@example.com", "Dst-Pat-unknown-pw").await?;
    assert_eq!(got, contents(&src, "pat@example.com", OLGA_SRC).await?, "every message exactly once");
    assert_eq!(stack.secret_names().await?, vec!["mailhaul/test/admin/destination".to_string()]);
    let mut haystacks = vec![
        ("sqs", stack.bodies.join("\n")),
        ("dynamodb", stack.table_dump().await?),
        ("upload's log", upload.log_text()),
        ("copy's log", copy.log_text()),
        ("finalize's log", finalize.log_text()),
    ];
    for (key, body) in stack.all_objects().await? {
        haystacks.push(("s3", format!("{key}: {}", String::from_utf8_lossy(&body))));
    }
    assert!(haystacks[3].1.contains("job handled"), "the copy function's log is read: {}", haystacks[3].1);
    for (what, text) in &haystacks {
        for pw in [OLGA_SRC, DST_ADMIN] {
            assert!(!text.contains(pw), "a password leaked into {what}");
        }
    }
    Ok(())
}

/// Source and destination of a mailbox `max` of four folders of `messages` each, and a batch
/// of it whose first pass ran out of time and whose second split it into three parts (their
/// jobs queued).
async fn split_a_mailbox(messages: u32) -> Result<(Dovecot, Dovecot, Stack, String)> {
    let src = Dovecot::start(DovecotOptions::with_users(&[("max", "pw-max-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("max", "pw-max-dst")]))?;
    for folder in ["INBOX", "Archive", "Projects", "Receipts"] {
        seed(&src, "max", "pw-max-src", folder, &corpus::mailbox(&format!("max-{folder}"), messages)).await?;
    }
    let mut stack = Stack::start().await?;
    let settings = format!(
        "split_mailboxes_above = \"20KB\"\nmax_parts_per_mailbox = 3\n{}connections_per_mailbox = 1\n",
        sidecar(&src, &dst, 2)
    );
    let csv = "source_user,source_password,destination_user,destination_password\nmax,pw-max-src,max,pw-max-dst\n";
    let batch = submitted(&stack.upload("big", csv, &settings).await?)?;

    // The first pass runs out of time; the next one surveys the mailbox and splits it.
    let first = stack.first_jobs(1).await?;
    let soon = SystemTime::now() + Duration::from_millis(300);
    let out = mailhaul_aws::copy::process_message(&stack.svc, &first["max"], soon).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Continued);
    let second = stack.first_jobs(1).await?;
    let later = SystemTime::now() + Duration::from_secs(60);
    let out = mailhaul_aws::copy::process_message(&stack.svc, &second["max"], later).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Split { parts: 3 });
    let item = stack.svc.table.mailbox_item(&batch, "max").await?.context("max")?;
    assert!(item.is_split() && item.pass_until.is_none(), "{item:?}");
    Ok((src, dst, stack, batch))
}

/// A mailbox a first pass could not finish is surveyed and, being big, copied in parts by
/// several functions side by side: each part copies its own folders (one writer per
/// destination folder), a part killed mid-pass is re-driven by the sweeper like any
/// mailbox, and the mailbox is done (one row, one event) once every part is.
#[tokio::test]
async fn a_big_mailbox_is_copied_in_parts_side_by_side_and_a_killed_part_resumes() -> Result<()> {
    capture_logs();
    let (src, dst, mut stack, batch) = split_a_mailbox(60).await?;
    let folders = ["INBOX", "Archive", "Projects", "Receipts"];
    let later = SystemTime::now() + Duration::from_secs(60);

    // Every folder is one part's, and only one's.
    let parts = stack.first_jobs(3).await?;
    let names: Vec<&String> = parts.keys().collect();
    assert_eq!(names, ["max (part 1 of 3)", "max (part 2 of 3)", "max (part 3 of 3)"]);
    for folder in folders {
        let owners = parts
            .values()
            .map(|m| serde_json::from_str::<JobMessage>(m.body.as_deref().unwrap_or("")))
            .filter(|job| job.as_ref().is_ok_and(|j| j.options.share.as_ref().is_some_and(|s| s.includes(folder))))
            .count();
        assert_eq!(owners, 1, "{folder}: copied by {owners} parts");
    }

    // Part 2 dies mid-pass; parts 1 and 3 run at once, each in its own function.
    let killed = crash_a_pass(&stack, &parts["max (part 2 of 3)"], Duration::from_secs(3)).await?;
    let run = |name: &str| mailhaul_aws::copy::process_message(&stack.svc, &parts[name], later);
    let (one, three) = tokio::join!(run("max (part 1 of 3)"), run("max (part 3 of 3)"));
    assert_eq!((one?, three?), (mailhaul_aws::copy::JobOutcome::Done, mailhaul_aws::copy::JobOutcome::Done));
    let item = stack.svc.table.mailbox_item(&batch, "max").await?.context("max")?;
    assert_eq!(item.record.status, mailhaul_common::model::MailboxStatus::Running, "a part is still to copy");
    assert_eq!(item.parts_final, 2);
    let status = mailhaul_aws::cli::status(&stack.sdk, stack.svc.table.name(), &batch).await?;
    let states: Vec<(&str, &str)> = status.parts.iter().map(|p| (p.mailbox.as_str(), p.status.as_str())).collect();
    assert_eq!(
        states,
        [("max (part 1 of 3)", "done"), ("max (part 2 of 3)", "running"), ("max (part 3 of 3)", "done")]
    );
    assert_eq!(status.mailboxes.len(), 1);

    // The sweeper re-drives the killed part; the mailbox ends when it does.
    wait_past(killed).await;
    let swept = stack.sweep().await?;
    assert_eq!(swept.redriven, vec![format!("{batch}/max (part 2 of 3)")], "{swept:?}");
    stack.drain(&batch, Duration::from_secs(20), Duration::from_secs(120)).await?;
    assert_eq!(contents(&dst, "max", "pw-max-dst").await?, contents(&src, "max", "pw-max-src").await?);
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.total, state.done, state.failed), (1, 1, 0));
    assert_eq!(state.messages_copied, 240, "every message counted once, the killed part's too");
    let records = mailhaul_common::ports::BatchStore::mailboxes(&stack.svc.table.batch_store(&batch)).await?;
    assert_eq!(records.len(), 1, "one row, not one per part: {records:?}");
    assert!(records[0].passes >= 4, "the mailbox's passes include its parts': {}", records[0].passes);
    let report = String::from_utf8(stack.object(&format!("reports/{batch}/report.csv")).await?.context("report")?)?;
    assert!(!report.contains("part 1 of"), "{report}");
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "MailboxCompleted").count(), 1, "{events:?}");
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1, "{events:?}");
    Ok(())
}

/// One big folder copied by several functions at once, each a UID range of it, into the same
/// destination folder: a range killed mid-batch while another appends resumes (sweeper)
/// without a duplicate, the folder is verified whole by one more pass once every range is
/// done, the report has one row that says so, and a later delta pass copies only what is new.
#[tokio::test]
async fn one_big_folder_is_copied_in_uid_ranges_by_parts_side_by_side_exactly_once() -> Result<()> {
    capture_logs();
    let messages = 120;
    let src = Dovecot::start(DovecotOptions::with_users(&[("uma", "pw-uma-src")]))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&[("uma", "pw-uma-dst")]))?;
    seed(&src, "uma", "pw-uma-src", "INBOX", &corpus::mailbox("uma", messages)).await?;
    let mut stack = Stack::start().await?;
    let settings = format!(
        "split_mailboxes_above = \"20KB\"\nmax_parts_per_mailbox = 3\n{}connections_per_mailbox = 1\n",
        sidecar(&src, &dst, 2)
    );
    let csv = "source_user,source_password,destination_user,destination_password\numa,pw-uma-src,uma,pw-uma-dst\n";
    let batch = submitted(&stack.upload("uma", csv, &settings).await?)?;
    let first = stack.first_jobs(1).await?;
    let soon = SystemTime::now() + Duration::from_millis(300);
    let out = mailhaul_aws::copy::process_message(&stack.svc, &first["uma"], soon).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Continued);
    let second = stack.first_jobs(1).await?;
    let later = SystemTime::now() + Duration::from_secs(60);
    let out = mailhaul_aws::copy::process_message(&stack.svc, &second["uma"], later).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Split { parts: 3 });

    // Part 1 takes every folder but INBOX (none has work); parts 2 and 3 split INBOX's UIDs
    // not copied yet, the top range open.
    let parts = stack.first_jobs(3).await?;
    let share = |name: &str| -> Result<mailhaul_common::model::FolderShare> {
        let job: JobMessage = serde_json::from_str(parts[name].body.as_deref().unwrap_or(""))?;
        job.options.share.context("a part's share")
    };
    assert!(!share("uma (part 1 of 3)")?.includes("INBOX"));
    let (low, high) = (share("uma (part 2 of 3)")?, share("uma (part 3 of 3)")?);
    let (low, high) = (low.range().context("a range")?.clone(), high.range().context("a range")?.clone());
    assert_eq!((low.to + 1, high.to), (high.from, u32::MAX), "{low:?} {high:?}");
    assert!(low.from > 1, "the first pass copied some: {low:?}");

    // The top range dies mid-pass while the low range appends to the same folder.
    let run = |name: &str| mailhaul_aws::copy::process_message(&stack.svc, &parts[name], later);
    let (killed, one, two) = tokio::join!(
        crash_a_pass(&stack, &parts["uma (part 3 of 3)"], Duration::from_secs(3)),
        run("uma (part 1 of 3)"),
        run("uma (part 2 of 3)"),
    );
    assert_eq!((one?, two?), (mailhaul_aws::copy::JobOutcome::Done, mailhaul_aws::copy::JobOutcome::Done));
    let item = stack.svc.table.mailbox_item(&batch, "uma").await?.context("uma")?;
    assert_eq!((item.record.status, item.parts_final), (mailhaul_common::model::MailboxStatus::Running, 2));

    // The sweeper re-drives it; when it is done, one more pass of the mailbox verifies INBOX.
    wait_past(killed?).await;
    let swept = stack.sweep().await?;
    assert_eq!(swept.redriven, vec![format!("{batch}/uma (part 3 of 3)")], "{swept:?}");
    stack.drain(&batch, Duration::from_secs(20), Duration::from_secs(120)).await?;
    let copied = contents(&dst, "uma", "pw-uma-dst").await?;
    assert_eq!(copied, contents(&src, "uma", "pw-uma-src").await?, "every message exactly once");
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.done, state.failed, state.messages_copied), (1, 0, u64::from(messages)));
    let report: serde_json::Value =
        serde_json::from_slice(&stack.object(&format!("reports/{batch}/report.json")).await?.context("report")?)?;
    let rows = report["mailboxes"].as_array().context("mailboxes")?;
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["verify"], "ok", "verified whole after the ranges: {report}");
    assert_eq!(rows[0]["totals"]["copied"], messages, "{report}");
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "MailboxCompleted").count(), 1, "{events:?}");

    // The folder's checkpoint is one again, for the delta passes until cut-over.
    seed(&src, "uma", "pw-uma-src", "INBOX", &corpus::mailbox("uma-late", 3)).await?;
    let delta = submitted(&stack.upload("uma", csv, &settings).await?)?;
    stack.drain(&delta, Duration::from_secs(20), Duration::from_secs(60)).await?;
    assert_eq!(contents(&dst, "uma", "pw-uma-dst").await?, contents(&src, "uma", "pw-uma-src").await?);
    let state = stack.svc.table.batch_state(&delta).await?.context("delta")?;
    assert_eq!((state.done, state.messages_copied), (1, 3), "the delta copies only the new messages");
    Ok(())
}

/// A batch of `rows` rows through the real binaries: upload packs the passwords into secrets
/// under 64 KB and fans out a job per row, copy functions (four instances, one record per
/// invocation as the stack's event source mapping has it) copy every mailbox, and finalize
/// writes one report with a line per row and deletes the secrets. Returns the seconds
/// (upload, whole batch).
async fn rows_through_the_real_binaries(rows: usize) -> Result<(f64, f64)> {
    let users: Vec<(String, String)> =
        (0..rows).map(|i| (format!("u{i:04}"), format!("pw-u{i:04}-dst-long-enough-for-two-secrets"))).collect();
    let user_refs: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    // One source mailbox read by every row (read-only): `rows` destinations to fill.
    let src = Dovecot::start(DovecotOptions::with_users(&[("team", "pw-team-src")]).layout(Layout::None))?;
    let dst = Dovecot::start(DovecotOptions::with_users(&user_refs).layout(Layout::None))?;
    seed(&src, "team", "pw-team-src", "INBOX", &corpus::mailbox("team", 2)).await?;
    let mut stack = Stack::start_with(&[("MAILHAUL_DEADLINE_FALLBACK_SECONDS", "60")]).await?;
    let upload = Function::start("mailhaul-upload", &stack.env)?;
    let finalize = Function::start("mailhaul-finalize", &stack.env)?;
    let copy = Function::start_instances("mailhaul-copy", &stack.env, 4)?;
    // The first invocation of each compiles it: not part of the figures.
    let warm = serde_json::json!({"Records": []});
    for function in [&upload, &copy, &finalize] {
        function.invoke(&warm).await.ok();
    }

    let mut csv = String::from("source_user,source_password,destination_user,destination_password\n");
    for (user, password) in &users {
        csv.push_str(&format!("team,pw-team-src,{user},{password}\n"));
    }
    let settings = format!("{}connections_per_mailbox = 1\n", sidecar(&src, &dst, 50));
    let started = Instant::now();
    let event = stack.s3_event(&format!("rows-{rows}"), &csv, &settings).await?;
    let outcomes = upload.invoke(&event).await?;
    assert_eq!(outcomes[0]["outcome"], "submitted", "{outcomes}");
    assert_eq!(outcomes[0]["mailboxes"], rows, "{outcomes}");
    let batch = outcomes[0]["batch"].as_str().context("batch id")?.to_string();
    let uploaded = started.elapsed().as_secs_f64();
    let secrets = stack.secret_names().await?;
    let password_bytes: usize = users.iter().map(|(u, p)| u.len() + p.len() + 45).sum();
    assert_eq!(
        secrets.len(),
        password_bytes.div_ceil(mailhaul_aws::upload::SECRET_CHUNK_BYTES),
        "secrets under 64 KB each: {secrets:?}"
    );

    stack.drain_through(&copy, &finalize, &batch, Duration::from_secs(3600)).await?;
    let whole = started.elapsed().as_secs_f64();
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.total, state.done, state.failed), (rows as u64, rows as u64, 0));
    assert_eq!(state.messages_copied, 2 * rows as u64);
    let report = String::from_utf8(stack.object(&format!("reports/{batch}/report.csv")).await?.context("report")?)?;
    assert_eq!(report.lines().count(), rows + 1, "a header and one line per row");
    let want = contents(&src, "team", "pw-team-src").await?;
    for (user, password) in [&users[0], &users[rows / 2], &users[rows - 1]] {
        assert_eq!(contents(&dst, user, password).await?, want, "{user}");
    }
    assert!(stack.secret_names().await?.is_empty(), "the batch's secrets are deleted");
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1);
    for body in &stack.bodies {
        assert!(!body.contains("pw-u0"), "a password in a queue message: {body}");
    }
    Ok((uploaded, whole))
}

#[tokio::test]
async fn a_batch_of_a_hundred_rows_runs_through_the_real_binaries() -> Result<()> {
    capture_logs();
    let (upload, whole) = rows_through_the_real_binaries(100).await?;
    eprintln!("100 rows through the real binaries on moto: upload {upload:.1} s, whole batch {whole:.1} s");
    Ok(())
}

/// The same with 1,000 rows: 23 minutes on moto, whose TransactWriteItems deep-copies every
/// table on each call (a finished mailbox is one), so it runs from bench/thousand_rows.sh,
/// which prints its figures, rather than in every test run.
#[tokio::test]
#[ignore = "long on moto: bench/thousand_rows.sh runs it"]
async fn a_batch_of_a_thousand_rows_runs_through_the_real_binaries() -> Result<()> {
    capture_logs();
    let (upload, whole) = rows_through_the_real_binaries(1000).await?;
    println!("1000 rows through the real binaries on moto: upload {upload:.1} s, whole batch {whole:.1} s");
    Ok(())
}

/// Every split mailbox ends, once: the mailbox's own pass re-driven after the split sends its
/// parts again (the duplicates copy nothing), a part in the dead-letter queue fails, the
/// sweeper finishes the mailbox when its last part's finisher died first, and the mailbox
/// fails with the failed part's reason while the other parts' folders are copied exactly.
#[tokio::test]
async fn a_split_mailbox_ends_once_whatever_becomes_of_its_parts() -> Result<()> {
    capture_logs();
    let (src, dst, mut stack, batch) = split_a_mailbox(20).await?;
    let parts = stack.first_jobs(3).await?;
    let later = || SystemTime::now() + Duration::from_secs(60);

    // The mailbox's pass looks crashed (as if it died between the split and its end): the
    // sweeper re-drives it, and it queues the parts again.
    stack.svc.table.begin_pass(&batch, "max", chrono::Utc::now().timestamp() - 10).await?;
    let swept = stack.sweep().await?;
    assert_eq!(swept.redriven, vec![format!("{batch}/max")], "{swept:?}");
    let redriven = stack.first_jobs(1).await?;
    let out = mailhaul_aws::copy::process_message(&stack.svc, &redriven["max"], later()).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Split { parts: 3 });
    let duplicates = stack.first_jobs(3).await?;
    assert_eq!(duplicates.keys().collect::<Vec<_>>(), parts.keys().collect::<Vec<_>>());

    // Part 2 reaches the dead-letter queue; part 1 copies its folders.
    let dead = mailhaul_aws::dead_letter::process_dead_letter(&stack.svc, &parts["max (part 2 of 3)"]).await?;
    assert!(matches!(dead, mailhaul_aws::dead_letter::DeadLetterOutcome::Failed { .. }), "{dead:?}");
    let out = mailhaul_aws::copy::process_message(&stack.svc, &parts["max (part 1 of 3)"], later()).await?;
    assert_eq!(out, mailhaul_aws::copy::JobOutcome::Done);
    // Part 3's finisher marks it final and dies before finishing the mailbox.
    let three = stack.svc.table.mailbox_item(&batch, "max (part 3 of 3)").await?.context("part 3")?;
    let mut record = three.record;
    record.status = mailhaul_common::model::MailboxStatus::Done;
    assert!(stack.svc.table.finish_part(&batch, "max", &record).await?);
    let item = stack.svc.table.mailbox_item(&batch, "max").await?.context("max")?;
    assert_eq!((item.record.status, item.parts_final), (mailhaul_common::model::MailboxStatus::Running, 3));
    let swept = stack.sweep().await?;
    assert_eq!(swept.completed_splits, vec![format!("{batch}/max")], "{swept:?}");
    assert!(stack.sweep().await?.completed_splits.is_empty(), "finished once");
    let item = stack.svc.table.mailbox_item(&batch, "max").await?.context("max")?;
    assert_eq!(item.record.status, mailhaul_common::model::MailboxStatus::Failed);
    let error = item.record.error.unwrap_or_default();
    assert!(error.starts_with("part 2 of 3: the copy function crashed"), "{error}");

    // The duplicates of the parts change nothing.
    for m in duplicates.values() {
        let out = mailhaul_aws::copy::process_message(&stack.svc, m, later()).await?;
        assert_eq!(out, mailhaul_aws::copy::JobOutcome::Stale);
    }
    stack.drain(&batch, Duration::from_secs(20), Duration::from_secs(60)).await?;
    let state = stack.svc.table.batch_state(&batch).await?.context("batch")?;
    assert_eq!((state.total, state.done, state.failed, state.state.as_str()), (1, 0, 1, "completed"));
    // Part 1's folders are exact; nothing is anywhere twice.
    let one: JobMessage = serde_json::from_str(parts["max (part 1 of 3)"].body.as_deref().unwrap_or(""))?;
    let share = one.options.share.context("part 1's folders")?;
    let (want, got) = (contents(&src, "max", "pw-max-src").await?, contents(&dst, "max", "pw-max-dst").await?);
    for (folder, bodies) in &got {
        let mut distinct = bodies.clone();
        distinct.dedup();
        assert_eq!(&distinct, bodies, "{folder}: a message twice");
        if share.includes(folder) {
            assert_eq!(Some(bodies), want.get(folder), "{folder}");
        }
    }
    let events = stack.events().await?;
    assert_eq!(events.iter().filter(|(t, _)| t == "MailboxCompleted").count(), 1, "{events:?}");
    assert_eq!(events.iter().filter(|(t, _)| t == "BatchCompleted").count(), 1, "{events:?}");
    Ok(())
}

/// The finalize function's report goes to S3 as it is written, in parts once a file is bigger
/// than a part: the objects are the report built whole. moto here takes parts of 1 KiB (S3:
/// 5 MiB) so that 60 mailboxes make every file but the CSVs several parts.
#[tokio::test]
async fn a_report_bigger_than_a_part_goes_to_s3_in_parts_and_is_the_whole_report() -> Result<()> {
    use mailhaul_common::model::{FolderCheckpoint, FolderCounts, MailboxStatus, SkipReason, SkippedMessage};
    use mailhaul_common::ports::{BatchMeta, BatchStore, CheckpointStore, MailboxRecord};
    use mailhaul_common::report::{build_report, BatchReport};

    let moto = Moto::start_with_env(&[("S3_UPLOAD_PART_MIN_SIZE", "1024")])?;
    let sdk = mailhaul_aws::config::local_sdk_config(&moto.url).await;
    let s3 = mailhaul_aws::config::s3_client(&sdk);
    s3.create_bucket().bucket("reports").send().await?;
    let objects = mailhaul_aws::adapters::S3Objects { client: s3.clone() };

    let state = mailhaul_common::sqlite::SqliteStore::in_memory()?;
    let headers = vec!["source_user".to_string(), "source_password".to_string(), "destination_user".to_string()];
    state.put_batch(&BatchMeta { id: "big".into(), headers, total: 60, created_at: chrono::Utc::now() }).await?;
    for row in 1..=60 {
        let mailbox = format!("user{row}@example.com");
        let mut record = MailboxRecord::pending(
            &mailbox,
            row,
            &format!("old{row}"),
            vec![format!("old{row}"), String::new(), mailbox.clone()],
        );
        record.status = if row % 7 == 0 { MailboxStatus::Failed } else { MailboxStatus::Done };
        record.error = (row % 7 == 0).then(|| "LOGIN refused: AUTHENTICATIONFAILED".to_string());
        state.put_mailbox(&record).await?;
        for folder in ["INBOX", "Sent", "Archive/2024", "Projekte/Qualität"] {
            let counts = FolderCounts { copied: row as u64, bytes: 1_000 * row as u64, ..Default::default() };
            let checkpoint = FolderCheckpoint {
                source_folder: folder.into(),
                destination_folder: folder.into(),
                counts,
                complete: true,
                ..Default::default()
            };
            state.save_folder(&mailbox, &checkpoint).await?;
        }
        if row % 5 == 0 {
            let refused = SkippedMessage {
                folder: "INBOX".into(),
                uid: row as u32,
                size: 60_000_000,
                message_id: None,
                reason: SkipReason::Refused,
                detail: "NO [LIMIT] too big".into(),
            };
            state.record_skipped(&mailbox, &refused).await?;
        }
    }

    let totals =
        mailhaul_aws::report_upload::write_report(&objects, "reports", "reports/big", &state, &state, None, 1024)
            .await?;
    let whole = build_report(&state, &state).await?;
    assert_eq!(totals, whole.totals);

    let get = |name: &'static str| {
        let s3 = s3.clone();
        async move {
            let out = s3.get_object().bucket("reports").key(format!("reports/big/{name}")).send().await?;
            Ok::<_, anyhow::Error>(out.body.collect().await?.into_bytes().to_vec())
        }
    };
    // An object sent in parts says how many (its ETag ends "-N"); one sent whole does not.
    let parts = |name: &'static str| {
        let s3 = s3.clone();
        async move {
            let head = s3.head_object().bucket("reports").key(format!("reports/big/{name}")).send().await?;
            let etag = head.e_tag.unwrap_or_default();
            Ok::<_, anyhow::Error>(etag.trim_matches('"').split_once('-').map(|(_, n)| n.parse::<u32>()).transpose()?)
        }
    };
    let json = get("report.json").await?;
    let html = get("report.html").await?;
    let csv = get("report.csv").await?;
    let failed = get("failed.csv").await?;
    for (name, size) in [("report.json", json.len()), ("report.html", html.len()), ("report.csv", csv.len())] {
        let expected = size.div_ceil(1024) as u32;
        assert_eq!(parts(name).await?, Some(expected), "{name}: {size} bytes in parts of 1 KiB");
    }
    assert_eq!(parts("failed.csv").await?, None, "a file smaller than a part is one PutObject");

    // The same files as the report built whole (the time it was generated aside).
    let sent: BatchReport = serde_json::from_slice(&json)?;
    let expected = BatchReport { generated_at: sent.generated_at, ..whole };
    let files = expected.files();
    assert_eq!(String::from_utf8(json)?, String::from_utf8(files.json)?);
    assert_eq!(String::from_utf8(html)?, String::from_utf8(files.html)?);
    assert_eq!(String::from_utf8(csv)?, String::from_utf8(files.csv)?);
    assert_eq!(String::from_utf8(failed)?, String::from_utf8(files.failed)?);
    assert_eq!(expected.mailboxes.len(), 60);
    assert!(s3.list_multipart_uploads().bucket("reports").send().await?.uploads().is_empty(), "no upload left open");
    Ok(())
}
