//! IMAP protocol access: connecting and logging in, and the pipelined APPEND that
//! async-imap lacks. No state store in here: the engine wires the two together.

pub mod append;
pub mod conn;
pub mod create;
pub mod deflate;
pub mod fetch;
pub mod namespace;
pub mod search;
pub mod status;

pub use conn::{connect, Caps, Session};
