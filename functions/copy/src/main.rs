//! Lambda entry point of the copy function: wires the AWS adapters around
//! [`mailhaul_aws::copy::handle`]; configuration and clients are built once per cold start.
// The engine future is deep: the default limit (128) overflows computing its layout.
#![recursion_limit = "256"]

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailhaul_aws::logging::init_json_logs();
    let services = mailhaul_aws::Services::from_env().await.context("copy function configuration")?;
    let services = &services;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| async move {
        mailhaul_aws::copy::handle(services, event).await
    }))
    .await
}
