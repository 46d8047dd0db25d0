//! JSON logs for the Lambdas (CloudWatch parses them; the template sets LogFormat JSON).

use tracing_subscriber::EnvFilter;

/// Installs a JSON subscriber filtered by `RUST_LOG` (default `info`). Call once in `main`.
pub fn init_json_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_target(false)
        .without_time()
        .finish();
    // Not try_init(): that would also route the `log` crate here, and async-imap logs every
    // command it sends at trace level, LOGIN and its password included. A second call
    // (tests) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
}
