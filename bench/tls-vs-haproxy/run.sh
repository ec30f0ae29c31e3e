#!/usr/bin/env bash
# TLS termination, HAProxy vs `ferry proxy`, each on one pinned core and one
# thread, with the same ECDSA P-256 certificate, in front of the same upstream
# nginx. Two loads, both wrk with 50 connections over HTTP/1.1 on TLS:
#
#   handshakes  every request on a new connection (`Connection: close`): new
#               TLS handshakes per second. Session resumption is off on both
#               proxies, so each one is a full handshake (ECDHE + ECDSA
#               signature); ferry's counters confirm it after its runs.
#   keepalive   requests on open TLS connections: requests per second
#
# Besides the rates, each proxy's own CPU time per handshake / per request is
# measured (its cost per core, whichever core is the limit). Prints a table,
# then the ratios ferry/HAProxy last, and writes results.json beside this file.
#
# Layout on a 2-core machine: the proxy on core 0; the upstream nginx and wrk
# share core 1, so core 1 can be the limit (the output shows each core's load).
# Rounds alternate the proxies; figures are medians over rounds.
#
# Usage: bench/tls-vs-haproxy/run.sh
# Environment:
#   BENCH_DURATION  length of each measured run (default 10s, wrk syntax)
#   BENCH_WARMUP    warm-up before each run (default 2s)
#   BENCH_ROUNDS    rounds (default 3)
#   BENCH_PROXIES   default "haproxy ferry"
#   FERRY_BIN       use this ferry binary instead of building one
#   CARGO_TARGET_DIR  honoured when building ferry
# Needs: haproxy, nginx, wrk, curl, openssl, taskset (Debian: haproxy
# nginx-light wrk curl openssl util-linux).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${BENCH_DURATION:-10s}"
warmup="${BENCH_WARMUP:-2s}"
rounds="${BENCH_ROUNDS:-3}"
proxies="${BENCH_PROXIES:-haproxy ferry}"
connections=50
proxy_core=0
load_core=1
PATH="$PATH:/usr/sbin:/sbin"

for tool in haproxy nginx wrk curl openssl taskset; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "run.sh: $tool is missing (Debian: apt-get install -y haproxy nginx-light wrk curl openssl util-linux)" >&2
        exit 2
    }
done
if [ "$(nproc --all)" -lt 2 ]; then
    echo "run.sh: needs 2 cores (proxy on core $proxy_core, load on core $load_core)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-tls-bench.XXXXXX")"
chmod 755 "$tmp"
pids=()

# Stops one process we started: TERM, up to 5 s, then KILL.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
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

render() {
    sed -e "s|@TMP@|$tmp|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
        -e "s|@PROXY_PORT@|$proxy_port|g" -e "s|@ADMIN_PORT@|$admin_port|g" "$1" >"$2"
}

# CPU ticks (user + system) used so far by process $1.
proc_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

core_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print 0 }'
}

