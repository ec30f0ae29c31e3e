#!/usr/bin/env bash
# HAProxy, nginx-as-proxy and `ferry proxy`, each on one core and one thread, in
# front of the same upstream nginx; wrk with 50 keep-alive connections measures
# req/s and p99 for each. Prints a table, then the ratios ferry/HAProxy last, and
# writes bench/proxy-vs-haproxy/results.json.
#
# Layout on a 2-core machine: the proxy under test is pinned to core 0; the
# upstream nginx and wrk share core 1 (so core 1 can become the limit; the
# output says so). Every proxy sees the same upstream and the same load.
# Besides req/s and latency, the proxy's own CPU time per request is measured:
# its cost per core, which holds whichever core is the limit.
#
# Rounds alternate the proxies so that a busy minute on a shared machine does not
# hit one proxy only. A round where other processes took part of the proxy's core
# is reported but left out of the medians (unless every round was).
#
# Usage: bench/proxy-vs-haproxy/run.sh
# Environment:
#   BENCH_DURATION  length of each measured run (default 10s, wrk syntax)
#   BENCH_WARMUP    length of the warm-up before each run (default 3s)
#   BENCH_ROUNDS    rounds over all proxies (default 3); figures are medians
#   BENCH_PROXIES   what to run (default "direct haproxy nginx ferry"; "direct" is wrk
#                   against the upstream with no proxy: the ceiling of the load core)
#   BENCH_NICE      niceness of everything the bench starts (default 0). Non-zero runs
#                   each process in its own session with that niceness on its scheduling
#                   autogroup too (plain `nice` does not rank across sessions when the
#                   kernel has autogroups). -10 makes other jobs on a shared machine
#                   yield to the bench, and slows them down while it runs. Needs root.
#   BENCH_PERF=1    after ferry's run, profile it for 5 s under the same load with
#                   `perf record -g` and write ferry-profile.txt (perf report) here.
#                   A list of proxies ("ferry haproxy") profiles each of them in its
#                   last round and writes NAME-profile.txt: the kernel's share side by side
#   FERRY_BIN       use this ferry binary instead of building one
#   FERRY_BIN_B     a second ferry binary, run as the proxy "ferry-b" (add it to
#                   BENCH_PROXIES): before/after comparisons in alternating rounds
#   floor-tokio, floor-uring in BENCH_PROXIES: bench/proxy-floor, a relay doing
#                   only the socket operations a request needs (epoll or io_uring),
#                   built with cargo on first use: the kernel's floor under any proxy
#   CARGO_TARGET_DIR  honoured when building ferry
# Needs: haproxy, nginx, wrk, curl, taskset (Debian: haproxy nginx-light wrk curl
# util-linux), and perf for BENCH_PERF (linux-perf).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${BENCH_DURATION:-10s}"
warmup="${BENCH_WARMUP:-3s}"
rounds="${BENCH_ROUNDS:-3}"
proxies="${BENCH_PROXIES:-direct haproxy nginx ferry}"
niceness="${BENCH_NICE:-0}"
connections=50
proxy_core=0
load_core=1
host_header="bench.local"

for tool in haproxy nginx wrk curl taskset; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "run.sh: $tool is missing (Debian: apt-get install -y haproxy nginx-light wrk curl util-linux)" >&2
        exit 2
    fi
done
PATH="$PATH:/usr/sbin:/sbin"
if [ "${BENCH_PERF:-0}" != 0 ] && ! command -v perf >/dev/null 2>&1; then
    echo "run.sh: BENCH_PERF=1 needs perf (Debian: apt-get install -y linux-perf)" >&2
    exit 2
fi
if [ "$(nproc --all)" -lt 2 ]; then
    echo "run.sh: needs at least 2 cores (proxy on core $proxy_core, load on core $load_core)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")"
# nginx workers drop to an unprivileged user when started as root.
chmod 755 "$tmp"
pids=()

# The process ids below $1 (children, their children, ...).
descendants() {
    local c
    for c in $(pgrep -P "$1" || true); do
        echo "$c"
        descendants "$c"
    done
}

