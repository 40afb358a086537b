//! Delegated plugins (SPEC.md "Delegated plugins"): an IPAM plugin named by
//! `ipam.type` is found in CNI_PATH and executed with our environment
//! (CNI_COMMAND set to the operation) and the same config on stdin. Its
//! errors are passed on with their own code.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::{Code, CniError, Result};

fn find(plugin: &str, env: &Env) -> Result<PathBuf> {
    if env.path.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_PATH is required to run the ipam plugin {plugin:?}"),
        ));
    }
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(Code::InvalidConfig, format!("ipam plugin {plugin:?} not found in CNI_PATH"))
                .with_details(format!("searched {:?}", env.path))
        })
}

/// Runs `plugin` for `cmd`; returns its parsed stdout (None when empty).
pub fn exec(plugin: &str, cmd: Command, env: &Env, stdin: &[u8]) -> Result<Option<Value>> {
    let bin = find(plugin, env)?;
    let mut child = Process::new(&bin)
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(Code::Delegate, format!("cannot execute {}", bin.display())).with_details(e))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin may exit without reading stdin; its exit status tells.
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::Delegate, format!("waiting for {}", bin.display())).with_details(e))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        if let Some(v) = &parsed {
            if let Some(code) = v.get("code").and_then(Value::as_u64) {
                return Err(CniError {
                    code: code as u32,
                    msg: format!("{plugin}: {}", v.get("msg").and_then(Value::as_str).unwrap_or("")),
                    details: v.get("details").and_then(Value::as_str).unwrap_or("").to_string(),
                });
            }
        }
        return Err(CniError::new(Code::Delegate, format!("{plugin} {} failed ({})", cmd.as_str(), out.status))
            .with_details(String::from_utf8_lossy(&out.stdout)));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed.map(Some).ok_or_else(|| {
        CniError::new(Code::Delegate, format!("{plugin} printed a result that is not JSON"))
            .with_details(String::from_utf8_lossy(&out.stdout))
    })
}
