"""The three-node topology of bench-net, built in network namespaces this
process creates (never the root namespace), as tests/harness/cluster.rs and
underlay.rs build it for the e2e tests:

    segment 1 (192.168.1.0/24):  node a .11, node b .12 ── router .1 (eth0)
    segment 2 (192.168.2.0/24):  node c .11             ── router .1 (eth1)
    outside   (203.0.113.0/24):  outside .10            ── router .1 (out0)

    each segment: a namespace holding bridge ul0, members plugged by veth (eth0)
    nodes: default routes via the router; pod CIDRs 10.244.<n>.0/24 and
           fd00:10:244:<n>::/64 (n = 1, 2, 3), Node objects in every agent's
           YAML directory, pods made by the real `ferry` plugin from the
           conflist the node's agent wrote
    outside: routes to the two segments via the router, none to pod CIDRs,
           so a pod reaches it only masqueraded

The link to the outside has the LAN's MTU (1500), unlike the e2e tests'
1300-byte bottleneck (a throughput figure should not measure a bottleneck
the test put there).

A World is one such cluster; bench-net builds two, identical but for how
traffic between nodes and out of the cluster is handled, and measures them
interleaved. Everything a World creates (namespaces, pin dirs, scratch
files, processes) is registered with a Cleanup and removed by it.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import bench  # bench/lb/kubeproxy/bench.py: run() with setns, log(), build_tools()

NODES = [("a", 1, 11, 1), ("b", 1, 12, 2), ("c", 2, 11, 3)]  # name, segment, host, pod CIDR n
OUTSIDE, OUTSIDE_GW = "203.0.113.10", "203.0.113.1"
OUTSIDE6, OUTSIDE_GW6 = "2001:db8:113::10", "2001:db8:113::1"
METRICS = ("127.0.0.1", 9962)  # each node namespace's own loopback
# Map sizes of the e2e harness (tests/harness/lb.rs SMALL_MAPS), with room
# for a bench's connection rate in the conntrack map.
AGENT_MAPS = ["--maglev-size", "251", "--max-tables", "64", "--max-services", "256",
              "--max-backends", "1024", "--ct-size", "262144", "--affinity-size", "1024"]

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def v4(seg, host):
    return "192.168.%d.%d" % (seg, host)


def v6(seg, host):
    return "fd00:192:%x::%x" % (seg, host)


def pod_cidr(n):
    return "10.244.%d.0/24" % n


def node_yaml(name, seg, host, n):
    """The Node object of tests/harness/cluster.rs node_yaml."""
    return ("apiVersion: v1\nkind: Node\nmetadata:\n  name: %s\nspec:\n  podCIDR: 10.244.%d.0/24\n"
            "  podCIDRs: [10.244.%d.0/24, \"fd00:10:244:%d::/64\"]\nstatus:\n  addresses:\n"
            "  - {type: InternalIP, address: \"%s\"}\n  - {type: InternalIP, address: \"%s\"}\n"
            "  - {type: Hostname, address: %s}\n" % (name, n, n, n, v4(seg, host), v6(seg, host), name))


def write_atomic(directory, name, text):
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(directory, name))


def wait_for(cond, limit, what):
    """Polls `cond` until it is true or `limit` seconds pass (then raises)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out after %ss waiting for %s" % (limit, what))


class Cleanup:
    """Undo actions, run last-first, each at most once, errors ignored."""

    def __init__(self):
        self.actions = []

    def push(self, fn):
        self.actions.append(fn)

    def run(self):
        while self.actions:
            fn = self.actions.pop()
            try:
                fn()
            except Exception as e:  # a failed undo must not stop the others
                bench.log("cleanup: %s" % e)


def stop(proc):
    """SIGTERM, then SIGKILL, the one process we started (by its PID)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def ns_socket(ns):
    """A TCP socket created inside netns `ns` (the calling thread goes there
    and back; the socket stays in the namespace it was made in)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open("/run/netns/%s" % ns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % ns)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(fd)
        os.close(own)
    return s


def http_get(ns, path):
    """GET on the agent's HTTP listener in node namespace `ns`: the body, or None."""
    try:
        s = ns_socket(ns)
        with s:
            s.settimeout(1.0)
            s.connect(METRICS)
            s.sendall(("GET %s HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n" % path).encode())
            data = s.makefile("rb").read()
        head, body = data.split(b"\r\n\r\n", 1)
        return body.decode() if b" 200 " in head.split(b"\r\n", 1)[0] else None
    except (OSError, ValueError):
        return None


STALE = re.compile(r"^ferry-net-(\d+)([fh]-|[fh]$|-bin-)")


