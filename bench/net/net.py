#!/usr/bin/env python3
"""make bench-net (issue 13): Ferry between nodes and out of the cluster,
beside what Flannel and an nftables masquerade rule do, in one run.

Two identical three-node clusters (world.py) are built, each node running
the real ferry-agent on a YAML directory with the three Node objects, each
pod made by the real `ferry` plugin from the conflist its agent wrote:

  ferry  agents with --routing auto (host-gw a<->b, VXLAN to c) and Ferry's
         eBPF masquerade (default on, when the agent has it)
  hand   agents with --routing none (and --masquerade false): the routes
         built by hand as Flannel's backends program them, plain kernel
         routes via the peer (host-gw) for a<->b and a kernel VXLAN device
         flannel.1 (VNI 1, port 8472, FDB and permanent neighbour per peer)
         to and from c; egress through an nftables masquerade rule on the
         node, added for the egress runs only (so the other baselines pay
         no conntrack)

Figures, each a median over rounds, the two clusters measured interleaved
(which goes first alternates by round), client pod on node a:

  host-gw / vxlan  pod a -> pod b / pod c: conn/s and iperf3 Gbit/s
  egress           pod a -> the outside server (203.0.113.10)
  service          pod a -> a ClusterIP whose backends are the pods on b and
                   c (conn/s: Service `web`, spread; iperf3: Service `bulk`,
                   ClientIP affinity so iperf3's control and data connections
                   meet one backend) beside direct access to those pods in
                   the same round (conn/s: the harmonic mean of b's and c's,
                   which is what an even spread over the two gives; iperf3:
                   the backend the VIP chose)

conn/s is kpb_connbench (bench/lb/kubeproxy: connect, request, response,
RST close) with 4 in flight; throughput is one iperf3 TCP stream.

usage: net.py OUT_JSON [--rounds N] [--seconds S] [--quick]
"""
import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "lb", "kubeproxy"))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the vendored kube-proxy harness: run, log, build_tools)
import world as w  # noqa: E402

CONC, WARM = 4, 200
VIP_WEB, VIP_BULK = "10.96.0.10", "10.96.0.11"
BACKEND_ID = {"b": 2, "c": 3}  # what each pod's kpb_server answers
OUTSIDE_ID = 9
VTEP_MAC = {"a": "0e:fe:00:00:00:01", "b": "0e:fe:00:00:00:02", "c": "0e:fe:00:00:00:03"}

GOALS = {  # figure -> (minimum ferry/baseline ratio, what the baseline is)
    "hostgw_conn": (0.98, "kernel route via peer"), "hostgw_gbps": (0.98, "kernel route via peer"),
    "vxlan_conn": (0.98, "kernel vxlan, Flannel's scheme"), "vxlan_gbps": (0.98, "kernel vxlan, Flannel's scheme"),
    "egress_conn": (1.2, "nftables masquerade"), "egress_gbps": (1.0, "nftables masquerade"),
    "service_conn": (0.9, "direct pod IPs"), "service_gbps": (0.9, "direct pod IP"),
}
TITLES = {
    "hostgw_conn": "pod a -> pod b, host-gw   conn/s", "hostgw_gbps": "pod a -> pod b, host-gw   Gbit/s",
    "vxlan_conn": "pod a -> pod c, VXLAN     conn/s", "vxlan_gbps": "pod a -> pod c, VXLAN     Gbit/s",
    "egress_conn": "pod a -> outside, masq   conn/s", "egress_gbps": "pod a -> outside, masq   Gbit/s",
    "service_conn": "pod a -> ClusterIP (b,c) conn/s", "service_gbps": "pod a -> ClusterIP (b,c) Gbit/s",
}


# ---------------------------------------------------------------------------- the two clusters

