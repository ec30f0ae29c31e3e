#!/usr/bin/env bash
# Loads 3,000,000 generated sites into ferry-router's HostTable and measures load
# time, memory per site, lookup latency and how fast a change becomes visible.
# Writes bench/host-table/results.json and prints a table with the goals.
#
# Usage: bench/host-table/run.sh [extra arguments for the example, e.g. --sites 1000000]
# Honours CARGO_TARGET_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

cargo build --release -p ferry-router --example host_table_load
cargo run --quiet --release -p ferry-router --example host_table_load -- \
    --sites 3000000 --out "$here/results.json" "$@"
