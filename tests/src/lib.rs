//! Test support for mailhaul: throwaway real Dovecot, Cyrus and Courier servers, an IMAP seeding/dumping client,
//! a deterministic message corpus, TCP proxies that add latency or inject faults (and record
//! the IMAP they carry), a moto server (AWS APIs), and damaged batch CSVs for property tests.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailhaul_tests::{corpus, imap, Dovecot, DovecotOptions};
//! let server = Dovecot::start(DovecotOptions::with_users(&[("user1", "pw1")]))?;
//! imap::seed(&server, "user1", "pw1", "Projects/2019", &corpus::mailbox("p19", 10)).await?;
//! let dump = imap::dump(&server, "user1", "pw1").await?;
//! assert_eq!(dump["Projects/2019"].len(), 10);
//! # Ok(()) }
//! ```

pub mod batch;
pub mod corpus;
pub mod courier;
pub mod csv_fuzz;
pub mod cyrus;
pub mod dovecot;
pub mod imap;
pub mod moto;
pub mod oauth2;
pub mod proxy;
pub mod servers;
pub mod wire;

pub use corpus::SampleMessage;
pub use courier::Courier;
pub use cyrus::{Cyrus, CyrusOptions};
pub use dovecot::{Dovecot, DovecotOptions, Layout, OAuth2Validation};
pub use imap::{DumpedMessage, FolderSnapshot, SeedMessage, SourceSnapshot};
pub use proxy::{DelayProxy, Direction, FaultPlan, FaultPolicy, FaultProxy};
pub use servers::ImapServer;
