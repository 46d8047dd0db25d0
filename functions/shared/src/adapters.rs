//! AWS adapters of the ports: S3, SQS, Secrets Manager, EventBridge + SNS.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use mailhaul_common::Secret;

use crate::ports::{JobQueue, Notifier, ObjectStore, OutMessage, PortError, SecretStore};

/// Longest delay SQS accepts on a message.
pub const MAX_DELAY_SECONDS: u32 = 900;

fn sdk_err<E: std::error::Error>(service: &'static str, op: &'static str, what: &str, e: E) -> PortError {
    PortError::new(service, op, format!("{what}: {}", DisplayErrorContext(&e)))
}

/// [`ObjectStore`] on S3.
pub struct S3Objects {
    pub client: aws_sdk_s3::Client,
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let what = format!("s3://{bucket}/{key}");
        match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => {
                let bytes = out.body.collect().await.map_err(|e| sdk_err("s3", "GetObject", &what, e))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_err("s3", "GetObject", &what, e)),
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), PortError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_err("s3", "PutObject", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err("s3", "DeleteObject", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn start_parts(&self, bucket: &str, key: &str, content_type: &str) -> Result<String, PortError> {
        let what = format!("s3://{bucket}/{key}");
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| sdk_err("s3", "CreateMultipartUpload", &what, e))?;
        out.upload_id.ok_or_else(|| PortError::new("s3", "CreateMultipartUpload", format!("{what}: no upload id")))
    }

    async fn send_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        number: i32,
        body: Vec<u8>,
    ) -> Result<String, PortError> {
        let what = format!("s3://{bucket}/{key} part {number}");
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_err("s3", "UploadPart", &what, e))?;
        out.e_tag.ok_or_else(|| PortError::new("s3", "UploadPart", format!("{what}: no ETag")))
    }

    async fn finish_parts(&self, bucket: &str, key: &str, upload: &str, etags: Vec<String>) -> Result<(), PortError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let parts = etags
            .into_iter()
            .zip(1..)
            .map(|(etag, number)| CompletedPart::builder().e_tag(etag).part_number(number).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| sdk_err("s3", "CompleteMultipartUpload", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn abort_parts(&self, bucket: &str, key: &str, upload: &str) -> Result<(), PortError> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .send()
            .await
            .map_err(|e| sdk_err("s3", "AbortMultipartUpload", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn presigned_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<String, PortError> {
        let what = format!("s3://{bucket}/{key}");
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| sdk_err("s3", "presign GetObject", &what, e))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| sdk_err("s3", "presign GetObject", &what, e))?;
        Ok(request.uri().to_string())
    }
}

/// [`JobQueue`] on SQS.
pub struct SqsQueue {
    pub client: aws_sdk_sqs::Client,
}

/// SendMessageBatch calls one [`SqsQueue::send`] keeps in flight.
const SQS_SENDS_IN_FLIGHT: usize = 16;

impl SqsQueue {
    /// One SendMessageBatch of at most ten messages; any refused message fails the whole send.
    async fn send_batch(&self, queue_url: &str, chunk: &[OutMessage]) -> Result<(), PortError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        let mut entries = Vec::with_capacity(chunk.len());
        for (i, m) in chunk.iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(&m.body)
                .delay_seconds(m.delay_seconds.min(MAX_DELAY_SECONDS) as i32)
                .build()
                .map_err(|e| sdk_err("sqs", "SendMessageBatch", queue_url, e))?;
            entries.push(entry);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_err("sqs", "SendMessageBatch", queue_url, e))?;
        match out.failed().first() {
            None => Ok(()),
            Some(failed) => Err(PortError::new(
                "sqs",
                "SendMessageBatch",
                format!(
                    "{queue_url}: {} of {} messages refused, e.g. {}: {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.code(),
                    failed.message().unwrap_or("")
                ),
            )),
        }
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, queue_url: &str, messages: Vec<OutMessage>) -> Result<(), PortError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        // Ten messages per call (SQS's limit), several calls at once: a 50,000-row batch is
        // 5,000 calls.
        let mut chunks: Vec<Vec<OutMessage>> = Vec::with_capacity(messages.len().div_ceil(10));
        for message in messages {
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < 10 => chunk.push(message),
                _ => chunks.push(vec![message]),
            }
        }
        // Owned chunks: a closure over borrowed ones is not general enough for async_trait's
        // Send bound.
        stream::iter(chunks)
            .map(|chunk| async move { self.send_batch(queue_url, &chunk).await })
            .buffer_unordered(SQS_SENDS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn retry_after(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), PortError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds.min(43_200) as i32)
            .send()
            .await
            .map_err(|e| sdk_err("sqs", "ChangeMessageVisibility", queue_url, e))?;
        Ok(())
    }
}

/// [`SecretStore`] on Secrets Manager.
pub struct SecretsManager {
    pub client: aws_sdk_secretsmanager::Client,
}

#[async_trait]
impl SecretStore for SecretsManager {
    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
        match self.client.create_secret().name(name).secret_string(value.expose()).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) => {
                self.client
                    .put_secret_value()
                    .secret_id(name)
                    .secret_string(value.expose())
                    .send()
                    .await
                    .map_err(|e| sdk_err("secretsmanager", "PutSecretValue", name, e))?;
                Ok(())
            }
            Err(e) => Err(sdk_err("secretsmanager", "CreateSecret", name, e)),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => Ok(out.secret_string().map(Secret::new)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
            Err(e) => Err(sdk_err("secretsmanager", "GetSecretValue", name, e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), PortError> {
        match self.client.delete_secret().secret_id(name).force_delete_without_recovery(true).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(()),
            Err(e) => Err(sdk_err("secretsmanager", "DeleteSecret", name, e)),
        }
    }
}

/// [`Notifier`] on an EventBridge bus and an SNS topic (either may be absent).
pub struct EventsAndTopic {
    pub events: aws_sdk_eventbridge::Client,
    pub bus: Option<String>,
    pub sns: aws_sdk_sns::Client,
    pub topic_arn: Option<String>,
}

/// The `source` of every event mailhaul puts on the bus.
pub const EVENT_SOURCE: &str = "mailhaul";

#[async_trait]
impl Notifier for EventsAndTopic {
    async fn event(&self, detail_type: &str, detail: &serde_json::Value) -> Result<(), PortError> {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        let Some(bus) = &self.bus else { return Ok(()) };
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(EVENT_SOURCE)
            .detail_type(detail_type)
            .detail(detail.to_string())
            .build();
        let out =
            self.events.put_events().entries(entry).send().await.map_err(|e| sdk_err("events", "PutEvents", bus, e))?;
        if out.failed_entry_count() > 0 {
            let why = out.entries().first().and_then(|e| e.error_message()).unwrap_or("refused");
            return Err(PortError::new("events", "PutEvents", format!("{bus}: {detail_type}: {why}")));
        }
        Ok(())
    }

    async fn notify(&self, subject: &str, message: &str) -> Result<(), PortError> {
        let Some(topic) = &self.topic_arn else { return Ok(()) };
        // SNS subjects are at most 100 characters.
        let subject: String = subject.chars().take(100).collect();
        self.sns
            .publish()
            .topic_arn(topic)
            .subject(subject)
            .message(message)
            .send()
            .await
            .map_err(|e| sdk_err("sns", "Publish", topic, e))?;
        Ok(())
    }
}
