#!/usr/bin/env bash
# User-space instructions and allocations per request of `ferry proxy --threads 1`,
# counted by callgrind: figures that other jobs on a busy machine do not disturb
# (req/s and CPU time do), for before/after comparisons of the request path.
#
# Same upstream nginx and ferry.toml as run.sh. Per binary: ferry starts under
# `valgrind --tool=callgrind`, 2,000 keep-alive requests warm it up (h2load --h1,
# 50 connections), the counters are zeroed, N more requests are sent, the
# counters are dumped. Prints per request: instructions, calls to malloc and
# free (mimalloc's entry points), memcpy's share, then the top functions by
# their own instructions, and who calls memcpy. Loopback, nothing pinned, a few
# seconds per binary.
#
# Usage: bench/proxy-vs-haproxy/cg.sh [-n N] [-top K] [-keep DIR] FERRY_BIN...
# -keep DIR copies each measured dump to DIR for callgrind_annotate.
# Needs: valgrind, h2load (nghttp2-client), nginx, curl, python3.
# Note: under valgrind a `rep movsb` counts once per byte-ish iteration, so
# memcpy's share of instructions is far above its share of CPU time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
n=10000
top=25
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
    -n) n="$2"; shift 2 ;;
    -top) top="$2"; shift 2 ;;
    -keep) keep="$2"; shift 2 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [-n N] [-top K] [-keep DIR] FERRY_BIN..." >&2; exit 2; }
PATH="$PATH:/usr/sbin:/sbin"
for tool in valgrind callgrind_control h2load nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "cg.sh: $tool is missing" >&2; exit 2; }
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-cg.XXXXXX")"
chmod 755 "$tmp"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

port() { echo $((20000 + RANDOM % 40000)); }
upstream_port="$(port)"
proxy_port="$(port)"
sed -e "s|@TMP@|$tmp|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" "$here/upstream-nginx.conf.in" >"$tmp/upstream.conf"
sed -e "s|@PROXY_PORT@|$proxy_port|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" "$here/ferry.toml.in" >"$tmp/ferry.toml"
nginx -p "$tmp" -c "$tmp/upstream.conf" -e "$tmp/upstream-error.log" >"$tmp/upstream.out" 2>&1 &
pids+=($!)

for bin in "$@"; do
    out="$tmp/callgrind.$(basename "$bin").%p"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --log-level warn proxy --threads 1 --config "$tmp/ferry.toml" >"$tmp/ferry.out" 2>&1 &
    pid=$!
    pids+=("$pid")
    for i in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$proxy_port/" && break
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/ferry.out" >&2; exit 1; }
        [ "$i" = 300 ] && { echo "cg.sh: ferry did not answer within 60 s" >&2; exit 1; }
        sleep 0.2
    done
    h2load --h1 -n 2000 -c 50 "http://127.0.0.1:$proxy_port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    h2load --h1 -n "$n" -c 50 "http://127.0.0.1:$proxy_port/" >"$tmp/h2load.txt"
    callgrind_control -d "$pid" >/dev/null 2>&1
    # The dump of the measured requests, before the one valgrind writes at exit.
    dump="$(ls -t "$tmp"/callgrind."$(basename "$bin")".* | head -n1)"
    ok="$(awk '/status codes:/ {print $3}' "$tmp/h2load.txt")"
    [ -z "$keep" ] || cp "$dump" "$keep/callgrind.out.$(basename "$bin")"
    echo "== $bin: $n requests ($ok 2xx)"
    python3 - "$dump" "$n" "$top" <<'PY'
import collections, re, sys
path, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names, own, calls = {}, collections.Counter(), collections.Counter()
copiers = collections.Counter()
def name(tok):
    m = re.match(r'\((\d+)\)(?: (.*))?', tok)
    if not m:
        return tok
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), tok)
fn = cfn = None
inclusive_next = False
for line in open(path):
    line = line.rstrip('\n')
    if line.startswith('fn='):
        fn = name(line[3:])
    elif line.startswith('cfn='):
        cfn = name(line[4:])
    elif line.startswith('calls='):
        calls[cfn] += int(line[6:].split()[0])
        inclusive_next = True
    elif line[:1].isdigit() or line[:1] in '+-*':
        if inclusive_next:
            inclusive_next = False
            if 'memcpy' in cfn or 'memmove' in cfn:
                copiers[fn] += int(line.split()[1])
        elif fn is not None and len(line.split()) >= 2:
            own[fn] += int(line.split()[1])
total = sum(own.values())
memcpy = sum(c for f, c in own.items() if 'memcpy' in f or 'memmove' in f)
mallocs = calls['mi_malloc_aligned'] + calls['mi_realloc_aligned'] + calls['mi_zalloc_aligned']
print(f"instructions per request: {total / n:,.0f} (memcpy/memmove {memcpy / n:,.0f})")
print(f"malloc+realloc per request: {mallocs / n:.2f}, free per request: {calls['mi_free'] / n:.2f}")
print("top functions, own instructions per request:")
for f, c in own.most_common(top):
    print(f"  {c / n:8,.0f}  {100 * c / total:4.1f}%  {f[:120]}")
print("memcpy/memmove by caller, instructions per request:")
for f, c in copiers.most_common(8):
    print(f"  {c / n:8,.0f}  {f[:120]}")
PY
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done
