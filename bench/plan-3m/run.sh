#!/usr/bin/env bash
# Generates a synthetic inventory of 3,000,000 sites, plans it with the default
# constraints, and reports generate time, plan time (load, graph, units, the
# constraint-cost alternatives, waves, plan.json) and peak memory of each.
# Writes bench/plan-3m/results.json and prints the figures last.
#
# Goals (issue 4): generate < 20 s; plan < 10 s with < 2 GB peak memory.
#
# Also reports the plan itself: units, nights, and when the last night's last
# freeze ends after its window opens (issue 18).
#
# Usage: bench/plan-3m/run.sh [--sites N] [--seed S] [--keep] [--ferry PATH] [-- PLAN FLAGS]
#   --keep        keep the generated inventory and plan.json (in $WORK, printed)
#   --ferry PATH  use this ferry binary instead of building the release one
#   -- FLAGS      passed on to `ferry plan` (e.g. -- --precopy-overhead 1300ms
#                 --precopy-per-file 160.0us); recorded in results.json
# Honours CARGO_TARGET_DIR. Needs GNU time (/usr/bin/time); installs Debian's
# `time` package when missing and running as root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

sites=3000000
seed=1
keep=0
ferry=""
plan_flags=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sites) sites="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --ferry) ferry="$2"; shift 2 ;;
        --) shift; plan_flags=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing GNU time"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
    else
        echo "GNU time is missing: sudo apt-get install time" >&2
        exit 2
    fi
fi

if [ -z "$ferry" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
    cargo build --release -p ferry
    ferry="$CARGO_TARGET_DIR/release/ferry"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-plan-3m.XXXXXX")"
if [ "$keep" -eq 0 ]; then
    trap 'rm -rf "$WORK"' EXIT
fi

# Runs a command under GNU time; prints "seconds max_rss_kib" on stdout.
measure() {
    local log="$1"; shift
    local rc=0
    /usr/bin/time -v -o "$log.time" "$@" >"$log.out" 2>"$log.err" || rc=$?
    local wall rss
    wall="$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log.time")"
    rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.time")"
    # h:mm:ss or m:ss.ss -> seconds
    wall="$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')"
    echo "$wall $rss $rc"
}

echo "generating $sites sites (seed $seed) into $WORK/inventory"
read -r gen_s gen_rss gen_rc < <(measure "$WORK/generate" "$ferry" inventory generate \
    --sites "$sites" --seed "$seed" --out "$WORK/inventory")
if [ "$gen_rc" -ne 0 ]; then
    cat "$WORK/generate.err" >&2
    exit 1
fi
cat "$WORK/generate.out"
inv_bytes="$(du -sb "$WORK/inventory" | cut -f1)"

echo "planning"
read -r plan_s plan_rss plan_rc < <(measure "$WORK/plan" "$ferry" --log-level debug --log-format json plan \
    --inventory "$WORK/inventory" --out "$WORK/plan.json" ${plan_flags[@]+"${plan_flags[@]}"})
# Exit 1 with a written plan means "incomplete" (impossible units): still a run.
if [ "$plan_rc" -ne 0 ] && [ "$plan_rc" -ne 1 ] || [ ! -s "$WORK/plan.json" ]; then
    cat "$WORK/plan.err" >&2
    exit 1
fi
cat "$WORK/plan.out"
stages="$(grep -o '"load_s":[0-9.e-]*,"plan_s":[0-9.e-]*,"write_s":[0-9.e-]*' "$WORK/plan.err" | tail -1 || true)"
field() { echo "$stages" | grep -o "\"$1\":[0-9.e-]*" | cut -d: -f2 | awk '{ printf "%.2f", $1 }'; }
load_s="$(field load_s)"
compute_s="$(field plan_s)"
write_s="$(field write_s)"
plan_bytes="$(stat -c %s "$WORK/plan.json")"
# From the "summary" object, near the top of plan.json.
summary="$(head -c 100000 "$WORK/plan.json" | grep -o '"summary":{[^}]*}' || true)"
units="$(echo "$summary" | grep -o '"units":[0-9]\+' | cut -d: -f2 || true)"
nights="$(echo "$summary" | grep -o '"nights":[0-9]\+' | cut -d: -f2 || true)"
impossible="$(echo "$summary" | grep -o '"impossible_units":[0-9]\+' | cut -d: -f2 || true)"
# The nights list comes before the units: when each night's last freeze ends.
busy="$(head -c 20000000 "$WORK/plan.json" | grep -o '"busy_s":[0-9.e+-]*' | cut -d: -f2 || true)"
last_busy="$(echo "$busy" | tail -1)"
max_busy="$(echo "$busy" | sort -g | tail -1)"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
cat >"$here/results.json" <<JSON
{
  "benchmark": "plan-3m",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "machine": {"cpus": $(nproc), "cpu": "$cpu", "load_average_before": "$(cut -d' ' -f1-3 /proc/loadavg)"},
  "sites": $sites,
  "seed": $seed,
  "plan_flags": "${plan_flags[*]+${plan_flags[*]}}",
  "inventory_bytes": $inv_bytes,
  "generate": {"seconds": $gen_s, "max_rss_kib": $gen_rss, "goal_seconds": 20},
  "plan": {
    "seconds": $plan_s,
    "max_rss_kib": $plan_rss,
    "load_seconds": ${load_s:-null},
    "compute_seconds": ${compute_s:-null},
    "write_seconds": ${write_s:-null},
    "exit_code": $plan_rc,
    "units": ${units:-null},
    "nights": ${nights:-null},
    "impossible_units": ${impossible:-null},
    "last_night_busy_s": ${last_busy:-null},
    "longest_night_busy_s": ${max_busy:-null},
    "plan_json_bytes": $plan_bytes,
    "goal_seconds": 10,
    "goal_max_rss_kib": 2097152
  }
}
JSON

if [ "$keep" -eq 1 ]; then
    echo "kept: $WORK"
fi
verdict() { awk -v v="$1" -v g="$2" 'BEGIN { print (v < g) ? "ok" : "MISSED" }'; }
echo
echo "== plan-3m figures ($sites sites${plan_flags[*]+, ferry plan ${plan_flags[*]}}; results in bench/plan-3m/results.json)"
printf '  %-34s %10s   goal < %-8s %s\n' "generate" "${gen_s} s" "20 s" "$(verdict "$gen_s" 20)"
printf '  %-34s %10s   goal < %-8s %s\n' "plan (load+units+waves+write)" "${plan_s} s" "10 s" "$(verdict "$plan_s" 10)"
printf '  %-34s %10s\n' "  of which load" "${load_s:-?} s"
printf '  %-34s %10s\n' "  of which units, costs, waves" "${compute_s:-?} s"
printf '  %-34s %10s\n' "  of which plan.json" "${write_s:-?} s"
printf '  %-34s %10s   goal < %-8s %s\n' "plan peak memory" "$((plan_rss / 1024)) MiB" "2048 MiB" "$(verdict "$plan_rss" 2097152)"
printf '  %-34s %10s\n' "generate peak memory" "$((gen_rss / 1024)) MiB"
printf '  %-34s %10s\n' "units" "${units:-?}"
printf '  %-34s %10s\n' "nights" "${nights:-?}"
printf '  %-34s %10s\n' "last night's freezes end after" "${last_busy:-?} s"
printf '  %-34s %10s\n' "longest night's freezes end after" "${max_busy:-?} s"
