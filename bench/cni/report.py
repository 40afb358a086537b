#!/usr/bin/env python3
"""Combines two cni_bench.py JSON outputs (ferry, reference) into one table
with ratios and writes them all to one JSON file. Exit status 0 when the
issue's goals hold: ferry ADD p50 <= 0.5x the reference's, ADD p99 no worse,
no failures, no leaks."""
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
    if not ferry or not ref:
        print("a benchmark run produced no results (see above)")
        return 1
    report = {"ferry": ferry, "reference": ref, "ratios": {}, "leaks": {}, "goals": {}}
    ok = True
    print("\n%-13s %-5s %-4s %10s %10s %8s" % ("phase", "op", "pct", "ferry ms", "ref ms", "ratio"))
    for phase in ferry["phases"]:
        f, r = ferry["phases"][phase], ref["phases"].get(phase)
        if not r:
            continue
        for op in ("add", "del"):
            for pct in ("p50_ms", "p99_ms"):
                fv, rv = f[op][pct], r[op][pct]
                ratio = round(fv / rv, 3) if rv else None
                report["ratios"]["%s.%s.%s" % (phase, op, pct)] = ratio
                print("%-13s %-5s %-4s %10.2f %10.2f %8s" % (phase, op.upper(), pct[:3], fv, rv, ratio))
        for name, ph in (("ferry", f), ("reference", r)):
            leak = {k: v for k, v in ph["left_after_all_del_vs_baseline"].items() if k in JUDGED}
            leak["pod_side_links"] = ph["pod_side_links_left_after_del"]
            leak["failures"] = ph["add_failed"] + ph["del_failed"]
            leak["duplicate_ips"] = ph["duplicate_ips"]
            report["leaks"]["%s.%s" % (name, phase)] = leak
            print("%-13s %-9s leaked after all DELs: %s" % (phase, name,
                  {k: v for k, v in leak.items() if v} or "nothing"))
        fl = report["leaks"]["ferry.%s" % phase]
        goals = {
            "add_p50_at_most_half": report["ratios"]["%s.add.p50_ms" % phase] <= 0.5,
            "add_p99_no_worse": report["ratios"]["%s.add.p99_ms" % phase] <= 1.0,
            "zero_leaks_and_failures": not any(fl.values()),
        }
        report["goals"][phase] = goals
        ok = ok and all(goals.values())
    print("\ngoals: %s" % json.dumps(report["goals"]))
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote %s" % out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
