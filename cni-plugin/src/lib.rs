//! The `ferry` CNI plugin as a library: the binary is `main.rs`, a thin
//! wrapper around [`cmd::run`].
//!
//! Synchronous and short-lived by design: one invocation, one netlink socket
//! per namespace it touches, a current-thread runtime only inside netlink
//! calls, no sleeps, no child processes except a delegated IPAM plugin.

pub mod cmd;
pub mod datapath;
pub mod delegate;
pub mod env;
pub mod error;
pub mod install;
pub mod ipam;
pub mod names;
pub mod netconf;
pub mod result;

pub use cmd::run;
pub use error::{CniError, Code};
