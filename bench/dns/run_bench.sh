#!/usr/bin/env bash
# Vendored from the project's shared baseline harness (../shared/bench/dns/
# run_bench.sh, same authors), with one addition for ferry-dns: the server's
# peak RSS (VmHWM) is recorded in the table. run.sh drives it.
#
# DNS performance baseline for the cluster DNS server (see README.md).
#
#   bash run_bench.sh [SERVER...]        SERVER in: knot nsd unbound-auth unbound-local custom
#
# Default: knot nsd unbound-auth unbound-local.  'custom' benchmarks any server
# you start yourself with the same harness:
#   CUSTOM_CMD='path/to/server --listen 127.0.0.1:{port} --fixture {cluster_json}' \
#   bash run_bench.sh custom
# ({port}, {cluster_json} and {zonedir} are substituted; the command must stay
# in the foreground; it is started pinned to SERVER_CPU and killed by PID).
#
# Env knobs (defaults): DURATION=15 (s, throughput run), LAT_DURATION=10,
#   LAT_QPS=20000 (fixed-rate latency run), CLIENTS=4, OUTSTANDING=64,
#   SERVER_CPU=0, CLIENT_CPU=1, OUT=results/<timestamp>
# Every load run is bounded by -l (time) and the query file (200k lines).
# Needs: knot nsd unbound dnsperf knot-dnsutils (apt), python3.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DURATION="${DURATION:-15}"; LAT_DURATION="${LAT_DURATION:-10}"; LAT_QPS="${LAT_QPS:-20000}"
CLIENTS="${CLIENTS:-4}"; OUTSTANDING="${OUTSTANDING:-64}"
SERVER_CPU="${SERVER_CPU:-0}"; CLIENT_CPU="${CLIENT_CPU:-1}"
OUT="${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}"
PORT=53600
WORK="$(mktemp -d /tmp/k8sdns-bench.XXXXXX)"
DATA="$WORK/data"
SERVERS=("$@"); [ ${#SERVERS[@]} -eq 0 ] && SERVERS=(knot nsd unbound-auth unbound-local)
PID=""
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$OUT"

python3 "$HERE/gen_large_cluster.py" "$DATA" | tee "$OUT/gen.txt"
HZ=$(getconf CLK_TCK)

# CPU ticks of the server: every process with the server's name in the server's
# session (nsd re-forks its serving child, so a PID tree walk misses it)
cpu_ticks() { python3 - "$1" <<'PY'
import os, sys
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    comm, rest = s[s.index("(") + 1:s.rindex(")")], s[s.rindex(")") + 2:].split()
    return comm, int(rest[3]), int(rest[11]) + int(rest[12])  # session, utime+stime
comm, sid, _ = stat(sys.argv[1])
t = 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        c, s, ticks = stat(p)
    except (OSError, ValueError, IndexError):
        continue
    if c.split(":")[0] == comm.split(":")[0] and s == sid:  # nsd renames itself "nsd: server 1"
        t += ticks
print(t)
PY
}
# peak resident memory (kB) of the server: the largest VmHWM among its
# processes (same selection as cpu_ticks)
peak_rss() { python3 - "$1" <<'PY'
import os, sys
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    return s[s.index("(") + 1:s.rindex(")")], int(s[s.rindex(")") + 2:].split()[3])
comm, sid = stat(sys.argv[1])
best = 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        c, s = stat(p)
        if c.split(":")[0] == comm.split(":")[0] and s == sid:
            for l in open(f"/proc/{p}/status"):
                if l.startswith("VmHWM:"):
                    best = max(best, int(l.split()[1]))
    except (OSError, ValueError, IndexError):
        continue
print(best)
PY
}
# whole-host busy ticks (all CPUs): shows how much else was running
host_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

start_server() {
  local s="$1" port="$2" dir="$WORK/$s"; mkdir -p "$dir"
  case "$s" in
  knot)
    mkdir -p "$dir/db"
    cat > "$dir/knot.conf" <<EOF
server:
    rundir: $dir
    listen: 127.0.0.1@$port
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: $dir/db
log:
  - target: $dir/knot.log
    any: warning
template:
  - id: default
    storage: $DATA/zones
    file: "%s.zone"
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: cluster.local
  - domain: 10.in-addr.arpa
EOF
    taskset -c "$SERVER_CPU" knotd -c "$dir/knot.conf" & PID=$! ;;
  nsd)
    cat > "$dir/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$port
    server-count: 1
    username: ""
    zonesdir: "$DATA/zones"
    database: ""
    zonelistfile: "$dir/zone.list"
    pidfile: "$dir/nsd.pid"
    xfrdfile: "$dir/xfrd.state"
    xfrdir: "$dir"
    logfile: "$dir/nsd.log"
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "cluster.local"
    zonefile: "cluster.local.zone"
zone:
    name: "10.in-addr.arpa"
    zonefile: "10.in-addr.arpa.zone"
EOF
    taskset -c "$SERVER_CPU" nsd -d -c "$dir/nsd.conf" & PID=$! ;;
  unbound-auth|unbound-local)
    cat > "$dir/unbound.conf" <<EOF
