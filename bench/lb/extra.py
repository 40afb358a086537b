#!/usr/bin/env python3
"""Ferry-only figures the shared kube-proxy harness does not produce, measured
with the same hook (hook.py) and inside namespaces this script creates:

  cold     program 10,000 Services x 10 endpoints into an empty data path
           (agent start, YAML/JSON directory parse, Maglev tables, map writes):
           the agent's own first-sync time and start-to-ready, median of reps;
           agent RSS and kernel memory of the pinned maps at that size.
  change   one endpoint added/removed in one Service's file, repeated: the
           agent's sync time (translate + diff + apply) and file-to-maps time,
           p50/p99.
  iperf    bulk TCP throughput client -> backend pod directly and through a
           Ferry VIP on the harness topology (bench.py topo_up), interleaved.

Writes one JSON document to the path given as the first argument.
`--agent-only` skips iperf (cold + change only); `--reps N` sets the cold reps.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "kubeproxy"))
import bench  # noqa: E402  (the vendored harness: run/spawn/topo_up with setns)

HOOK = os.path.join(HERE, "hook.py")
QUICK = "--quick" in sys.argv
# --agent-only: cold programming and endpoint changes at full size, no iperf
# (the agent-side figures, for iterating on the agent); --reps N overrides.
AGENT_ONLY = "--agent-only" in sys.argv
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else None
NS = "ferry-lbx-%d" % os.getpid()


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def hook(phase, doc, ns, timings, extra_env=None):
    path = os.path.join(tempfile.gettempdir(), "ferry-lbx-%s-%d.json" % (phase, os.getpid()))
    with open(path, "w") as f:
        json.dump(doc, f)
    env = dict(os.environ, KPB_PHASE=phase, KPB_JSON=path, KPB_NODE_NETNS=ns, FERRY_LB_TIMINGS=timings)
    env.update(extra_env or {})
    bench.run(["python3", HOOK], ns, env=env, timeout=600)
    os.unlink(path)


def last_timing(timings):
    with open(timings) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def services(n, m):
    out = []
    for i in range(n):
        out.append({"namespace": "bench", "name": "svc%05d" % i, "port_name": "http",
                    "cluster_ip": "10.96.%d.%d" % (i // 250, i % 250 + 1), "port": 80, "protocol": "tcp",
                    "endpoints": [{"ip": "10.%d.%d.%d" % (100 + j, i // 250, i % 250 + 1), "port": 8080}
                                  for j in range(m)]})
    return out


def map_memory(pin):
    total, per = 0, {}
    for name in sorted(os.listdir(os.path.join(pin, "maps"))):
        p = bench.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(pin, "maps", name)], check=False)
        try:
            b = json.loads(p.stdout).get("bytes_memlock", 0)
        except ValueError:
            b = 0
        per[name] = b
        total += b
    return total, per


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cold_and_change(res):
    n, m = (1000, 10) if QUICK else (10000, 10)
    reps = REPS or (1 if QUICK else 3)
    changes = 50 if QUICK else 200
    timings = os.path.join(tempfile.gettempdir(), "ferry-lbx-timings-%d.jsonl" % os.getpid())
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        bench.run(["ip", "link", "set", "lo", "up"], NS)
        svcs = services(n, m)
        doc = {"phase": "full", "services": svcs, "changed": [], "topology": {}}
        fulls = []
        for _ in range(reps):
            hook("full", doc, NS, timings)
            fulls.append(last_timing(timings))
            bench.log("cold %d x %d: %s" % (n, m, fulls[-1]))
        pid = fulls[-1]["agent_pid"]
        pin = "/sys/fs/bpf/ferry-bench-%s" % NS
        mem, per_map = map_memory(pin)
        res["cold"] = {
            "n_services": n, "endpoints_per_service": m, "reps": reps,
            "first_sync_ms": [f["first_sync_ms"] for f in fulls],
            "first_sync_ms_median": statistics.median(f["first_sync_ms"] for f in fulls),
            "agent_start_to_ready_s": [f["agent_start_to_ready_s"] for f in fulls],
            "agent_start_to_ready_s_median": statistics.median(f["agent_start_to_ready_s"] for f in fulls),
            "write_files_s": [f["write_files_s"] for f in fulls],
            "agent_rss_mb": rss_kb(pid) / 1024.0,
            "map_memory_mb": mem / 1048576.0,
            "map_memory_by_map_mb": {k: round(v / 1048576.0, 2) for k, v in per_map.items()},
        }
        # One endpoint change at a time, alternating add/remove on spread-out Services.
        sync_us, wall = [], []
        for k in range(changes):
            i = (k * 7919) % n
            s = svcs[i]
            if len(s["endpoints"]) > m:
                s["endpoints"].pop()
            else:
                s["endpoints"].append({"ip": "10.99.%d.%d" % (k // 250, k % 250 + 1), "port": 8080})
            hook("incremental", {"phase": "incremental", "services": [s], "changed": ["bench/" + s["name"]],
                                 "topology": {}}, NS, timings)
            t = last_timing(timings)
            sync_us.append(t["sync_us"])
            wall.append(t["file_to_maps_s"] * 1e3)
        res["change"] = {
            "changes": changes,
            "sync_ms_p50": pct(sync_us, 50) / 1e3, "sync_ms_p99": pct(sync_us, 99) / 1e3,
            "file_to_maps_ms_p50": pct(wall, 50), "file_to_maps_ms_p99": pct(wall, 99),
            "agent_rss_mb_after": rss_kb(pid) / 1024.0,
        }
        bench.log("endpoint change: %s" % res["change"])
    finally:
        try:
            hook("cleanup", {"services": []}, NS, timings)
        finally:
            subprocess.run(["ip", "netns", "del", NS], check=False)
            try:
                os.unlink(timings)
            except OSError:
                pass


def iperf(res):
    secs = 2 if QUICK else 3
    reps = 1 if QUICK else 3
    timings = os.path.join(tempfile.gettempdir(), "ferry-lbx-iperf-%d.jsonl" % os.getpid())
    work = tempfile.mkdtemp(prefix="ferry-lbx-")
    bins = bench.build_tools(os.path.join(work, "bin"))
    # Ferry does its own reverse NAT: no bridge netfilter needed.
    bench.topo_up(1, bins, br_nf=False, iperf=True)
    try:
        vip = "10.96.255.254"
        svc = {"namespace": "kpb", "name": "iperf", "port_name": "iperf", "cluster_ip": vip, "port": bench.IPERF_PORT,
               "protocol": "tcp", "endpoints": [{"ip": bench.backend_ip(0), "port": bench.IPERF_PORT}]}
        hook("full", {"phase": "full", "services": [svc], "changed": [], "topology": bench.topology_doc()},
             bench.NS_NODE, timings)
        out = {"direct": [], "vip": []}
        for _ in range(reps):
            for which, ip in (("direct", bench.backend_ip(0)), ("vip", vip)):
                p = bench.run(["iperf3", "-c", ip, "-p", str(bench.IPERF_PORT), "-t", str(secs), "-J"],
                              bench.NS_CLIENT, check=False, timeout=secs + 30)
                try:
                    out[which].append(json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
                except (ValueError, KeyError):
                    out[which].append(None)
        d = statistics.median([x for x in out["direct"] if x] or [0])
        v = statistics.median([x for x in out["vip"] if x] or [0])
        res["iperf"] = {"direct_gbps": out["direct"], "vip_gbps": out["vip"], "direct_median": d, "vip_median": v,
                        "vip_vs_direct": (v / d) if d else None}
        bench.log("iperf: %s" % res["iperf"])
    finally:
        try:
            hook("cleanup", {"services": []}, bench.NS_NODE, timings)
        finally:
            bench.topo_down()
            subprocess.run(["rm", "-rf", work, timings], check=False)


def main():
    res = {"quick": QUICK}
    cold_and_change(res)
    if not AGENT_ONLY:
        iperf(res)
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