def sweep_stale(pid=None):
    """Removes what an earlier bench-net left behind when it was killed
    (namespaces, pin dirs and scratch dirs named ferry-net-<pid>... of a
    process that no longer runs), or, given `pid`, whatever of that run is
    still there. Processes are never touched."""
    def stale(name):
        m = STALE.match(name)
        if m is None:
            return False
        return m.group(1) == str(pid) if pid is not None else not os.path.exists("/proc/%s" % m.group(1))
    for name in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        if stale(name):
            bench.run(["ip", "netns", "del", name], check=False)
    for d in ("/sys/fs/bpf", "/tmp"):
        for name in os.listdir(d):
            if stale(name):
                shutil.rmtree(os.path.join(d, name), ignore_errors=True)


class World:
    """One three-node cluster with an outside, under namespace prefix `prefix`."""

    def __init__(self, prefix, label, bins, ferry_bin, cleanup):
        self.p, self.label, self.bins, self.ferry_bin, self.cleanup = prefix, label, bins, ferry_bin, cleanup
        self.work = os.path.join("/tmp", prefix)
        self.node_ns = {n: "%s-%s" % (prefix, n) for n, _, _, _ in NODES}
        self.outside_ns = prefix + "-out"
        self.router_ns = prefix + "-r"
        self.pods = {}  # name -> (netns, IPv4)
        self.agents = {}  # node -> Popen
        self.pins = {}  # node -> pin dir

    # -------------------------------------------------------------- plumbing

    def netns(self, name):
        bench.run(["ip", "netns", "add", name])
        self.cleanup.push(lambda: bench.run(["ip", "netns", "del", name], check=False))
        bench.run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def sysctl(self, ns, *kv):
        bench.run(["sysctl", "-qw"] + list(kv), ns)

    def spawn(self, argv, ns, log=None, env=None):
        """A long-running process in netns `ns` (setns only: bpffs stays visible)."""
        out = open(log, "w") if log else subprocess.DEVNULL
        p = subprocess.Popen(argv, preexec_fn=bench._in_ns(ns), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out if log else subprocess.DEVNULL, env=env)
        self.cleanup.push(lambda: stop(p))
        return p

    def plug(self, ul, ns, ifname, seg, host, port):
        """veth ul:<port> (on bridge ul0) <-> ns:<ifname> with host `host` of segment `seg`."""
        bench.run(["ip", "-n", ul, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns])
        bench.run(["ip", "-n", ul, "link", "set", port, "master", "ul0", "up"])
        bench.run(["ip", "-n", ns, "addr", "add", v4(seg, host) + "/24", "dev", ifname])
        bench.run(["ip", "-n", ns, "addr", "add", v6(seg, host) + "/64", "dev", ifname, "nodad"])
        self.sysctl(ns, "net.ipv6.conf.%s.accept_dad=0" % ifname)
        bench.run(["ip", "-n", ns, "link", "set", ifname, "up"])

    # -------------------------------------------------------------- topology

    def build(self):
        os.makedirs(self.work)
        self.cleanup.push(lambda: shutil.rmtree(self.work, ignore_errors=True))
        segs = {}
        for seg in (1, 2):
            ul = self.netns("%s-ul%d" % (self.p, seg))
            bench.run(["ip", "-n", ul, "link", "add", "ul0", "type", "bridge"])
            bench.run(["ip", "-n", ul, "link", "set", "ul0", "up"])
            segs[seg] = ul
        r = self.netns(self.router_ns)
        self.sysctl(r, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for seg, ul in segs.items():
            self.plug(ul, r, "eth%d" % (seg - 1), seg, 1, "u-r")
        o = self.netns(self.outside_ns)
        bench.run(["ip", "-n", r, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", o])
        for ns, dev, a4, a6 in ((r, "out0", OUTSIDE_GW, OUTSIDE_GW6), (o, "eth0", OUTSIDE, OUTSIDE6)):
            bench.run(["ip", "-n", ns, "addr", "add", a4 + "/24", "dev", dev])
            bench.run(["ip", "-n", ns, "addr", "add", a6 + "/64", "dev", dev, "nodad"])
            bench.run(["ip", "-n", ns, "link", "set", dev, "up"])
        for seg in segs:  # the outside knows the segments, not the pods
            bench.run(["ip", "-n", o, "route", "add", "192.168.%d.0/24" % seg, "via", OUTSIDE_GW])
        for name, seg, host, _ in NODES:
            ns = self.netns(self.node_ns[name])
            # As tests/harness/node.rs: a node forwards; DNATed packets are
            # routed while replies are bridged, so no redirects (DESIGN.md).
            self.sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                        "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
            self.plug(segs[seg], ns, "eth0", seg, host, "u-" + name)
            bench.run(["ip", "-n", ns, "route", "add", "default", "via", v4(seg, 1)])
            bench.run(["ip", "-6", "-n", ns, "route", "add", "default", "via", v6(seg, 1)])
            cat = os.path.join(self.work, name, "catalog")
            os.makedirs(cat)
            for peer, pseg, phost, pn in NODES:
                write_atomic(cat, "node-%s.yaml" % peer, node_yaml(peer, pseg, phost, pn))

    # -------------------------------------------------------------- agents and pods

    def start_agents(self, extra):
        for name, _, _, _ in NODES:
            d = os.path.join(self.work, name)
            pin = "/sys/fs/bpf/%s-%s" % (self.p, name)
            self.cleanup.push(lambda pin=pin: shutil.rmtree(pin, ignore_errors=True))
            self.pins[name] = pin
            argv = [os.path.join(self.ferry_bin, "ferry-agent"), "--yaml-dir", os.path.join(d, "catalog"),
                    "--node-name", name, "--write-cni-conf", os.path.join(d, "net.d", "10-ferry.conflist"),
                    "--pin-dir", pin, "--state-dir", os.path.join(d, "agent-state"),
                    "--metrics-addr", "%s:%d" % METRICS] + AGENT_MAPS + extra
            self.agents[name] = self.spawn(argv, self.node_ns[name], log=os.path.join(d, "agent.log"),
                                           env=dict(os.environ, RUST_LOG="info"))

    def agent_log(self, name):
        try:
            with open(os.path.join(self.work, name, "agent.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def status(self, name):
        body = http_get(self.node_ns[name], "/status")
        try:
            return json.loads(body) if body else {}
        except ValueError:
            return {}

    def conflist(self, name):
        path = os.path.join(self.work, name, "net.d", "10-ferry.conflist")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_agents(self, routes):
        """Every agent ready, its conflist written and (routes > 0) that many Ferry routes."""
        for name, _, _, _ in NODES:
            def ok(name=name):
                p = self.agents[name]
                if p.poll() is not None:
                    raise RuntimeError("%s: ferry-agent on %s exited (%s):\n%s"
                                       % (self.label, name, p.returncode, self.agent_log(name)))
                if http_get(self.node_ns[name], "/readyz") is None or self.conflist(name) is None:
                    return False
                return routes == 0 or (self.status(name).get("routing") or {}).get("routes") == routes
            try:
                wait_for(ok, 30, "%s: agent on %s ready%s" % (self.label, name,
                                                               " with %d routes" % routes if routes else ""))
            except RuntimeError as e:
                raise RuntimeError("%s\nstatus: %s\nlog:\n%s" % (e, self.status(name), self.agent_log(name)))

    def add_pod(self, node, name):
        """A pod on `node`, ADDed by the real plugin with the conflist the agent wrote
        (the plugin's part, as libcni hands it over; IPAM in the bench's scratch)."""
        conf = self.conflist(node)
        netconf = dict(conf["plugins"][0], name=conf["name"], cniVersion=conf["cniVersion"])
        netconf["ipam"] = dict(netconf["ipam"], dataDir=os.path.join(self.work, node, "ipam"))
        ns = self.netns("%s-p%s" % (self.p, name))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "%s-%s" % (self.p, name),
               "CNI_NETNS": "/run/netns/" + ns, "CNI_IFNAME": "eth0",
               "CNI_PATH": "%s:/usr/lib/cni:/opt/cni/bin" % self.ferry_bin}
        p = subprocess.run([os.path.join(self.ferry_bin, "ferry")], input=json.dumps(netconf), text=True,
                           capture_output=True, env=env, preexec_fn=bench._in_ns(self.node_ns[node]), timeout=20)
        if p.returncode != 0:
            raise RuntimeError("%s: CNI ADD %s on %s failed: %s %s" % (self.label, name, node, p.stdout, p.stderr))
        ip = next(i["address"].split("/")[0] for i in json.loads(p.stdout)["ips"] if ":" not in i["address"])
        # The client side of thousands of short connections (bench.py does the same).
        self.sysctl(ns, "net.ipv4.ip_local_port_range=1024 65000")
        self.pods[name] = (ns, ip)
        return ns, ip

    def servers(self, ns, backend_id):
        """The conn/s responder (kpb_server, answers its id) on 8080 and iperf3 on 5201."""
        self.spawn([self.bins["kpb_server"], "8080", str(backend_id), "2"], ns)
        self.spawn(["iperf3", "-s", "-p", "5201"], ns)
