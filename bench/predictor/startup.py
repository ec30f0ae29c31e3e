#!/usr/bin/env python3
"""Times a router's start-up with the predictor's table, as run.sh does, and
the CPU time the start-up used.

Usage: startup.py DIR WHO [--runs 3] [--ferry-bin PATH] [--core 0] [--poll 0.005]

DIR is a directory gen.py wrote (for ferry with --ferry-sites file or config)
whose upstream nginx (upstream.conf) is running. WHO is ferry or haproxy. For
each run: the router starts pinned to --core (ferry: `proxy --threads 1`), and
the clock runs from just before the exec to the first answer for meta.json's
late host (the table's last site) with the right body; new connections are
tried every --poll seconds. At that moment the router's user and system CPU
time (from /proc/PID/stat) and VmRSS/VmHWM are read, then it is stopped.
Prints one line per run and a JSON summary (medians) on the last line.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


def answer(port, host):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
    try:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        s.close()
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def mem_mib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out


def port_of(conf, key):
    prev = ""
    with open(conf) as f:
        for line in f:
            line = line.strip()
            if key == "ferry" and line.startswith("listen = ") and "[[listener]]" in prev:
                return int(line.split(":")[-1].rstrip('"'))
            if key == "haproxy" and line.startswith("bind "):
                return int(line.split()[1].split(":")[-1])
            prev = line
    raise SystemExit(f"startup.py: no listener in {conf}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("who", choices=["ferry", "haproxy"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ferry-bin", default=os.environ.get("FERRY_BIN", "ferry"))
    ap.add_argument("--core", default="0")
    ap.add_argument("--poll", type=float, default=0.005)
    ap.add_argument("--max", type=float, default=300)
    a = ap.parse_args()
    meta = json.load(open(f"{a.dir}/meta.json"))
    if a.who == "ferry":
        conf = f"{a.dir}/ferry.toml"
        cmd = [a.ferry_bin, "--log-level", "warn", "proxy", "--threads", "1", "--config", conf]
    else:
        conf = f"{a.dir}/haproxy.cfg"
        cmd = ["haproxy", "-db", "-f", conf]
    port = port_of(conf, a.who)
    runs = []
    for run in range(1, a.runs + 1):
        load = open("/proc/loadavg").read().split()[:3]
        t0 = time.monotonic()
        p = subprocess.Popen(["taskset", "-c", a.core] + cmd, cwd=a.dir,
                             stdout=subprocess.DEVNULL, stderr=open(f"{a.dir}/{a.who}-startup.err", "w"))
        try:
            while True:
                if p.poll() is not None:
                    raise SystemExit(f"startup.py: {a.who} exited with {p.returncode}; see {a.dir}/{a.who}-startup.err")
                if answer(port, meta["late_host"]) == meta["late_body"]:
                    break
                if time.monotonic() - t0 > a.max:
                    raise SystemExit(f"startup.py: {a.who} did not answer within {a.max} s")
                time.sleep(a.poll)
            wall = time.monotonic() - t0
            user, sys_ = cpu_seconds(p.pid)
            mem = mem_mib(p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        r = {"run": run, "startup_s": round(wall, 3), "user_s": user, "sys_s": sys_,
             "cpu_s": round(user + sys_, 2), "rss_mib": round(mem.get("VmRSS", 0)),
             "hwm_mib": round(mem.get("VmHWM", 0)), "load": " ".join(load)}
        print(json.dumps(r), flush=True)
        runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in ("startup_s", "cpu_s", "rss_mib", "hwm_mib")}
    print(json.dumps({"who": a.who, "runs": len(runs), "median": med}))


if __name__ == "__main__":
    sys.exit(main())
