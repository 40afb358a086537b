#!/usr/bin/env python3
"""Generate the 'large cluster' used by the DNS performance baseline.

(Vendored unchanged in substance from the project's shared baseline,
../shared/bench/dns/gen_large_cluster.py, so a fresh clone can run it.)

  python3 gen_large_cluster.py OUTDIR [--seed 1] [--queries 200000]

Cluster (deterministic):
  * 100 namespaces ns-00 .. ns-99
  * 10,000 ClusterIP services svc-000..svc-099 in every namespace, ClusterIP
    10.96.0.0/16, each with 2 named TCP
    ports (http/80, grpc/9090) and one EndpointSlice with 2 ready endpoints (10.245.0.0/16)
  * 500 headless services hl-0..hl-4 in every namespace, 2 named ports, 5 ready
    endpoints each with hostnames pod-0..pod-4 (10.244.0.0/16)

Writes to OUTDIR:
  large_cluster.json   Kubernetes List (Namespace/Service/EndpointSlice) -- feed
                       this to the project's server for the side-by-side run
  zones/cluster.local.zone, zones/10.in-addr.arpa.zone, zones/zones.txt
                       the spec records (same rules as the conformance fixture's
                       generator): A, SRV, PTR, headless A/hostname A/SRV/PTR
  unbound-local.conf   the same data as unbound local-zone/local-data
  queries.txt          dnsperf input: 80% existing A, 10% SRV, 10% NXDOMAIN
"""
import argparse
import json
import os
import random

ZONE = "cluster.local"
TTL = 5
PORTS = [("http", 80), ("grpc", 9090)]


def cluster_ip(nsi, si):
    k = nsi * 100 + si + 1          # 1..10000
    return f"10.96.{k // 250}.{k % 250 + 1}"


def ep_ip(nsi, hi, pi):
    k = (nsi * 5 + hi) * 5 + pi     # 0..2499
    return f"10.244.{k // 250}.{k % 250 + 1}"


