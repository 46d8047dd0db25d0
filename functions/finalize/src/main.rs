//! Lambda entry point of the finalize function: wires the AWS adapters around
//! [`mailhaul_aws::finalize::handle`]; configuration and clients are built once per cold start.

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailhaul_aws::logging::init_json_logs();
    let services = mailhaul_aws::Services::from_env().await.context("finalize function configuration")?;
    let services = &services;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| async move {
        mailhaul_aws::finalize::handle(services, event).await
    }))
    .await
}