# Stops one process we started: TERM, up to 5 s, then KILL. Its descendants
# (nginx workers) are stopped by their master; any left are killed by id.
stop_pid() {
    local pid="$1" children c i
    kill -0 "$pid" 2>/dev/null || return 0
    children="$(descendants "$pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for c in $children; do
        kill -KILL "$c" 2>/dev/null || true
    done
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

# A port nothing listens on right now (a race with other programs is possible
# but harmless on a bench machine: the start would fail loudly).
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

# Prefix of every process the bench starts, before `taskset -c CORE`. An array,
# not a function, so that `$!` of a background start is the process itself:
# setsid (not a group leader here), nice and taskset all exec what they run.
if [ "$niceness" != 0 ]; then
    prefix=(setsid nice -n "$niceness")
else
    prefix=()
fi

# Gives the session of process $1 the bench's niceness (see BENCH_NICE).
nice_session() {
    [ "$niceness" != 0 ] || return 0
    if [ -e "/proc/$1/autogroup" ] && ! echo "$niceness" >"/proc/$1/autogroup" 2>/dev/null; then
        echo "run.sh: could not set the autogroup niceness of $1 (BENCH_NICE needs root)" >&2
    fi
}

# Fills a template: @TMP@, @UPSTREAM_PORT@, @PROXY_PORT@.
render() {
    sed -e "s|@TMP@|$tmp|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
        -e "s|@PROXY_PORT@|$proxy_port|g" "$1" >"$2"
}

# Polls until the address answers 200 with the upstream's body, for at most 10 s.
wait_ready() {
    local url="$1" pid="$2" i
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: the process for $url exited during start" >&2
            return 1
        fi
        if [ "$(curl -s --max-time 1 -H "Host: $host_header" "$url" 2>/dev/null)" = "hello" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "run.sh: $url did not answer \"hello\" within 10 s" >&2
    return 1
}

# Converts a wrk latency ("812.00us", "1.23ms", "1.01s") to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /m$/) n = n * 60000
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

if [ -n "${FERRY_BIN:-}" ]; then
    ferry_bin="$FERRY_BIN"
else
    echo "== building ferry (release)"
    (cd "$root" && cargo build --release -p ferry)
    ferry_bin="${CARGO_TARGET_DIR:-$root/target}/release/ferry"
fi
[ -x "$ferry_bin" ] || { echo "run.sh: $ferry_bin is not an executable" >&2; exit 1; }

# First line of a command's output; `wrk --version` exits 1 and `head` may cut a
# writer short, neither of which is a failure here.
first_line() {
    { "$@" 2>&1 || true; } | head -n1 || true
}
haproxy_version="$(first_line haproxy -v)"
nginx_version="$(first_line nginx -v)"
wrk_version="$(first_line wrk --version | sed 's/ Copyright.*//')"
ferry_version="$("$ferry_bin" --version)"
if [ -n "${FERRY_BIN:-}" ]; then
    ferry_commit="FERRY_BIN=$FERRY_BIN"
else
    ferry_commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if ! git -C "$root" diff --quiet HEAD -- crates 2>/dev/null; then
        ferry_commit="$ferry_commit+changes"
    fi
fi
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
cores="$(nproc --all)"
echo "HAProxy: $haproxy_version"
echo "nginx:   $nginx_version"
echo "ferry:   $ferry_version ($ferry_commit)"
echo "wrk:     $wrk_version"
echo "machine: $cores cores ($cpu_model); proxy on core $proxy_core, upstream nginx and wrk share core $load_core; nice $niceness"

upstream_port="$(free_port)"
proxy_port=""
render "$here/upstream-nginx.conf.in" "$tmp/upstream.conf"
"${prefix[@]}" taskset -c "$load_core" nginx -p "$tmp" -c "$tmp/upstream.conf" -e "$tmp/upstream-error.log" \
    >"$tmp/upstream.out" 2>&1 &
upstream_pid=$!
nice_session "$upstream_pid"
pids+=("$upstream_pid")
for i in $(seq 100); do
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$upstream_port/" 2>/dev/null)" = "hello" ] && break
    kill -0 "$upstream_pid" 2>/dev/null || { cat "$tmp/upstream.out" >&2; exit 1; }
    [ "$i" = 100 ] && { echo "run.sh: the upstream nginx did not start" >&2; exit 1; }
    sleep 0.1
done
echo "upstream nginx on 127.0.0.1:$upstream_port (pid $upstream_pid)"

declare -A rps p50 p99 non2xx sock_err threads cpu_pct cpu_us core0 core1
declare -A r_rps r_p50 r_p99 r_non2xx r_sock_err r_cpu_pct r_cpu_us r_sys_us r_core0 r_core1
declare -A sys_us used r_clean
clk_tck="$(getconf CLK_TCK)"

# CPU ticks used so far by process $2 and its children: $1 = "all" (user +
# system) or "sys" (system only).
proc_ticks() {
    local p t=0
    for p in "$2" $(pgrep -P "$2" || true); do
        # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk -v m="$1" '{ print (m == "sys") ? $13 : $12 + $13 }')))
    done
    echo "$t"
}

# "busy total" jiffies of one core, from /proc/stat (idle and iowait are not busy).
core_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# Busy percent of a core between two core_ticks snapshots.
busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print 0 }'
}