def services_yaml(pb, pc):
    """Services `web` (80 -> 8080) and `bulk` (5201, ClientIP affinity), both
    backed only by the pods on b and c, with their EndpointSlices."""
    docs = []
    for name, vip, port, target, affinity in (("web", VIP_WEB, 80, 8080, None), ("bulk", VIP_BULK, 5201, 5201, "ClientIP")):
        spec = "  clusterIP: %s\n  clusterIPs: [%s]\n  ports: [{name: p, protocol: TCP, port: %d, targetPort: %d}]\n" % (
            vip, vip, port, target)
        if affinity:
            spec += "  sessionAffinity: %s\n" % affinity
        docs.append("apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: bench}\nspec:\n%s" % (name, spec))
        eps = "".join("- {addresses: [\"%s\"], nodeName: %s, conditions: {ready: true}}\n" % (ip, node)
                      for node, ip in (("b", pb), ("c", pc)))
        docs.append("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: bench\n"
                    "  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\n"
                    "ports: [{name: p, protocol: TCP, port: %d}]\nendpoints:\n%s" % (name, name, target, eps))
    return "---\n".join(docs)


def hand_routes(world):
    """What Flannel programs, by hand: host-gw routes on the shared segment,
    flannel.1 (VNI 1, UDP 8472, no learning, MTU 1450) with a route via the
    peer's CIDR network address onlink, a permanent neighbour for it and an
    FDB entry to the peer's underlay address across the router. IPv4 only
    (the figures are IPv4)."""
    for name, seg, host, n in w.NODES:
        ns = world.node_ns[name]
        ip = lambda *a: bench.run(["ip", "-n", ns] + list(a))  # noqa: E731
        ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", w.v4(seg, host), "dev", "eth0",
           "dstport", "8472", "nolearning")
        ip("link", "set", "flannel.1", "address", VTEP_MAC[name], "mtu", "1450", "up")
        ip("addr", "add", "10.244.%d.0/32" % n, "dev", "flannel.1")
        for peer, pseg, phost, pn in w.NODES:
            if peer == name:
                continue
            if pseg == seg:
                ip("route", "add", w.pod_cidr(pn), "via", w.v4(pseg, phost))
            else:
                gw = "10.244.%d.0" % pn
                ip("route", "add", w.pod_cidr(pn), "via", gw, "dev", "flannel.1", "onlink")
                ip("neigh", "replace", gw, "lladdr", VTEP_MAC[peer], "dev", "flannel.1", "nud", "permanent")
                bench.run(["bridge", "-n", ns, "fdb", "append", VTEP_MAC[peer], "dev", "flannel.1",
                           "dst", w.v4(pseg, phost)])


NFT_MASQ = """table ip bench {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "eth0" ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
  }
}
"""


def nft_masq(world, on):
    for name, _, _, _ in w.NODES:
        ns = world.node_ns[name]
        if on:
            bench.run("nft -f - <<'EOF'\n%sEOF" % NFT_MASQ, ns)
        else:
            bench.run(["nft", "delete", "table", "ip", "bench"], ns, check=False)


def masquerade_flag(ferry_bin):
    """Whether this ferry-agent has --masquerade (the eBPF egress masquerade)."""
    p = subprocess.run([os.path.join(ferry_bin, "ferry-agent"), "--help"], capture_output=True, text=True, timeout=20)
    return re.search(r"--masquerade\s+<", p.stdout) is not None


