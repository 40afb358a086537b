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
# cni_in <node netns> <netconf> ADD|DEL <pod index>: one plugin call as a
# runtime makes it, in that node's netns; `cni` is the first node's.
cni_in() {
    ip netns exec "$1" env -i PATH="$PATH" CNI_COMMAND="$3" CNI_CONTAINERID="${ID}-pod$4" \
        CNI_NETNS="/run/netns/${POD_NS[$4]}" CNI_IFNAME=eth0 CNI_PATH="$BIN:/usr/lib/cni" \
        "$BIN/ferry" <"$2"
}
cni() { cni_in "$NODE_NS" "$NETCONF" "$@"; }
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
say "eBPF Service load balancing: ferry-agent on a YAML directory, in the node namespace"
# Its own pin dir (not the default /sys/fs/bpf/ferry of a real install).
PIN="/sys/fs/bpf/ferry-demo-$$"
CATALOG="$WORK/catalog"
mkdir -p "$CATALOG"
on_exit "rm -rf '$PIN'"
# pods 0-2 become the backends; a fourth pod is the client.
POD_NS[3]="${ID}-pod3"
ip netns add "${POD_NS[3]}"
on_exit "ip netns del '${POD_NS[3]}'"
ip -n "${POD_NS[3]}" link set lo up
result=$(cni ADD 3)
on_exit "cni DEL 3"
POD_IP[3]=$(first_ip 4 <<<"$result")
for i in 0 1 2; do
    # Not through in_pod: $! must be the server itself (ip netns exec execs it).
    ip netns exec "${POD_NS[$i]}" python3 -c '
import socket, sys
s = socket.create_server(("0.0.0.0", 8080))
while True:
    c, _ = s.accept()
    c.sendall(("pod%s\n" % sys.argv[1]).encode())
    c.close()
' "$i" &
    on_exit "kill $!"
done
cat >"$CATALOG/web.yaml" <<EOF2
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- addresses: ["${POD_IP[0]}"]
- addresses: ["${POD_IP[1]}"]
- addresses: ["${POD_IP[2]}"]
EOF2
echo "  Service demo/web: ClusterIP 10.96.0.10:80 -> ${POD_IP[0]}, ${POD_IP[1]}, ${POD_IP[2]} :8080"
# nsenter switches only the network namespace (ip netns exec would remount
# /sys and hide bpffs). The pods' host veths are fer<12 hex>; the bridge is not.
PODS="fer0*,fer1*,fer2*,fer3*,fer4*,fer5*,fer6*,fer7*,fer8*,fer9*,fera*,ferb*,ferc*,ferd*,fere*,ferf*"
# The socket LB goes on a cgroup of the demo's own (in a cluster: the node's
# root cgroup), so "host" processes the demo starts in it reach ClusterIPs.
CGROUP="$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/${ID}-host"
mkdir "$CGROUP"
on_exit "rmdir '$CGROUP'"
nsenter --net="/run/netns/$NODE_NS" "$BIN/ferry-agent" --yaml-dir "$CATALOG" --pin-dir "$PIN" \
    --state-dir "$WORK/agent-state" --iface-pattern "$PODS" --metrics-addr 127.0.0.1:9962 \
    --socket-lb-cgroup "$CGROUP" --node-name node-a \
    --maglev-size 1021 --max-tables 64 --max-services 256 --max-backends 1024 --ct-size 16384 --affinity-size 1024 \
    >"$WORK/agent.log" 2>&1 &
AGENT=$!
on_exit "kill $AGENT"
ready=""
for _ in $(seq 200); do
    if nsenter --net="/run/netns/$NODE_NS" python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", 9962), timeout=0.5)
s.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(100) else 1)' 2>/dev/null && [ "$(ls "$PIN/links" 2>/dev/null | grep -c -- '-in$')" -ge 4 ]; then
        ready=1; break
    fi
    kill -0 "$AGENT" 2>/dev/null || break
    sleep 0.05
