#!/usr/bin/env bash
# Churn check of the predictor bench (issue 20's "p99 no worse than
# HAProxy's" for clients without keep-alive): the --mix setup of run.sh
# (10 % of the sites in maintenance, 5 % on a second router on core 1),
# generated once, then many short rounds alternating the routers, so that
# the p99 of clients sending `Connection: close` is compared over many
# rounds instead of one 10 s run per router.
#
# Per round and router: start the second router (core 1) and the measured
# one (core 0, one thread), wait for the table's last site, warm up with the
# keep-alive wrk, then run the two wrks of run.sh --mix on core 1 (-c50
# keep-alive, -c10 Connection: close, a random site's Host a request) and
# print one line: keep-alive req/s and p99, churn req/s and p50/p90/p99, the
# router's CPU time a request, core 0's busy share and the load average.
# With --accept-queue, the router's listening socket is sampled every
# 10 ms during the run (`ss`, the accept queue: connections the kernel has
# completed and the router has not accepted yet): its largest and mean
# length, and the share of samples with anything waiting. With --trace,
# `perf record` traces the handshakes completed on the router's port and the
# router thread's accept4, writes and closes during the run, and
# churn_trace.py splits each new connection's time into the accept queue
# (established -> accepted) and the answer (accepted -> first write of the
# response), and shows how long each program waited for a core (wake-up or
# preemption to running again); printed after the round's line.
#
# Usage: bench/predictor/churn.sh [--sites N] [--rounds R] [--duration 8s]
#            [--contenders "haproxy ferry"] [--ferry-sites file|api]
#            [--close-hosts all|local|remote|maint|sample] [--accept-queue] [--trace]
#            [--keep DIR]
# --close-hosts: the sites the churn clients ask for (the keep-alive clients
# always ask for all of them): all (as run.sh), or only one kind, to see
# which path the slow churn requests take, or sample (every 100th site:
# the same kinds, but a Lua table of 10,000 names in wrk instead of 1M). --keep DIR: generate into DIR
# and keep it (reused when it exists: DIR/meta.json present).
# Environment: FERRY_BIN (required: the ferry binary to run), BENCH_NICE (as
# run.sh: -10 makes other jobs on a shared machine yield; needs root),
# BENCH_WARMUP (2s).
# Needs: haproxy nginx wrk curl python3 taskset ss (and perf for --trace).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sites=1000000
rounds=5
duration=8s
contenders="haproxy ferry"
ferry_sites=file
close_hosts=all
accept_queue=0
trace=0
keep=""
warmup="${BENCH_WARMUP:-2s}"
niceness="${BENCH_NICE:-0}"
proxy_core=0
load_core=1

while [ $# -gt 0 ]; do
    case "$1" in
    --sites) sites="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --contenders) contenders="$2"; shift 2 ;;
    --ferry-sites) ferry_sites="$2"; shift 2 ;;
    --close-hosts) close_hosts="$2"; shift 2 ;;
    --accept-queue) accept_queue=1; shift ;;
    --trace) trace=1; shift ;;
    --keep) keep="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "churn.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$ferry_sites" in file | api) ;; *) echo "churn.sh: --ferry-sites is file or api" >&2; exit 2 ;; esac
case "$close_hosts" in all | local | remote | maint | sample) ;; *) echo "churn.sh: --close-hosts is all, local, remote, maint or sample" >&2; exit 2 ;; esac
[ -n "${FERRY_BIN:-}" ] && [ -x "$FERRY_BIN" ] || { echo "churn.sh: set FERRY_BIN to a ferry binary" >&2; exit 2; }

PATH="$PATH:/usr/sbin:/sbin"
for tool in haproxy nginx wrk curl python3 taskset ss; do
    command -v "$tool" >/dev/null 2>&1 || { echo "churn.sh: $tool is missing" >&2; exit 2; }
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-churn.XXXXXX")"
chmod 755 "$tmp"
pids=()
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
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$niceness" != 0 ]; then prefix=(setsid nice -n "$niceness"); else prefix=(); fi
nice_session() {
    [ "$niceness" != 0 ] || return 0
    [ -e "/proc/$1/autogroup" ] && echo "$niceness" >"/proc/$1/autogroup" 2>/dev/null || true
}