def build(prefix, bins, ferry_bin, cleanup, masq):
    """Both clusters, their agents, pods and servers; returns (ferry, hand, facts)."""
    ferry = w.World(prefix + "f", "ferry", bins, ferry_bin, cleanup)
    hand = w.World(prefix + "h", "hand", bins, ferry_bin, cleanup)
    for world in (ferry, hand):
        world.build()
    ferry.start_agents([])
    # 2 peers x 2 families of Ferry routes on every node.
    ferry.wait_agents(routes=4)
    mtu = ferry.conflist("a")["plugins"][0]["mtu"]
    # The same pod MTU on both sides (the VXLAN's), so the paths differ only in routing.
    hand.start_agents(["--routing", "none", "--cni-mtu", str(mtu)] + (["--masquerade", "false"] if masq else []))
    hand.wait_agents(routes=0)
    hand_routes(hand)
    facts = {"pod_mtu": mtu}
    for world in (ferry, hand):
        for node in ("a", "b", "c"):
            world.add_pod(node, "p" + node)
        for node in ("b", "c"):
            world.servers(world.pods["p" + node][0], BACKEND_ID[node])
        world.servers(world.outside_ns, OUTSIDE_ID)
    pb, pc = ferry.pods["pb"][1], ferry.pods["pc"][1]
    text = services_yaml(pb, pc)
    for name, _, _, _ in w.NODES:
        w.write_atomic(os.path.join(ferry.work, name, "catalog"), "bench-services.yaml", text)
    a = ferry.node_ns["a"]
    facts["ferry_routes_on_a"] = bench.run(["ip", "-4", "-n", a, "route", "show", "proto", "70"]).stdout.split("\n")
    facts["ferry_vxlan"] = bench.run(["ip", "-d", "-n", a, "link", "show", "ferry.vxlan"], check=False).stdout.strip()
    facts["hand_vxlan"] = bench.run(["ip", "-d", "-n", hand.node_ns["a"], "link", "show", "flannel.1"]).stdout.strip()
    return ferry, hand, facts


# ---------------------------------------------------------------------------- measurements

def connbench(bins, ns, ip, port, count, secs, warm=0):
    p = bench.run([bins["kpb_connbench"], ip, str(port), str(count), str(secs), str(CONC), str(warm)], ns,
                  timeout=secs + 40)
    r = json.loads(p.stdout)
    r["errors"] = r["err_connect"] + r["err_io"] + r["err_short"]
    return r