done
[ -n "$ready" ] || { echo "  agent not ready; its log:"; sed 's/^/    /' "$WORK/agent.log"; exit 1; }
echo "  agent ready (/readyz 200), programs attached to the 4 pod veths"
echo "  30 requests from pod3 to http://10.96.0.10:80 :"
in_pod 3 python3 -c '
import collections, socket
n = collections.Counter()
for _ in range(30):
    c = socket.create_connection(("10.96.0.10", 80), timeout=2)
    n[c.recv(100).decode().strip()] += 1
    c.close()
for k in sorted(n):
    print("    %s served %d" % (k, n[k]))
'
echo "  from the node itself (a hostNetwork process, in the socket LB's cgroup), 6 connects to 10.96.0.10:80:"
sh -c 'echo $$ > "$1/cgroup.procs" && exec nsenter --net="/run/netns/$2" python3 -c "
import socket
for _ in range(6):
    c = socket.create_connection((\"10.96.0.10\", 80), timeout=2)
    print(\"    %s (getpeername %s:%d)\" % (c.recv(100).decode().strip(), *c.getpeername()))
    c.close()
"' _ "$CGROUP" "$NODE_NS"
echo "  ferryctl service list:"
"$BIN/ferryctl" --pin-dir "$PIN" --state-dir "$WORK/agent-state" service list | sed 's/^/    /'
echo "  ferryctl conntrack list (first 10):"
ct=$("$BIN/ferryctl" --pin-dir "$PIN" --state-dir "$WORK/agent-state" conntrack list)
head -11 <<<"$ct" | sed 's/^/    /'

# --- DNS (issue 4) ---
say "Cluster DNS: ferry-dns on the same YAML directory, on the node's bridge gateway"
cat >"$CATALOG/docs.yaml" <<EOF2
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: demo}
spec:
  type: ExternalName
  externalName: web.demo.svc.cluster.local
EOF2
GW=$(ip -n "$NODE_NS" -4 -o addr show dev ferry0 | awk '{split($4, a, "/"); print a[1]; exit}')
: >"$WORK/resolv.none" # no upstreams inside the demo: cluster names only
nsenter --net="/run/netns/$NODE_NS" "$BIN/ferry-dns" --listen "$GW:53" --metrics-addr 127.0.0.1:9963 \
    --yaml-dir "$CATALOG" --resolv-conf "$WORK/resolv.none" >"$WORK/dns.out" 2>"$WORK/dns.log" &
DNS=$!
on_exit "kill $DNS"
# `ip netns exec` gives the pod this resolv.conf, as kubelet would.
mkdir -p "/etc/netns/${POD_NS[3]}"
on_exit "rm -rf '/etc/netns/${POD_NS[3]}'"
printf 'nameserver %s\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' "$GW" \
    >"/etc/netns/${POD_NS[3]}/resolv.conf"
for _ in $(seq 100); do
    in_pod 3 dig +short +time=1 +tries=1 "@$GW" web.demo.svc.cluster.local A 2>/dev/null | grep -q . && break
    kill -0 "$DNS" 2>/dev/null || { sed 's/^/    /' "$WORK/dns.log"; exit 1; }
    sleep 0.1
done
echo "  ferry-dns listening on $GW:53 (udp+tcp) in the node namespace; from pod3:"
echo "  dig web.demo.svc.cluster.local A:"
in_pod 3 dig +noall +answer "@$GW" web.demo.svc.cluster.local A | sed 's/^/    /'
echo "  dig _http._tcp.web.demo.svc.cluster.local SRV (over TCP):"
in_pod 3 dig +tcp +noall +answer "@$GW" _http._tcp.web.demo.svc.cluster.local SRV | sed 's/^/    /'
echo "  dig docs.demo.svc.cluster.local A (ExternalName -> CNAME, target chased in the zone):"
in_pod 3 dig +noall +answer "@$GW" docs.demo.svc.cluster.local A | sed 's/^/    /'
echo "  dig -x 10.96.0.10 (PTR):"
in_pod 3 dig +short "@$GW" -x 10.96.0.10 | sed 's/^/    /'
echo "  dig nosuch.demo.svc.cluster.local A:"
in_pod 3 dig "@$GW" nosuch.demo.svc.cluster.local A | grep -E 'status:|SOA' | sed 's/^[; ]*/    /'
echo "  pod3 connects to http://web:80 by name (resolv.conf search path -> ferry-dns -> VIP -> eBPF LB):"
in_pod 3 python3 -c '
import socket
for _ in range(3):
    c = socket.create_connection(("web", 80), timeout=2)
    print("    web -> %s served by %s" % (c.getpeername()[0], c.recv(100).decode().strip()))
    c.close()
'

# --- routing between nodes (issue 13) ---
say "A second node: routes between nodes from the Node objects (host-gw on a shared segment)"
NODE_B="${ID}-nodeb"
ip netns add "$NODE_B"
on_exit "ip netns del '$NODE_B'"
ip -n "$NODE_B" link set lo up
ip netns exec "$NODE_B" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
    net.ipv6.conf.all.forwarding=1
# The segment: a bridge in a namespace of its own ("the LAN"), with both
# nodes' eth0 and an "outside" host (the internet, for the masquerade
# below: it has no route to the pod CIDRs) plugged in.
LAN="${ID}-lan"
OUTSIDE="${ID}-out"
for ns in "$LAN" "$OUTSIDE"; do
    ip netns add "$ns"
    on_exit "ip netns del '$ns'"
    ip -n "$ns" link set lo up
done
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
for n in "$NODE_NS:a" "$NODE_B:b" "$OUTSIDE:o"; do
    ns=${n%:*} t=${n#*:}
    ip link add "${ID}$t" netns "$LAN" type veth peer name eth0 netns "$ns"
    ip -n "$LAN" link set "${ID}$t" master br0 up
done
for n in "$NODE_NS:1" "$NODE_B:2" "$OUTSIDE:100"; do
    ns=${n%:*} h=${n#*:}
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.accept_dad=0 net.ipv6.conf.all.forwarding=1
    ip -n "$ns" addr add "192.168.250.$h/24" dev eth0
    ip -n "$ns" addr add "fd00:250::$h/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
done
cat >"$CATALOG/nodes.yaml" <<EOF2
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}
status: {addresses: [{type: InternalIP, address: 192.168.250.1}, {type: InternalIP, address: "fd00:250::1"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:245::/64"]}
status: {addresses: [{type: InternalIP, address: 192.168.250.2}, {type: InternalIP, address: "fd00:250::2"}]}
EOF2
echo "  nodes: node-a (this demo's first node) 192.168.250.1, pods 10.244.0.0/24;"
echo "         node-b $NODE_B 192.168.250.2, pods 10.244.1.0/24 (Node objects in the YAML directory)"
NETCONF_B="$WORK/10-ferry-b.conf"
sed -e 's|10.244.0.0/24|10.244.1.0/24|' -e 's|fd00:10:244::/64|fd00:10:245::/64|' \
    -e "s|$WORK/ipam|$WORK/ipam-b|" "$NETCONF" >"$NETCONF_B"
POD_NS[4]="${ID}-podb0"
ip netns add "${POD_NS[4]}"
on_exit "ip netns del '${POD_NS[4]}'"
ip -n "${POD_NS[4]}" link set lo up
cni_b() { cni_in "$NODE_B" "$NETCONF_B" "$@"; }
result=$(cni_b ADD 4)
on_exit "cni_b DEL 4"
POD_IP[4]=$(first_ip 4 <<<"$result")
echo "  pod podb0 on node-b: ${POD_IP[4]}"
PIN_B="/sys/fs/bpf/ferry-demo-b-$$"
on_exit "rm -rf '$PIN_B'"
nsenter --net="/run/netns/$NODE_B" "$BIN/ferry-agent" --yaml-dir "$CATALOG" --pin-dir "$PIN_B" \
    --state-dir "$WORK/agent-b-state" --iface-pattern "$PODS" --metrics-addr 127.0.0.1:9962 \
    --node-name node-b \
    --maglev-size 1021 --max-tables 64 --max-services 256 --max-backends 1024 --ct-size 16384 --affinity-size 1024 \
    >"$WORK/agent-b.log" 2>&1 &
AGENT_B=$!
on_exit "kill $AGENT_B"
routed=""
for _ in $(seq 200); do
    if ip -n "$NODE_B" route show proto 70 | grep -q 10.244.0.0/24 &&
        ip -n "$NODE_NS" route show proto 70 | grep -q 10.244.1.0/24 &&
        [ "$(ls "$PIN_B/links" 2>/dev/null | grep -c -- '-in$')" -ge 1 ]; then
        routed=1; break
    fi
    kill -0 "$AGENT_B" 2>/dev/null || break
    sleep 0.05
done
[ -n "$routed" ] || { echo "  no routes between the nodes; the agents' logs:"; sed 's/^/    /' "$WORK/agent.log" "$WORK/agent-b.log"; exit 1; }
echo "  routes the agents installed (route protocol 70, Ferry's own):"
echo "    node-a: $(ip -n "$NODE_NS" route show proto 70 | grep -v : | head -1)"
echo "    node-b: $(ip -n "$NODE_B" route show proto 70 | grep -v : | head -1)"
echo "  podb0 (node-b) -> pod0 (node-a) ${POD_IP[0]}:8080, no route added by hand:"
in_pod 4 python3 -c '
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=2)
print("    answered by %s" % c.recv(100).decode().strip())
c.close()
' "${POD_IP[0]}"
echo "  podb0 -> http://10.96.0.10:80, the Service whose backends are all on node-a (6 connects):"
in_pod 4 python3 -c '
import socket
for _ in range(6):
    c = socket.create_connection(("10.96.0.10", 80), timeout=2)
    print("    %s (peer %s:%d)" % (c.recv(100).decode().strip(), *c.getpeername()))
    c.close()
'

# --- egress masquerade (issue 13) ---
say "A pod reaching outside the cluster: eBPF masquerade at node-a's uplink"
in_ns_py() { ip netns exec "$1" python3 -c "$2" "${@:3}"; }
in_ns_py "$OUTSIDE" '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(("%s:%d" % a).encode()); c.close()
' &
OUT_SRV=$!
on_exit "kill $OUT_SRV"
echo "  outside host 192.168.250.100 (no route to any pod CIDR); it answers with the source it sees."
for _ in $(seq 100); do
    # The uplink programs are attached (their link pins exist) and the server listens.
    ls "$PIN/links" 2>/dev/null | grep -q -- '-net-out$' &&
        ip netns exec "$OUTSIDE" ss -Hltn 'sport = :8000' | grep -q . && break
    sleep 0.05
done
echo "  pod0 (${POD_IP[0]}) -> 192.168.250.100:8000, 3 connects:"
in_pod 0 python3 -c '
import socket
for _ in range(3):
    c = socket.create_connection(("192.168.250.100", 8000), timeout=2)
    print("    the outside saw %s" % c.recv(100).decode())
    c.close()
'
echo "  pod0 pings the outside host:"
in_pod 0 ping -c 2 -W 2 192.168.250.100 | grep -E "bytes from|packet loss" | sed 's/^/    /'
echo "  ferryctl nat list (no iptables or nftables rule exists in node-a):"
"$BIN/ferryctl" --pin-dir "$PIN" nat list | sed 's/^/    /'

say "cleaning up (DEL through the plugin, namespaces removed)"
