#!/usr/bin/env bash
# A scale-out and a scale-in on one machine (issue 22): a router in front of
# a pool of two nginx with a [pool.scale] policy, a primary agent holding the
# site's files, and wrk playing a TV campaign (a trickle, a peak, a trickle).
# The policy's add command starts an nginx with an empty document root and
# `ferry agent --join --join-files-from --join-follow` (drained until its
# files are copied and verified, then following the primary); its remove
# command stops them. Every few seconds the script
# prints `ferry ctl pools list`; at the end, the decisions from the router's
# log, the commands run and wrk's error counts.
#
#   scripts/scale-demo.sh            (builds nothing: uses target/debug/ferry
#                                     or $FERRY; needs nginx, wrk, python3)
set -euo pipefail

ferry=${FERRY:-${CARGO_TARGET_DIR:-target}/debug/ferry}
ferry=$(realpath "$ferry")
nginx=$(command -v nginx || echo /usr/sbin/nginx)
w=$(mktemp -d -t ferry-scale-demo-XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$w"/extra*/agent.pid "$w"/extra*/nginx.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
read -r listen admin agent p1 p2 e1 e2 e3 < <(free_ports 8)
printf '%s\n' "$e1" "$e2" "$e3" > "$w/ports"

# The site: a page of 12 kB (at limit_rate 4k, about 2 s per request, so
# the requests in flight follow the clients) and 200 images.
mkdir -p "$w/primary/media"
head -c 12000 /dev/zero | tr '\0' x > "$w/primary/page.html"
for i in $(seq 1 200); do head -c $((1000 + i * 37)) /dev/urandom > "$w/primary/media/p$i.jpg"; done
echo "demo-sync-key-0123456789" > "$w/key"; chmod 600 "$w/key"

# nginx.conf.in: @PREFIX@ @NAME@ @PORT@ filled in per server.
cat > "$w/nginx.conf.in" <<'EOF'
daemon off;
master_process off;
worker_processes 1;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log warn;
events { worker_connections 1024; }
http {
    access_log @PREFIX@/access.log;
    client_body_temp_path @PREFIX@/tmp;
    proxy_temp_path @PREFIX@/tmp;
    fastcgi_temp_path @PREFIX@/tmp;
    uwsgi_temp_path @PREFIX@/tmp;
    scgi_temp_path @PREFIX@/tmp;
    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@;
        limit_rate 4k;
        add_header X-Backend @NAME@ always;
    }
}
EOF
start_nginx() { # NAME PORT ROOT
    local p="$w/$1"
    mkdir -p "$p"
    sed -e "s#@PREFIX@#$p#g" -e "s#@NAME@#$1#g" -e "s#@PORT@#$2#g" -e "s#@ROOT@#$3#g" \
        "$w/nginx.conf.in" > "$p/nginx.conf"
    "$nginx" -p "$p" -c "$p/nginx.conf" -e "$p/error.log" </dev/null >/dev/null 2>&1 &
    pids+=($!)
}
start_nginx web1 "$p1" "$w/primary"
start_nginx web2 "$p2" "$w/primary"

cat > "$w/agent.toml" <<EOF
listen = "127.0.0.1:$agent"
key_file = "$w/key"
[volumes.site]
path = "$w/primary"
read_only = true
watch = true
EOF
"$ferry" agent --config "$w/agent.toml" 2>"$w/primary-agent.log" &
pids+=($!)

