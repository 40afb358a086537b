//! ferryctl binary: parse, read the maps, print.
#![forbid(unsafe_code)]
use clap::Parser;
use ferryctl::render::table;
use ferryctl::{Cli, Command, CtCmd, Node, Output};

fn print<T: serde::Serialize>(
    out: Output,
    items: &T,
    header: &[&str],
    rows: impl FnOnce() -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(items)?),
        Output::Table => print!("{}", table(header, &rows())),
    }
    Ok(())
}

fn fmt_addr(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut node = Node::open(&cli)?;
    let out = cli.output;
    match &cli.command {
        Command::Service { .. } => {
            let rows = node.services()?;
            print(
                out,
                &rows,
                &["ID", "SERVICE", "PORT", "FRONTEND", "PROTO", "ACTIVE", "BACKENDS", "TABLE", "AFFINITY", "LOCAL"],
                || {
                    rows.iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.service.clone(),
                                if r.port_name.is_empty() { "-".into() } else { r.port_name.clone() },
                                r.frontend.clone(),
                                r.proto.clone(),
                                r.active.to_string(),
                                r.backends.to_string(),
                                opt(r.maglev_table),
                                opt(r.affinity_timeout_s.map(|t| format!("{t}s"))),
                                if r.local_only { "yes".into() } else { "no".into() },
                            ]
                        })
                        .collect()
                },
            )
        }
        Command::Backend { .. } => {
            let rows = node.backends()?;
            print(out, &rows, &["ID", "SERVICE", "ADDRESS", "PROTO", "STATE"], || {
                rows.iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.service.clone(),
                            r.address.clone(),
                            r.proto.clone(),
                            r.state.to_string(),
                        ]
                    })
                    .collect()
            })
        }
        Command::Conntrack { cmd: CtCmd::List(f) } => {
            let rows = node.conntrack(f)?;
            print(out, &rows, &["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "FLAGS", "AGE", "IDLE"], || {
                rows.iter()
                    .map(|r| {
                        vec![
                            r.proto.clone(),
                            r.client.clone(),
                            r.frontend.clone(),
                            r.backend.clone(),
                            r.service.clone(),
                            if r.flags.is_empty() { "-".into() } else { r.flags.join(",") },
                            format!("{:.1}s", r.age_s),
                            format!("{:.1}s", r.idle_s),
                        ]
                    })
                    .collect()
            })
        }
        Command::Conntrack { cmd: CtCmd::Flush(f) } => {
            let n = node.flush(f)?;
            match out {
                Output::Json => println!("{}", serde_json::json!({ "flushed": n })),
                Output::Table => println!("flushed {n} conntrack entries"),
            }
            Ok(())
        }
        Command::Nat { .. } => {
            let rows = node.nat();
            print(out, &rows, &["PROTO", "POD", "NAT", "REMOTE", "STATE", "IDLE"], || {
                rows.iter()
                    .map(|r| {
                        let remote =
                            if r.proto == "icmp" { r.remote.to_string() } else { fmt_addr(r.remote, r.remote_port) };
                        vec![
                            r.proto.to_string(),
                            fmt_addr(r.pod, r.pod_port),
                            fmt_addr(r.nat, r.nat_port),
                            remote,
                            if r.orphan {
                                format!("{}/orphan", r.state.as_str())
                            } else {
                                r.state.as_str().to_string()
                            },
                            format!("{}s", r.idle_s),
                        ]
                    })
                    .collect()
            })
        }
        Command::Stats => {
            let s = node.stats()?;
            if out == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = s
                .services
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.service.clone(),
                        r.frontend.clone(),
                        r.packets.to_string(),
                        r.bytes.to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "SERVICE", "FRONTEND", "PACKETS", "BYTES"], &rows));
            println!();
            let mut counters: Vec<Vec<String>> =
                s.drops.iter().map(|(k, v)| vec![format!("drop/{k}"), v.to_string()]).collect();
            counters.extend(s.global.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]));
            counters.push(vec!["conntrack_entries".into(), s.conntrack_entries.to_string()]);
            counters.push(vec!["nat_entries".into(), s.nat_entries.to_string()]);
            print!("{}", table(&["COUNTER", "VALUE"], &counters));
            Ok(())
        }
    }
}
