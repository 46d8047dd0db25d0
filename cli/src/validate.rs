//! `mailhaul validate`: the CSV rules, and with `--check` a read-only look at every server.

use std::path::Path;

use anyhow::Context;
use mailhaul_common::batch::validate_batch;
use mailhaul_common::error::Side;
use mailhaul_common::inspect::{capabilities_that_matter, inspect, Inspection};

use crate::run::load_settings;
use crate::{EXIT_DONE, EXIT_SOME_FAILED};

/// Exit 1 when a row is invalid or, with `--check`, a server refused us.
pub async fn validate(csv: &Path, config: Option<&Path>, json: bool, check: bool) -> anyhow::Result<u8> {
    let settings = load_settings(config)?;
    let bytes = std::fs::read(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let batch = validate_batch(&bytes, &settings);
    eprint!("{}", batch.render_table());
    let mut report = batch.to_json();

    let mut check_failed = false;
    if check {
        let mut checks = Vec::new();
        for row in batch.rows.iter() {
            let Some(job) = &row.job else { continue };
            let mut entry = serde_json::json!({ "row": row.row, "mailbox": row.mailbox });
            for (side, endpoint) in [(Side::Source, &job.source), (Side::Destination, &job.destination)] {
                let result = inspect(endpoint, side, job.user_root.as_deref()).await;
                eprintln!("row {} {}: {}", row.row, side, describe(&result));
                check_failed |= result.is_err();
                entry[side.to_string()] = match &result {
                    Ok(inspection) => serde_json::to_value(inspection)?,
                    Err(e) => serde_json::json!({ "error": e.to_string(), "hint": e.hint() }),
                };
            }
            checks.push(entry);
        }
        report["check"] = serde_json::Value::Array(checks);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if batch.is_valid() && !check_failed { EXIT_DONE } else { EXIT_SOME_FAILED })
}

fn describe(result: &Result<Inspection, mailhaul_common::error::CopyError>) -> String {
    match result {
        Ok(i) => {
            let mut text = format!(
                "ok, {} folders, {} messages, {:.1} MB, about {} min to copy at 20 MB/min",
                i.folders.len(),
                i.total_messages,
                i.total_bytes as f64 / 1e6,
                (i.total_bytes as f64 / 20e6).ceil()
            );
            let (offered, missing) = capabilities_that_matter(&i.capabilities);
            text.push_str(&format!("\n  capabilities: {}", offered.join(" ")));
            if !missing.is_empty() {
                text.push_str(&format!(" (not offered: {})", missing.join(" ")));
            }
            for folder in &i.folders {
                text.push_str(&format!(
                    "\n  {}: {} messages, {:.1} MB",
                    folder.name,
                    folder.messages,
                    folder.bytes as f64 / 1e6
                ));
            }
            for quirk in &i.quirks {
                text.push_str(&format!("\n  note: {quirk}"));
            }
            text
        }
        Err(e) => format!("{e} ({})", e.hint()),
    }
}
