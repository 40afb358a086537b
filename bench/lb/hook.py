#!/usr/bin/env python3
"""External data-plane hook for kubeproxy/bench.py (`--dataplane external`):
Ferry programmed the way a user runs it, by a YAML/JSON directory that
ferry-agent follows.

Runs inside the node netns (the harness setns()es before exec). Phases:
  full         write one JSON file per Service (a `kind: List` of the Service
               and its EndpointSlice), start ferry-agent on the directory with
               its own pin dir, attach to the pod veths (v-*), return once
               /status says ready and every veth has its programs.
  incremental  rewrite the changed Service's file (atomic rename) and return
               once the agent has applied one more sync.
  cleanup      kill the agent (by its PID), remove the pin dir (which detaches
               the pinned links) and the directory.

Side timings (file writing, agent start to ready, the agent's own first-sync
time, each incremental's sync) are appended to $FERRY_LB_TIMINGS as JSON lines.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

PHASE = os.environ["KPB_PHASE"]
NODE = os.environ.get("KPB_NODE_NETNS", "kpb-node")
BIN = os.environ.get("FERRY_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release"))
WORK = os.environ.get("FERRY_LB_WORK", "/tmp/ferry-lb-bench-%s" % NODE)
PIN = "/sys/fs/bpf/ferry-bench-%s" % NODE
YAML = os.path.join(WORK, "catalog")
PIDFILE = os.path.join(WORK, "agent.pid")
LOG = os.path.join(WORK, "agent.log")
TIMINGS = os.environ.get("FERRY_LB_TIMINGS")
METRICS = ("127.0.0.1", 9962)  # the node netns' own loopback
AGENT_ARGS = os.environ.get("FERRY_AGENT_ARGS", "").split()


def status():
    try:
        with socket.create_connection(METRICS, timeout=0.5) as s:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: agent\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def wait(cond, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.001)
    sys.exit("ferry hook: timed out waiting for %s (log: %s)" % (what, LOG))


def record(doc):
    if TIMINGS:
        with open(TIMINGS, "a") as f:
            f.write(json.dumps(doc) + "\n")


def doc_for(svc):
    """The Service and its EndpointSlice, as `kubectl get -o json` prints a List."""
    ns, name = svc["namespace"], svc["name"]
    proto = svc["protocol"].upper()
    port_name = svc.get("port_name") or "p%d" % svc["port"]
    target = svc["endpoints"][0]["port"] if svc["endpoints"] else svc["port"]
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": svc["cluster_ip"], "clusterIPs": [svc["cluster_ip"]],
                 "ports": [{"name": port_name, "protocol": proto, "port": svc["port"], "targetPort": target}]},
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name + "-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "protocol": proto, "port": target}],
        "endpoints": [{"addresses": [e["ip"]], "conditions": {"ready": True}} for e in svc["endpoints"]],
    }
    return {"apiVersion": "v1", "kind": "List", "items": [service, slice_]}


def file_of(svc):
    return "%s_%s.json" % (svc["namespace"], svc["name"])


def write_atomic(path, doc):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.rename(tmp, path)


def kill_agent():
    try:
        with open(PIDFILE) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):  # reaped by init; wait until it is gone
            os.kill(pid, 0)
            time.sleep(0.01)
    except (OSError, ValueError):
        pass
    try:
        os.unlink(PIDFILE)
    except OSError:
        pass


def cleanup():
    kill_agent()
    subprocess.run(["rm", "-rf", PIN, WORK], check=False)


def full(doc):
    cleanup()
    os.makedirs(YAML)
    t0 = time.monotonic()
    for svc in doc["services"]:
        write_atomic(os.path.join(YAML, file_of(svc)), doc_for(svc))
    t_files = time.monotonic() - t0
    topo = doc.get("topology") or {}
    ifaces = ([topo["client"]["node_if"]] if topo.get("client") else []) + [b["node_if"] for b in topo.get("backends", [])]
    t1 = time.monotonic()
    with open(LOG, "w") as log:
        p = subprocess.Popen(
            [os.path.join(BIN, "ferry-agent"), "--yaml-dir", YAML, "--pin-dir", PIN,
             "--state-dir", os.path.join(WORK, "state"), "--iface-pattern", "v-*",
             "--metrics-addr", "%s:%d" % METRICS] + AGENT_ARGS,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env=dict(os.environ, RUST_LOG="info,ferry_agent=debug"))
    with open(PIDFILE, "w") as f:
        f.write(str(p.pid))
    wait(lambda: (status() or {}).get("ready"), 120, "the first full sync")
    idx = [socket.if_nametoindex(i) for i in ifaces]
    wait(lambda: all(os.path.exists(os.path.join(PIN, "links", "%d-in" % i)) for i in idx), 10, "attachment")
    t_ready = time.monotonic() - t1
    m = re.search(r"first full sync done.*took_ms=([0-9.]+)", open(LOG).read())
    record({"phase": "full", "n_services": len(doc["services"]), "write_files_s": t_files,
            "agent_start_to_ready_s": t_ready, "first_sync_ms": float(m.group(1)) if m else None,
            "agent_pid": p.pid})


def incremental(doc):
    before = (status() or {}).get("syncs", 0)
    changed = set(doc["changed"])
    t0 = time.monotonic()
    for svc in doc["services"]:
        if "%s/%s" % (svc["namespace"], svc["name"]) in changed:
            write_atomic(os.path.join(YAML, file_of(svc)), doc_for(svc))
    wait(lambda: (status() or {}).get("syncs", 0) > before, 10, "the change to be applied")
    took = time.monotonic() - t0
    syncs = re.findall(r"synced.*took_us=(\d+)", open(LOG).read())
    record({"phase": "incremental", "file_to_maps_s": took, "sync_us": int(syncs[-1]) if syncs else None})


if __name__ == "__main__":
    doc = json.load(open(os.environ["KPB_JSON"]))
    {"full": full, "incremental": incremental, "cleanup": lambda _d: cleanup()}[PHASE](doc)