# bench/proxy-floor's binary, built on first use (it is not in the workspace).
floor_bin() {
    local target="${CARGO_TARGET_DIR:-$root/target}/proxy-floor"
    if [ ! -x "$target/release/proxy-floor" ]; then
        CARGO_TARGET_DIR="$target" cargo build --release --quiet \
            --manifest-path "$root/bench/proxy-floor/Cargo.toml" >&2
    fi
    echo "$target/release/proxy-floor"
}

case " $proxies " in *" floor-"*) floor_bin >/dev/null ;; esac

# Starts proxy $1 on core $proxy_core and sets proxy_pid.
start_proxy() {
    case "$1" in
    haproxy)
        render "$here/haproxy.cfg.in" "$tmp/haproxy.cfg"
        haproxy -c -q -f "$tmp/haproxy.cfg" >&2
        "${prefix[@]}" taskset -c "$proxy_core" haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.out" 2>&1 &
        ;;
    nginx)
        render "$here/nginx-proxy.conf.in" "$tmp/nginx-proxy.conf"
        "${prefix[@]}" taskset -c "$proxy_core" nginx -p "$tmp" -c "$tmp/nginx-proxy.conf" \
            -e "$tmp/nginx-proxy-error.log" >"$tmp/nginx.out" 2>&1 &
        ;;
    ferry | ferry-b)
        local bin="$ferry_bin"
        if [ "$1" = ferry-b ]; then
            bin="${FERRY_BIN_B:?run.sh: the proxy ferry-b needs FERRY_BIN_B}"
        fi
        render "$here/ferry.toml.in" "$tmp/ferry.toml"
        "$bin" proxy --config "$tmp/ferry.toml" --check >&2
        # One core and one thread (a current-thread runtime, like HAProxy's nbthread 1).
        "${prefix[@]}" taskset -c "$proxy_core" \
            "$bin" --log-level warn proxy --threads 1 --config "$tmp/ferry.toml" >"$tmp/$1.out" 2>&1 &
        ;;
    floor-tokio | floor-uring)
        # bench/proxy-floor: the four socket operations a request needs and
        # nothing else, driven by epoll (tokio) or by one io_uring.
        "${prefix[@]}" taskset -c "$proxy_core" "$(floor_bin)" "${1#floor-}" \
            "127.0.0.1:$proxy_port" "127.0.0.1:$upstream_port" >"$tmp/$1.out" 2>&1 &
        ;;
    *)
        echo "run.sh: unknown proxy $1 (BENCH_PROXIES takes direct, haproxy, nginx, ferry, ferry-b, floor-tokio, floor-uring)" >&2
        exit 2
        ;;
    esac
    proxy_pid=$!
    nice_session "$proxy_pid"
}

# Runs wrk on core $load_core against the proxy; $1 = duration, output to $2.
load() {
    local wrk_pid
    "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c"$connections" -d"$1" --latency \
        -H "Host: $host_header" "http://127.0.0.1:$proxy_port/" >"$2" &
    wrk_pid=$!
    pids+=("$wrk_pid")
    nice_session "$wrk_pid"
    wait "$wrk_pid"
}

