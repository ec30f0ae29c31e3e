#!/usr/bin/env bash
# ferry sync vs rsync over a link with latency (issue 18), both over
# loopback TCP through the same delay relay (delay_relay.py: every chunk
# held DELAY_MS each way; this kernel has no netem).
# Tree: N small files of SMALL_KB (default 5,000 of 4 KiB, 100 to a
# directory) and LARGE files of LARGE_MB (default 3 of 8 MiB).
# Cases, each a first copy into an empty destination (RUNS times, default
# 3, alternating tools; the median counts) and then an unchanged pass:
#   rsync   local -> rsync daemon (rsync://, through the relay)
#   ferry   local -> agent         (ferry://, through the relay)
#   ferry   agent -> local         (the source agent behind the relay)
#   ferry   agent -> agent         (both agents behind relays; the client
#                                   relays the data, so it crosses two
#                                   delayed links where rsync crosses one)
# Results go to bench/sync-wan/results.txt: seconds, files a second, and
# ferry / rsync time ratios (< 1 means ferry is faster).
#   DELAY_MS=5 N=5000 bash bench/sync-wan/run.sh
#   FERRY=/path/to/ferry bash bench/sync-wan/run.sh   # another build
# Fair conditions (as bench/sync-vs-rsync): every first copy writes into a
# freshly made ext4 of its own (a loop-mounted sparse image; as root, with
# mkfs.ext4; FRESH_FS=0 or no root: emptied directories, and the note says
# so): after mass deletions inode allocation dominates and varies (here a
# first copy into an emptied directory took 3 s where a fresh one took 0.4).
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-5000}"
SMALL_KB="${SMALL_KB:-4}"
LARGE="${LARGE:-3}"
LARGE_MB="${LARGE_MB:-8}"
DELAY_MS="${DELAY_MS:-5}"
RUNS="${RUNS:-3}"
FRESH_FS="${FRESH_FS:-1}"
command -v rsync >/dev/null || { echo "needs rsync (apt-get install rsync)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "needs python3 (the delay relay)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
if [ -z "${FERRY:-}" ]; then
  cargo build --release -p ferry >/dev/null
  FERRY="$CARGO_TARGET_DIR/release/ferry"
fi
W="$(mktemp -d)"
BASE=$((20000 + RANDOM % 10000))
RSPORT=$BASE; SRCPORT=$((BASE + 1)); DSTPORT=$((BASE + 2))
R_RS=$((BASE + 3)); R_SRC=$((BASE + 4)); R_DST=$((BASE + 5))
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in "$W/rs" "$W/fe" "$W/fa" "$W/pull"; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/src" "$W/rs" "$W/fe" "$W/fa" "$W/pull"

echo "generating $N files of $SMALL_KB KiB and $LARGE of $LARGE_MB MiB..."
python3 - "$W/src" "$N" "$SMALL_KB" "$LARGE" "$LARGE_MB" <<'PY'
import os, sys, random
root, n, kb, large, mb = sys.argv[1], *map(int, sys.argv[2:])
r = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.php"), "wb") as f:
        f.write(r.randbytes(kb * 1024))
os.makedirs(os.path.join(root, "media"), exist_ok=True)
for i in range(large):
    with open(os.path.join(root, "media", f"big{i}.bin"), "wb") as f:
        f.write(os.urandom(mb * 1024 * 1024))
PY
FILES=$((N + LARGE))
FS_MB=$(( N * SMALL_KB * 4 / 1024 + LARGE * LARGE_MB * 2 + 256 ))
if [ "$FRESH_FS" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
  FS_NOTE="each first copy into a new ext4 (loop, ${FS_MB} MiB sparse)"
else
  FRESH_FS=0
  FS_NOTE="emptied directories on $(df -T "$W" | awk 'NR==2{print $2}') (no fresh filesystem: FRESH_FS=0 or not root)"
fi
# fresh_fs DIR: a new empty filesystem (or an emptied directory) at DIR.
fresh_fs() {
  if [ "$FRESH_FS" = 1 ]; then
    mountpoint -q "$1" && umount "$1"
    rm -f "$1.img"; truncate -s "${FS_MB}M" "$1.img"
    mkfs.ext4 -q -F "$1.img"; mount -o loop "$1.img" "$1"
  else
    find "$1" -mindepth 1 -delete
  fi
}
# Page cache and atimes warm for both tools.
tar -C "$W/src" -cf - . | cat >/dev/null

cat > "$W/rsyncd.conf" <<CONF
use chroot = no
[rs]
path = $W/rs
read only = no
uid = root
gid = root
CONF
rsync --daemon --no-detach --address=127.0.0.1 --port="$RSPORT" --config="$W/rsyncd.conf" &
PIDS+=($!)
KEY="bench-key-0123456789abcdef"
cat > "$W/src-agent.toml" <<CONF
listen = "127.0.0.1:$SRCPORT"
key = "$KEY"
[volumes.src]
path = "$W/src"
read_only = true
CONF
cat > "$W/dst-agent.toml" <<CONF
listen = "127.0.0.1:$DSTPORT"
key = "$KEY"
[volumes.fe]
path = "$W/fe"
[volumes.fa]
path = "$W/fa"
CONF
export FERRY_SYNC_KEY="$KEY"
"$FERRY" agent --config "$W/src-agent.toml" --log-level warn & PIDS+=($!)
"$FERRY" agent --config "$W/dst-agent.toml" --log-level warn & PIDS+=($!)
# relay LISTEN TARGET: a delay relay, waited for until it listens.
relay() {
  local out="$W/relay.$1"
  python3 bench/sync-wan/delay_relay.py "$1" "$2" "$DELAY_MS" >"$out" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -qs ready "$out" && return 0; sleep 0.05; done
  echo "delay relay on $1 did not start" >&2; exit 1
}
relay "$R_RS" "$RSPORT"; relay "$R_SRC" "$SRCPORT"; relay "$R_DST" "$DSTPORT"
# The agents and the daemon: wait until each port answers.
for p in "$RSPORT" "$SRCPORT" "$DSTPORT"; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.05; done
done
# Round trip through a relay, measured: a connection to the rsync daemon
# answers its greeting only after it has crossed the relay each way.
RTT_MS=$(python3 - "$R_RS" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.recv(64)  # the daemon's greeting: one way
t = time.monotonic(); s.sendall(b"@RSYNCD: 31.0\n#list\n"); s.recv(4096)
print(f"{(time.monotonic() - t) * 1000:.1f}")
PY
)

t() {
  local s e; sync; s=$(date +%s.%N)
  "$@" >/dev/null || echo "warning: exit $? from: $*" >&2
  e=$(date +%s.%N); echo "$e - $s" | bc
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A R
declare -A ALL
CASES="rs fl fp fa"
run_case() {
  case "$1" in
    rs) t rsync -a --delete "$W/src/" "rsync://127.0.0.1:$R_RS/rs/" ;;
    fl) t "$FERRY" sync --delete "$W/src" "ferry://127.0.0.1:$R_DST/fe" ;;
    fp) t "$FERRY" sync --delete "ferry://127.0.0.1:$R_SRC/src" "$W/pull" ;;
    fa) t "$FERRY" sync --delete "ferry://127.0.0.1:$R_SRC/src" "ferry://127.0.0.1:$R_DST/fa" ;;
  esac
}
dest_of() { case "$1" in rs) echo "$W/rs" ;; fl) echo "$W/fe" ;; fp) echo "$W/pull" ;; fa) echo "$W/fa" ;; esac; }
for i in $(seq "$RUNS"); do
  for c in $CASES; do
    fresh_fs "$(dest_of "$c")"
    v=$(run_case "$c"); ALL[$c]="${ALL[$c]:-} $v"
    echo "first copy run $i, $c: $v s" >&2
  done
