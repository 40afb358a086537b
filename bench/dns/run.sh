#!/usr/bin/env bash
# make bench-dns: ferry-dns beside knot and nsd in one run, same zone, same
# query mix, server pinned to CPU 0 and dnsperf to CPU 1 (run_bench.sh, the
# vendored shared harness), then the time from a Service appearing in the
# YAML directory to its first correct answer with the 10,000-Service catalog
# loaded. Prints the table and ratios; writes bench/results/dns.json.
#
# Knobs: as run_bench.sh (DURATION, LAT_DURATION, LAT_QPS, ...), plus
# SERVERS (default "custom knot nsd"), LIVE_ROUNDS (default 5).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="$ROOT/target/release/ferry-dns"
RESULTS="$ROOT/bench/results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
export OUT="$RESULTS/dns-$STAMP"
mkdir -p "$OUT"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p ferry-dns)
for tool in knotd nsd dnsperf kdig python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (make bootstrap-bench)"; exit 1; }
done

# 1. Throughput, latency, CPU per query, peak RSS: the shared harness.
export CUSTOM_CMD="$BIN --listen 127.0.0.1:{port} --metrics-addr 127.0.0.1:0 --fixture {cluster_json} --upstream 127.0.0.1:9"
# shellcheck disable=SC2086
bash "$HERE/run_bench.sh" ${SERVERS:-custom knot nsd}

# 2. Live update: a Service written into the watched directory next to the
# 10,000-Service cluster, timed until ferry-dns answers it (and its removal).
WORK="$(mktemp -d /tmp/ferry-dns-live.XXXXXX)"
PID=""
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
python3 "$HERE/gen_large_cluster.py" "$WORK/data" --queries 10 >/dev/null
mkdir -p "$WORK/dir"
cp "$WORK/data/large_cluster.json" "$WORK/dir/"
PORT=53690
taskset -c "${SERVER_CPU:-0}" "$BIN" --listen "127.0.0.1:$PORT" --metrics-addr 127.0.0.1:0 \
  --yaml-dir "$WORK/dir" --upstream 127.0.0.1:9 >"$WORK/ferry-dns.out" 2>"$WORK/ferry-dns.err" &
PID=$!
for _ in $(seq 300); do
  kdig +short +timeout=1 +retry=0 @127.0.0.1 -p "$PORT" svc-000.ns-00.svc.cluster.local A 2>/dev/null | grep -q '^10\.' && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/ferry-dns.err"; exit 1; }
  sleep 0.1
done
python3 - "$WORK/dir" "$PORT" "${LIVE_ROUNDS:-5}" > "$OUT/live.json" <<'PY'
import json, os, socket, struct, sys, time
d, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def query(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for l in name.strip(".").split("."):
        q += bytes([len(l)]) + l.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
def answer(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
    try:
        s.sendto(query(name), ("127.0.0.1", port)); r = s.recv(4096)
    except OSError:
        return None, None
    finally:
        s.close()
    rcode, an = r[3] & 0xf, struct.unpack(">H", r[6:8])[0]
    return rcode, (".".join(str(b) for b in r[-4:]) if an else None)
def until(name, ok, limit=10.0):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if ok(*answer(name)):
            return (time.monotonic() - t) * 1000
        time.sleep(0.001)
    return None
def put(path, text):
    tmp = os.path.join(d, "." + os.path.basename(path) + ".tmp")
    open(tmp, "w").write(text); os.rename(tmp, path)
added, removed = [], []
for i in range(rounds):
    ip = f"10.97.0.{i + 1}"; name = f"live-{i}.default.svc.cluster.local"
    path = os.path.join(d, f"live-{i}.yaml")
    svc = f"apiVersion: v1\nkind: Service\nmetadata: {{name: live-{i}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n"
    put(path, svc)
    added.append(until(name, lambda rc, a: a == ip))
    os.remove(path)
    removed.append(until(name, lambda rc, a: rc == 3))
ok = [x for x in added + removed if x is not None]
print(json.dumps({"services_in_catalog": 10500, "add_ms": added, "remove_ms": removed,
                  "max_ms": max(ok) if ok else None, "failed": len(added + removed) - len(ok)}))
PY
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

# 3. Figures, ratios, JSON.
python3 - "$OUT" "$RESULTS/dns.json" <<'PY'
import json, sys
out, dest = sys.argv[1], sys.argv[2]
rows = {}
for line in open(f"{out}/table.md"):
    c = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(c) < 12 or c[0] in ("server", "---") or c[0].startswith("-"):
        continue
    name = "ferry-dns" if c[0] == "custom" else c[0]
    rows[name] = {"qps": float(c[1]), "avg_ms": float(c[2]), "p50_ms": float(c[3]), "p99_ms": float(c[4]),
                  "lost": c[5], "cpu_pct": float(c[6]), "cpu_us_per_query": float(c[7]),
                  "host_busy_pct": float(c[8]), "rcodes": c[9], "loadavg_before": c[10],
                  "peak_rss_mb": float(c[11])}
live = json.load(open(f"{out}/live.json"))
ratios = {}
f = rows.get("ferry-dns")
for other in ("nsd", "knot"):
    o = rows.get(other)
    if f and o:
        ratios[f"ferry_vs_{other}"] = {k: round(f[k] / o[k], 3) if o[k] else None
                                       for k in ("qps", "cpu_us_per_query", "p99_ms", "avg_ms", "peak_rss_mb")}
goals = {}
if f and "nsd" in rows and "knot" in rows:
    goals = {"qps_ge_nsd_and_knot": f["qps"] >= rows["nsd"]["qps"] and f["qps"] >= rows["knot"]["qps"],
             "cpu_le_0.75x_nsd": f["cpu_us_per_query"] <= 0.75 * rows["nsd"]["cpu_us_per_query"],
             "p99_le_nsd": f["p99_ms"] <= rows["nsd"]["p99_ms"],
             "rss_lt_100mb": f["peak_rss_mb"] < 100,
             "live_update_lt_100ms": live["max_ms"] is not None and live["max_ms"] < 100 and live["failed"] == 0}
# Other work on a 2-core host starves dnsperf and skews every ratio.
load = max((float(r["loadavg_before"].split()[0]) for r in rows.values()), default=0.0)
result = {"results_dir": out, "servers": rows, "ratios": ratios, "live_update": live, "goals": goals}
json.dump(result, open(dest, "w"), indent=2)
print()
print("server      QPS      avg ms  p99 ms  CPU us/q  peak RSS MB")
for n, r in rows.items():
    print(f"{n:10} {r['qps']:8.0f} {r['avg_ms']:7.3f} {r['p99_ms']:7.3f} {r['cpu_us_per_query']:9.1f} {r['peak_rss_mb']:12.1f}")
for k, v in ratios.items():
    print(k, v)
print("live update (10,500 Services loaded): add ms", [round(x, 1) if x else x for x in live["add_ms"]],
      "remove ms", [round(x, 1) if x else x for x in live["remove_ms"]])
print("goals", goals)
if load > 1.5:
    print(f"WARNING: load average was {load} before a run: the host was busy, figures are not comparable")
print(f"written {dest}")
PY