def iperf(ns, ip, secs):
    """One TCP stream, `secs` s after 1 s left out (slow start): Gbit/s, and
    the address the server saw itself at (the backend behind a VIP)."""
    p = bench.run(["iperf3", "-c", ip, "-p", "5201", "-t", str(secs), "-O", "1", "-J", "--get-server-output"], ns,
                  check=False, timeout=secs + 40)
    try:
        d = json.loads(p.stdout)
        gbps = d["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        raise RuntimeError("iperf3 to %s failed: %s %s" % (ip, p.stdout[-500:], p.stderr[-500:]))
    # The server runs without -J: its text says "[  5] local <addr> port 5201 connected to ...".
    m = re.search(r"local (\S+) port 5201 connected", d.get("server_output_text") or "")
    return gbps, m.group(1) if m else None


def sanity(bins, ferry, hand, masq):
    """Before anything is timed: every path answers with the right backend and
    no error; the outside does not answer a pod that is not masqueraded."""
    out = {}
    for world in (ferry, hand):
        ns = world.pods["pa"][0]
        for node in ("b", "c"):
            r = connbench(bins, ns, world.pods["p" + node][1], 8080, 100, 10)
            if r["ok"] != 100 or r["backend_hits"] != {str(BACKEND_ID[node]): 100}:
                raise RuntimeError("%s: pod a -> pod %s: %s" % (world.label, node, r))
    ns = hand.pods["pa"][0]
    r = connbench(bins, ns, w.OUTSIDE, 8080, 3, 4)
    out["hand_egress_without_masquerade_ok"] = r["ok"]
    if r["ok"]:
        raise RuntimeError("the outside answered an unmasqueraded pod: its routes are wrong (%s)" % r)
    nft_masq(hand, True)
    try:
        r = connbench(bins, ns, w.OUTSIDE, 8080, 100, 10)
    finally:
        nft_masq(hand, False)
    if r["ok"] != 100:
        raise RuntimeError("hand: pod a -> outside through nftables masquerade: %s" % r)
    r = connbench(bins, ferry.pods["pa"][0], w.OUTSIDE, 8080, 100 if masq else 3, 10 if masq else 4)
    out["ferry_egress_ok"] = r["ok"]
    if masq and r["ok"] != 100:
        raise RuntimeError("ferry: pod a -> outside with --masquerade true: %s\nagent a:\n%s"
                           % (r, ferry.agent_log("a")))
    # The Services: programmed on a, spread over b and c.
    ns = ferry.pods["pa"][0]

    def spread():
        r = connbench(bins, ns, VIP_WEB, 80, 200, 10)
        return r["ok"] == 200 and set(r["backend_hits"]) == {"2", "3"}
    try:
        w.wait_for(spread, 30, "ferry: ClusterIP %s:80 spread over the pods on b and c" % VIP_WEB)
    except RuntimeError as e:
        raise RuntimeError("%s\nagent a:\n%s" % (e, ferry.agent_log("a")))
    out["service_spread_200"] = connbench(bins, ns, VIP_WEB, 80, 200, 10)["backend_hits"]
    return out


class Runs:
    """Per-figure, per-side values, one per round (None: that run failed)."""

    def __init__(self):
        self.v = {k: {"ferry": [], "baseline": []} for k in GOALS}
        self.errors = []
        self.notes = {}

    def add(self, fig, side, fn):
        try:
            val = fn()
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            self.errors.append("%s %s: %s" % (fig, side, str(e)[:300]))
            bench.log("  %s %s failed: %s" % (fig, side, str(e)[:300]))
            val = None
        self.v[fig][side].append(val)
        return val


def one_round(r, bins, ferry, hand, masq, secs, runs):
    """One value of every figure. Ferry and hand alternate which goes first."""
    order = (ferry, hand) if r % 2 == 0 else (hand, ferry)

    def conn(world, ip, port):
        res = connbench(bins, world.pods["pa"][0], ip, port, 10 ** 8, secs, WARM)
        if res["errors"]:
            runs.errors.append("round %d %s -> %s:%d: %d errors" % (r, world.label, ip, port, res["errors"]))
        return res["conn_per_s"]

    direct = {}  # ferry's own direct figures, for the Service's baseline
    for node, fig in (("b", "hostgw"), ("c", "vxlan")):
        for world in order:
            side = "ferry" if world is ferry else "baseline"
            ip = world.pods["p" + node][1]
            c = runs.add(fig + "_conn", side, lambda: conn(world, ip, 8080))
            g = runs.add(fig + "_gbps", side, lambda: iperf(world.pods["pa"][0], ip, secs)[0])
            if world is ferry:
                direct[ip] = (c, g)
    for world in order:
        if world is ferry:
            if masq:
                runs.add("egress_conn", "ferry", lambda: conn(ferry, w.OUTSIDE, 8080))
                runs.add("egress_gbps", "ferry", lambda: iperf(ferry.pods["pa"][0], w.OUTSIDE, secs)[0])
            else:
                runs.v["egress_conn"]["ferry"].append(None)
                runs.v["egress_gbps"]["ferry"].append(None)
        else:
            nft_masq(hand, True)
            try:
                runs.add("egress_conn", "baseline", lambda: conn(hand, w.OUTSIDE, 8080))
                runs.add("egress_gbps", "baseline", lambda: iperf(hand.pods["pa"][0], w.OUTSIDE, secs)[0])
            finally:
                nft_masq(hand, False)
    # The Service, beside the direct figures of this round.
    runs.add("service_conn", "ferry", lambda: conn(ferry, VIP_WEB, 80))
    rb, rc = direct[ferry.pods["pb"][1]][0], direct[ferry.pods["pc"][1]][0]
    runs.v["service_conn"]["baseline"].append(2.0 / (1.0 / rb + 1.0 / rc) if rb and rc else None)
    got = runs.add("service_gbps", "ferry", lambda: iperf(ferry.pods["pa"][0], VIP_BULK, secs))
    if got:
        runs.v["service_gbps"]["ferry"][-1] = got[0]
        runs.notes.setdefault("service_gbps_backends", []).append(got[1])
    runs.v["service_gbps"]["baseline"].append((direct.get(got[1]) or (None, None))[1] if got else None)


# ---------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, fig):
    if x is None:
        return "n/a"
    return "%.0f" % x if fig.endswith("_conn") else "%.2f" % x


def report(runs):
    figures, lines = {}, []
    lines.append("%-34s %10s %10s %7s %13s  %-12s %s" % ("figure (median of rounds)", "ferry", "baseline", "ratio",
                                                          "round ratios", "goal", "baseline is"))
    for fig, (goal, what) in GOALS.items():
        f, b = med(runs.v[fig]["ferry"]), med(runs.v[fig]["baseline"])
        ratio = f / b if f is not None and b else None
        paired = [x / y for x, y in zip(runs.v[fig]["ferry"], runs.v[fig]["baseline"]) if x is not None and y]
        figures[fig] = {"ferry": runs.v[fig]["ferry"], "baseline": runs.v[fig]["baseline"],
                        "ferry_median": f, "baseline_median": b, "ratio": ratio,
                        "paired_ratios": paired, "goal_ratio": goal, "baseline_is": what,
                        "goal_met": None if ratio is None else ratio >= goal,
                        "unit": "conn/s" if fig.endswith("_conn") else "Gbit/s"}
        met = "n/a" if ratio is None else ("met" if ratio >= goal else "MISSED")
        spread = "%.2f-%.2f" % (min(paired), max(paired)) if paired else "n/a"
        lines.append("%-34s %10s %10s %7s %13s  >=%-4s %-6s %s" % (
            TITLES[fig], fmt(f, fig), fmt(b, fig), "n/a" if ratio is None else "%.3f" % ratio, spread, goal, met, what))
    return figures, "\n".join(lines)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def others_building():
    p = subprocess.run(["pgrep", "-x", "cargo|rustc"], capture_output=True, text=True)
    return len(p.stdout.split())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0, help="per conn/s run, and per iperf3 run after 1 s omitted")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 2.0
    ferry_bin = os.environ.get("FERRY_BIN", os.path.join(ROOT, "target", "release"))
    prefix = "ferry-net-%d" % os.getpid()
    cleanup = w.Cleanup()

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {"started": started, "rounds": args.rounds, "seconds": args.seconds, "concurrency": CONC,
            "ferry_bin": ferry_bin, "loadavg_start": loadavg(), "cargo_or_rustc_running_at_start": others_building(),
            "nproc": os.cpu_count()}
    try:
        w.sweep_stale()
        tools = tempfile.mkdtemp(prefix=prefix + "-bin-")
        cleanup.push(lambda: subprocess.run(["rm", "-rf", tools], check=False))
        bins = bench.build_tools(tools)
        masq = masquerade_flag(ferry_bin)
        meta["ferry_masquerade"] = masq
        if not masq:
            bench.log("ferry-agent has no --masquerade: the Ferry egress column is n/a")
        bench.log("building two three-node clusters (ferry, hand) under %s-{f,h}" % prefix)
        ferry, hand, facts = build(prefix, bins, ferry_bin, cleanup, masq)
        meta.update(facts)
        meta["sanity"] = sanity(bins, ferry, hand, masq)
        bench.log("setup and checks done in %.0f s: %s" % (time.monotonic() - t0, meta["sanity"]))
        runs = Runs()
        for r in range(args.rounds):
            one_round(r, bins, ferry, hand, masq, args.seconds, runs)
            bench.log("round %d/%d done (%.0f s): %s" % (r + 1, args.rounds, time.monotonic() - t0, {
                k: [fmt(v["ferry"][-1], k), fmt(v["baseline"][-1], k)] for k, v in runs.v.items()}))
    finally:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        cleanup.run()
        w.sweep_stale(os.getpid())
    figures, table = report(runs)
    meta.update({"loadavg_end": loadavg(), "cargo_or_rustc_running_at_end": others_building(),
                 "wall_s": round(time.monotonic() - t0, 1), "errors": runs.errors, "notes": runs.notes})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "figures": figures}, f, indent=2)
    print(table)
    print("\n%d rounds of %.0f s, %.0f s in all; load average %s -> %s; %s written"
          % (args.rounds, args.seconds, meta["wall_s"], " ".join(meta["loadavg_start"]),
             " ".join(meta["loadavg_end"]), args.out))
    if runs.errors:
        print("%d runs had errors (see meta.errors): %s" % (len(runs.errors), runs.errors[:3]))


if __name__ == "__main__":
    main()