median() {
    printf '%s\n' "$@" | { grep -v '^null$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print a[(NR + 1) / 2];
              else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

if [ -n "${FERRY_BIN:-}" ]; then
    ferry_bin="$FERRY_BIN"
else
    echo "== building ferry (release)"
    (cd "$root" && cargo build --release -p ferry)
    ferry_bin="${CARGO_TARGET_DIR:-$root/target}/release/ferry"
fi
[ -x "$ferry_bin" ] || { echo "run.sh: $ferry_bin is not an executable" >&2; exit 1; }

echo "HAProxy: $(haproxy -v 2>&1 | head -n1)"
echo "ferry:   $("$ferry_bin" --version)"
echo "wrk:     $({ wrk --version 2>&1 || true; } | head -n1 | sed 's/ Copyright.*//')"
echo "machine: $(nproc --all) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); proxy on core $proxy_core, nginx and wrk on core $load_core"

# One ECDSA P-256 certificate for bench.local, signed by a throw-away CA; the
# PEM holds chain then key (the layout both HAProxy and ferry read).
mkdir -p "$tmp/certs" "$tmp/ca"
(
    cd "$tmp/ca"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
        -days 2 -subj "/CN=Ferry bench CA" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
        -subj "/CN=bench.local" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:bench.local\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 -out leaf.pem \
        -extfile leaf.ext 2>/dev/null
    cat leaf.pem leaf.key >"$tmp/certs/bench.pem"
)
echo "certificate: $(openssl x509 -in "$tmp/certs/bench.pem" -noout -subject) (ECDSA P-256)"

upstream_port="$(free_port)"
proxy_port=""
admin_port=""
render "$here/upstream-nginx.conf.in" "$tmp/upstream.conf"
taskset -c "$load_core" nginx -p "$tmp" -c "$tmp/upstream.conf" -e "$tmp/upstream-error.log" \
    >"$tmp/upstream.out" 2>&1 &
upstream_pid=$!
pids+=("$upstream_pid")
for i in $(seq 100); do
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$upstream_port/" 2>/dev/null)" = "hello" ] && break
    [ "$i" = 100 ] && { echo "run.sh: the upstream nginx did not start" >&2; exit 1; }
    sleep 0.1
done

start_proxy() {
    case "$1" in
    haproxy)
        render "$here/haproxy.cfg.in" "$tmp/haproxy.cfg"
        haproxy -c -q -f "$tmp/haproxy.cfg" >&2
        taskset -c "$proxy_core" haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.out" 2>&1 &
        ;;
    ferry)
        render "$here/ferry.toml.in" "$tmp/ferry.toml"
        "$ferry_bin" proxy --config "$tmp/ferry.toml" --check >/dev/null
        taskset -c "$proxy_core" "$ferry_bin" --log-level warn proxy --threads 1 \
            --config "$tmp/ferry.toml" >"$tmp/ferry.out" 2>&1 &
        ;;
    *)
        echo "run.sh: unknown proxy $1" >&2
        exit 2
        ;;
    esac
    proxy_pid=$!
}

