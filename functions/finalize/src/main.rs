//! Lambda entry point of the finalize function: wires the AWS adapters around
//! [`mailhaul_aws::finalize::handle_any`] (finalize messages, dead jobs, the scheduled sweep);
//! configuration and clients are built once per cold start.
// The sweep's future is deep: the default limit (128) overflows computing its layout.
#![recursion_limit = "256"]

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailhaul_aws::logging::init_json_logs();
    let services = mailhaul_aws::Services::from_env().await.context("finalize function configuration")?;
    let services = &services;
    // SQS records (finalize messages, dead-lettered jobs) or the sweeper's schedule.
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| async move {
        mailhaul_aws::finalize::handle_any(services, event).await
    }))
    .await
}
