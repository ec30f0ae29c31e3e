#!/usr/bin/env python3
"""Medians over run.sh's rounds, ratios ferry/haproxy and ferry/nginx, a
printed table and the results JSON. Called by run.sh; not useful alone.

Usage: summarize.py ROUNDS_TSV TMP OUT_JSON --sites N --mix 0|1 ... (see run.sh)
"""

import argparse
import datetime
import json
import os
import statistics

FIELDS = ["startup_s", "rss_kb", "hwm_kb", "pss_kb", "rss_kb_after_run", "hwm_kb_after_run",
          "pss_kb_after_run", "req_per_s", "p99_ms", "non_2xx", "socket_errors",
          "close_req_per_s", "close_p99_ms", "close_non_2xx", "close_socket_errors",
          "cpu_us_per_request", "cpu_percent", "core0_busy_percent", "core1_busy_percent",
          "load_average_1m", "requests"]


def num(v):
    if v in ("", "null", None):
        return None
    return float(v)


def median(vals):
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("tmp")
    ap.add_argument("out")
    for opt in ("--sites", "--mix", "--rounds", "--duration", "--warmup", "--ferry-sites",
                "--versions", "--connections", "--close-connections", "--nice"):
        ap.add_argument(opt)
    a = ap.parse_args()
    mix = a.mix == "1"
    rounds = {}
    failed = set()
    for line in open(a.tsv):
        parts = line.rstrip("\n").split("\t")
        who = parts[0]
        if parts[2] != "ok":
            failed.add(who)
            continue
        rec = {k: num(v) for k, v in zip(FIELDS, parts[3:])}
        rec["round"] = int(parts[1])
        rounds.setdefault(who, []).append(rec)
    summary = {}
    for who, recs in rounds.items():
        s = {k: median([r[k] for r in recs]) for k in FIELDS}
        s["req_per_s_total"] = median([(r["req_per_s"] or 0) + (r["close_req_per_s"] or 0) for r in recs])
        # Rounds where other processes took part of the router's core (it used
        # less than 85 % of it while the core was >= 95 % busy): req/s and p99
        # say more about the machine than about the router then.
        s["contested_rounds"] = [r["round"] for r in recs
                                 if (r["cpu_percent"] or 0) < 85 and (r["core0_busy_percent"] or 0) >= 95]
        s["rounds"] = recs
        change = os.path.join(a.tmp, f"change-{who}.json")
        if os.path.exists(change):
            s["change"] = json.load(open(change))
            for k in ("median_ms", "command_median_ms"):
                s["change"][k] = round(s["change"][k], 3)
        summary[who] = s
    for who in failed:
        summary.setdefault(who, {})["start_failed"] = True

    def ratios(other):
        f, o = summary.get("ferry", {}), summary.get(other, {})
        if not f or not o or o.get("start_failed"):
            return None
        r = {
            "startup": ratio(f.get("startup_s"), o.get("startup_s")),
            "memory_rss_after_start": ratio(f.get("rss_kb"), o.get("rss_kb")),
            "memory_pss_after_start": ratio(f.get("pss_kb"), o.get("pss_kb")),
            "memory_peak_hwm": ratio(f.get("hwm_kb"), o.get("hwm_kb")),
            "req_per_s": ratio(f.get("req_per_s"), o.get("req_per_s")),
            "p99": ratio(f.get("p99_ms"), o.get("p99_ms")),
            "cpu_per_request": ratio(f.get("cpu_us_per_request"), o.get("cpu_us_per_request")),
            "change": ratio((f.get("change") or {}).get("median_ms"), (o.get("change") or {}).get("median_ms")),
        }
        if mix:
            r["close_req_per_s"] = ratio(f.get("close_req_per_s"), o.get("close_req_per_s"))
            r["close_p99"] = ratio(f.get("close_p99_ms"), o.get("close_p99_ms"))
            r["req_per_s_total"] = ratio(f.get("req_per_s_total"), o.get("req_per_s_total"))
        return r

    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sites": int(a.sites), "pools": 50, "mix": mix, "ferry_sites": a.ferry_sites,
        "versions": a.versions,
        "machine": {"cores": os.cpu_count(), "router_core": 0, "load_core": 1,
                    "note": "upstream nginx, wrk (and with mix the second router) on core 1; "
                            "other sessions' builds and tests ran on both cores"},
        "load": {"tool": "wrk -t1 --latency, hosts.lua (a random site's Host per request)",
                 "connections": int(a.connections),
                 "close_connections": int(a.close_connections) if mix else 0,
                 "duration": a.duration, "warmup": a.warmup, "rounds": int(a.rounds),
                 "nice": int(a.nice)},
        "figures": "medians over the rounds; memory in kB (Pss counts pages shared by nginx's "
                   "master and worker once); cpu_us_per_request = router utime+stime over the "
                   "run / requests of every wrk; change = PUT/set map/reload until a new "
                   "connection gets the new upstream (round 1)",
        "contenders": summary,
        "ferry_vs_haproxy": ratios("haproxy"),
        "ferry_vs_nginx": ratios("nginx"),
        "goals": "req/s >= 1.3x HAProxy, memory <= 1/3, start-up and change >= 10x better "
                 "(ratio <= 0.1), p99 no worse (ratio <= 1)",
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    print()
    print(f"== {a.sites} sites over 50 pools{' (mix)' if mix else ''}: medians of {a.rounds} rounds "
          f"of {a.duration}; ferry's sites: {a.ferry_sites}")
    cols = ["startup_s", "rss_kb", "pss_kb", "hwm_kb", "req_per_s", "p99_ms", "cpu_us_per_request"]
    if mix:
        cols += ["close_req_per_s", "close_p99_ms"]
    print("%-8s" % "who" + "".join("%14s" % c for c in cols) + "%12s%10s" % ("change_ms", "load1"))
    for who, s in summary.items():
        if s.get("start_failed"):
            print("%-8s did not start in time" % who)
            continue
        print("%-8s" % who + "".join("%14s" % s.get(c) for c in cols)
              + "%12s%10s" % ((s.get("change") or {}).get("median_ms"), s.get("load_average_1m")))
    for other in ("haproxy", "nginx"):
        r = out[f"ferry_vs_{other}"]
        if r:
            print(f"ferry/{other}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
