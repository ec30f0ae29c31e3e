#!/usr/bin/env python3
"""Writes the predictor bench's configurations for N sites over 50 pools.

Input: the hostnames of `ferry inventory generate` (its sites.csv). Output, in
--out: hosts.txt (every host, for wrk's Lua script), the configs of ferry
(ferry.toml; by --ferry-sites the sites are [[site]] entries, a pre-filled
SQLite store, or left to load_sites.py and the admin API), HAProxy (haproxy.cfg
+ hosts.map) and nginx (nginx.conf + map.conf), with --mix also the second
router's (ferry2.toml, haproxy2.cfg, nginx2.conf: only the remote sites),
the upstream nginx (4 ports, each answering "pN\n" with its index), and
meta.json (the hosts used for the start-up and change measurements).

Sites: host i goes to pool p(i % 50); pool k's one server is upstream port k % 4.
With --mix, sites with i % 20 in {0, 1} are in maintenance (10 %) and i % 20 == 2
are placed on the second router (5 %), which has them in its own table; wrk picks
hosts uniformly, so the request shares follow.
"""

import argparse
import json
import os
import sqlite3

POOLS = 50


def kind(i, mix):
    if not mix:
        return "local"
    r = i % 20
    if r < 2:
        return "maint"
    if r == 2:
        return "remote"
    return "local"


