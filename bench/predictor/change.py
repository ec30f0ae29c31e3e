#!/usr/bin/env python3
"""Measures how long one site's change takes to be seen by a client.

Usage: change.py ferry|haproxy|nginx DIR PORT [--admin-port N] [--nginx-pid PID] [--count N]

For each of meta.json's changes (a local site moved to the next pool, whose
server is another upstream port): the clock starts, the change is sent the
contender's own way, and requests for the host (a new connection each, the way
a new visitor comes) are sent until the answer is the new upstream's body.
  ferry:   PUT /v1/sites/{host} on the admin API (with the bearer token)
  haproxy: `set map FILE HOST BACKEND` on the runtime API's socket
  nginx:   the host's line changed in the map file, then SIGHUP (a reload)
Prints one JSON object: the median, min and max in milliseconds, and each value.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import sys
import time


def get_body(port, host):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace").strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("who", choices=["ferry", "haproxy", "nginx"])
    ap.add_argument("dir")
    ap.add_argument("port", type=int)
    ap.add_argument("--admin-port", type=int)
    ap.add_argument("--nginx-pid", type=int)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    a.dir = os.path.abspath(a.dir)  # HAProxy knows its map by the path in its config
    meta = json.load(open(f"{a.dir}/meta.json"))
    token = open(f"{a.dir}/admin.token").read().strip()
    results = []
    send_ms = []
    for c in meta["changes"][: a.count]:
        host = c["host"]
        before = get_body(a.port, host)
        if before != c["body"]:
            sys.exit(f"change.py: {host} answers {before!r} before the change, expected {c['body']!r}")
        t0 = time.monotonic()
        if a.who == "ferry":
            conn = http.client.HTTPConnection("127.0.0.1", a.admin_port, timeout=30)
            body = json.dumps({"placement": f"pool:p{c['new_pool']}", "epoch": 1})
            conn.request("PUT", f"/v1/sites/{host}", body=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read()
            conn.close()
            if r.status != 200:
                sys.exit(f"change.py: PUT answered {r.status}: {text[:200]!r}")
        elif a.who == "haproxy":
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{a.dir}/haproxy.sock")
            s.sendall(f"set map {a.dir}/hosts.map {host} p{c['new_pool']}\n".encode())
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
            s.close()
            if out.strip():
                sys.exit(f"change.py: haproxy answered {out[:200]!r}")
        else:
            path = f"{a.dir}/map.conf"
            with open(path) as f:
                lines = f.read().split("\n")
            prefix = host + " "
            for i, line in enumerate(lines):
                if line.startswith(prefix):
                    lines[i] = f"{host} p{c['new_pool']};"
                    break
            with open(path + ".new", "w") as f:
                f.write("\n".join(lines))
            os.replace(path + ".new", path)
            os.kill(a.nginx_pid, signal.SIGHUP)
        t_sent = time.monotonic()
        while True:
            try:
                if get_body(a.port, host) == c["new_body"]:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > a.timeout:
                sys.exit(f"change.py: {host} did not change within {a.timeout} s")
        t1 = time.monotonic()
        results.append(round(1000 * (t1 - t0), 3))
        send_ms.append(round(1000 * (t_sent - t0), 3))
        if a.who == "nginx":
            time.sleep(1)  # let the old worker finish before the next reload
    print(json.dumps({
        "who": a.who, "changes": len(results),
        "median_ms": statistics.median(results), "min_ms": min(results), "max_ms": max(results),
        "command_median_ms": statistics.median(send_ms), "values_ms": results,
    }))


if __name__ == "__main__":
    main()