w="${keep:-$tmp/w}"
if [ ! -e "$w/meta.json" ]; then
    read -r u1 u2 u3 u4 port remote_port admin_port remote_admin_port < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
    echo "== generating $sites sites into $w"
    "$FERRY_BIN" --log-level warn inventory generate --sites "$sites" --out "$tmp/inventory" >/dev/null
    python3 "$here/gen.py" --inventory-sites "$tmp/inventory/sites.csv" --sites "$sites" --out "$w" \
        --upstream-ports "$u1,$u2,$u3,$u4" --port "$port" --remote-port "$remote_port" \
        --admin-port "$admin_port" --remote-admin-port "$remote_admin_port" \
        --ferry-sites "$ferry_sites" --mix
    rm -rf "$tmp/inventory"
    if [ "$ferry_sites" = api ]; then
        python3 "$here/load_sites.py" prepare "$w"
        python3 "$here/load_sites.py" prepare "$w" --remote-router
    fi
    echo "$u1 $u2 $u3 $u4 $port $remote_port $admin_port $remote_admin_port" >"$w/ports"
    # The hosts of each kind, for --close-hosts (gen.py's kind(): i % 20).
    awk -v d="$w" '{ r = (NR - 1) % 20; k = r < 2 ? "maint" : r == 2 ? "remote" : "local"; print > (d "/hosts-" k ".txt") }' "$w/hosts.txt"
fi
# Every 100th site (all three kinds in the same shares): the same router
# table, but wrk's Lua script holds 100 times fewer strings.
[ -e "$w/hosts-sample.txt" ] || awk 'NR % 100 == 1' "$w/hosts.txt" >"$w/hosts-sample.txt"
read -r u1 u2 u3 u4 port remote_port admin_port remote_admin_port <"$w/ports"
meta() { python3 -c "import json,sys; print(json.load(open('$w/meta.json'))[sys.argv[1]])" "$1"; }
late_host="$(meta late_host)"
late_body="$(meta late_body)"
remote_host="$(meta remote_host)"
remote_body="$(meta remote_body)"
close_list="$w/hosts.txt"
[ "$close_hosts" = all ] || close_list="$w/hosts-$close_hosts.txt"

"${prefix[@]}" taskset -c "$load_core" nginx -p "$w" -c "$w/upstream.conf" -e "$w/upstream-error.log" >"$tmp/upstream.out" 2>&1 &
pids+=($!)
nice_session $!
for p in $u1 $u2 $u3 $u4; do
    for i in $(seq 100); do
        curl -s --max-time 1 "http://127.0.0.1:$p/" >/dev/null 2>&1 && break
        [ "$i" = 100 ] && { echo "churn.sh: the upstream nginx did not start" >&2; exit 1; }
        sleep 0.1
    done
done