server:
    interface: 127.0.0.1@$port
    port: $port
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$dir"
    pidfile: "$dir/unbound.pid"
    use-syslog: no
    logfile: "$dir/unbound.log"
    verbosity: 0
    do-daemonize: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: yes
    so-reuseport: no
    minimal-responses: yes
EOF
    if [ "$s" = unbound-auth ]; then
      for z in cluster.local 10.in-addr.arpa; do
        printf 'auth-zone:\n    name: "%s"\n    zonefile: "%s"\n    for-downstream: yes\n    for-upstream: no\n    fallback-enabled: no\n' \
          "$z" "$DATA/zones/$z.zone" >> "$dir/unbound.conf"
      done
    else
      echo "include: \"$DATA/unbound-local.conf\"" >> "$dir/unbound.conf"
    fi
    taskset -c "$SERVER_CPU" unbound -d -c "$dir/unbound.conf" & PID=$! ;;
  custom)
    [ -n "${CUSTOM_CMD:-}" ] || { echo "CUSTOM_CMD not set"; return 1; }
    local cmd="${CUSTOM_CMD//\{port\}/$port}"; cmd="${cmd//\{cluster_json\}/$DATA/large_cluster.json}"
    cmd="${cmd//\{zonedir\}/$DATA/zones}"
    taskset -c "$SERVER_CPU" bash -c "exec $cmd" & PID=$! ;;
  *) echo "unknown server $s"; return 1;;
  esac
  for _ in $(seq 150); do
    if kdig +short +timeout=1 +retry=0 @127.0.0.1 -p "$port" svc-000.ns-00.svc.cluster.local A 2>/dev/null | grep -q '^10\.'; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { echo "$s died at start"; return 1; }
    sleep 0.2
  done
  echo "$s did not come up"; return 1
}

sanity() {  # the server must answer the mix correctly before we time it
  local port="$1"
  local a srv nx
  a=$(kdig +short @127.0.0.1 -p "$port" svc-042.ns-17.svc.cluster.local A)
  srv=$(kdig +short @127.0.0.1 -p "$port" _http._tcp.hl-3.ns-99.svc.cluster.local SRV | wc -l)
  nx=$(kdig @127.0.0.1 -p "$port" nosuch-001.ns-01.svc.cluster.local A | grep -c 'status: NXDOMAIN' || true)
  echo "sanity: A=$a headless-SRV-count=$srv nxdomain=$nx"
  [ "$a" = "10.96.6.244" ] && [ "$srv" = 5 ] && [ "$nx" = 1 ]
}

printf '| server | QPS | avg latency ms | p50 ms (fixed %s qps) | p99 ms (fixed %s qps) | lost | server CPU %% (of 1 core) | server CPU us/query | host busy %% (of 200) | NOERROR/NXDOMAIN %% | loadavg before | peak RSS MB |\n' "$LAT_QPS" "$LAT_QPS" > "$OUT/table.md"
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n' >> "$OUT/table.md"

