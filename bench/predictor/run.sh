#!/usr/bin/env bash
# The predictor bench (issue 20): one router in front of N sites (default
# 1,000,000, the names of `ferry inventory generate`) spread over 50 pools,
# routed by Host. HAProxy (a map file and use_backend %[req.hdr(host),lower,map(...)]),
# nginx (a `map $host $pool` block) and `ferry proxy` (the site table), each on
# one thread pinned to core 0; the upstream nginx (4 ports standing in for the
# 50 pools' servers) and wrk (-t1 -c50, a random site's Host per request) share
# core 1.
#
# For each contender and round: start-up time with the table (process start to
# the first correct answer for the last site of the table), resident memory
# (VmRSS / VmHWM / Pss after start and after the load), req/s and p99, the router's
# CPU time per request (utime + stime over the run / requests). Once per
# contender (round 1): the time one site's change takes to be seen by a client
# (change.py: ferry's PUT /v1/sites/{host}, HAProxy's `set map` on its runtime
# API, nginx's map file + reload). Rounds alternate the contenders; figures are
# medians over the rounds. results.json (or results-mix.json) gets everything,
# with ratios ferry/haproxy and ferry/nginx.
#
# --mix: 10 % of the sites are in maintenance (ferry: state maintenance;
# HAProxy: a backend answering 503 with http-request return; nginx: return 503),
# 5 % are placed on a second router (a second instance of the same contender on
# core 1, holding those sites), and a second wrk (-c10, "Connection: close":
# clients without keep-alive) runs beside the keep-alive one.
#
# How ferry gets its sites (--ferry-sites): api (default; the config has no
# sites, load_sites.py posts them to POST /v1/sites in batches of 100,000 right
# after the start, kept in memory), api-store (the same, persisted in an empty
# SQLite store), store (a pre-filled SQLite store read at start), config
# ([[site]] entries in proxy.toml), file ([router] sites_file: one
# `host placement [state]` a line, loaded before the listeners open, as
# HAProxy's map file). The start-up time includes the load.
#
# Usage: bench/predictor/run.sh [--sites N] [--mix] [--rounds R] [--duration 10s]
#            [--contenders "haproxy nginx ferry"] [--ferry-sites api|api-store|store|config|file]
#            [--changes N]
# Environment: FERRY_BIN (use this binary, no build), CARGO_TARGET_DIR (honoured
# when building), BENCH_WARMUP (3s), NGINX_START_MAX (120: seconds nginx may take
# to start with the map before it is given up), BENCH_NICE (0; as in
# bench/proxy-vs-haproxy: non-zero runs everything the bench starts in its own
# session with that niceness on its autogroup too; -10 makes other jobs on a
# shared machine yield to the bench. Needs root).
# BENCH_PERF="ferry haproxy": profile those routers in the last round under the
# same load (perf record -g, 5 s) into NAME-profile.txt here; needs perf.
# Needs: haproxy nginx wrk curl python3 taskset.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sites=1000000
mix=0
rounds=3
duration=10s
contenders="haproxy nginx ferry"
ferry_sites=api
changes=10
warmup="${BENCH_WARMUP:-3s}"
nginx_start_max="${NGINX_START_MAX:-120}"
niceness="${BENCH_NICE:-0}"
router_start_max=300
proxy_core=0
load_core=1
connections=50
close_connections=10

while [ $# -gt 0 ]; do
    case "$1" in
    --sites) sites="$2"; shift 2 ;;
    --mix) mix=1; shift ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --contenders) contenders="$2"; shift 2 ;;
    --ferry-sites) ferry_sites="$2"; shift 2 ;;
    --changes) changes="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

PATH="$PATH:/usr/sbin:/sbin"
for tool in haproxy nginx wrk curl python3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: $tool is missing" >&2; exit 2; }
done
if [ -n "${BENCH_PERF:-}" ] && ! command -v perf >/dev/null 2>&1; then
    echo "run.sh: BENCH_PERF needs perf (Debian: apt-get install -y linux-perf)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-predictor.XXXXXX")"
chmod 755 "$tmp"  # nginx workers drop to an unprivileged user when started as root
pids=()

