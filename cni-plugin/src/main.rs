//! `ferry`: the CNI plugin binary. Reads the config on stdin, runs the
//! operation named by CNI_COMMAND, prints the result or the spec's error
//! object, and never panics out (a panic becomes error 999).
//!
//! Runtimes call it with no arguments. Only `install-cni`, `--version` and
//! `--help` as the first argument are requests of their own (the image has
//! no shell, so the DaemonSet's init container runs `ferry install-cni`).

use std::io::{Read, Write};
use std::process::ExitCode;

use ferry_cni::install::{self, Invocation};
use ferry_cni::netconf::peek_version;
use ferry_cni::result::LATEST;
use ferry_cni::{CniError, Code};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match install::parse_args(&args) {
        Ok(Invocation::Cni) => cni(),
        Ok(Invocation::Version) => {
            print!("{}", install::version_text());
            ExitCode::SUCCESS
        }
        Ok(Invocation::Help) => {
            print!("{}", install::usage());
            ExitCode::SUCCESS
        }
        Ok(Invocation::InstallCni { dir }) => match install::install(std::path::Path::new("/proc/self/exe"), &dir) {
            Ok((dest, outcome)) => {
                println!(
                    "ferry install-cni: {} {} (ferry {})",
                    outcome.as_str(),
                    dest.display(),
                    env!("CARGO_PKG_VERSION")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry install-cni: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("ferry: {e}\n\n{}", install::usage());
            ExitCode::from(2)
        }
    }
}

/// One CNI operation (SPEC.md "Execution Protocol").
fn cni() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Err(CniError::new(Code::Io, "reading stdin").with_details(e)),
        Ok(_) => std::panic::catch_unwind(|| ferry_cni::run(&|k| std::env::var(k).ok(), &stdin)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(CniError::new(Code::Internal, "internal error (panic)").with_details(what))
        }),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // SPEC.md: the error's cniVersion is "the same value as provided
            // by the configuration" (even one we do not support).
            let ver = peek_version(&stdin).unwrap_or_else(|| LATEST.to_string());
            let _ = writeln!(out, "{}", e.to_json(&ver));
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}
