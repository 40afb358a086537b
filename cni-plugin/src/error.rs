//! Errors as the CNI spec reports them: `{cniVersion, code, msg, details}` on
//! stdout and a non-zero exit (SPEC.md "Error").
//!
//! Codes 1-11 and 50-51 are the spec's well-known codes; 100+ are ferry's own
//! (documented in the README's CNI section):
//!
//! | code | when |
//! |---|---|
//! | 1 | cniVersion missing, unparsable or not in `supportedVersions`; CHECK below 0.4.0, STATUS/GC below 1.1.0 |
//! | 3 | CNI_NETNS does not exist (ADD, CHECK) |
//! | 4 | a required CNI_* variable is missing or invalid (container id, interface name, CNI_ARGS), unknown CNI_COMMAND |
//! | 5 | reading stdin or the IPAM data dir failed |
//! | 6 | stdin is not JSON |
//! | 7 | the JSON is not a valid ferry network config (bad subnet, range, gateway, route, name, MTU...) or CHECK without prevResult |
//! | 11 | the IPAM lock could not be taken in time |
//! | 50 | STATUS: cannot serve ADDs (data dir not writable, address space exhausted, bridge name taken by a non-bridge) |
//! | 100 | ADD: no free address left in a range (or a requested IP is taken / outside the ranges) |
//! | 101 | the kernel refused a netlink request |
//! | 102 | ADD: CNI_IFNAME already exists in the sandbox |
//! | 103 | CHECK: the interface, an address or a route is not as ADD left it |
//! | 104 | a delegated IPAM plugin failed without a CNI error of its own |
//! | 999 | internal error (a bug; includes a caught panic) |

use std::fmt;

/// Well-known and ferry-specific error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    AddressExhausted = 100,
    Netlink = 101,
    InterfaceExists = 102,
    CheckFailed = 103,
    Delegate = 104,
    Internal = 999,
}

/// A CNI error: what the runtime sees on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self { code: code as u32, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The spec's error object, tagged with the config's cniVersion when we
    /// know it (the runtime decodes errors with the version it sent).
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<ferry_netlink::Error> for CniError {
    fn from(e: ferry_netlink::Error) -> Self {
        CniError::new(Code::Netlink, "netlink request failed").with_details(e)
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