descendants() {
    local c
    for c in $(pgrep -P "$1" || true); do
        echo "$c"
        descendants "$c"
    done
}

# TERM, up to 5 s, then KILL; leftover descendants (nginx workers) by id.
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

# N distinct loopback ports free right now (bound together to port 0, then
# released; a race with other programs is possible but would fail loudly).
free_ports() {
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Prefix of every process the bench starts, before `taskset -c CORE` (setsid,
# nice and taskset all exec what they run, so `$!` is the process itself).
if [ "$niceness" != 0 ]; then
    prefix=(setsid nice -n "$niceness")
else
    prefix=()
fi
nice_session() {
    [ "$niceness" != 0 ] || return 0
    if [ -e "/proc/$1/autogroup" ] && ! echo "$niceness" >"/proc/$1/autogroup" 2>/dev/null; then
        echo "run.sh: could not set the autogroup niceness of $1 (BENCH_NICE needs root)" >&2
    fi
}

if [ -n "${FERRY_BIN:-}" ]; then
    ferry_bin="$FERRY_BIN"
else
    echo "== building ferry (release)"
    (cd "$root" && cargo build --release -p ferry)
    ferry_bin="${CARGO_TARGET_DIR:-$root/target}/release/ferry"
fi
[ -x "$ferry_bin" ] || { echo "run.sh: $ferry_bin is not an executable" >&2; exit 1; }

first_line() { { "$@" 2>&1 || true; } | head -n1 || true; }
ferry_commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "${FERRY_BIN:-}" ]; then ferry_commit="FERRY_BIN, tree at $ferry_commit"; fi
versions="haproxy=$(first_line haproxy -v | awk '{print $3}') nginx=$(first_line nginx -v | sed 's|.*/||') ferry=$("$ferry_bin" --version | awk '{print $2}')($ferry_commit)"
echo "versions: $versions"
echo "machine: $(nproc --all) cores; router on core $proxy_core; upstream nginx, wrk (and the second router with --mix) on core $load_core; nice $niceness"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

read -r u1 u2 u3 u4 port remote_port admin_port remote_admin_port < <(free_ports 8)
upstream_ports="$u1,$u2,$u3,$u4"

echo "== generating $sites sites (ferry inventory generate, seed 1) and the configs"
t_gen=$(date +%s.%N)
"$ferry_bin" --log-level warn inventory generate --sites "$sites" --out "$tmp/inventory" >/dev/null
mix_flag=()
[ "$mix" = 1 ] && mix_flag=(--mix)
python3 "$here/gen.py" --inventory-sites "$tmp/inventory/sites.csv" --sites "$sites" --out "$tmp/w" \
    --upstream-ports "$upstream_ports" --port "$port" --remote-port "$remote_port" \
    --admin-port "$admin_port" --remote-admin-port "$remote_admin_port" \
    --ferry-sites "$ferry_sites" "${mix_flag[@]}"
rm -rf "$tmp/inventory"
w="$tmp/w"
case "$ferry_sites" in
api | api-store)
    python3 "$here/load_sites.py" prepare "$w"
    [ "$mix" = 1 ] && python3 "$here/load_sites.py" prepare "$w" --remote-router
    ;;
esac
echo "   done in $(awk -v a="$t_gen" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
meta() { python3 -c "import json,sys; print(json.load(open('$w/meta.json'))[sys.argv[1]])" "$1"; }
late_host="$(meta late_host)"
late_body="$(meta late_body)"