# Contender $1 on core $2 with config suffix $3 ("" or 2); sets started_pid.
start() {
    case "$1" in
    haproxy) "${prefix[@]}" taskset -c "$2" haproxy -db -f "$w/haproxy$3.cfg" >"$tmp/haproxy$3.out" 2>&1 & ;;
    ferry) "${prefix[@]}" taskset -c "$2" "$FERRY_BIN" --log-level warn proxy --threads 1 --config "$w/ferry$3.toml" \
        >"$tmp/ferry$3.out" 2>&1 & ;;
    *) echo "churn.sh: unknown contender $1" >&2; exit 2 ;;
    esac
    started_pid=$!
    pids+=("$started_pid")
    nice_session "$started_pid"
}
wait_body() {
    local i
    for i in $(seq 3000); do
        kill -0 "$4" 2>/dev/null || return 1
        [ "$(curl -s --max-time 2 -H "Host: $1" "http://127.0.0.1:$2/" 2>/dev/null)" = "$3" ] && return 0
        sleep 0.05
    done
    return 2
}
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
core_ticks() { awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.2f", n }'
}
pct() { to_ms "$(awk -v p="$2" '$1 == p {print $2}' "$1")"; }

printf '%s\n' "# $(date -u +%FT%TZ) sites=$sites ferry_sites=$ferry_sites close_hosts=$close_hosts duration=$duration nice=$niceness ferry=$FERRY_BIN"
printf 'router\tround\tload1\tka_rps\tka_p99_ms\tclose_rps\tclose_p50\tclose_p90\tclose_p99\tclose_max\tcpu_us_req\tcore0_busy\taccq_max\taccq_mean\taccq_nonzero\n'
for round in $(seq "$rounds"); do
    for who in $contenders; do
        start "$who" "$load_core" 2
        pid2=$started_pid
        [ "$who" = ferry ] && [ "$ferry_sites" = api ] &&
            taskset -c "$load_core" python3 "$here/load_sites.py" post "$w" "$remote_admin_port" --remote-router >/dev/null
        wait_body "$remote_host" "$remote_port" "$remote_body" "$pid2" || { echo "churn.sh: second $who did not start" >&2; exit 1; }
        start "$who" "$proxy_core" ""
        pid=$started_pid
        [ "$who" = ferry ] && [ "$ferry_sites" = api ] &&
            taskset -c "$load_core" python3 "$here/load_sites.py" post "$w" "$admin_port" >/dev/null
        wait_body "$late_host" "$port" "$late_body" "$pid" || { echo "churn.sh: $who did not start" >&2; exit 1; }
        PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c50 -d"$warmup" \
            -s "$here/hosts.lua" "http://127.0.0.1:$port/" >/dev/null
        sampler=""
        if [ "$accept_queue" = 1 ]; then
            # Recv-Q of a listening socket is its accept queue.
            (while :; do ss -Htln "sport = :$port" | awk '{ print $2 }'; sleep 0.01; done) >"$tmp/accq" 2>/dev/null &
            sampler=$!
        fi
        tracer=""
        if [ "$trace" = 1 ]; then
            # wrk's run, and the seconds both wrks take to draw their requests first.
            secs=$(awk -v d="$duration" 'BEGIN { printf "%.1f", d + 4 }')
            calls=()
            for e in syscalls:sys_exit_accept4 syscalls:sys_enter_write syscalls:sys_enter_writev \
                syscalls:sys_enter_sendto syscalls:sys_enter_sendmsg syscalls:sys_enter_close; do
                calls+=(-e "$e" --filter "common_pid == $pid")
            done
            perf record -q -a -o "$tmp/trace.data" -e sched:sched_wakeup -e sched:sched_switch -e sock:inet_sock_set_state \
                --filter "sport == $port && newstate == 1" "${calls[@]}" -- sleep "$secs" >/dev/null 2>&1 &
            tracer=$!
            sleep 0.5
        fi
        t0="$(proc_ticks "$pid")"
        rm -f "$tmp/ready-ka" "$tmp/ready-close"
        PRED_READY="$tmp/ready-close" PRED_CLOSE=1 PRED_SEED=2 PRED_HOSTS="$close_list" "${prefix[@]}" taskset -c "$load_core" \
            wrk -t1 -c10 -d"$duration" --latency -s "$here/hosts.lua" "http://127.0.0.1:$port/" >"$tmp/close.txt" &
        wc=$!
        nice_session "$wc"
        PRED_READY="$tmp/ready-ka" PRED_HOSTS="$w/hosts.txt" "${prefix[@]}" taskset -c "$load_core" wrk -t1 -c50 -d"$duration" --latency \
            -s "$here/hosts.lua" "http://127.0.0.1:$port/" >"$tmp/ka.txt" &
        wk=$!
        nice_session "$wk"
        # Core 0's busy share from when both wrks have drawn their requests.
        for i in $(seq 1200); do
            [ ! -e "$tmp/ready-ka" ] || [ ! -e "$tmp/ready-close" ] || break
            sleep 0.05
        done
        c0="$(core_ticks "$proxy_core")"
        wait "$wk" "$wc"
        t1="$(proc_ticks "$pid")"
        c1="$(core_ticks "$proxy_core")"
        [ -z "$sampler" ] || { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
        n=$(($(awk '/ requests in / {print $1}' "$tmp/ka.txt") + $(awk '/ requests in / {print $1}' "$tmp/close.txt")))
        cpu=$(awk -v d="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN { printf "%.1f", 1e6 * d / hz / n }')
        busy=$(awk -v a="$c0" -v b="$c1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }')
        q="- - -"
        [ -z "$sampler" ] || q="$(awk '{ n++; s += $1; if ($1 > m) m = $1; if ($1 > 0) z++ } END { printf "%d %.2f %.3f", m, s / (n ? n : 1), z / (n ? n : 1) }' "$tmp/accq")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$who" "$round" "$(cut -d' ' -f1 /proc/loadavg)" \
            "$(awk '/^Requests\/sec:/ {print $2}' "$tmp/ka.txt")" "$(pct "$tmp/ka.txt" 99%)" \
            "$(awk '/^Requests\/sec:/ {print $2}' "$tmp/close.txt")" "$(pct "$tmp/close.txt" 50%)" \
            "$(pct "$tmp/close.txt" 90%)" "$(pct "$tmp/close.txt" 99%)" \
            "$(to_ms "$(awk '$1 == "Latency" {print $4; exit}' "$tmp/close.txt")")" "$cpu" "$busy" "$(echo "$q" | tr ' ' '\t')"
        if [ -n "$tracer" ]; then
            wait "$tracer" || true
            perf script -i "$tmp/trace.data" >"$tmp/trace.txt" 2>/dev/null
            python3 "$here/churn_trace.py" "$tmp/trace.txt" --label "  $who $round" || true
            [ -z "$keep" ] || mv "$tmp/trace.txt" "$keep/trace-$who-$round.txt"
        fi
        stop_pid "$pid"
        stop_pid "$pid2"
    done
done
