//! Configuration read once per Lambda cold start (environment), and the clients built from it.

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::{EventsAndTopic, S3Objects, SecretsManager, SqsQueue};
use crate::dynamo::Table;
use crate::ports::{JobQueue, Notifier, ObjectStore, SecretStore};

/// A required setting is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything the handlers need to know about the stack. Built from `MAILHAUL_*` variables
/// (set by infra/template.yaml) by [`Config::from_env`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub bucket: Option<String>,
    pub table: String,
    pub jobs_queue_url: String,
    pub finalize_queue_url: String,
    /// Secrets are named `<secret_prefix>/<batch>/<n>`; the stack's policies allow only these.
    pub secret_prefix: String,
    /// The jobs queue's maxReceiveCount: on the last delivery a transient failure is final.
    pub max_receive_count: u32,
    /// Time kept free before the Lambda deadline: one engine batch (which always completes once
    /// started) plus the checkpoint writes and the continuation message. Default 60 s.
    pub safety_margin: Duration,
    /// Delay before a job whose mailbox or connection slot is busy is tried again.
    pub busy_delay_seconds: u32,
    /// Visibility delay before a transient failure is retried.
    pub retry_delay_seconds: u32,
    /// Delay after a throttled reply that gave no backoff hint.
    pub throttle_delay_seconds: u32,
    /// How long a mailbox lease outlives the pass's Lambda deadline: after that, a pass still
    /// marked in the table crashed and the sweeper re-drives it. Default 60 s.
    pub lease_grace: Duration,
    /// Shortest time box worth a pass once the safety margin is taken off. Less is a
    /// configuration error (function timeout too short for the margin): the mailbox fails
    /// once with a hint instead of looping through empty passes. Default 10 s.
    pub min_pass: Duration,
    /// Throttled passes in a row after which the mailbox fails with the server's words.
    pub max_throttled_passes: u32,
    /// Time since the first of those throttled passes after which the mailbox fails.
    pub max_throttled: Duration,
    /// Crashed passes (found by the sweeper) after which the mailbox fails.
    pub max_crashed_passes: u32,
    /// The time box of a pass invoked with a deadline long past (no real one: cargo-lambda
    /// 1.9's `watch` sends a constant 1970 deadline). Default 840 s, under Lambda's 900 s cap.
    pub deadline_fallback: Duration,
    /// How long the presigned link to report.html in the completion notice stays valid
    /// (stack parameter ReportLinkSeconds; default and SigV4 maximum 7 days).
    pub report_link: Duration,
    /// Batch settings defaults as TOML (the stack parameters); a sidecar TOML overrides them.
    pub defaults: toml::Table,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `var` (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let need = |k: &str| {
            get(k).ok_or_else(|| ConfigError(format!("environment variable {k} is not set (the SAM template sets it)")))
        };
        let num = |k: &str, default: u64| -> Result<u64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| ConfigError(format!("{k}={v:?} is not a whole number"))),
            }
        };
        let mut defaults = toml::Table::new();
        for side in ["source", "destination"] {
            let up = side.to_ascii_uppercase();
            let mut t = toml::Table::new();
            if let Some(h) = get(&format!("MAILHAUL_{up}_HOST")) {
                t.insert("host".into(), toml::Value::String(h));
            }
            if let Some(p) = get(&format!("MAILHAUL_{up}_PORT")) {
                let port: i64 =
                    p.parse().map_err(|_| ConfigError(format!("MAILHAUL_{up}_PORT={p:?} is not a port number")))?;
                t.insert("port".into(), toml::Value::Integer(port));
            }
            if let Some(s) = get(&format!("MAILHAUL_{up}_SECURITY")) {
                t.insert("security".into(), toml::Value::String(s));
            }
            // A master user for rows without a password: its password is a secret the copy
            // function reads, named here (never a value).
            for key in ["admin_user", "master_separator", "admin_password_secret"] {
                if let Some(v) = get(&format!("MAILHAUL_{up}_{}", key.to_ascii_uppercase())) {
                    t.insert(key.into(), toml::Value::String(v));
                }
            }
            defaults.insert(side.into(), toml::Value::Table(t));
        }
        if let Some(n) = get("MAILHAUL_MAX_CONNECTIONS_PER_SOURCE_HOST") {
            let n: i64 = n.parse().map_err(|_| {
                ConfigError(format!("MAILHAUL_MAX_CONNECTIONS_PER_SOURCE_HOST={n:?} is not a whole number"))
            })?;
            defaults.insert("max_connections_per_source_host".into(), toml::Value::Integer(n));
        }
        if let Some(size) = get("MAILHAUL_SPLIT_MAILBOXES_ABOVE") {
            // Checked with the batch settings it becomes part of (a size such as "10GB").
            defaults.insert("split_mailboxes_above".into(), toml::Value::String(size));
        }
        Ok(Config {
            bucket: get("MAILHAUL_BUCKET"),
            table: need("MAILHAUL_TABLE")?,
            jobs_queue_url: need("MAILHAUL_JOBS_QUEUE_URL")?,
            finalize_queue_url: need("MAILHAUL_FINALIZE_QUEUE_URL")?,
            secret_prefix: get("MAILHAUL_SECRET_PREFIX").unwrap_or_else(|| "mailhaul".into()),
            max_receive_count: num("MAILHAUL_MAX_RECEIVE_COUNT", 5)? as u32,
            safety_margin: Duration::from_secs(num("MAILHAUL_SAFETY_MARGIN_SECONDS", 60)?),
            busy_delay_seconds: num("MAILHAUL_BUSY_DELAY_SECONDS", 60)? as u32,
            retry_delay_seconds: num("MAILHAUL_RETRY_DELAY_SECONDS", 60)? as u32,
            throttle_delay_seconds: num("MAILHAUL_THROTTLE_DELAY_SECONDS", 60)? as u32,
            lease_grace: Duration::from_secs(num("MAILHAUL_LEASE_GRACE_SECONDS", 60)?),
            min_pass: Duration::from_secs(num("MAILHAUL_MIN_PASS_SECONDS", 10)?),
            max_throttled_passes: num("MAILHAUL_MAX_THROTTLED_PASSES", 50)? as u32,
            max_throttled: Duration::from_secs(num("MAILHAUL_MAX_THROTTLED_SECONDS", 6 * 3600)?),
            max_crashed_passes: num("MAILHAUL_MAX_CRASHED_PASSES", 3)? as u32,
            deadline_fallback: Duration::from_secs(num("MAILHAUL_DEADLINE_FALLBACK_SECONDS", 840)?),
            report_link: Duration::from_secs(
                num("MAILHAUL_REPORT_LINK_SECONDS", 7 * 24 * 3600)?.clamp(1, 7 * 24 * 3600),
            ),
            defaults,
        })
    }
}

