//! The stack the benchmarks run the functions' code against: moto with a bucket, the jobs
//! and finalize queues and the table.

// Each benchmark uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;

use anyhow::{Context, Result};
use mailhaul_aws::config::{Config, NotifyTargets};
use mailhaul_aws::Services;
use mailhaul_tests::moto::Moto;

pub const BUCKET: &str = "mailhaul-bench";

pub struct BenchStack {
    _moto: Moto,
    pub sdk: aws_config::SdkConfig,
    pub svc: Services,
    pub sqs: aws_sdk_sqs::Client,
    pub jobs_url: String,
}

impl BenchStack {
    /// A fresh moto and the stack's resources; `env` adds to the functions' environment.
    pub async fn start(env: &[(&str, &str)]) -> Result<BenchStack> {
        let moto = Moto::start()?;
        let sdk = mailhaul_aws::config::local_sdk_config(&moto.url).await;
        mailhaul_aws::config::s3_client(&sdk).create_bucket().bucket(BUCKET).send().await?;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let jobs_url = sqs.create_queue().queue_name("jobs").send().await?.queue_url.context("queue url")?;
        let finalize_url = sqs.create_queue().queue_name("finalize").send().await?.queue_url.context("queue url")?;
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("MAILHAUL_BUCKET", BUCKET.to_string()),
            ("MAILHAUL_TABLE", "mailhaul".into()),
            ("MAILHAUL_JOBS_QUEUE_URL", jobs_url.clone()),
            ("MAILHAUL_FINALIZE_QUEUE_URL", finalize_url),
            ("MAILHAUL_SECRET_PREFIX", "mailhaul/bench".into()),
        ]);
        vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let config = Config::from_lookup(|k| vars.get(k).cloned())?;
        let svc = Services::aws(&sdk, config, NotifyTargets::default());
        svc.table.create().await?;
        Ok(BenchStack { _moto: moto, sdk, svc, sqs, jobs_url })
    }
}