wait_ready() {
    local i
    for i in $(seq 100); do
        kill -0 "$proxy_pid" 2>/dev/null || { echo "run.sh: $1 exited during start" >&2; cat "$tmp/$1.out" >&2; exit 1; }
        if [ "$(curl -s --max-time 1 --cacert "$tmp/ca/ca.pem" --resolve "bench.local:$proxy_port:127.0.0.1" \
            "https://bench.local:$proxy_port/" 2>/dev/null)" = "hello" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "run.sh: $1 did not answer over TLS within 10 s" >&2
    exit 1
}

# wrk on the load core; $1 = duration, $2 = output, $3... = extra wrk args.
load() {
    local d="$1" out="$2"
    shift 2
    taskset -c "$load_core" wrk -t1 -c"$connections" -d"$d" "$@" "https://127.0.0.1:$proxy_port/" >"$out" &
    local wrk_pid=$!
    pids+=("$wrk_pid")
    wait "$wrk_pid"
}

declare -A r_rate r_cpu_us r_core0 r_core1 r_errors
kinds="handshakes keepalive"

measure() {
    local name="$1" round="$2" kind out p0 p1 t0 t1 c0 c1 n args
    proxy_port="$(free_port)"
    admin_port="$(free_port)"
    echo
    echo "== round $round: $name on 127.0.0.1:$proxy_port (core $proxy_core)"
    start_proxy "$name"
    pids+=("$proxy_pid")
    wait_ready "$name"
    for kind in $kinds; do
        out="$tmp/$name-$kind-$round.txt"
        if [ "$kind" = handshakes ]; then
            args=(-H "Connection: close")
        else
            args=()
        fi
        load "$warmup" "$tmp/warmup.txt" "${args[@]}"
        t0="$(date +%s.%N)"
        p0="$(proc_ticks "$proxy_pid")"
        c0="$(core_ticks "$proxy_core")"
        c1="$(core_ticks "$load_core")"
        load "$duration" "$out" "${args[@]}"
        p1="$(proc_ticks "$proxy_pid")"
        t1="$(date +%s.%N)"
        r_core0[$name,$kind,$round]="$(busy_pct "$c0" "$(core_ticks "$proxy_core")")"
        r_core1[$name,$kind,$round]="$(busy_pct "$c1" "$(core_ticks "$load_core")")"
        n="$(awk '/ requests in / {print $1}' "$out")"
        r_rate[$name,$kind,$round]="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
        r_cpu_us[$name,$kind,$round]="$(awk -v d="$((p1 - p0))" -v hz="$(getconf CLK_TCK)" -v n="$n" \
            'BEGIN { if (n > 0) printf "%.1f", 1e6 * d / hz / n; else print "null" }')"
        r_errors[$name,$kind,$round]="$(awk '/Socket errors:|Non-2xx/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i } END { print s + 0 }' "$out")"
        printf '   %-10s %10s/s  proxy CPU %6s us each  errors %s  busy: core %s %s%%, core %s %s%%\n' \
            "$kind" "${r_rate[$name,$kind,$round]}" "${r_cpu_us[$name,$kind,$round]}" \
            "${r_errors[$name,$kind,$round]}" "$proxy_core" "${r_core0[$name,$kind,$round]}" \
            "$load_core" "${r_core1[$name,$kind,$round]}"
    done
    if [ "$name" = ferry ]; then
        # Whether the client resumed sessions (then "handshakes" were not all full ones).
        curl -s "http://127.0.0.1:$admin_port/metrics" |
            awk '/^ferry_tls_handshakes_total\{result="ok"\}/ { ok = $2 } /^ferry_tls_resumed_handshakes_total/ { r = $2 }
                 END { printf "   ferry counted %d handshakes, %d resumed\n", ok, r }'
    fi
    stop_pid "$proxy_pid"
}

for round in $(seq "$rounds"); do
    for p in $proxies; do
        measure "$p" "$round"
    done
done

declare -A m_rate m_cpu
echo
echo "== medians over $rounds round(s), $connections connections, $duration each"
printf '%-8s %-11s %14s %16s\n' proxy load "rate (/s)" "proxy CPU (us)"
for p in $proxies; do
    for kind in $kinds; do
        rates=()
        cpus=()
        for round in $(seq "$rounds"); do
            rates+=("${r_rate[$p,$kind,$round]}")
            cpus+=("${r_cpu_us[$p,$kind,$round]}")
        done
        m_rate[$p,$kind]="$(median "${rates[@]}")"
        m_cpu[$p,$kind]="$(median "${cpus[@]}")"
        printf '%-8s %-11s %14s %16s\n' "$p" "$kind" "${m_rate[$p,$kind]}" "${m_cpu[$p,$kind]}"
    done
done

{
    echo "{"
    echo "  \"duration\": \"$duration\", \"rounds\": $rounds, \"connections\": $connections,"
    echo "  \"certificate\": \"ECDSA P-256\", \"haproxy\": \"$(haproxy -v 2>&1 | head -n1)\","
    echo "  \"results\": {"
    first=1
    for p in $proxies; do
        for kind in $kinds; do
            [ "$first" = 1 ] || echo ","
            first=0
            printf '    "%s_%s": {"rate_per_s": %s, "proxy_cpu_us": %s}' "$p" "$kind" \
                "${m_rate[$p,$kind]}" "${m_cpu[$p,$kind]}"
        done
    done
    echo
    echo "  }"
    echo "}"
} >"$here/results.json"
echo "wrote $here/results.json"

if [[ " $proxies " == *" haproxy "* && " $proxies " == *" ferry "* ]]; then
    echo
    echo "== ferry / HAProxy (rate: higher is better for ferry; CPU: lower is better)"
    for kind in $kinds; do
        awk -v k="$kind" -v fr="${m_rate[ferry,$kind]}" -v hr="${m_rate[haproxy,$kind]}" \
            -v fc="${m_cpu[ferry,$kind]}" -v hc="${m_cpu[haproxy,$kind]}" \
            'BEGIN { printf "%-11s rate %.2f   CPU per op %.2f\n", k, (hr > 0 ? fr / hr : 0), (hc > 0 ? fc / hc : 0) }'
    done
fi