/// The ports and the table, built once per cold start and shared by every invocation.
#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub objects: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub secrets: Arc<dyn SecretStore>,
    pub notifier: Arc<dyn Notifier>,
    pub table: Table,
}

/// Event bus and topic names, optional so a test or a CLI can go without.
#[derive(Clone, Debug, Default)]
pub struct NotifyTargets {
    pub bus: Option<String>,
    pub topic_arn: Option<String>,
}

impl NotifyTargets {
    /// `MAILHAUL_EVENT_BUS` and `MAILHAUL_TOPIC_ARN`.
    pub fn from_env() -> NotifyTargets {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        NotifyTargets { bus: get("MAILHAUL_EVENT_BUS"), topic_arn: get("MAILHAUL_TOPIC_ARN") }
    }
}

/// The SDK configuration from the standard AWS chain (`AWS_ENDPOINT_URL` points it at moto).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

/// The SDK configuration for a local endpoint (moto, LocalStack) with static credentials
/// that such an endpoint accepts: for tests and benchmarks.
pub async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("local", "local", None, None, "static"))
        .load()
        .await
}

/// An S3 client; path-style addressing when an endpoint override is in use (moto, MinIO).
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let path_style = sdk.endpoint_url().is_some();
    let conf = aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style).build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl Services {
    /// AWS adapters for every port.
    pub fn aws(sdk: &aws_config::SdkConfig, config: Config, targets: NotifyTargets) -> Services {
        let table = Table::new(aws_sdk_dynamodb::Client::new(sdk), config.table.clone());
        Services {
            objects: Arc::new(S3Objects { client: s3_client(sdk) }),
            queue: Arc::new(SqsQueue { client: aws_sdk_sqs::Client::new(sdk) }),
            secrets: Arc::new(SecretsManager { client: aws_sdk_secretsmanager::Client::new(sdk) }),
            notifier: Arc::new(EventsAndTopic {
                events: aws_sdk_eventbridge::Client::new(sdk),
                bus: targets.bus,
                sns: aws_sdk_sns::Client::new(sdk),
                topic_arn: targets.topic_arn,
            }),
            table,
            config,
        }
    }

    /// Everything from the environment, as a Lambda cold start does.
    pub async fn from_env() -> Result<Services, ConfigError> {
        let config = Config::from_env()?;
        let sdk = sdk_config().await;
        Ok(Services::aws(&sdk, config, NotifyTargets::from_env()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_from_stack_parameters() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("MAILHAUL_TABLE", "t"),
            ("MAILHAUL_JOBS_QUEUE_URL", "q"),
            ("MAILHAUL_FINALIZE_QUEUE_URL", "f"),
            ("MAILHAUL_SOURCE_HOST", "imap.example.org"),
            ("MAILHAUL_SOURCE_PORT", "993"),
            ("MAILHAUL_DESTINATION_HOST", ""),
            ("MAILHAUL_MAX_CONNECTIONS_PER_SOURCE_HOST", "4"),
            ("MAILHAUL_SPLIT_MAILBOXES_ABOVE", "2GB"),
            ("MAILHAUL_DESTINATION_ADMIN_USER", "admin"),
            ("MAILHAUL_DESTINATION_ADMIN_PASSWORD_SECRET", "mailhaul/s/admin/dst"),
        ]);
        let c = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.defaults["source"]["host"].as_str(), Some("imap.example.org"));
        assert_eq!(c.defaults["source"]["port"].as_integer(), Some(993));
        assert_eq!(c.defaults["destination"]["admin_user"].as_str(), Some("admin"));
        assert_eq!(c.defaults["destination"]["admin_password_secret"].as_str(), Some("mailhaul/s/admin/dst"));
        assert!(c.defaults["destination"].get("host").is_none());
        assert_eq!(c.defaults["max_connections_per_source_host"].as_integer(), Some(4));
        assert_eq!(c.defaults["split_mailboxes_above"].as_str(), Some("2GB"));
        assert_eq!(c.max_receive_count, 5);
        assert_eq!((c.max_throttled_passes, c.max_crashed_passes), (50, 3));
        assert_eq!((c.min_pass, c.lease_grace), (Duration::from_secs(10), Duration::from_secs(60)));
    }

    #[test]
    fn missing_table_is_an_error_naming_the_variable() {
        let err = Config::from_lookup(|_| None).unwrap_err();
        assert!(err.to_string().contains("MAILHAUL_TABLE"), "{err}");
    }
}
