//! The CNI_* environment (SPEC.md "Parameters") and CNI_ARGS.

use std::path::PathBuf;

use crate::error::{CniError, Code, Result};

/// The operations of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(CniError::new(Code::InvalidEnv, format!("unknown CNI_COMMAND {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// The validated environment of one invocation. Fields a command does not
/// need are empty.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates what `cmd` requires (the table in SPEC.md; the same
    /// rules libcni's skel applies): a missing or malformed value is code 4.
    pub fn from_vars(cmd: Command, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let need = |k: &str, required: bool| -> Result<String> {
            match get(k).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if required => {
                    Err(CniError::new(Code::InvalidEnv, format!("required environment variable {k} is missing")))
                }
                None => Ok(String::new()),
            }
        };
        use Command::*;
        let container_id = need("CNI_CONTAINERID", matches!(cmd, Add | Del | Check))?;
        let netns = need("CNI_NETNS", matches!(cmd, Add | Check))?;
        let ifname = need("CNI_IFNAME", matches!(cmd, Add | Del | Check))?;
        // SPEC.md lists CNI_PATH as optional for every operation; it is
        // only needed to run a delegated IPAM plugin (checked there).
        let path = need("CNI_PATH", false)?;
        if !container_id.is_empty() {
            validate_container_id(&container_id)?;
        }
        if !ifname.is_empty() {
            validate_ifname(&ifname)
                .map_err(|m| CniError::new(Code::InvalidEnv, format!("CNI_IFNAME {ifname:?}: {m}")))?;
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Env {
            container_id,
            netns,
            ifname,
            args,
            path: std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).collect(),
        })
    }

    /// The value of a CNI_ARGS key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// SPEC.md: the container id must be non-empty, alphanumeric plus `_.-`,
/// starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(Code::InvalidEnv, format!("invalid CNI_CONTAINERID {id:?}"))
            .with_details("must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"))
    }
}

/// Linux interface names: 1-15 bytes, not "." or "..", no '/', ':' or
/// whitespace (dev_valid_name in net/core/dev.c).
pub fn validate_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// CNI_ARGS is `K=V;K=V` (SPEC.md). Keys we do not know are ignored: the
/// Kubernetes ones always come with IgnoreUnknown=1 and the rest are for
/// other plugins of a chain.
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(Code::InvalidEnv, format!("invalid CNI_ARGS pair {pair:?}"))
                .with_details("expected KEY=VALUE pairs separated by ';'"));
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn add_requires_netns_del_does_not() {
        let base = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")];
        let e = Env::from_vars(Command::Add, env(&base)).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
        assert!(Env::from_vars(Command::Del, env(&base)).is_ok());
        assert!(Env::from_vars(Command::Version, env(&[])).is_ok());
        assert!(Env::from_vars(Command::Gc, env(&[])).is_ok());
        let no_path = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
        assert!(Env::from_vars(Command::Add, env(&no_path)).unwrap().path.is_empty());
    }

    #[test]
    fn validates_ids_names_and_args() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("..").is_err());
        let a = parse_args("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=x").unwrap();
        assert_eq!(a[1], ("IP".into(), "10.0.0.5".into()));
        assert_eq!(parse_args("novalue").unwrap_err().code, 4);
        assert!(parse_args("").unwrap().is_empty());
    }
}
