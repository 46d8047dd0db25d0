//! mailhaul's core: CSV batches, settings, folder planning, the IMAP copy engine,
//! checkpoints and reports. The CLI and the Lambda functions only wire adapters around it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod engine;
pub mod error;
pub mod folders;
pub mod imap;
pub mod inspect;
pub mod ledger;
pub mod lifecycle;
pub mod model;
pub mod mutf7;
pub mod oauth2;
pub mod plan;
pub mod ports;
pub mod report;
pub mod secret;
pub mod settings;
pub mod sqlite;

pub use secret::Secret;
