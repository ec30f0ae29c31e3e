#!/usr/bin/env bash
# Replays every attack of the abuse suite against the release build of ferry,
# bounded in count and time, on loopback only, and prints the table:
# attack, what the attacker got, the target's RSS after, normal requests served.
# Usage: bash bench/abuse/run.sh [test name filter]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
out="bench/abuse/results.txt"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
cargo build --release -p ferry --bins
FERRY_ABUSE_REPORT="$report" cargo test --release -p ferry --test abuse -- --test-threads 1 "$@"
{
  echo "# abuse suite, release build, $(date -u +%Y-%m-%d)"
  printf '%s\t%s\t%s\t%s\n' attack result rss served
  sort "$report"
} | column -t -s $'\t' | tee "$out"
