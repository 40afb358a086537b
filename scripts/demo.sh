#!/usr/bin/env bash
# The shortest path to seeing Ferry work (`make demo` builds first).
#
# Everything happens in network namespaces this script creates: a "node"
# namespace (bridge, host-side veths) and pod namespaces attached by the real
# `ferry` CNI binary, called exactly as a container runtime calls it. Nothing
# is added to the machine's own network namespace; all of it is removed on
# exit, even on failure or Ctrl-C.
#
# For later sections: $NODE_NS, $NETCONF, $BIN, pods in POD_NS[i] / POD_IP[i]
# / POD_IP6[i] (i = 0..2), `cni ADD|DEL <i>`, `in_pod <i> cmd...`, and
# `on_exit "shell command"` to register cleanup (run in reverse order).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${FERRY_BIN_DIR:-$PWD/target/release}
[ -x "$BIN/ferry" ] || { echo "demo: $BIN/ferry not found; run 'make demo' (it builds first)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup hooks
CLEANUP=()
on_exit() { CLEANUP+=("$1"); }
run_cleanup() {
    local i
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUP[i]}" >/dev/null 2>&1 || true
    done
}
trap run_cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# ---------------------------------------------------------------- node + CNI
ID="fdemo$$"
NODE_NS="${ID}-node"
WORK=$(mktemp -d "/tmp/${ID}.XXXXXX")
on_exit "rm -rf '$WORK'"
ip netns add "$NODE_NS"
on_exit "ip netns del '$NODE_NS'"
ip -n "$NODE_NS" link set lo up
ip netns exec "$NODE_NS" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0

NETCONF="$WORK/10-ferry.conf"
cat >"$NETCONF" <<EOF
{
  "cniVersion": "1.1.0",
  "name": "ferry-demo",
  "type": "ferry",
  "bridge": "ferry0",
  "mtu": 1500,
  "ipam": {
    "type": "ferry",
    "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:10:244::/64"}]],
    "dataDir": "$WORK/ipam"
  }
}
EOF

POD_NS=() POD_IP=() POD_IP6=()
# cni ADD|DEL <pod index>: one plugin call as a runtime makes it, in the node netns.
cni() {
    ip netns exec "$NODE_NS" env -i PATH="$PATH" CNI_COMMAND="$1" CNI_CONTAINERID="${ID}-pod$2" \
        CNI_NETNS="/run/netns/${POD_NS[$2]}" CNI_IFNAME=eth0 CNI_PATH="$BIN:/usr/lib/cni" \
        "$BIN/ferry" <"$NETCONF"
}
in_pod() { local i=$1; shift; ip netns exec "${POD_NS[$i]}" "$@"; }
first_ip() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(next(i["address"].split("/")[0] for i in r["ips"] if (":" in i["address"]) == (sys.argv[1] == "6")))' "$1"; }

say "creating node namespace $NODE_NS and three pods through the ferry CNI plugin"
for i in 0 1 2; do
    POD_NS[i]="${ID}-pod$i"
    ip netns add "${POD_NS[i]}"
    on_exit "ip netns del '${POD_NS[i]}'"
    ip -n "${POD_NS[i]}" link set lo up
    t0=$(date +%s%N)
    result=$(cni ADD "$i")
    t1=$(date +%s%N)
    on_exit "cni DEL $i"
    POD_IP[i]=$(first_ip 4 <<<"$result")
    POD_IP6[i]=$(first_ip 6 <<<"$result")
    printf '  pod%d  %-12s %-20s (ADD via ip netns exec: %d ms)\n' "$i" "${POD_IP[i]}" "${POD_IP6[i]}" $(((t1 - t0) / 1000000))
done
echo "  bridge and host-side veths in the node namespace:"
ip -n "$NODE_NS" -br link | sed 's/^/    /'

say "TCP between pods: pod1 serves, pod0 connects over IPv4 and IPv6"
in_pod 1 python3 -c '
import socket
s = socket.create_server(("::", 8080), family=socket.AF_INET6, dualstack_ipv6=True)
for _ in range(2):
    c, peer = s.accept()
    msg = c.recv(100).decode().strip()
    c.sendall(f"pod1 got {msg!r} from {peer[0]}\n".encode())
    c.close()
' &
SERVER=$!
on_exit "kill $SERVER"
for dst in "${POD_IP[1]}" "[${POD_IP6[1]}]"; do
    host=${dst#[}; host=${host%]}
    for _ in $(seq 50); do # the server may still be starting
        if reply=$(in_pod 0 python3 -c '
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=2)
c.sendall(b"hello from pod0\n")
print(c.recv(200).decode().strip())
' "$host" 2>/dev/null); then break; fi
        sleep 0.1
    done
    echo "  pod0 -> $dst:8080 : ${reply:-no answer}"
done
wait "$SERVER" 2>/dev/null || true

# --- data path (issue 3) ---

# --- DNS (issue 4) ---

say "cleaning up (DEL through the plugin, namespaces removed)"