cat > "$w/add.sh" <<EOF
#!/bin/sh
set -eu
n=\$(( \$(cat $w/added 2>/dev/null || echo 0) + 1 )); echo \$n > $w/added
port=\$(sed -n "\${n}p" $w/ports); name=extra\$n; P=$w/\$name
mkdir -p \$P/root
sed -e "s#@PREFIX@#\$P#g" -e "s#@NAME@#\$name#g" -e "s#@PORT@#\$port#g" -e "s#@ROOT@#\$P/root#g" $w/nginx.conf.in > \$P/nginx.conf
echo "add \$name (pool \$FERRY_POOL: \$FERRY_SERVERS servers, \$FERRY_WANTED wanted)" >> $w/commands.log
setsid $nginx -p \$P -c \$P/nginx.conf -e \$P/error.log </dev/null >/dev/null 2>&1 & echo \$! > \$P/nginx.pid
setsid $ferry agent --join web --join-name \$name --join-address 127.0.0.1:\$port \\
  --router http://127.0.0.1:$admin --router-token demo-admin-token \\
  --join-files-from ferry://127.0.0.1:$agent/site --join-files-to \$P/root --join-key-file $w/key --join-follow \\
  </dev/null >\$P/agent.log 2>&1 & echo \$! > \$P/agent.pid
EOF
cat > "$w/remove.sh" <<EOF
#!/bin/sh
echo "remove \$FERRY_SERVER (\$FERRY_ADDRESS)" >> $w/commands.log
kill \$(cat $w/\$FERRY_SERVER/agent.pid) \$(cat $w/\$FERRY_SERVER/nginx.pid) 2>/dev/null || true
EOF
chmod +x "$w/add.sh" "$w/remove.sh"

cat > "$w/proxy.toml" <<EOF
[router]
name = "demo"

[admin]
listen = "127.0.0.1:$admin"
token = "demo-admin-token"

[[listener]]
listen = "127.0.0.1:$listen"

[[pool]]
name = "web"

[[pool.server]]
name = "web1"
address = "127.0.0.1:$p1"

[[pool.server]]
name = "web2"
address = "127.0.0.1:$p2"

[pool.scale]
add_above = 3
remove_below = 1
hold = "3s"
cooldown = "3s"
min_servers = 2
max_servers = 4
add_command = ["$w/add.sh"]
remove_command = ["$w/remove.sh"]
command_timeout = "30s"
drain_timeout = "15s"

[[site]]
host = "shop.test"
placement = "pool:web"
EOF
"$ferry" proxy --config "$w/proxy.toml" --ready-file "$w/ready.json" 2>"$w/router.log" &
pids+=($!)
for _ in $(seq 1 250); do [ -s "$w/ready.json" ] && break; sleep 0.02; done
[ -s "$w/ready.json" ] || { echo "router not ready:"; cat "$w/router.log"; exit 1; }

export FERRY_ADMIN=http://127.0.0.1:$admin FERRY_ADMIN_TOKEN=demo-admin-token
show() { echo "== $1"; "$ferry" ctl pools list | sed 's/^/   /'; }
load() { # CONNECTIONS SECONDS
    wrk -t"$(( $1 < 2 ? 1 : 2 ))" -c"$1" -d"$2"s --timeout 10s -H 'Host: shop.test' "http://127.0.0.1:$listen/page.html" > "$w/wrk-$1.txt" &
    local l=$!
    for _ in $(seq 1 $(($2 / 5))); do sleep 5; show "$1 clients"; done
    wait "$l"
}
load 2 5
load 24 35
# --join-follow: a product image saved at the primary reaches every front.
echo "== a new file at the primary"
echo "a new product image" > "$w/primary/new.jpg"
t0=$(date +%s%N)
for root in "$w"/extra*/root; do
    for _ in $(seq 1 500); do [ -f "$root/new.jpg" ] && break; sleep 0.01; done
    if [ -f "$root/new.jpg" ]; then
        echo "   $(basename "$(dirname "$root")"): there after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    else
        echo "   $(basename "$(dirname "$root")"): not there after 5 s"
    fi
done
load 1 35

echo "== decisions"
grep -E 'scale (decision|action)' "$w/router.log" | sed 's/^/   /'
echo "== commands run"
sed 's/^/   /' "$w/commands.log"
echo "== wrk"
grep -hE 'requests in|Non-2xx|Socket errors' "$w"/wrk-*.txt | sed 's/^/   /'
if grep -qE 'Non-2xx|Socket errors' "$w"/wrk-*.txt; then
    echo "== some requests failed"; exit 1
fi
echo "== no request failed"
