//! The AWS commands in a build without the `aws` feature: a clear error instead.

use std::path::Path;

fn unavailable() -> anyhow::Result<u8> {
    anyhow::bail!(
        "this mailhaul was built without AWS support: build it with the default features (cargo build -p mailhaul)"
    )
}

pub const BUCKET: &str = "BucketName";
pub const TABLE: &str = "TableName";

pub async fn stack_output(_explicit: Option<String>, _stack: Option<String>, _key: &str) -> anyhow::Result<String> {
    unavailable().map(|_| String::new())
}

pub async fn submit(_csv: &Path, _bucket: &str, _config: Option<&Path>) -> anyhow::Result<u8> {
    unavailable()
}

pub async fn schedule(_batch: &str, _table: &str, _stop: bool) -> anyhow::Result<u8> {
    unavailable()
}

pub async fn status(_batch: &str, _table: &str, _json: bool) -> anyhow::Result<u8> {
    unavailable()
}

pub async fn report(_batch: &str, _bucket: &str, _dir: &Path) -> anyhow::Result<u8> {
    unavailable()
}