def pod_ip(nsi, si, j):
    k = (nsi * 100 + si) * 2 + j    # 0..19999
    return f"10.245.{k // 250}.{k % 250 + 1}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--queries", type=int, default=200000)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "zones"), exist_ok=True)

    items, fwd, ptr = [], [], []
    fwd.append(f'dns-version.{ZONE}. 28800 IN TXT "1.0.1"')
    a_names, srv_names, nx_names = [], [], []
    hl_a, hl_host, hl_srv = [], [], []
    for nsi in range(100):
        ns = f"ns-{nsi:02d}"
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        sports = [{"name": n, "port": p, "protocol": "TCP", "targetPort": p} for n, p in PORTS]
        eports = [{"name": n, "port": p, "protocol": "TCP"} for n, p in PORTS]
        for si in range(100):
            name = f"svc-{si:03d}"
            ip = cluster_ip(nsi, si)
            items.append({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": name, "namespace": ns},
                          "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                                   "ports": sports, "selector": {"app": name}}})
            items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": f"{name}-a", "namespace": ns,
                                       "labels": {"kubernetes.io/service-name": name}},
                          "addressType": "IPv4", "ports": eports,
                          "endpoints": [{"addresses": [pod_ip(nsi, si, j)],
                                         "conditions": {"ready": True}} for j in range(2)]})
            f = f"{name}.{ns}.svc.{ZONE}."
            fwd.append(f"{f} {TTL} IN A {ip}")
            for pn, p in PORTS:
                fwd.append(f"_{pn}._tcp.{f} {TTL} IN SRV 0 100 {p} {f}")
                srv_names.append(f"_{pn}._tcp.{f}")
            ptr.append((ip, f))
            a_names.append(f)
            nx_names.append(f"nosuch-{si:03d}.{ns}.svc.{ZONE}.")
        for hi in range(5):
            name = f"hl-{hi}"
            items.append({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": name, "namespace": ns},
                          "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
                                   "ports": sports, "selector": {"app": name}}})
            eps = [{"addresses": [ep_ip(nsi, hi, pi)], "hostname": f"pod-{pi}",
                    "conditions": {"ready": True}} for pi in range(5)]
            items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": f"{name}-a", "namespace": ns,
                                       "labels": {"kubernetes.io/service-name": name}},
                          "addressType": "IPv4", "ports": eports, "endpoints": eps})
            f = f"{name}.{ns}.svc.{ZONE}."
            hl_a.append(f)
            for pi in range(5):
                ip = ep_ip(nsi, hi, pi)
                h = f"pod-{pi}.{f}"
                fwd.append(f"{f} {TTL} IN A {ip}")
                fwd.append(f"{h} {TTL} IN A {ip}")
                ptr.append((ip, h))
                hl_host.append(h)
            for pn, p in PORTS:
                hl_srv.append(f"_{pn}._tcp.{f}")
                for pi in range(5):
                    fwd.append(f"_{pn}._tcp.{f} {TTL} IN SRV 0 20 {p} pod-{pi}.{f}")

    with open(os.path.join(a.out, "large_cluster.json"), "w") as fh:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, fh)

    def soa(origin):
        return [f"$ORIGIN {origin}.", f"$TTL {TTL}",
                f"@ {TTL} IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}",
                f"@ {TTL} IN NS ns.dns.{ZONE}."]
    fz = soa(ZONE) + [f"ns.dns.{ZONE}. {TTL} IN A 127.0.0.1"] + fwd
    rz = soa("10.in-addr.arpa") + [
        f"{'.'.join(reversed(ip.split('.')))}.in-addr.arpa. {TTL} IN PTR {t}" for ip, t in ptr]
    zd = os.path.join(a.out, "zones")
    with open(os.path.join(zd, f"{ZONE}.zone"), "w") as fh:
        fh.write("\n".join(fz) + "\n")
    with open(os.path.join(zd, "10.in-addr.arpa.zone"), "w") as fh:
        fh.write("\n".join(rz) + "\n")
    with open(os.path.join(zd, "zones.txt"), "w") as fh:
        fh.write(f"{ZONE} {ZONE}.zone\n10.in-addr.arpa 10.in-addr.arpa.zone\n")

    # unbound local-zone form of the same data
    with open(os.path.join(a.out, "unbound-local.conf"), "w") as fh:
        fh.write(f'server:\n    local-zone: "{ZONE}." static\n    local-zone: "10.in-addr.arpa." static\n')
        for origin, lines in ((ZONE, fz), ("10.in-addr.arpa", rz)):
            for ln in lines:
                if ln.startswith("$"):
                    continue
                ln = ln.replace("@ ", f"{origin}. ", 1) if ln.startswith("@ ") else ln
                fh.write('    local-data: "' + ln.replace('"', '\\"') + '"\n')

    # query mix: 80% existing A (70% ClusterIP svc, 15% headless svc, 15% endpoint
    # hostname), 10% SRV (80% ClusterIP, 20% headless), 10% NXDOMAIN
    rnd = random.Random(a.seed)
    q = []
    for _ in range(a.queries):
        x = rnd.random()
        if x < 0.80:
            y = rnd.random()
            pool = a_names if y < 0.70 else hl_a if y < 0.85 else hl_host
            q.append(f"{rnd.choice(pool)} A")
        elif x < 0.90:
            pool = srv_names if rnd.random() < 0.8 else hl_srv
            q.append(f"{rnd.choice(pool)} SRV")
        else:
            q.append(f"{rnd.choice(nx_names)} A")
    with open(os.path.join(a.out, "queries.txt"), "w") as fh:
        fh.write("\n".join(q) + "\n")
    print(f"{len(items)} objects, {len(fz)} forward + {len(rz)} reverse zone lines, "
          f"{len(q)} queries -> {a.out}")


if __name__ == "__main__":
    main()
