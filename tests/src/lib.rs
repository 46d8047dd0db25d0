//! Test support for mailhaul: throwaway real Dovecot servers, an IMAP seeding/dumping client,
//! a deterministic message corpus, a latency-adding TCP proxy and a moto server (AWS APIs).
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

pub mod corpus;
pub mod dovecot;
pub mod imap;
pub mod moto;
pub mod proxy;

pub use corpus::SampleMessage;
pub use dovecot::{Dovecot, DovecotOptions, Layout};
pub use imap::{DumpedMessage, SeedMessage};
pub use proxy::DelayProxy;
