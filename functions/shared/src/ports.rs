//! The ports of the serverless pipeline besides the state stores of `mailhaul_common::ports`:
//! where CSVs and reports live, where jobs wait, where passwords wait, who hears about it.

use async_trait::async_trait;
use mailhaul_common::Secret;

/// A call to a cloud service failed. `retryable` tells whether a later try may succeed.
#[derive(Debug, thiserror::Error)]
#[error("{service} {operation}: {detail}")]
pub struct PortError {
    pub service: &'static str,
    pub operation: &'static str,
    pub detail: String,
}

impl PortError {
    /// Builds an error; `detail` should name the object (bucket/key, queue, secret).
    pub fn new(service: &'static str, operation: &'static str, detail: impl std::fmt::Display) -> Self {
        PortError { service, operation, detail: detail.to_string() }
    }
}

/// Objects: the uploaded CSVs and the reports (S3).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The object's bytes, or `None` when there is no such object.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, PortError>;
    /// Creates or replaces an object.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), PortError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), PortError>;
    /// Starts an object sent in parts (S3 multipart upload); returns the upload's id.
    async fn start_parts(&self, bucket: &str, key: &str, content_type: &str) -> Result<String, PortError>;
    /// Sends part `number` (1, 2, ...; every part but the last at least 5 MiB); returns its
    /// ETag for [`ObjectStore::finish_parts`].
    async fn send_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        number: i32,
        body: Vec<u8>,
    ) -> Result<String, PortError>;
    /// Makes the parts sent one object; `etags` in part order.
    async fn finish_parts(&self, bucket: &str, key: &str, upload: &str, etags: Vec<String>) -> Result<(), PortError>;
    /// Drops an unfinished upload and the parts it holds.
    async fn abort_parts(&self, bucket: &str, key: &str, upload: &str) -> Result<(), PortError>;
    /// An HTTPS URL that lets whoever holds it GET the object until `expires_in` has passed
    /// (signed here, no call to the service).
    async fn presigned_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<String, PortError>;
}

/// One message to send to a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutMessage {
    pub body: String,
    /// Seconds before the message becomes visible (0..=900).
    pub delay_seconds: u32,
}

/// Queues of jobs (SQS).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Sends every message (in batches of 10); fails if any message was not accepted.
    async fn send(&self, queue_url: &str, messages: Vec<OutMessage>) -> Result<(), PortError>;
    /// Makes a received message visible again after `seconds` (a retry sooner than the
    /// queue's visibility timeout).
    async fn retry_after(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), PortError>;
}

/// Where passwords wait between upload and copy (Secrets Manager).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Creates the secret, or replaces its value when it exists (uploads are retried).
    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError>;
    /// The secret's value, or `None` when it does not exist (any more).
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError>;
    /// Deletes the secret at once, without a recovery window; a missing secret is fine.
    async fn delete(&self, name: &str) -> Result<(), PortError>;
}

/// Who hears about batches: an event bus (machine-readable) and a topic (people).
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Publishes an event with source `mailhaul` and this detail type.
    async fn event(&self, detail_type: &str, detail: &serde_json::Value) -> Result<(), PortError>;
    /// Publishes a human-readable notice.
    async fn notify(&self, subject: &str, message: &str) -> Result<(), PortError>;
}
