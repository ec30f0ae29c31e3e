#!/usr/bin/env bash
# The control plane on etcd (issue 17): a 3-member etcd and ROUTERS routers
# (child processes) on loopback, measured by the ignored test
# crates/ferry-proxy/tests/etcd_measure.rs:
#   space  etcd's dbSize / dbSizeInUse per site after compaction + defrag,
#          and the keys' and values' own bytes per site
#   load   each router's start on SITES sites (snapshot + table)
#   write  another client's write of one site until EVERY router answers
#          with it, p50/p99 over WRITES writes
#   flip   a UNIT-site unit flipped as ferry migrate's flip writes it (admin
#          batches of 50,000, the destination's routers first), until every
#          router serves the new placement; then the same write by one etcd
#          client alone (128 and 1,024 records a transaction)
# Goals (issue 17): load < 10 s for 3M sites, write visible at every router
# < 50 ms p99, < 300 B per site in etcd.
#   bash bench/control-plane/run.sh                 # 3,000,000 sites
#   SITES=1000000 bash bench/control-plane/run.sh
# Needs etcd (Debian's etcd-server) and protoc (protobuf-compiler) to build
# the etcd feature. Bounded by TIMEOUT seconds (default 1800) for the run.
# TEST_BIN=path runs a test binary built before (cargo test --release -p
# ferry-proxy --features etcd --test etcd_measure --no-run) instead of cargo.
# Results: bench/control-plane/$RESULTS.txt (the machine, its load before and
# after, one line per measure) and $RESULTS.jsonl (one JSON line per measure);
# RESULTS defaults to "results". IDLE (30) seconds without writes after the
# routers started count the watches lost meanwhile; LEASE_TTL (10s) is the
# routers' lease. etcd's own flags can be set as ETCD_* variables (e.g.
# ETCD_GRPC_KEEPALIVE_MIN_TIME=1s), which its members inherit.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITES="${SITES:-3000000}"
ROUTERS="${ROUTERS:-4}"
WRITES="${WRITES:-200}"
UNIT="${UNIT:-100000}"
TIMEOUT="${TIMEOUT:-1800}"
IDLE="${IDLE:-30}"
LEASE_TTL="${LEASE_TTL:-10s}"
RESULTS="${RESULTS:-results}"
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)" >&2; exit 2; }
command -v protoc >/dev/null || { echo "needs protoc (apt-get install protobuf-compiler)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
out=bench/control-plane
test=(cargo test --release -p ferry-proxy --features etcd --test etcd_measure)
if [ -n "${TEST_BIN:-}" ]; then
  # A test binary built before (cargo test ... --no-run), when the shared
  # target directory is busy with other builds.
  test=("$TEST_BIN")
  sep=()
else
  sep=(--)
  "${test[@]}" --no-run
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(etcd --version | head -1)"
  echo "sites $SITES, routers $ROUTERS, writes $WRITES, unit $UNIT, idle $IDLE s, lease_ttl $LEASE_TTL"
  env | grep '^ETCD_' | sed 's/^/etcd setting: /' || true
  [ -z "${TEST_BIN:-}" ] || echo "test binary: $TEST_BIN (built before)"
  echo "load average before: $(load)"
} | tee "$out/$RESULTS.txt"
log="$(mktemp)"
status=0
trap 'rm -f "$log"' EXIT
FERRY_BENCH_SITES="$SITES" FERRY_BENCH_ROUTERS="$ROUTERS" FERRY_BENCH_WRITES="$WRITES" \
  FERRY_BENCH_UNIT="$UNIT" FERRY_BENCH_IDLE_S="$IDLE" FERRY_BENCH_LEASE_TTL="$LEASE_TTL" timeout "$TIMEOUT" \
  "${test[@]}" "${sep[@]}" --ignored --nocapture --exact measure_control_plane 2>&1 | tee "$log" \
  || status=$?
grep -v '^{' "$log" | grep -E '^(write|space|load|idle|flip)' >> "$out/$RESULTS.txt" || true
grep '^{"' "$log" > "$out/$RESULTS.jsonl" || true
echo "load average after: $(load)" | tee -a "$out/$RESULTS.txt"
[ "$status" = 0 ] || echo "the measurement failed (exit $status)" >&2
exit "$status"
