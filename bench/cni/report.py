#!/usr/bin/env python3
"""Combines cni_bench.py JSON outputs (ferry, reference, and optionally ferry
with its IPAM delegated to host-local) into one table with ratios and writes
them all to one JSON file. Exit status 0 when the goals hold: ferry ADD p50
<= 0.5x the reference's, ADD p99 no worse, no failures, no leaks; delegated
to host-local (the reference's own IPAM binary, plus a VERSION call), ADD
p50 and p99 no worse than the reference's, no failures, no leaks."""
import json
import sys

JUDGED = ("links", "addrs", "routes4", "fdb", "iptables_rules", "ipam_files")


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    ferry, ref, out = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
    delegated_path = sys.argv[4] if len(sys.argv) > 4 else None
    delegated = load(delegated_path) if delegated_path else None
    if not ferry or not ref or (delegated_path and not delegated):
        print("a benchmark run produced no results (see above)")
        return 1
    report = {"ferry": ferry, "reference": ref, "ratios": {}, "leaks": {}, "goals": {}}
    ok = compare(report, "ferry", ferry, ref, strict=True)
    if delegated:
        report["ferry_host_local"] = delegated
        ok = compare(report, "ferry_host_local", delegated, ref, strict=False) and ok
    print("\ngoals: %s" % json.dumps(report["goals"]))
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote %s" % out)
    return 0 if ok else 1


def compare(report, name, ferry, ref, strict):
    """Adds `name`'s ratios to the reference, leaks and goals to `report`."""
    ok = True
    print("\n%s vs reference" % name)
    print("\n%-13s %-5s %-4s %10s %10s %8s" % ("phase", "op", "pct", "ferry ms", "ref ms", "ratio"))
    for phase in ferry["phases"]:
        f, r = ferry["phases"][phase], ref["phases"].get(phase)
        if not r:
            continue
        for op in ("add", "del"):
            for pct in ("p50_ms", "p99_ms"):
                fv, rv = f[op][pct], r[op][pct]
                ratio = round(fv / rv, 3) if rv else None
                key = "%s.%s.%s" % (phase, op, pct) if name == "ferry" else "%s.%s.%s.%s" % (name, phase, op, pct)
                report["ratios"][key] = ratio
                print("%-13s %-5s %-4s %10.2f %10.2f %8s" % (phase, op.upper(), pct[:3], fv, rv, ratio))
        for who, ph in ((name, f), ("reference", r)):
            leak = {k: v for k, v in ph["left_after_all_del_vs_baseline"].items() if k in JUDGED}
            leak["pod_side_links"] = ph["pod_side_links_left_after_del"]
            leak["failures"] = ph["add_failed"] + ph["del_failed"]
            leak["duplicate_ips"] = ph["duplicate_ips"]
            report["leaks"]["%s.%s" % (who, phase)] = leak
            print("%-13s %-9s leaked after all DELs: %s" % (phase, who,
                  {k: v for k, v in leak.items() if v} or "nothing"))
        fl = report["leaks"]["%s.%s" % (name, phase)]
        ratio = lambda op, pct: f[op][pct] / r[op][pct] if r[op][pct] else float("inf")
        if strict:
            goals = {
                "add_p50_at_most_half": ratio("add", "p50_ms") <= 0.5,
                "add_p99_no_worse": ratio("add", "p99_ms") <= 1.0,
                "zero_leaks_and_failures": not any(fl.values()),
            }
        else:
            goals = {
                "add_p50_no_worse": ratio("add", "p50_ms") <= 1.0,
                "add_p99_no_worse": ratio("add", "p99_ms") <= 1.0,
                "zero_leaks_and_failures": not any(fl.values()),
            }
        report["goals"][phase if name == "ferry" else "%s.%s" % (name, phase)] = goals
        ok = ok and all(goals.values())
    return ok


if __name__ == "__main__":
    sys.exit(main())