"${prefix[@]}" taskset -c "$load_core" nginx -p "$w" -c "$w/upstream.conf" -e "$w/upstream-error.log" >"$w/upstream.out" 2>&1 &
upstream_pid=$!
pids+=("$upstream_pid")
nice_session "$upstream_pid"
for p in ${upstream_ports//,/ }; do
    for i in $(seq 100); do
        curl -s --max-time 1 "http://127.0.0.1:$p/" >/dev/null 2>&1 && break
        [ "$i" = 100 ] && { echo "run.sh: the upstream nginx did not start" >&2; cat "$w/upstream.out" >&2; exit 1; }
        sleep 0.1
    done
done

clk_tck="$(getconf CLK_TCK)"
proc_ticks() {
    local p t=0
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$t"
}
core_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print 0 }'
}
# VmRSS, VmHWM and Pss in kB of process $1 plus its children (nginx: master +
# workers, which share the map's pages after fork: their RSS counts them twice,
# Pss once).
mem_kb() {
    local p rss=0 hwm=0 pss=0 r h s
    for p in "$1" $(pgrep -P "$1" || true); do
        r="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)"
        h="$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)"
        s="$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)"
        rss=$((rss + ${r:-0}))
        hwm=$((hwm + ${h:-0}))
        pss=$((pss + ${s:-0}))
    done
    echo "$rss $hwm $pss"
}
to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

# Polls Host $1 on port $2 until the body is $3; pid $4 must stay alive; max $5 s.
wait_body() {
    local deadline
    deadline=$(($(date +%s) + $5))
    while :; do
        kill -0 "$4" 2>/dev/null || return 1
        [ "$(curl -s --max-time 2 -H "Host: $1" "http://127.0.0.1:$2/" 2>/dev/null)" = "$3" ] && return 0
        [ "$(date +%s)" -lt "$deadline" ] || return 2
        sleep 0.02
    done
}

# Waits until file $1 exists (a readiness signal written by hosts.lua) while
# process $2 runs; gives up after 60 s.
wait_file() {
    local i
    for i in $(seq 1200); do
        [ ! -e "$1" ] || return 0
        kill -0 "$2" 2>/dev/null || { echo "run.sh: wrk ended before it was ready ($1)" >&2; exit 1; }
        sleep 0.05
    done
    echo "run.sh: wrk was not ready within 60 s ($1)" >&2
    exit 1
}

# Starts contender $1 on core $2, listening on its port $3 (its config: $4 =
# "" for the main router, "2" for the second one). Sets started_pid.
start() {
    local who="$1" core="$2" n="$4"
    case "$who" in
    haproxy) "${prefix[@]}" taskset -c "$core" haproxy -db -f "$w/haproxy$n.cfg" >"$w/haproxy$n.out" 2>&1 & ;;
    nginx) "${prefix[@]}" taskset -c "$core" nginx -p "$w" -c "$w/nginx$n.conf" -e "$w/nginx$n-error.log" >"$w/nginx$n.out" 2>&1 & ;;
    ferry) "${prefix[@]}" taskset -c "$core" "$ferry_bin" --log-level warn proxy --threads 1 --config "$w/ferry$n.toml" \
        >"$w/ferry$n.out" 2>&1 & ;;
    esac
    started_pid=$!
    pids+=("$started_pid")
    nice_session "$started_pid"
    # A store file is the router's state: every start begins from the generated one.
}

results_tsv="$tmp/rounds.tsv"
: >"$results_tsv"
declare -A skip

