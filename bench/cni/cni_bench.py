#!/usr/bin/env python3
# Vendored from the shared bench harness (../shared/bench/cni/cni_bench.py) so that
# `make bench-cni` has no run-time dependency outside this repository.
"""CNI plugin latency / scale baseline.

usage: cni_bench.py PLUGIN_DIR PLUGIN_TYPE [EXTRA_CONFIG_JSON] [--pods 200]
                    [--concurrency 8] [--json OUT.json]

For each phase (sequential, then CONCURRENCY workers) it pre-creates PODS pod
netns (not timed), then times PODS ADDs and PODS DELs (with prevResult, as a
runtime does), and reports p50/p90/p99/max per operation, wall time and
throughput.  After every phase it counts netlink objects in the runtime netns
(links, addresses, routes, neighbours, bridge fdb entries, iptables rules), in
the pod netns (links other than lo) and IPAM reservation files, and reports
what was left behind compared with the state after one warm-up ADD+DEL (the
bridge itself is expected to stay).

Everything happens in netns created for the run (see cni_harness.py).
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cni_harness as H  # noqa: E402


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def stats(durs):
    ms = [d * 1000 for d in durs]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2) if ms else None,
            "mean_ms": round(sum(ms) / len(ms), 2) if ms else None}


def snapshot(scratch):
    s = {
        "links": len(H.ip_json(["link", "show"])),
        "addrs": sum(len(l.get("addr_info", [])) for l in H.ip_json(["addr", "show"])),
        "routes4": len(H.ip_json(["-4", "route", "show", "table", "all"])),
        "routes6": len(H.ip_json(["-6", "route", "show", "table", "all"])),
        "neigh": len(H.ip_json(["neigh", "show"])),
    }
    p = H.sh(["bridge", "-j", "fdb", "show"], check=False)
    try:
        s["fdb"] = len(json.loads(p.stdout)) if p.returncode == 0 and p.stdout.strip() else 0
    except ValueError:
        s["fdb"] = -1
    if shutil.which("iptables-save"):
        s["iptables_rules"] = sum(1 for l in H.sh(["iptables-save"], check=False).stdout.splitlines()
                                  if l.startswith("-A"))
    d = os.path.join(scratch, "ipam")
    n = 0
    if os.path.isdir(d):
        for _, _, files in os.walk(d):
            n += sum(1 for f in files if f[:1].isdigit() or ":" in f)
    s["ipam_files"] = n
    return s


# object kinds whose leftovers count as leaks (IPv6 routes and neighbour
# entries churn on their own and are reported for information only)
JUDGED = ("links", "addrs", "routes4", "fdb", "iptables_rules", "ipam_files")


def diff(a, b):
    return {k: b[k] - a.get(k, 0) for k in b if b[k] != a.get(k, 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plugin_dir")
    ap.add_argument("plugin_type")
    ap.add_argument("extra", nargs="?", default="")
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--subnet", default="10.223.0.0/16")
    ap.add_argument("--cni-version", default="")
    ap.add_argument("--cni-path", default="/usr/lib/cni")
    ap.add_argument("--json", default="", help="also write results as JSON to this file")
    ap.add_argument("--timeout", type=int, default=1200)
    a = ap.parse_args()
    if not H.inside_hostns():
        prefix = "cnibn%d" % os.getpid()
        return H.run_outer(prefix, os.path.join("/tmp", prefix), [os.path.abspath(__file__)] + sys.argv[1:], a.timeout)

    prefix, scratch = os.environ["CNICT_PREFIX"], os.environ["CNICT_SCRATCH"]
    h = H.Harness(prefix)
    rt = H.Runtime(a.plugin_dir, a.cni_path.split(":") if a.cni_path else [])
    sv = (rt.version(a.plugin_type).json or {}).get("supportedVersions", [])
    ver = a.cni_version or next((v for v in ("1.1.0", "1.0.0") if v in sv), sv[-1] if sv else "1.0.0")
    conf = {"cniVersion": ver, "name": prefix, "type": a.plugin_type, "bridge": ("bb%d" % os.getpid())[:15],
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": a.subnet, "dataDir": os.path.join(scratch, "ipam"),
                     "routes": [{"dst": "0.0.0.0/0"}]}}
    if a.extra:
        conf = H.deep_merge(conf, json.loads(a.extra))
        H.set_subnet(conf, a.subnet)
    out = {"plugin": os.path.join(a.plugin_dir, a.plugin_type), "cniVersion": ver, "pods": a.pods,
           "concurrency": a.concurrency, "phases": {}}
    print("# plugin %s cniVersion %s pods %d" % (out["plugin"], ver, a.pods), flush=True)
    base0 = snapshot(scratch)
    # warm-up: creates the bridge; the state after it is the leak baseline
    w = H.Pod(h, "warm").create()
    inv = rt.exec(a.plugin_type, "ADD", conf, w.cid, w.path, w.ifname, w.args)
    if inv.rc != 0:
        print("warm-up ADD failed: %s" % inv.brief())
        print("0 passed, 1 failed")
        return 1
    w.result = inv.json
    rt.exec(a.plugin_type, "DEL", dict(conf, prevResult=w.result), w.cid, w.path, w.ifname, w.args)
    w.destroy()
    base = snapshot(scratch)
    out["created_by_warmup"] = diff(base0, base)
    ok_all = True
    try:
        for phase, workers in (("sequential", 1), ("concurrent%d" % a.concurrency, a.concurrency)):
            t0 = time.monotonic()
            pods = [H.Pod(h, "%s%d" % (phase[0], i)) for i in range(a.pods)]
            for p in pods:
                p.create()
            t_ns = time.monotonic() - t0

            def add(p):
                inv = rt.exec(a.plugin_type, "ADD", conf, p.cid, p.path, p.ifname, p.args)
                if inv.rc == 0:
                    p.result = inv.json
                return inv

            def delete(p):
                c = dict(conf, prevResult=p.result) if p.result else conf
                return rt.exec(a.plugin_type, "DEL", c, p.cid, p.path, p.ifname, p.args)

            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(workers) as ex:
                adds = list(ex.map(add, pods))
            t_add = time.monotonic() - t0
            peak = snapshot(scratch)
            ips = [p.ip() for p in pods if p.result]
            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(workers) as ex:
                dels = list(ex.map(delete, pods))
            t_del = time.monotonic() - t0
            time.sleep(1.0)  # let the kernel finish asynchronous route/fdb cleanup
            after = snapshot(scratch)
            pod_left = sum(1 for p in pods for l in H.ip_json(["link", "show"], p.ns) if l["ifname"] != "lo")
            for p in pods:
                p.destroy()
            after_ns = snapshot(scratch)
            ph = {
                "workers": workers,
                "netns_create_s": round(t_ns, 2),
                "add": stats([i.dur for i in adds if i.rc == 0]),
                "del": stats([i.dur for i in dels if i.rc == 0]),
                "add_failures": [i.brief() for i in adds if i.rc != 0][:5],
                "add_failed": sum(1 for i in adds if i.rc != 0),
                "del_failed": sum(1 for i in dels if i.rc != 0),
                "duplicate_ips": len(ips) - len(set(ips)),
                "add_wall_s": round(t_add, 2), "del_wall_s": round(t_del, 2),
                "add_per_s": round(len(pods) / t_add, 1), "del_per_s": round(len(pods) / t_del, 1),
                "objects_at_peak_vs_baseline": diff(base, peak),
                "left_after_all_del_vs_baseline": diff(base, after),
                "left_after_netns_removed_vs_baseline": diff(base, after_ns),
                "pod_side_links_left_after_del": pod_left,
            }
            out["phases"][phase] = ph
            leak = {k: v for k, v in ph["left_after_all_del_vs_baseline"].items() if k in JUDGED}
            bad = ph["add_failed"] or ph["del_failed"] or ph["duplicate_ips"] or leak or pod_left
            ok_all = ok_all and not bad
            print("%-13s ADD p50 %6.1f ms p99 %6.1f ms | DEL p50 %6.1f ms p99 %6.1f ms | ADD wall %5.2fs (%5.1f/s) DEL wall %5.2fs (%5.1f/s)"
                  % (phase, ph["add"]["p50_ms"], ph["add"]["p99_ms"], ph["del"]["p50_ms"], ph["del"]["p99_ms"],
                     t_add, ph["add_per_s"], t_del, ph["del_per_s"]), flush=True)
            print("%-13s failures add=%d del=%d dupIPs=%d | peak objs %s | left after DELs %s | pod-side links left %d"
                  % ("", ph["add_failed"], ph["del_failed"], ph["duplicate_ips"], ph["objects_at_peak_vs_baseline"],
                     ph["left_after_all_del_vs_baseline"] or "none", pod_left), flush=True)
            base = after_ns
    finally:
        h.cleanup_pods()
    print("# warm-up created (expected: bridge + its addr/routes): %s" % out["created_by_warmup"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    print(json.dumps(out, indent=1) if os.environ.get("CNIBENCH_VERBOSE") else "", end="")
    print("%d passed, %d failed" % ((1, 0) if ok_all else (0, 1)))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