for s in "${SERVERS[@]}"; do
  PORT=$((PORT + 1))
  echo "=== $s (127.0.0.1:$PORT, server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU)"
  start_server "$s" "$PORT" || continue
  sanity "$PORT" | tee "$OUT/$s.sanity.txt" || { echo "$s: sanity check failed"; kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; continue; }
  # warm-up (bounded)
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$DATA/queries.txt" -c "$CLIENTS" -T 1 -q "$OUTSTANDING" -l 2 >/dev/null 2>&1 || true
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  t0=$(cpu_ticks "$PID"); h0=$(host_busy); w0=$(date +%s.%N)
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$DATA/queries.txt" \
      -c "$CLIENTS" -T 1 -q "$OUTSTANDING" -l "$DURATION" > "$OUT/$s.throughput.txt" 2>&1
  t1=$(cpu_ticks "$PID"); h1=$(host_busy); w1=$(date +%s.%N)
  cpu=$(python3 -c "print(f'{($t1-$t0)/$HZ/($w1-$w0)*100:.0f}')")
  hbusy=$(python3 -c "print(f'{($h1-$h0)/$HZ/($w1-$w0)*100:.0f}')")
  # fixed-rate latency run with per-query latencies (-v) for percentiles
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$DATA/queries.txt" \
      -c "$CLIENTS" -T 1 -q "$OUTSTANDING" -Q "$LAT_QPS" -l "$LAT_DURATION" -v > "$OUT/$s.latency.raw" 2>&1
  rss=$(peak_rss "$PID")
  python3 - "$s" "$OUT" "$cpu" "$load" "$hbusy" "$rss" >> "$OUT/table.md" <<'PY'
import re, sys
s, out, cpu, load, hbusy, rss = sys.argv[1:7]
t = open(f"{out}/{s}.throughput.txt").read()
qps = re.search(r"Queries per second:\s+([\d.]+)", t).group(1)
avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", t).group(1)) * 1000
sent = int(re.search(r"Queries sent:\s+(\d+)", t).group(1))
lost = int(re.search(r"Queries lost:\s+(\d+)", t).group(1))
codes = dict(re.findall(r"(NOERROR|NXDOMAIN|SERVFAIL|REFUSED|FORMERR) (\d+) \(", t))
tot = sum(int(v) for v in codes.values()) or 1
lat = []
for line in open(f"{out}/{s}.latency.raw", errors="replace"):
    m = re.match(r"^> \S+ .* ([\d.]+)$", line.strip())
    if m:
        lat.append(float(m.group(1)) * 1000)
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")
with open(f"{out}/{s}.latency.txt", "w") as f:
    f.write(f"samples={len(lat)} p50={pct(50):.3f}ms p90={pct(90):.3f}ms p99={pct(99):.3f}ms p99.9={pct(99.9):.3f}ms max={lat[-1] if lat else 0:.3f}ms\n")
rc = f"{100*int(codes.get('NOERROR',0))/tot:.1f}/{100*int(codes.get('NXDOMAIN',0))/tot:.1f}"
us_q = float(cpu) / 100 / float(qps) * 1e6 if float(qps) else float("nan")
print(f"| {s} | {float(qps):.0f} | {avg:.3f} | {pct(50):.3f} | {pct(99):.3f} | {lost}/{sent} | {cpu} | {us_q:.1f} | {hbusy} | {rc} | {load} | {int(rss)/1024:.1f} |")
PY
  rm -f "$OUT/$s.latency.raw"
  tail -1 "$OUT/table.md"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
done
{ echo; echo "host: $(nproc) cores, $(uname -r); dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p'); knot $(knotd --version | awk '{print $NF}'); nsd $(nsd -v 2>&1 | awk 'NR==1{print $NF}'); unbound $(unbound -V | awk 'NR==1{print $NF}')"
  echo "params: DURATION=$DURATION LAT_DURATION=$LAT_DURATION LAT_QPS=$LAT_QPS CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING SERVER_CPU=$SERVER_CPU CLIENT_CPU=$CLIENT_CPU"; } >> "$OUT/table.md"
echo; cat "$OUT/table.md"
