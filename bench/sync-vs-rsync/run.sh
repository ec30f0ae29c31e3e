#!/usr/bin/env bash
# ferry sync vs rsync, side by side, both over loopback TCP:
#   rsync in daemon mode (rsync://127.0.0.1) vs ferry agent (ferry://127.0.0.1).
# Cases: (a) N small files of 1-8 KiB (default 200,000): first copy, unchanged
# pass, pass after 1% of the files changed, verify (ferry --verify vs rsync -c
# dry run), plus, for ferry, an unchanged pass with --watch (the second pass of
# `--watch --until-converged --json`, timed by ferry itself); (b) a real PHP
# application tree, /usr/share/wordpress from Debian's `wordpress` .deb (fetched
# with `apt-get download`, unpacked with `dpkg-deb -x`, never installed; skipped
# with a message if it cannot be fetched): same four measures; (c) a block image
# (default 1 GiB) with 1% of its blocks changed, and ferry's block hashing rate.
# Results go to bench/sync-vs-rsync/results.txt; ratios are printed last.
#   N=20000 IMG_MB=256 bash bench/sync-vs-rsync/run.sh     # a quicker run
# Fair conditions: each tool writes into its own freshly made ext4 filesystem
# (a loop-mounted sparse image; as root, with mkfs.ext4; FRESH_FS=0 or no root:
# plain directories, and the note says so), because on a filesystem that has
# seen mass deletions inode allocation dominates and varies 5x run to run.
# The source is read once before any timing (page cache and atimes warm for
# both), every timed run starts after `sync` (no writeback of the previous
# run's data during the next), and the first copy of (a) runs FIRST_RUNS
# times (default 3) per tool, alternating, each into a new filesystem: the
# median counts, with the machine's busy CPU seconds during it.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-200000}"
IMG_MB="${IMG_MB:-1024}"
FIRST_RUNS="${FIRST_RUNS:-5}"
FRESH_FS="${FRESH_FS:-1}"
command -v rsync >/dev/null || { echo "needs rsync (apt-get install rsync)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
cargo build --release -p ferry >/dev/null
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$(mktemp -d)"
RSPORT=$((20000 + RANDOM % 10000)); FPORT=$((RSPORT + 1))
cleanup() {
  kill "${RSPID:-}" "${FPID:-}" 2>/dev/null || true
  for m in "$W/rsfs" "$W/fefs"; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/src" "$W/img" "$W/rsfs" "$W/fefs"
# Room for the source (files and image) and both tools' copies of each, at
# ~8 KiB of disk per small file, plus 1 GiB: a full disk midway fails the
# image case with ENOSPC and leaves the loop filesystems read-only.
NEED_MB=$(( 3 * (IMG_MB + N * 8 / 1024) + 1024 ))
AVAIL_MB=$(df --output=avail -BM "$W" | tail -1 | tr -dc 0-9)
if [ "$AVAIL_MB" -lt "$NEED_MB" ]; then
  echo "needs ${NEED_MB} MiB free where mktemp puts files, has ${AVAIL_MB} MiB (lower N or IMG_MB, or free space)" >&2
  exit 2
fi
# Each tool's destinations live in $W/rsfs or $W/fefs: a fresh ext4 there
# when possible. Big enough for the files, wordpress and the image, sparse.
FS_MB=$(( N * 16 / 1024 + IMG_MB * 2 + 1024 ))
if [ "$FRESH_FS" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
  FS_NOTE="each tool writes into its own new ext4 (loop, ${FS_MB} MiB sparse)"
else
  FRESH_FS=0
  FS_NOTE="plain directories on $(df -T "$W" | awk 'NR==2{print $2}') (no fresh filesystem: FRESH_FS=0 or not root)"
fi
# fresh_fs DIR: a new empty filesystem (or an emptied directory) at DIR.
fresh_fs() {
  if [ "$FRESH_FS" = 1 ]; then
    mountpoint -q "$1" && umount "$1"
    rm -f "$1.img"; truncate -s "${FS_MB}M" "$1.img"
    mkfs.ext4 -q -F "$1.img"; mount -o loop "$1.img" "$1"
  else
    rm -rf "$1"; mkdir -p "$1"
  fi
  mkdir -p "$1/a" "$1/img" "$1/wp"
}
fresh_fs "$W/rsfs"; fresh_fs "$W/fefs"

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
# Read the source once: both tools then find it in the page cache with
# its atimes already set (the first reader of a fresh file pays for both).
tar -C "$W/src" -cf - . | cat >/dev/null

# Case (b): Debian's wordpress package, downloaded and unpacked, not installed.
WP=0; WP_NOTE=""
mkdir -p "$W/wpdeb"
fetch_wp() {
  ( cd "$W/wpdeb" && apt-get download wordpress >/dev/null 2>&1 ) && return 0
  apt-get update >/dev/null 2>&1 || true
  ( cd "$W/wpdeb" && apt-get download wordpress >/dev/null 2>&1 )
}
if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null && fetch_wp \
   && dpkg-deb -x "$W"/wpdeb/wordpress_*.deb "$W/wpdeb/x" \
   && [ -d "$W/wpdeb/x/usr/share/wordpress" ]; then
  WP=1
  WPDEB="$(basename "$W"/wpdeb/wordpress_*.deb)"
  WPSRC="$W/wpdeb/x/usr/share/wordpress"
  WP_NOTE="$WPDEB: $(find "$WPSRC" -type f | wc -l) files, $(find "$WPSRC" -type l | wc -l) symlinks, $(find "$WPSRC" -type d | wc -l) dirs, $(du -sm "$WPSRC" | cut -f1) MiB"
  echo "case (b): $WP_NOTE"
else
  WP_NOTE="skipped: could not fetch/unpack Debian's wordpress .deb (apt-get download wordpress)"
  echo "case (b) $WP_NOTE" >&2
fi

cat > "$W/rsyncd.conf" <<CONF
use chroot = no
[rs]
path = $W/rsfs/a
read only = no
uid = root
gid = root
[rsimg]
path = $W/rsfs/img
read only = no
uid = root
gid = root
[rswp]
path = $W/rsfs/wp
read only = no
munge symlinks = no
uid = root
gid = root
CONF
rsync --daemon --no-detach --address=127.0.0.1 --port="$RSPORT" --config="$W/rsyncd.conf" &
RSPID=$!
cat > "$W/agent.toml" <<CONF
listen = "127.0.0.1:$FPORT"
key = "bench-key-0123456789abcdef"
[volumes.fe]
path = "$W/fefs/a"
[volumes.img]
path = "$W/fefs/img/disk.img"
[volumes.wp]
path = "$W/fefs/wp"
CONF
export FERRY_SYNC_KEY="bench-key-0123456789abcdef"
"$FERRY" agent --config "$W/agent.toml" --log-level warn &
FPID=$!
sleep 1

# busy: the machine's busy CPU centiseconds so far (user+nice+system+irq).
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
t() {
  local s e; sync; s=$(date +%s.%N)
  "$@" >/dev/null || echo "warning: exit $? from: $*" >&2
  e=$(date +%s.%N); echo "$e - $s" | bc
}
# tcpu cmd...: like t, printing "wall busy_cpu_seconds".
tcpu() {
  local s e b0 b1; sync; b0=$(busy); s=$(date +%s.%N)
  "$@" >/dev/null || echo "warning: exit $? from: $*" >&2
  e=$(date +%s.%N); b1=$(busy)
  printf '%.2f %.2f\n' "$(echo "$e - $s" | bc)" "$(echo "($b1 - $b0) / 100" | bc -l)"
}
# tj FILE cmd...: like t, keeping the command's stdout (ferry --json) in FILE.
tj() { local f="$1" s e; shift; sync; s=$(date +%s.%N); "$@" >"$f"; e=$(date +%s.%N); echo "$e - $s" | bc; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
minimum() { printf '%s\n' "$@" | sort -g | head -1; }
declare -A R
# (a) first copy: FIRST_RUNS times each, alternating, each into a new
# filesystem; the last copies stay for the measures after it.
RS_W=(); FE_W=(); RS_C=(); FE_C=()
for i in $(seq "$FIRST_RUNS"); do
  [ "$i" -gt 1 ] && { fresh_fs "$W/rsfs"; fresh_fs "$W/fefs"; }
  read -r w c < <(tcpu rsync -a --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/"); RS_W+=("$w"); RS_C+=("$c")
  read -r w c < <(tcpu "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$FPORT/fe"); FE_W+=("$w"); FE_C+=("$c")
  echo "first copy run $i: rsync ${RS_W[-1]} s (${RS_C[-1]} CPU s), ferry ${FE_W[-1]} s (${FE_C[-1]} CPU s)" >&2
done
R[rs_first]=$(median "${RS_W[@]}"); R[fe_first]=$(median "${FE_W[@]}")
FIRST_NOTE="median of $FIRST_RUNS (minimum: rsync $(minimum "${RS_W[@]}") s, ferry $(minimum "${FE_W[@]}") s, $(printf %.2f "$(echo "$(minimum "${RS_W[@]}") / $(minimum "${FE_W[@]}")" | bc -l)")x); rsync runs ${RS_W[*]} s (busy CPU ${RS_C[*]} s), ferry runs ${FE_W[*]} s (busy CPU ${FE_C[*]} s)"
R[rs_unch]=$(t rsync -a --delete "$W/src/" "rsync://127.0.0.1:$RSPORT/rs/")
R[fe_unch]=$(t "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$FPORT/fe")
# Unchanged pass with --watch: pass 1 walks the tree and starts the watch, pass 2
# visits only what the watch recorded (nothing). --max-freeze 0s --max-passes 2
# stops after pass 2 ("not converging: pass limit", exit 1, expected). The
# pass-2 time is ferry's own scan + transfer time from its pass summary: what an
# already-running watched sync spends on a pass (no process start, no connect).
WATCH_NOTE=""
if "$FERRY" sync --help | grep -q -- '--watch'; then
  R[fe_watch_cmd]=$(tj "$W/watch.json" "$FERRY" sync --delete --watch --until-converged \
    --max-freeze 0s --max-passes 2 --json "$W/src" "ferry://127.0.0.1:$FPORT/fe" 2>"$W/watch.err" || true)
  WATCH_NOTE=$(python3 - "$W/watch.json" <<'PY'
import json, sys
p2 = None
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("event") == "pass_finished" and e["summary"]["pass"] == 2:
        p2 = e["summary"]
if p2 is None:
    print("NA not measured: no second pass reported")
elif not p2["watched"]:
    print(f"NA not measured: pass 2 walked the whole tree ({p2['full_walk_reason']})")
else:
    print(f"{p2['scan_secs'] + p2['transfer_secs']:.6f} pass 2 visited {p2['entries']} entries, changed {p2['changed_entries']}")
PY
)
else
  WATCH_NOTE="NA not measured: this ferry has no sync --watch"
fi
R[fe_watch]="${WATCH_NOTE%% *}"; WATCH_NOTE="${WATCH_NOTE#* }"
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

# Case (b): the wordpress tree, same four measures.
if [ "$WP" = 1 ]; then
  R[rs_wp_first]=$(t rsync -a --delete "$WPSRC/" "rsync://127.0.0.1:$RSPORT/rswp/")
  R[fe_wp_first]=$(t "$FERRY" sync --delete "$WPSRC" "ferry://127.0.0.1:$FPORT/wp")
  R[rs_wp_unch]=$(t rsync -a --delete "$WPSRC/" "rsync://127.0.0.1:$RSPORT/rswp/")
  R[fe_wp_unch]=$(t "$FERRY" sync --delete "$WPSRC" "ferry://127.0.0.1:$FPORT/wp")
  python3 - "$WPSRC" <<'PY'
import os, sys, random
root = sys.argv[1]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
               if not os.path.islink(os.path.join(d, f)))
r = random.Random(4)
for p in r.sample(files, max(1, len(files) // 100)):
    with open(p, "ab") as f:
        f.write(b"\n/* ferry bench change */\n")
PY
  R[rs_wp_1pct]=$(t rsync -a --delete "$WPSRC/" "rsync://127.0.0.1:$RSPORT/rswp/")
  R[fe_wp_1pct]=$(t "$FERRY" sync --delete "$WPSRC" "ferry://127.0.0.1:$FPORT/wp")
  R[rs_wp_verify]=$(t rsync -acn --delete "$WPSRC/" "rsync://127.0.0.1:$RSPORT/rswp/")
  R[fe_wp_verify]=$(t "$FERRY" sync --verify "$WPSRC" "ferry://127.0.0.1:$FPORT/wp")
fi

# Case (c), block image: first copy, then 1% of 64 KiB blocks changed.
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
R[fe_img_1pct]=$(tj "$W/img.json" "$FERRY" sync --mode block --json "$W/img/disk.img" "ferry://127.0.0.1:$FPORT/img")
# Block hashing rate: the 1% pass's scan hashes the whole source image (page
# cache, all cores) and reads the receiver's digest file.
HASH=$(python3 - "$W/img.json" "$((IMG_MB * 1024 * 1024))" <<'PY'
import json, sys
size = int(sys.argv[2])
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("event") == "pass_finished":
        s = e["summary"]["scan_secs"]
        print(f"{size / s / 1e9:.2f} GB/s ({size} bytes hashed in {s:.3f}s)")
PY
)

OUT=bench/sync-vs-rsync/results.txt
CASES="first unch 1pct verify"
[ "$WP" = 1 ] && CASES="$CASES wp_first wp_unch wp_1pct wp_verify"
CASES="$CASES img_first img_1pct"
ratio() { echo "$1 / $2" | bc -l; }
{
  echo "# ferry sync vs rsync daemon, loopback, $(nproc) cores, N=$N files, image ${IMG_MB} MiB, $(date -u +%F)"
  echo "# (a) N small files; (b) wordpress: $WP_NOTE; (c) block image"
  echo "# destinations: $FS_NOTE"
  echo "# (a) first copy: $FIRST_NOTE"
  for k in $CASES; do
    printf "%-10s rsync %8.2fs  ferry %8.2fs\n" "$k" "${R[rs_$k]}" "${R[fe_$k]}"
  done
  if [ "${R[fe_watch]}" != NA ]; then
    printf "%-10s rsync %8.2fs  ferry %8.4fs  (ferry: --watch, %s; whole 2-pass command %.2fs)\n" \
      unch_watch "${R[rs_unch]}" "${R[fe_watch]}" "$WATCH_NOTE" "${R[fe_watch_cmd]}"
  else
    echo "unch_watch $WATCH_NOTE"
  fi
  echo "block hashing (ferry, image 1% pass scan): $HASH"
  echo "ratios (rsync time / ferry time; > 1 means ferry is faster):"
  for k in $CASES; do
    printf "  %-10s %6.2fx\n" "$k" "$(ratio "${R[rs_$k]}" "${R[fe_$k]}")"
  done
  if [ "${R[fe_watch]}" != NA ]; then
    printf "  %-10s %6.0fx   (rsync unchanged pass / ferry watched pass 2)\n" unch_watch "$(ratio "${R[rs_unch]}" "${R[fe_watch]}")"
  fi
  echo "goals: first copy (a) >= 3x: $(printf %.2f "$(ratio "${R[rs_first]}" "${R[fe_first]}")")x;" \
    "unchanged pass with --watch >= 20x: $( [ "${R[fe_watch]}" != NA ] && printf %.0fx "$(ratio "${R[rs_unch]}" "${R[fe_watch]}")" || echo "not measured");" \
    "block hashing >= 1 GB/s on 2 cores: ${HASH%% (*}"
} | tee "$OUT"
