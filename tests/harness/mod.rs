//! The netns harness: every privileged test builds its own world and tears it
//! down even when it panics.
//!
//! ```text
//!  root netns (untouched: no link, route, sysctl or rule is added here)
//!
//!  node netns "fyt<pid>n<k>"     ip_forward=1, send_redirects=0
//!   ferry0 (bridge, created by the plugin on the first ADD)
//!    ├─ fer<hash>  ─── veth ───  eth0  in pod netns "fyt<pid>n<k>p<j>"
//!    └─ fer<hash>  ─── veth ───  eth0  in pod netns ...
//! ```
//!
//! API (all `Drop`-cleaned; names include the test pid and a counter, so
//! tests run concurrently and leftovers of killed runs are swept later):
//!
//! - [`Node::new()`] / [`Node::with_config`]`(`[`NodeConfig`]`)`: a node netns
//!   and a netconf (dual-stack 10.244.0.0/24 + fd00:10:244::/64 on bridge
//!   `ferry0` by default; `extra` JSON is merged in, e.g. `{"pinDir": ..}`).
//!   `node.netconf()`, `node.ipam_dir()`, `node.scratch()`, `node.name()`,
//!   `node.netns_path()`, `node.ip(&["link"])`, `node.run(|| ..)` (closure on
//!   a fresh thread inside the node netns), `node.spawn(&mut Command)`
//!   (long-running process in the node netns, SIGKILLed on drop),
//!   `node.cni(&CniCall)` (raw plugin invocation, 10 s limit).
//! - `node.add_pod("name") -> `[`Pod`]: a pod netns attached by running the
//!   real `ferry` binary as a runtime does (CNI_* env, netconf on stdin, in
//!   the node netns). `add_pod_with(name, &netconf, cni_args)` returns the
//!   plugin's [`CniOutput`] on failure. `new_sandbox` + `attach` split the
//!   two steps. The binary is `$FERRY_BIN_DIR/ferry`, else next to the test
//!   executable's `target/release/`.
//! - [`Pod`]: `ipv4()`, `ipv6()`, `host_veth`, `result` (the ADD result),
//!   `run(|| ..)` (open sockets inside the pod from Rust), `spawn(&mut Command)`,
//!   `ip(&[..])`, `cni("CHECK")` (any command with prevResult), `delete()`.
//!   Drop runs DEL and removes the netns.
//! - [`IdServer::tcp`]`(pod.netns_path(), port, "id")` / [`IdServer::udp`]: a
//!   server on `[::]:port` in a pod answering `<id>\n` (TCP then echoes), and
//!   the clients [`tcp_id`] / [`udp_id`] to call from inside `Pod::run`;
//!   [`udp_echo`] sends one datagram of any size and returns the echo;
//!   [`tcp_spread`] counts which backend answered each of n connections.
//! - [`assert_eventually!`]`(cond, timeout, "msg {}", args)`: retries `cond`
//!   every 10 ms until it holds or the deadline passes (then panics).
//! - [`util`]: `sh`, `run_timeout` (every external command has a time
//!   limit), `NamedNetns`, `run_in`, `in_netns`, `unique`.
//! - [`underlay::Underlay`]: several nodes on one L2 segment of their own
//!   (`plug_node(&node, host_no)` gives the node an `eth0` with
//!   192.168.<seg>.<host_no>), outside clients (`client(host_no)`), and
//!   `route_via(netns, "10.244.1.0/24", peer_ip)` for host-gw routes by hand;
//!   [`underlay::Router`]`::new(&[&ul1, &ul2])` joins segments (host 1 of
//!   each, forwarding only in its own namespace) and `router.connect(netns,
//!   &ul1)` routes a member to the other segments through it.
//! - [`cluster::Cluster`]`::new()`: three nodes routed by their own agents
//!   (a, b on one segment, c behind a router: host-gw and VXLAN), a pod
//!   `p<node>` with TCP and UDP id servers on each; `add_pod(i, name)`,
//!   `write_all(file, yaml)` (one catalog file to every agent).

pub mod cluster;
pub mod lb;
pub mod node;
pub mod server;
pub mod underlay;
pub mod util;

pub use node::{cni_path, ferry_bin_dir, merge, CniCall, CniOutput, Node, NodeConfig, Pod, Proc, Sandbox};
pub use server::{tcp_id, tcp_spread, udp_echo, udp_id, Held, IdServer};

/// Retries a boolean expression until it is true or the timeout expires:
/// `assert_eventually!(cond, Duration::from_secs(2))` or with a message.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr) => {
        $crate::assert_eventually!($cond, $timeout, "{}", stringify!($cond))
    };
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!("not true within {:?}: {}", $timeout, format!($($msg)+));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }};
}