# One round of contender $1 ($2 = round number).
measure() {
    local who="$1" round="$2" pid pid2="" t0 t1 startup ticks0 ticks1 c0 c1 out="$w/$1-$2.txt"
    local out_close="$w/$1-$2-close.txt" mem_start mem_end loader="" wrk_close="" rc=0 max
    echo
    echo "== round $round: $who on 127.0.0.1:$port (core $proxy_core); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$who" = ferry ] && [ "$ferry_sites" = api-store ]; then
        rm -f "$w/ferry.db" "$w/ferry.db-wal" "$w/ferry.db-shm" "$w/ferry2.db" "$w/ferry2.db-wal" "$w/ferry2.db-shm"
    fi
    if [ "$mix" = 1 ]; then
        # The second router (the remote datacenter), on the load core; not measured.
        start "$who" "$load_core" "$remote_port" 2
        pid2="$started_pid"
        if [ "$who" = ferry ] && [[ "$ferry_sites" == api* ]]; then
            "${prefix[@]}" taskset -c "$load_core" python3 "$here/load_sites.py" post "$w" "$remote_admin_port" --remote-router >/dev/null
        fi
        if ! wait_body "$(meta remote_host)" "$remote_port" "$(meta remote_body)" "$pid2" "$router_start_max"; then
            echo "run.sh: the second $who did not answer for $(meta remote_host)" >&2
            cat "$w/$who"2.out >&2 || true
            exit 1
        fi
    fi
    max="$router_start_max"
    [ "$who" = nginx ] && max="$nginx_start_max"
    t0="$(date +%s.%N)"
    start "$who" "$proxy_core" "$port" ""
    pid="$started_pid"
    if [ "$who" = ferry ] && [[ "$ferry_sites" == api* ]]; then
        # The operator's load: batches posted as soon as the admin API listens.
        "${prefix[@]}" taskset -c "$load_core" python3 "$here/load_sites.py" post "$w" "$admin_port" >"$w/loader.out" 2>&1 &
        loader=$!
        pids+=("$loader")
        nice_session "$loader"
    fi
    wait_body "$late_host" "$port" "$late_body" "$pid" "$max" || rc=$?
    t1="$(date +%s.%N)"
    if [ "$rc" != 0 ]; then
        if [ "$who" = nginx ] && [ "$rc" = 2 ]; then
            echo "   nginx did not answer within $max s with the map of $sites hosts: left out"
            skip[nginx]=1
            printf '%s\t%s\tstart_failed\n' "$who" "$round" >>"$results_tsv"
            stop_pid "$pid"
            [ -z "$pid2" ] || stop_pid "$pid2"
            return 0
        fi
        echo "run.sh: $who did not start (see below)" >&2
        cat "$w/$who.out" "$w/loader.out" "$w/nginx-error.log" 2>/dev/null | tail -20 >&2 || true
        exit 1
    fi
    [ -z "$loader" ] || wait "$loader"
    startup="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
    mem_start="$(mem_kb "$pid")"
    echo "   start-up with the table: $startup s; memory after start (VmRSS VmHWM Pss kB): $mem_start"
    if [ "$mix" = 1 ]; then
        echo "   maintenance site answers: $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $(meta maint_host)" "http://127.0.0.1:$port/")," \
            "remote site: $(curl -s -H "Host: $(meta remote_host)" "http://127.0.0.1:$port/")"
    fi
    if [ "$round" = 1 ] && [ "$changes" -gt 0 ]; then
        local n="$changes"
        # An nginx change is a reload of the whole map: fewer of them.
        [ "$who" = nginx ] && n=$(((changes + 2) / 3))
        python3 "$here/change.py" "$who" "$w" "$port" --admin-port "$admin_port" --nginx-pid "$pid" \
            --count "$n" >"$tmp/change-$who.json"
        echo "   change of one site: $(cat "$tmp/change-$who.json")"
        if [ "$who" = nginx ]; then
            # Reloads started new workers: wait until the old ones are gone.
            sleep 2
        fi
    fi
    PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c"$connections" -d"$warmup" \
        -s "$here/hosts.lua" "http://127.0.0.1:$port/" >/dev/null
    # The router's CPU time counts from before wrk starts (it is idle while
    # wrk draws its requests); busy cores and the router's share of core 0
    # from when the draws are made (hosts.lua creates the PRED_READY file).
    ticks0="$(proc_ticks "$pid")"
    local ready="$tmp/ready-$who-$round" ticks_ready
    rm -f "$ready" "$ready-close"
    if [ "$mix" = 1 ]; then
        PRED_READY="$ready-close" PRED_CLOSE=1 PRED_SEED=2 PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" \
            wrk -t1 -c"$close_connections" -d"$duration" --latency -s "$here/hosts.lua" "http://127.0.0.1:$port/" >"$out_close" &
        wrk_close=$!
        pids+=("$wrk_close")
        nice_session "$wrk_close"
    fi
    PRED_READY="$ready" PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c"$connections" -d"$duration" --latency \
        -s "$here/hosts.lua" "http://127.0.0.1:$port/" >"$out" &
    local wrk_main=$!
    pids+=("$wrk_main")
    nice_session "$wrk_main"
    wait_file "$ready" "$wrk_main"
    [ -z "$wrk_close" ] || wait_file "$ready-close" "$wrk_close"
    c0="$(core_ticks "$proxy_core")"
    c1="$(core_ticks "$load_core")"
    ticks_ready="$(proc_ticks "$pid")"
    t0="$(date +%s.%N)"
    wait "$wrk_main"
    [ -z "$wrk_close" ] || wait "$wrk_close"
    t1="$(date +%s.%N)"
    ticks1="$(proc_ticks "$pid")"
    local b0 b1
    b0="$(busy_pct "$c0" "$(core_ticks "$proxy_core")")"
    b1="$(busy_pct "$c1" "$(core_ticks "$load_core")")"
    mem_end="$(mem_kb "$pid")"
    sed 's/^/    /' "$out"
    [ -z "$wrk_close" ] || { echo "    -- clients without keep-alive (Connection: close, -c$close_connections):"; sed 's/^/    /' "$out_close"; }
    local req rps p99 non2xx errs req_c=0 rps_c=0 p99_c=null non2xx_c=0 errs_c=0
    req="$(awk '/ requests in / {print $1}' "$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p99="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    errs="$(awk '/Socket errors:/ { s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$out")"
    if [ -n "$wrk_close" ]; then
        req_c="$(awk '/ requests in / {print $1}' "$out_close")"
        rps_c="$(awk '/^Requests\/sec:/ {print $2}' "$out_close")"
        p99_c="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out_close")")"
        non2xx_c="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out_close")"
        errs_c="$(awk '/Socket errors:/ { s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$out_close")"
    fi
    local cpu_us cpu_pct
    cpu_us="$(awk -v d="$((ticks1 - ticks0))" -v hz="$clk_tck" -v n="$((req + req_c))" \
        'BEGIN { if (n > 0) printf "%.1f", 1e6 * d / hz / n; else print "null" }')"
    cpu_pct="$(awk -v d="$((ticks1 - ticks_ready))" -v hz="$clk_tck" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.0f", 100 * d / hz / (b - a) }')"
    echo "   router CPU: $cpu_pct% of core $proxy_core, $cpu_us us per request; busy: core $proxy_core $b0%, core $load_core $b1%;" \
        "memory after the run (VmRSS VmHWM Pss kB): $mem_end; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$who" "$round" "$startup" $mem_start $mem_end "$rps" "$p99" "${non2xx:-0}" "${errs:-0}" \
        "$rps_c" "$p99_c" "${non2xx_c:-0}" "${errs_c:-0}" "$cpu_us" "$cpu_pct" "$b0" "$b1" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$((req + req_c))" >>"$results_tsv"
    if [ "$round" = "$rounds" ] && case " ${BENCH_PERF:-} " in *" $who "*) true ;; *) false ;; esac; then
        echo "   profiling $who for 5 s under the same load (perf record -g)"
        PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c"$connections" -d8s \
            -s "$here/hosts.lua" "http://127.0.0.1:$port/" >/dev/null &
        local wrk_perf=$!
        pids+=("$wrk_perf")
        nice_session "$wrk_perf"
        sleep 1
        perf record -g -o "$tmp/perf.data" -p "$pid" -- sleep 5 >/dev/null 2>&1
        wait "$wrk_perf" || true
        bash "$root/bench/perf-report.sh" "$tmp/perf.data" "$who" "$here/$who-profile.txt"
        echo "   wrote $here/$who-profile.txt"
    fi
    stop_pid "$pid"
    [ -z "$pid2" ] || stop_pid "$pid2"
}

for round in $(seq "$rounds"); do
    for who in $contenders; do
        [ -z "${skip[$who]:-}" ] || continue
        measure "$who" "$round"
    done
done

name=results
[ "$mix" = 1 ] && name=results-mix
[ "$sites" = 1000000 ] || name="$name-$sites"
[ "$ferry_sites" = api ] || name="$name-$ferry_sites"
[ "$contenders" = "haproxy nginx ferry" ] || name="$name-${contenders// /-}"
python3 "$here/summarize.py" "$results_tsv" "$tmp" "$here/$name.json" \
    --sites "$sites" --mix "$mix" --rounds "$rounds" --duration "$duration" --warmup "$warmup" \
    --ferry-sites "$ferry_sites" --versions "$versions" --connections "$connections" \
    --close-connections "$close_connections" --nice "$niceness"
