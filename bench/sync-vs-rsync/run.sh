#!/usr/bin/env bash
# ferry sync vs rsync, side by side, both over loopback TCP:
#   rsync in daemon mode (rsync://127.0.0.1) vs ferry agent (ferry://127.0.0.1).
# Cases: (a) N small files of 1-8 KiB (default 200,000): first copy, unchanged
# pass, pass after 1% of the files changed, verify (ferry --verify vs rsync -c
# dry run); (b) a block image (default 1 GiB) with 1% of its blocks changed.
# Results go to bench/sync-vs-rsync/results.txt; ratios are printed last.
#   N=20000 IMG_MB=256 bash bench/sync-vs-rsync/run.sh     # a quicker run
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-200000}"
IMG_MB="${IMG_MB:-1024}"
command -v rsync >/dev/null || { echo "needs rsync (apt-get install rsync)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
cargo build --release -p ferry >/dev/null
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$(mktemp -d)"
RSPORT=$((20000 + RANDOM % 10000)); FPORT=$((RSPORT + 1))
cleanup() { kill "${RSPID:-}" "${FPID:-}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/src" "$W/rs" "$W/fe" "$W/img"

echo "generating $N small files..."
python3 - "$W/src" "$N" <<'PY'
import os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}", f"s{(i // 100) % 10}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.php"), "wb") as f:
        f.write(r.randbytes(r.randint(1024, 8192)))
PY
head -c $((IMG_MB * 1024 * 1024)) /dev/urandom > "$W/img/disk.img"

cat > "$W/rsyncd.conf" <<CONF
use chroot = no
[rs]
path = $W/rs
read only = no
uid = root
gid = root
[rsimg]
path = $W/img-rs
read only = no
uid = root
gid = root
CONF
mkdir -p "$W/img-rs" "$W/img-fe"
rsync --daemon --no-detach --address=127.0.0.1 --port="$RSPORT" --config="$W/rsyncd.conf" &
RSPID=$!
cat > "$W/agent.toml" <<CONF
listen = "127.0.0.1:$FPORT"
key = "bench-key-0123456789abcdef"
[volumes.fe]
path = "$W/fe"
[volumes.img]
path = "$W/img-fe/disk.img"
CONF
export FERRY_SYNC_KEY="bench-key-0123456789abcdef"
"$FERRY" agent --config "$W/agent.toml" --log-level warn &
FPID=$!
sleep 1

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
declare -A R
R[rs_first]=$(t rsync -a --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/")
R[fe_first]=$(t "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$FPORT/fe")
R[rs_unch]=$(t rsync -a --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/")
R[fe_unch]=$(t "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$FPORT/fe")
python3 - "$W/src" "$N" <<'PY'
import os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(2)
for i in r.sample(range(n), max(1, n // 100)):
    p = os.path.join(root, f"d{i // 1000:03d}", f"s{(i // 100) % 10}", f"f{i}.php")
    with open(p, "wb") as f:
        f.write(r.randbytes(r.randint(1024, 8192)))
PY
R[rs_1pct]=$(t rsync -a --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/")
R[fe_1pct]=$(t "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$FPORT/fe")
R[rs_verify]=$(t rsync -acn --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/")
R[fe_verify]=$(t "$FERRY" sync --verify "$W/src" "ferry://127.0.0.1:$FPORT/fe")

# Block image: first copy, then 1% of 64 KiB blocks changed.
R[rs_img_first]=$(t rsync -a --inplace "$W/img/disk.img" "rsync://127.0.0.1:$RSPORT/rsimg/disk.img")
R[fe_img_first]=$(t "$FERRY" sync --mode block "$W/img/disk.img" "ferry://127.0.0.1:$FPORT/img")
python3 - "$W/img/disk.img" <<'PY'
import os, sys, random
p = sys.argv[1]; size = os.path.getsize(p); blocks = size // 65536
r = random.Random(3)
with open(p, "r+b") as f:
    for b in r.sample(range(blocks), max(1, blocks // 100)):
        f.seek(b * 65536 + 100); f.write(r.randbytes(4096))
PY
R[rs_img_1pct]=$(t rsync -a --inplace --no-whole-file "$W/img/disk.img" "rsync://127.0.0.1:$RSPORT/rsimg/disk.img")
R[fe_img_1pct]=$(t "$FERRY" sync --mode block "$W/img/disk.img" "ferry://127.0.0.1:$FPORT/img")

OUT=bench/sync-vs-rsync/results.txt
{
  echo "# ferry sync vs rsync daemon, loopback, $(nproc) cores, N=$N files, image ${IMG_MB} MiB, $(date -u +%F)"
  for k in first unch 1pct verify img_first img_1pct; do
    printf "%-10s rsync %8.2fs  ferry %8.2fs\n" "$k" "${R[rs_$k]}" "${R[fe_$k]}"
  done
  echo "ratios (rsync time / ferry time; > 1 means ferry is faster):"
  for k in first unch 1pct verify img_first img_1pct; do
    printf "  %-10s %6.2fx\n" "$k" "$(echo "${R[rs_$k]} / ${R[fe_$k]}" | bc -l)"
  done
} | tee "$OUT"
