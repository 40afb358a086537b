//! ferry-fake-api: the fake Kubernetes API server, standalone, for manual
//! runs. Serves until killed.
//!
//! ```text
//! ferry-fake-api [--listen ADDR] [--kubeconfig PATH]
//!                [--generate services=N,endpoints=M[,namespaces=K]] [PATH ...]
//! ```
//!
//! Each PATH is a YAML (or JSON) file, or a directory whose `*.yaml`,
//! `*.yml` and `*.json` files are applied in name order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_fake_api::{generate, FakeApi, Options};

const USAGE: &str = "usage: ferry-fake-api [--listen ADDR] [--kubeconfig PATH] \
                     [--generate services=N,endpoints=M[,namespaces=K]] [PATH ...]";

#[derive(Default)]
struct Args {
    listen: Option<SocketAddr>,
    kubeconfig: Option<PathBuf>,
    services: usize,
    endpoints: usize,
    namespaces: usize,
    paths: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { namespaces: 100, ..Args::default() };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--kubeconfig" => args.kubeconfig = Some(value("--kubeconfig")?.into()),
            "--generate" => {
                for term in value("--generate")?.split(',') {
                    let (k, v) = term.split_once('=').ok_or_else(|| format!("--generate: {term:?} is not key=N"))?;
                    let n: usize = v.parse().map_err(|e| format!("--generate {k}={v}: {e}"))?;
                    match k {
                        "services" => args.services = n,
                        "endpoints" | "endpointslices" => args.endpoints = n,
                        "namespaces" => args.namespaces = n,
                        _ => return Err(format!("--generate: unknown key {k:?}")),
                    }
                }
            }
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            path => args.paths.push(path.into()),
        }
    }
    Ok(args)
}

fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")));
    files.sort();
    Ok(files)
}

fn run(args: Args) -> Result<(), String> {
    let mut opts = Options::default();
    if let Some(addr) = args.listen {
        opts.addr = addr;
    }
    let api = FakeApi::start_with(opts).map_err(|e| format!("listen: {e}"))?;
    for path in &args.paths {
        for file in files(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            api.apply_yaml(&text);
        }
    }
    api.apply_many(generate::services(args.services, args.namespaces));
    api.apply_many(generate::endpoint_slices(args.endpoints, args.services, args.namespaces));
    if let Some(path) = &args.kubeconfig {
        api.write_kubeconfig(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{} (resourceVersion {})", api.url(), api.resource_version());
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ferry-fake-api: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-fake-api: {e}");
            ExitCode::FAILURE
        }
    }
}