def pool_of(i):
    return i % POOLS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inventory-sites", required=True, help="sites.csv of ferry inventory generate")
    ap.add_argument("--sites", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--upstream-ports", required=True, help="4 comma-separated ports")
    ap.add_argument("--port", type=int, required=True, help="router port")
    ap.add_argument("--remote-port", type=int, required=True, help="second router's port")
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--remote-admin-port", type=int, required=True)
    ap.add_argument("--ferry-sites", choices=["config", "store", "api", "api-store", "file"], default="api",
                    help="config: [[site]] entries; store: a pre-filled SQLite store; api: none (load_sites.py posts them), kept in memory; api-store: the same with an (empty) store; file: [router] sites_file, loaded before listening")
    ap.add_argument("--mix", action="store_true")
    a = ap.parse_args()
    ups = [int(p) for p in a.upstream_ports.split(",")]
    out = a.out
    os.makedirs(out, exist_ok=True)

    hosts = []
    with open(a.inventory_sites) as f:
        next(f)
        for line in f:
            hosts.append(line.split(",", 1)[0].lower())
            if len(hosts) == a.sites:
                break
    if len(hosts) < a.sites:
        raise SystemExit(f"gen.py: only {len(hosts)} sites in {a.inventory_sites}")

    with open(f"{out}/hosts.txt", "w") as f:
        f.write("\n".join(hosts) + "\n")

    def body_of_pool(k):
        return f"p{k % len(ups)}"

    # Hosts for the start-up check (the last local site: the end of every table)
    # and for the change measurements (local sites spread over the table).
    local = [i for i in range(len(hosts)) if kind(i, a.mix) == "local"]
    late = local[-1]
    step = max(1, len(local) // 40)
    changes = []
    for j in local[step // 2 :: step][:30]:
        k = pool_of(j)
        new = (k + 1) % POOLS  # next pool: the next upstream port
        changes.append({"host": hosts[j], "pool": k, "new_pool": new,
                        "body": body_of_pool(k), "new_body": body_of_pool(new)})
    meta = {
        "sites": len(hosts),
        "mix": a.mix,
        "late_host": hosts[late],
        "late_body": body_of_pool(pool_of(late)),
        "changes": changes,
    }
    # A maintenance and a remote site, to check the mix answers before measuring.
    if a.mix:
        mi = next(i for i in range(len(hosts) - 1, -1, -1) if kind(i, True) == "maint")
        ri = next(i for i in range(len(hosts) - 1, -1, -1) if kind(i, True) == "remote")
        meta["maint_host"] = hosts[mi]
        meta["remote_host"] = hosts[ri]
        meta["remote_body"] = body_of_pool(pool_of(ri))
    with open(f"{out}/meta.json", "w") as f:
        json.dump(meta, f, indent=1)

    # ---- upstream nginx: one process, 4 ports, body "pN\n" ----
    with open(f"{out}/upstream.conf", "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {out}/upstream.pid;
error_log {out}/upstream-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {out}/u-body;
    proxy_temp_path {out}/u-proxy;
    fastcgi_temp_path {out}/u-fastcgi;
    uwsgi_temp_path {out}/u-uwsgi;
    scgi_temp_path {out}/u-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type text/plain;
""")
        for n, p in enumerate(ups):
            f.write(f"    server {{ listen 127.0.0.1:{p}; location / {{ return 200 \"p{n}\\n\"; }} }}\n")
        f.write("}\n")

    # ---- ferry ----
    token = f"{out}/admin.token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"predictor-bench-token\n")
    os.close(fd)

    def ferry_toml(path, name, port, admin_port, store, site_ids, remote):
        for suffix in ("", "-wal", "-shm"):
            if store and os.path.exists(store + suffix):
                os.remove(store + suffix)
        with open(path, "w") as f:
            f.write(f"""# ferry proxy for the predictor bench ({len(site_ids)} sites, written by gen.py)
[router]
name = "{name}"
access_log = "off"
""")
            if store:
                f.write(f'store = "{store}"\n')
            if in_file:
                listed = path[:-len(".toml")] + "-sites.txt"
                f.write(f'sites_file = "{listed}"\n')
                with open(listed, "w") as s:
                    s.write("# host placement [state] [epoch] (ferry's [router] sites_file)\n")
                    for i in site_ids:
                        kd = kind(i, a.mix) if remote else "local"
                        pl = "remote:dc2" if kd == "remote" else f"pool:p{pool_of(i)}"
                        st = " maintenance" if kd == "maint" else ""
                        s.write(f"{hosts[i]} {pl}{st}\n")
            f.write(f"""
[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "{token}"

[[listener]]
listen = "127.0.0.1:{port}"
""")
            for k in range(POOLS):
                f.write(f'\n[[pool]]\nname = "p{k}"\n[[pool.server]]\nname = "s{k}"\n'
                        f'address = "127.0.0.1:{ups[k % len(ups)]}"\n')
            if remote:
                f.write(f'\n[[remote]]\nname = "dc2"\naddress = "127.0.0.1:{a.remote_port}"\n')
            if in_config:
                w = f.write
                for i in site_ids:
                    kd = kind(i, a.mix) if remote else "local"
                    pl = "remote:dc2" if kd == "remote" else f"pool:p{pool_of(i)}"
                    st = '\nstate = "maintenance"' if kd == "maint" else ""
                    w(f'\n[[site]]\nhost = "{hosts[i]}"\nplacement = "{pl}"{st}\n')

    def ferry_store(path, site_ids, remote):
        db = sqlite3.connect(path)
        # The schema of ferry-store's SqliteStore, version 1.
        db.executescript("""
CREATE TABLE sites (host TEXT PRIMARY KEY NOT NULL, placement TEXT NOT NULL,
    state TEXT NOT NULL, epoch INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE server_states (pool TEXT NOT NULL, server TEXT NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (pool, server)) WITHOUT ROWID;
CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
    body TEXT NOT NULL, at_unix_ms INTEGER NOT NULL);
PRAGMA user_version = 1;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
""")

        def rows():
            for i in site_ids:
                kd = kind(i, a.mix) if remote else "local"
                pl = "remote:dc2" if kd == "remote" else f"pool:p{pool_of(i)}"
                yield (hosts[i], pl, "maintenance" if kd == "maint" else "active", 0)

        db.executemany("INSERT INTO sites VALUES (?, ?, ?, ?)", rows())
        db.commit()
        db.close()

    all_ids = range(len(hosts))
    use_store = a.ferry_sites in ("store", "api-store")
    prefill = a.ferry_sites == "store"
    in_config = a.ferry_sites == "config"
    in_file = a.ferry_sites == "file"
    ferry_toml(f"{out}/ferry.toml", "dc1", a.port, a.admin_port,
               f"{out}/ferry.db" if use_store else None, all_ids, a.mix)
    if prefill:
        ferry_store(f"{out}/ferry.db", all_ids, a.mix)
    remote_ids = [i for i in all_ids if kind(i, a.mix) == "remote"]
    if a.mix:
        ferry_toml(f"{out}/ferry2.toml", "dc2", a.remote_port, a.remote_admin_port,
                   f"{out}/ferry2.db" if use_store else None, remote_ids, False)
        if prefill:
            ferry_store(f"{out}/ferry2.db", remote_ids, False)

    # ---- HAProxy: a map file Host -> backend ----
    def haproxy(cfg, mapf, port, sock, site_ids, remote):
        with open(mapf, "w") as f:
            w = f.write
            for i in site_ids:
                kd = kind(i, a.mix) if remote else "local"
                w(f"{hosts[i]} {'maint' if kd == 'maint' else 'remote' if kd == 'remote' else f'p{pool_of(i)}'}\n")
        with open(cfg, "w") as f:
            f.write(f"""# HAProxy for the predictor bench: Host -> backend through a map (gen.py)
global
    nbthread 1
    maxconn 8192
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option forwardfor

frontend fe
    bind 127.0.0.1:{port}
    use_backend %[req.hdr(host),lower,map({mapf})]
    default_backend notfound

backend notfound
    http-request return status 404 content-type text/plain string "no such site\\n"
""")
            if remote:
                f.write('\nbackend maint\n    http-request return status 503 content-type text/plain '
                        'string "maintenance\\n" hdr Retry-After 30\n')
                f.write(f"\nbackend remote\n    http-reuse safe\n    server dc2 127.0.0.1:{a.remote_port}\n")
            for k in range(POOLS):
                f.write(f"\nbackend p{k}\n    http-reuse safe\n    server s{k} 127.0.0.1:{ups[k % len(ups)]}\n")

    haproxy(f"{out}/haproxy.cfg", f"{out}/hosts.map", a.port, f"{out}/haproxy.sock", all_ids, a.mix)
    if a.mix:
        haproxy(f"{out}/haproxy2.cfg", f"{out}/hosts2.map", a.remote_port, f"{out}/haproxy2.sock",
                remote_ids, False)

    # ---- nginx: map $host $pool ----
    def nginx(cfg, mapf, port, tag, site_ids, remote):
        with open(mapf, "w") as f:
            w = f.write
            for i in site_ids:
                kd = kind(i, a.mix) if remote else "local"
                w(f"{hosts[i]} {'maint' if kd == 'maint' else 'remote' if kd == 'remote' else f'p{pool_of(i)}'};\n")
        with open(cfg, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {out}/nginx-{tag}.pid;
error_log {out}/nginx-{tag}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {out}/{tag}-body;
    proxy_temp_path {out}/{tag}-proxy;
    fastcgi_temp_path {out}/{tag}-fastcgi;
    uwsgi_temp_path {out}/{tag}-uwsgi;
    scgi_temp_path {out}/{tag}-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    map_hash_max_size {max(2048, 2 * len(site_ids))};
    map_hash_bucket_size 128;
    map $host $pool {{
        default "";
        include {mapf};
    }}
""")
            names = [f"p{k}" for k in range(POOLS)]
            for k in range(POOLS):
                f.write(f"    upstream p{k} {{ server 127.0.0.1:{ups[k % len(ups)]}; keepalive 16; "
                        "keepalive_requests 10000000; keepalive_timeout 120s; }\n")
            if remote:
                names.append("remote")
                f.write(f"    upstream remote {{ server 127.0.0.1:{a.remote_port}; keepalive 16; "
                        "keepalive_requests 10000000; keepalive_timeout 120s; }\n")
            f.write(f"""    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location / {{
            if ($pool = "") {{ return 404 "no such site\\n"; }}
            if ($pool = maint) {{ return 503 "maintenance\\n"; }}
            proxy_pass http://$pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")

    nginx(f"{out}/nginx.conf", f"{out}/map.conf", a.port, "nginx", all_ids, a.mix)
    if a.mix:
        nginx(f"{out}/nginx2.conf", f"{out}/map2.conf", a.remote_port, "nginx2", remote_ids, False)


if __name__ == "__main__":
    main()
