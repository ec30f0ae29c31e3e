#!/usr/bin/env bash
# `ferry proxy` with a certificate directory of COUNT certificates (default
# 100,000): how long until it is ready (every file indexed) and how much
# memory it holds (VmRSS) at start and after handshakes for 1,000 different
# names (keys parsed lazily into a cache of 500). Writes many-certs.json here.
#
# Usage: bench/tls-vs-haproxy/many-certs.sh [COUNT]
# Environment: FERRY_BIN (else a release build), CARGO_TARGET_DIR.
# Needs: curl, openssl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
count="${1:-100000}"
target="${CARGO_TARGET_DIR:-$root/target}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-many-certs.XXXXXX")"
ferry_pid=""
cleanup() {
    if [ -n "$ferry_pid" ] && kill -0 "$ferry_pid" 2>/dev/null; then
        kill -TERM "$ferry_pid" 2>/dev/null || true
        wait "$ferry_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

if [ -n "${FERRY_BIN:-}" ]; then
    ferry_bin="$FERRY_BIN"
else
    (cd "$root" && cargo build --release -p ferry)
    ferry_bin="$target/release/ferry"
fi
(cd "$root" && cargo build --release -p ferry-tls --example gen_certs)

echo "== generating $count certificates (one shared key, one signature each)"
t0="$(date +%s.%N)"
"$target/release/examples/gen_certs" "$tmp/certs" "$count" >/dev/null
t1="$(date +%s.%N)"
du_mb="$(du -sm "$tmp/certs" | cut -f1)"
echo "   $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, ${du_mb} MB on disk"
# A cold start reads from disk; this measures a warm page cache, as after a
# restart of a running router.
find "$tmp/certs" -name '*.pem' -exec cat {} + >/dev/null

port="$(free_port)"
admin="$(free_port)"
cat >"$tmp/proxy.toml" <<EOF
[router]
name = "certs"
access_log = "off"
default_site = "default.bench.test"

[admin]
listen = "127.0.0.1:$admin"
# Loopback bench: no token (the router refuses an [admin] without one otherwise).
insecure_no_auth = true

[[listener]]
listen = "127.0.0.1:$port"
tls = true

[tls]
cert_dir = "certs"
default_cert = "default"
key_cache = 500

[[pool]]
name = "none"

[[pool.server]]
name = "none"
address = "127.0.0.1:9"

[[site]]
host = "default.bench.test"
placement = "pool:none"
EOF

echo "== starting ferry proxy on $count certificates"
t0="$(date +%s.%N)"
"$ferry_bin" --log-level warn proxy --threads 1 --config "$tmp/proxy.toml" \
    --ready-file "$tmp/ready.json" >"$tmp/ferry.out" 2>&1 &
ferry_pid=$!
while [ ! -s "$tmp/ready.json" ]; do
    kill -0 "$ferry_pid" 2>/dev/null || { cat "$tmp/ferry.out" >&2; exit 1; }
    sleep 0.02
done
t1="$(date +%s.%N)"
start_s="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
rss_start="$(awk '/^VmRSS/ {print $2}' "/proc/$ferry_pid/status")"
echo "   ready in $start_s s, VmRSS $((rss_start / 1024)) MB"

echo "== handshakes for 1,000 different names (keys parsed on first use)"
for n in $(seq 0 $((count / 1000)) $((count - 1)) | head -n 1000); do
    echo | openssl s_client -connect "127.0.0.1:$port" -servername "site-$n.bench.test" \
        -CAfile "$tmp/ca.pem" -verify_return_error 2>/dev/null | grep -q "Verify return code: 0 (ok)" ||
        { echo "many-certs.sh: handshake for site-$n.bench.test failed" >&2; exit 1; }
done
rss_after="$(awk '/^VmRSS/ {print $2}' "/proc/$ferry_pid/status")"
metrics="$(curl -s "http://127.0.0.1:$admin/metrics")"
val() { echo "$metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
echo "   VmRSS $((rss_after / 1024)) MB; certificates $(val ferry_tls_certificates), cached keys $(val ferry_tls_cached_keys), key loads $(val ferry_tls_key_loads_total), index $(( $(val ferry_tls_index_bytes) / 1024 / 1024 )) MB"

cat >"$here/many-certs.json" <<EOF
{
  "certificates": $count,
  "ready_seconds": $start_s,
  "rss_start_kb": $rss_start,
  "rss_after_1000_names_kb": $rss_after,
  "index_bytes": $(val ferry_tls_index_bytes),
  "key_cache_capacity": $(val ferry_tls_key_cache_capacity),
  "cached_keys": $(val ferry_tls_cached_keys)
}
EOF
echo "wrote $here/many-certs.json"
