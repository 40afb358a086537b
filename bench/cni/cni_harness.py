# Vendored from the shared bench harness (../shared/bench/cni/cni_harness.py) so that
# `make bench-cni` has no run-time dependency outside this repository.
"""Shared harness for cni_conformance.py and cni_bench.py.

Emulates a CNI runtime (libcni-style) while keeping every side effect inside
network namespaces created for the run:

  * an outer process creates a dedicated "host" netns (<prefix>-host) and
    re-executes the script inside it with `ip netns exec`, so the plugin runs
    in that netns with a matching /sys -- exactly as a runtime would run it in
    the root netns, but nothing touches the machine's real interfaces;
  * pod netns are created with `ip netns add` from inside that process;
  * on exit the outer process deletes the host netns (bridge, veths and any
    iptables rules die with it), stale /run/netns files and the scratch dir.

Only the Python standard library and iproute2 are needed.
"""
import copy
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time

NETNS_DIR = "/run/netns"


def sh(cmd, check=True, timeout=30, input=None):
    """Run a command (list), return CompletedProcess with text output."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed rc=%d: %s" % (" ".join(cmd), p.returncode,
                                                    (p.stderr or p.stdout).strip()))
    return p


def ip_json(args, netns=None):
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j"] + args
    p = sh(cmd, check=False)
    if p.returncode != 0 or not p.stdout.strip():
        return []
    return json.loads(p.stdout)


def deep_merge(base, extra):
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif v is None:
            out.pop(k, None)          # allow removing keys with null
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_subnet(conf, subnet):
    ipam = conf.setdefault("ipam", {})
    if "ranges" in ipam:
        ipam["ranges"] = [[{"subnet": subnet}]]
        ipam.pop("subnet", None)
    else:
        ipam["subnet"] = subnet
    ipam.pop("gateway", None)
    ipam.pop("rangeStart", None)
    ipam.pop("rangeEnd", None)
    return conf


def container_id(tag):
    # containerd/CRI-O style 64-hex sandbox id
    return hashlib.sha256(("cnict-%d-%s" % (os.getpid(), tag)).encode()).hexdigest()


def k8s_args(cid, name):
    # what containerd's CRI plugin / CRI-O pass to every plugin
    return ("IgnoreUnknown=1;K8S_POD_NAMESPACE=cnict;K8S_POD_NAME=%s;"
            "K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s" % (name, cid, cid[:32]))


class Inv:
    """Result of one plugin invocation."""

    def __init__(self, rc, out, err, dur):
        self.rc, self.out, self.err, self.dur = rc, out, err, dur
        self.json = None
        self.json_err = None
        if out.strip():
            try:
                self.json = json.loads(out)
            except ValueError as e:
                self.json_err = str(e)

    def brief(self):
        s = (self.out.strip() or self.err.strip()).replace("\n", " ")
        return "rc=%d %s" % (self.rc, s[:300])


class Runtime:
    def __init__(self, plugin_dir, extra_paths):
        self.plugin_dir = os.path.abspath(plugin_dir)
        self.paths = [self.plugin_dir] + [p for p in extra_paths
                                          if p and os.path.abspath(p) != self.plugin_dir]
        self.cni_path = ":".join(self.paths)

    def find(self, ptype):
        for d in self.paths:
            f = os.path.join(d, ptype)
            if os.path.isfile(f) and os.access(f, os.X_OK):
                return f
        return None

    def exec(self, ptype, command, conf=None, cid=None, netns=None, ifname=None,
             args=None, stdin_raw=None, env_drop=(), env_set=None, timeout=60):
        binary = self.find(ptype)
        if binary is None:
            raise RuntimeError("plugin %r not found in %s" % (ptype, self.cni_path))
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env["CNI_COMMAND"] = command
        if command != "VERSION":
            env["CNI_CONTAINERID"] = cid or ""
            env["CNI_NETNS"] = netns or ""
            env["CNI_IFNAME"] = ifname or ""
            env["CNI_ARGS"] = args or ""
        env["CNI_PATH"] = self.cni_path
        for k in env_drop:
            env.pop(k, None)
        if env_set:
            env.update(env_set)
        data = stdin_raw if stdin_raw is not None else json.dumps(conf)
        t0 = time.monotonic()
        try:
            p = subprocess.run([binary], input=data.encode(), env=env,
                               capture_output=True, timeout=timeout)
            rc, out, err = p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            rc, out, err = -999, "", "TIMEOUT after %ss" % timeout
        return Inv(rc, out, err, time.monotonic() - t0)

    def version(self, ptype, ver="1.0.0"):
        return self.exec(ptype, "VERSION", stdin_raw=json.dumps({"cniVersion": ver}))


class Pod:
    def __init__(self, h, tag, ifname="eth0"):
        self.h = h
        self.tag = tag
        self.ns = "%s-%s" % (h.prefix, tag)
        self.path = os.path.join(NETNS_DIR, self.ns)
        self.cid = container_id(tag)
        self.ifname = ifname
        self.args = k8s_args(self.cid, tag)
        self.result = None
        self.alive = False

    def create(self):
        sh(["ip", "netns", "add", self.ns])
        sh(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        self.alive = True
        self.h.pods.append(self)
        return self

    def destroy(self):
        if self.alive:
            sh(["ip", "netns", "del", self.ns], check=False)
            self.alive = False

    def ip(self):
        """First IPv4 address (no prefix) of the ADD result."""
        for ipc in (self.result or {}).get("ips", []):
            a = ipaddress.ip_interface(ipc["address"])
            if a.version == 4:
                return str(a.ip)
        return None


class Harness:
    def __init__(self, prefix):
        self.prefix = prefix
        self.pods = []

    def cleanup_pods(self):
        for p in self.pods:
            p.destroy()


def inside_hostns():
    return os.environ.get("CNICT_INNER") == "1"


def run_outer(prefix, scratch, argv, timeout):
    """Create the host netns and re-exec argv inside it. Returns exit code."""
    if os.geteuid() != 0:
        print("must run as root (needs CAP_NET_ADMIN/CAP_SYS_ADMIN)", file=sys.stderr)
        return 2
    hostns = prefix + "-host"
    os.makedirs(scratch, exist_ok=True)
    sh(["ip", "netns", "add", hostns])
    rc = 1
    try:
        sh(["ip", "-n", hostns, "link", "set", "lo", "up"])
        env = dict(os.environ, CNICT_INNER="1", CNICT_PREFIX=prefix, CNICT_SCRATCH=scratch)
        try:
            p = subprocess.run(["ip", "netns", "exec", hostns, sys.executable] + argv,
                               env=env, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            print("FAIL harness.timeout: whole run exceeded %ss" % timeout)
            print("0 passed, 1 failed")
            rc = 1
    finally:
        sh(["ip", "netns", "del", hostns], check=False)
        # pod netns bind mounts lived only in the inner mount namespace; remove
        # the (now plain, empty) files that may be left behind
        try:
            for f in os.listdir(NETNS_DIR):
                if f.startswith(prefix + "-"):
                    fp = os.path.join(NETNS_DIR, f)
                    sh(["umount", fp], check=False)
                    try:
                        os.unlink(fp)
                    except OSError:
                        pass
        except FileNotFoundError:
            pass
        # host-local default state dir, if the plugin ignored ipam.dataDir (names are unique to this run)
        base = "/var/lib/cni/networks"
        if os.path.isdir(base):
            for f in os.listdir(base):
                if f == prefix or f.startswith(prefix + "-"):
                    shutil.rmtree(os.path.join(base, f), ignore_errors=True)
        if not os.environ.get("CNICT_KEEP"):
            shutil.rmtree(scratch, ignore_errors=True)
    return rc
