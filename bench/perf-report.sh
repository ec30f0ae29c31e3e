#!/usr/bin/env bash
# Writes the flat profile and the split by object of a `perf record -g` file,
# as the benches keep them beside their run.sh (NAME-profile.txt).
# Usage: bench/perf-report.sh PERF_DATA NAME OUT_FILE
set -euo pipefail
data="$1" name="$2" out="$3"
{
    echo "# perf record -g -p <$name> for 5 s under the bench load; flat profile, then by object"
    perf report -i "$data" --no-children --stdio -g none --percent-limit 0.3 2>/dev/null |
        grep -v '^#' | grep -v '^$' | sed 's/ *$//' | head -n 100 || true
    echo
    perf report -i "$data" --no-children --stdio -g none --sort dso 2>/dev/null |
        grep -v '^#' | grep -v '^$' | sed 's/ *$//' || true
} >"$out"
