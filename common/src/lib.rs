//! mailhaul's core: CSV batches, settings, folder planning, the IMAP copy engine,
//! checkpoints and reports. The CLI and the Lambda functions only wire adapters around it.
#![forbid(unsafe_code)]

pub mod model;
pub mod ports;
pub mod secret;

pub use secret::Secret;