done
for c in $CASES; do
  # shellcheck disable=SC2086
  R[${c}_first]=$(median ${ALL[$c]})
  R[${c}_unch]=$(run_case "$c")
done
diff -r "$W/src" "$W/rs" >/dev/null && diff -r "$W/src" "$W/fe" >/dev/null \
  && diff -r "$W/src" "$W/pull" >/dev/null && diff -r "$W/src" "$W/fa" >/dev/null \
  || { echo "a copy differs from the source" >&2; exit 1; }
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

OUT=bench/sync-wan/results.txt
name() { case "$1" in rs) echo "rsync local->daemon" ;; fl) echo "ferry local->agent" ;; fp) echo "ferry agent->local" ;; fa) echo "ferry agent->agent" ;; esac; }
{
  echo "# ferry sync vs rsync through a delay relay, $(nproc) cores, $(date -u '+%F %H:%M UTC')"
  echo "# $N files of $SMALL_KB KiB + $LARGE of $LARGE_MB MiB; ${DELAY_MS} ms each way (measured round trip ${RTT_MS} ms)"
  echo "# destinations: $FS_NOTE"
  echo "# load average before: $LOAD0, after: $LOAD1; first copy: median of $RUNS"
  for c in $CASES; do
    printf "%-22s first %7.2fs (%6.0f files/s; runs%s)  unchanged %6.2fs\n" "$(name "$c")" \
      "${R[${c}_first]}" "$(echo "$FILES / ${R[${c}_first]}" | bc -l)" "${ALL[$c]}" "${R[${c}_unch]}"
  done
  echo "ratios (ferry time / rsync time; < 1 means ferry is faster):"
  for c in fl fp fa; do
    printf "  %-22s first %5.2f  unchanged %5.2f\n" "$(name "$c")" \
      "$(echo "${R[${c}_first]} / ${R[rs_first]}" | bc -l)" "$(echo "${R[${c}_unch]} / ${R[rs_unch]}" | bc -l)"
  done
} | tee "$OUT"