# Measures $1 in round $2: starts it (unless direct), warms up, runs wrk, reads
# the numbers into the r_* arrays (keyed "name,round"), stops it.
measure() {
    local name="$1" round="$2" key="$1,$2" out="$tmp/$1-$2.txt" pid requests
    local t0 t1 c0 c1 p0=0 p1=0 s0=0 s1=0
    echo
    if [ "$name" = direct ]; then
        # No proxy: wrk straight to the upstream, both on core $load_core.
        proxy_port="$upstream_port"
        pid=""
        threads[$name]=0
        echo "== round $round: direct, wrk -> upstream nginx with no proxy (the ceiling of core $load_core)"
    else
        proxy_port="$(free_port)"
        echo "== round $round: $name on 127.0.0.1:$proxy_port (core $proxy_core)"
        start_proxy "$name"
        pid="$proxy_pid"
        pids+=("$pid")
        if ! wait_ready "http://127.0.0.1:$proxy_port/" "$pid"; then
            cat "$tmp/$name.out" >&2 || true
            exit 1
        fi
        # Threads of the proxy process (all of them pinned to core $proxy_core).
        threads[$name]="$(ls "/proc/$pid/task" | wc -l)"
        echo "running, pid $pid, ${threads[$name]} thread(s)"
    fi
    echo "warm-up $warmup, then measuring $duration"
    load "$warmup" "$tmp/$name-warmup.txt"
    t0="$(date +%s.%N)"
    c0="$(core_ticks "$proxy_core")"
    c1="$(core_ticks "$load_core")"
    [ -z "$pid" ] || { p0="$(proc_ticks all "$pid")"; s0="$(proc_ticks sys "$pid")"; }
    load "$duration" "$out"
    [ -z "$pid" ] || { p1="$(proc_ticks all "$pid")"; s1="$(proc_ticks sys "$pid")"; }
    r_core0[$key]="$(busy_pct "$c0" "$(core_ticks "$proxy_core")")"
    r_core1[$key]="$(busy_pct "$c1" "$(core_ticks "$load_core")")"
    t1="$(date +%s.%N)"
    sed 's/^/    /' "$out"
    requests="$(awk '/ requests in / {print $1}' "$out")"
    if [ -n "$pid" ]; then
        # CPU the proxy used per request: its cost per core, whether or not the
        # proxy was the limit of this run.
        r_cpu_pct[$key]="$(awk -v d="$((p1 - p0))" -v hz="$clk_tck" -v a="$t0" -v b="$t1" \
            'BEGIN { printf "%.0f", 100 * d / hz / (b - a) }')"
        r_cpu_us[$key]="$(awk -v d="$((p1 - p0))" -v hz="$clk_tck" -v n="$requests" \
            'BEGIN { if (n > 0) printf "%.1f", 1e6 * d / hz / n; else print "null" }')"
        r_sys_us[$key]="$(awk -v d="$((s1 - s0))" -v hz="$clk_tck" -v n="$requests" \
            'BEGIN { if (n > 0) printf "%.1f", 1e6 * d / hz / n; else print "null" }')"
        echo "    proxy CPU: ${r_cpu_pct[$key]}% of core $proxy_core, ${r_cpu_us[$key]} us per request (${r_sys_us[$key]} in the kernel)"
        # The proxy had its core when it used most of it, or when the core was
        # not full; otherwise other jobs took part of it and the round says little.
        if [ "${r_cpu_pct[$key]}" -lt 85 ] && [ "${r_core0[$key]}" -ge 95 ]; then
            r_clean[$key]=0
            echo "    other processes took part of core $proxy_core: this round is left out of the medians"
        else
            r_clean[$key]=1
        fi
    else
        r_cpu_pct[$key]=null
        r_cpu_us[$key]=null
        r_sys_us[$key]=null
        r_clean[$key]=1
    fi
    echo "    busy: core $proxy_core ${r_core0[$key]}%, core $load_core ${r_core1[$key]}% (all processes)"
    r_rps[$key]="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    r_p50[$key]="$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")"
    r_p99[$key]="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
    r_non2xx[$key]="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    r_non2xx[$key]="${r_non2xx[$key]:-0}"
    r_sock_err[$key]="$(awk '/Socket errors:/ {
        s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$out")"
    r_sock_err[$key]="${r_sock_err[$key]:-0}"
    if [ -z "${r_rps[$key]}" ] || [ -z "${r_p99[$key]}" ]; then
        echo "run.sh: could not read req/s or p99 from wrk's output for $name" >&2
        exit 1
    fi
    if [ "$round" = "$rounds" ] && profiled "$name"; then
        echo "profiling $name for 5 s (perf record -g)"
        load 8s "$tmp/$name-perf-load.txt" &
        local load_pid=$!
        pids+=("$load_pid")
        sleep 1
        perf record -g -o "$tmp/perf.data" -p "$pid" -- sleep 5 >/dev/null 2>&1
        wait "$load_pid" || true
        bash "$root/bench/perf-report.sh" "$tmp/perf.data" "$name" "$here/$name-profile.txt"
        echo "wrote $here/$name-profile.txt"
    fi
    [ -z "$pid" ] || stop_pid "$pid"
}

