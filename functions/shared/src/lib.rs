//! mailhaul on AWS: the ports the Lambda handlers talk to (object store, job queue, secret
//! store, notifier, state table), their AWS adapters, and the upload, copy and finalize
//! handlers. The Lambda binaries only wire these; tests call the handlers directly.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod copy;
pub mod dead_letter;
pub mod dynamo;
pub mod finalize;
pub mod logging;
pub mod messages;
pub mod ports;
pub mod report_upload;
pub mod schedule;
pub mod sweep;
pub mod upload;

pub use config::{Config, Services};
pub use ports::{JobQueue, Notifier, ObjectStore, OutMessage, PortError, SecretStore};
