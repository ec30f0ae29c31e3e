#!/usr/bin/env python3
"""Loads the bench's sites into a running ferry router through its admin API
(POST /v1/sites, batches of --batch sites), as an operator's script would.

Usage: load_sites.py prepare DIR [--remote-router] [--batch N]
       load_sites.py post DIR ADMIN_PORT [--remote-router]
prepare writes the request bodies into DIR/batches[-remote]/ beforehand, so
that a measured start-up counts only the router's work (and reading the files).
DIR is gen.py's output (hosts.txt, meta.json, admin.token). --remote-router
loads only the sites the first router places on "remote:dc2" (the second
router's table), as local sites. Waits up to 120 s for the admin API to listen.
"""

import argparse
import http.client
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ left in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen import kind, pool_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["prepare", "post"])
    ap.add_argument("dir")
    ap.add_argument("admin_port", type=int, nargs="?")
    ap.add_argument("--remote-router", action="store_true")
    ap.add_argument("--batch", type=int, default=100_000)
    a = ap.parse_args()
    bdir = f"{a.dir}/batches-remote" if a.remote_router else f"{a.dir}/batches"
    if a.action == "post":
        post(a, bdir)
        return
    os.makedirs(bdir, exist_ok=True)
    meta = json.load(open(f"{a.dir}/meta.json"))
    mix = meta["mix"]
    hosts = open(f"{a.dir}/hosts.txt").read().split()
    sites = []
    for i, h in enumerate(hosts):
        kd = kind(i, mix)
        if a.remote_router:
            if kd != "remote":
                continue
            kd = "local"
        pl = "remote:dc2" if kd == "remote" else f"pool:p{pool_of(i)}"
        st = "maintenance" if kd == "maint" else "active"
        sites.append({"host": h, "placement": pl, "state": st, "epoch": 0})
    for n, i in enumerate(range(0, len(sites), a.batch)):
        with open(f"{bdir}/{n:05}.json", "w") as f:
            json.dump({"sites": sites[i : i + a.batch]}, f)


def post(a, bdir):
    token = open(f"{a.dir}/admin.token").read().strip()
    names = sorted(os.listdir(bdir))
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", a.admin_port, timeout=120)
            conn.connect()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("load_sites.py: the admin API did not listen within 120 s")
            time.sleep(0.01)
    for name in names:
        with open(f"{bdir}/{name}", "rb") as f:
            body = f.read()
        conn.request("POST", "/v1/sites", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        if r.status != 200:
            sys.exit(f"load_sites.py: POST /v1/sites answered {r.status}: {text[:300]!r}")
    print(f"posted {len(names)} batches")


if __name__ == "__main__":
    main()