# Whether BENCH_PERF asks for a profile of this proxy ("1" means ferry alone).
profiled() {
    local wanted="${BENCH_PERF:-0}"
    [ "$wanted" = 1 ] && wanted=ferry
    [ "$wanted" != 0 ] || return 1
    case " $wanted " in *" $1 "*) return 0 ;; esac
    return 1
}

# The median of the arguments ("null" ones left out).
median() {
    printf '%s\n' "$@" | { grep -v '^null$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print a[(NR + 1) / 2];
              else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# The rounds of proxy $1 that count: those where it had its core, or all of
# them when it never had.
rounds_used() {
    local r out=()
    for r in $(seq "$rounds"); do
        [ "${r_clean[$1,$r]}" = 1 ] && out+=("$r")
    done
    [ "${#out[@]}" -gt 0 ] || mapfile -t out < <(seq "$rounds")
    echo "${out[*]}"
}

# Values of array $1 for proxy $2 over all rounds (or over rounds $3), space separated.
per_round() {
    local -n arr="$1"
    local r out=()
    for r in ${3:-$(seq "$rounds")}; do out+=("${arr[$2,$r]}"); done
    echo "${out[*]}"
}

for round in $(seq "$rounds"); do
    for name in $proxies; do
        measure "$name" "$round"
    done
done
for name in $proxies; do
    used[$name]="$(rounds_used "$name")"
    u="${used[$name]}"
    # shellcheck disable=SC2046 # word splitting of the per-round lists is intended
    {
        rps[$name]="$(median $(per_round r_rps "$name" "$u"))"
        p50[$name]="$(median $(per_round r_p50 "$name" "$u"))"
        p99[$name]="$(median $(per_round r_p99 "$name" "$u"))"
        cpu_pct[$name]="$(median $(per_round r_cpu_pct "$name" "$u"))"
        cpu_us[$name]="$(median $(per_round r_cpu_us "$name" "$u"))"
        sys_us[$name]="$(median $(per_round r_sys_us "$name" "$u"))"
        core0[$name]="$(median $(per_round r_core0 "$name" "$u"))"
        core1[$name]="$(median $(per_round r_core1 "$name" "$u"))"
        non2xx[$name]="$(per_round r_non2xx "$name" | tr ' ' '\n' | awk '{ s += $1 } END { print s + 0 }')"
        sock_err[$name]="$(per_round r_sock_err "$name" | tr ' ' '\n' | awk '{ s += $1 } END { print s + 0 }')"
    }
done

# ratio A B: A / B with 3 decimals, or null when either is missing.
ratio() {
    if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }'
    else
        echo null
    fi
}
rps_ratio="$(ratio "${rps[ferry]:-}" "${rps[haproxy]:-}")"
p99_ratio="$(ratio "${p99[ferry]:-}" "${p99[haproxy]:-}")"
cpu_ratio="$(ratio "${cpu_us[ferry]:-}" "${cpu_us[haproxy]:-}")"
date_utc="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# A JSON array of the per-round values of array $1 for proxy $2.
json_rounds() {
    echo "[$(per_round "$1" "$2" | sed 's/ /, /g')]"
}

{
    echo "{"
    echo "  \"date\": \"$date_utc\","
    echo "  \"machine\": { \"cores\": $cores, \"cpu\": \"$cpu_model\", \"proxy_core\": $proxy_core, \"load_core\": $load_core, \"note\": \"upstream nginx and wrk share core $load_core; other jobs on the machine may run on both cores\" },"
    echo "  \"load\": { \"tool\": \"$wrk_version\", \"threads\": 1, \"connections\": $connections, \"duration\": \"$duration\", \"warmup\": \"$warmup\", \"rounds\": $rounds, \"nice\": $niceness, \"body\": \"hello\\\\n (6 bytes)\" },"
    echo "  \"versions\": { \"haproxy\": \"$haproxy_version\", \"nginx\": \"$nginx_version\", \"ferry\": \"$ferry_version ($ferry_commit)\" },"
    echo "  \"figures\": \"medians over rounds_used (rounds where other processes did not take part of the proxy's core; all rounds if none); *_rounds are the single runs\","
    echo "  \"proxies\": {"
    first=1
    for name in $proxies; do
        [ "$first" = 1 ] || echo ","
        first=0
        echo "    \"$name\": {"
        echo "      \"req_per_s\": ${rps[$name]}, \"p50_ms\": ${p50[$name]}, \"p99_ms\": ${p99[$name]},"
        echo "      \"proxy_cpu_us_per_request\": ${cpu_us[$name]}, \"proxy_kernel_us_per_request\": ${sys_us[$name]}, \"proxy_cpu_percent\": ${cpu_pct[$name]},"
        echo "      \"core${proxy_core}_busy_percent\": ${core0[$name]}, \"core${load_core}_busy_percent\": ${core1[$name]},"
        echo "      \"non_2xx\": ${non2xx[$name]}, \"socket_errors\": ${sock_err[$name]}, \"threads\": ${threads[$name]},"
        echo "      \"rounds_used\": [$(echo "${used[$name]}" | sed 's/ /, /g')],"
        echo "      \"req_per_s_rounds\": $(json_rounds r_rps "$name"),"
        echo "      \"p99_ms_rounds\": $(json_rounds r_p99 "$name"),"
        echo "      \"proxy_cpu_us_per_request_rounds\": $(json_rounds r_cpu_us "$name")"
        printf '    }'
    done
    echo
    echo "  },"
    echo "  \"ferry_vs_haproxy\": { \"req_per_s_ratio\": $rps_ratio, \"p99_ratio\": $p99_ratio, \"cpu_per_request_ratio\": $cpu_ratio, \"goal\": \"req/s ratio >= 1, p99 ratio <= 1\" }"
    echo "}"
} >"$here/results.json"

echo
echo "== results: medians over the rounds used (of $rounds) of $duration, wrk -t1 -c$connections keep-alive"
printf '%-8s %10s %8s %8s %10s %9s %7s %7s %8s %7s %7s\n' proxy req/s p50_ms p99_ms cpu_us/req "(kernel)" \
    "core$proxy_core%" "core$load_core%" non-2xx errors rounds
for name in $proxies; do
    printf '%-8s %10s %8s %8s %10s %9s %7s %7s %8s %7s %7s\n' "$name" "${rps[$name]}" "${p50[$name]}" "${p99[$name]}" \
        "${cpu_us[$name]/null/-}" "${sys_us[$name]/null/-}" "${core0[$name]}" "${core1[$name]}" \
        "${non2xx[$name]}" "${sock_err[$name]}" "$(wc -w <<<"${used[$name]}")/$rounds"
done
cat <<EOF
note: $cores cores. Each proxy is pinned to core $proxy_core with one worker; the upstream nginx
      and wrk SHARE core $load_core, so core $load_core can cap the faster proxies (compare with
      "direct", the load core's ceiling). cpu_us/req is the proxy's own CPU time per
      request, its cost per core whatever the limit; (kernel) is the system-time part
      (tick-sampled, approximate). core% counts every process on the core, other
      jobs on this machine included. A round where other processes took part of
      core $proxy_core (proxy < 85% of it, core >= 95% busy) is left out ("rounds" = used/run).
EOF
echo "wrote $here/results.json"
echo
if [ "$rps_ratio" != null ]; then
    echo "ferry/HAProxy req/s:           $rps_ratio   (goal >= 1)"
    echo "ferry/HAProxy p99:             $p99_ratio   (goal <= 1)"
    echo "ferry/HAProxy CPU per request: $cpu_ratio   (lower is better)"
    if [ -n "${rps[ferry-b]:-}" ]; then
        echo "ferry-b/HAProxy req/s:         $(ratio "${rps[ferry-b]}" "${rps[haproxy]}")"
        echo "ferry-b/HAProxy p99:           $(ratio "${p99[ferry-b]}" "${p99[haproxy]}")"
        echo "ferry-b/HAProxy CPU/request:   $(ratio "${cpu_us[ferry-b]}" "${cpu_us[haproxy]}")"
        echo "ferry/ferry-b CPU per request: $(ratio "${cpu_us[ferry]}" "${cpu_us[ferry-b]}")"
    fi
else
    echo "ferry/HAProxy ratios: not computed (BENCH_PROXIES must include haproxy and ferry)"
fi
