#!/usr/bin/env bash
# ferry db move vs mariadb-dump | mariadb vs mydumper/myloader, side by side,
# between two private mariadbd instances on loopback (started here, in a
# temporary directory, stopped at the end). The database is sysbench-like:
# TABLES tables of (id PK, k, c CHAR(120), pad CHAR(60)), filled from
# MariaDB's SEQUENCE engine up to about SIZE_MB of rows.
#   SIZE_MB=1024 bash bench/db-move/run.sh        # the issue's 1 GB
#   SIZE_MB=128 TABLES=4 bash bench/db-move/run.sh # a quicker run
# Measures: first copy (ferry's, from its own report) against the two dumps
# (mydumper's with the destination's binary log off, its default, and on;
# ferry's likewise),
# the whole `ferry db move --verify` with its freeze (write block to switch),
# and the time one `SELECT 1` takes through a `ferry proxy` tunnel against
# the server directly (mariadb-slap, mean per query; latency.py, p50 query by
# query, with HAProxy in TCP mode as the peer). Ratios last.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE_MB="${SIZE_MB:-1024}"
TABLES="${TABLES:-8}"
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || { echo "needs mariadb-server" >&2; exit 2; }
if ! command -v haproxy >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
if ! command -v mydumper >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "needs mydumper (apt-get install mydumper)" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mydumper >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
cargo build --release -p ferry >/dev/null
FERRY="$CARGO_TARGET_DIR/release/ferry"
MARIADBD="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
W="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_db NAME SERVER_ID -> sets PORT_<NAME>
start_db() {
  local name="$1" id="$2" d="$W/$1" port
  port=$(free_port)
  mkdir -p "$d/tmp"
  mariadb-install-db --no-defaults --datadir="$d/data" --auth-root-authentication-method=normal \
    --user=root --skip-test-db --tmpdir="$d/tmp" >/dev/null 2>&1
  "$MARIADBD" --no-defaults --user=root --datadir="$d/data" --socket="$d/sock" --tmpdir="$d/tmp" \
    --pid-file="$d/pid" --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-bin=binlog --server-id="$id" --gtid-domain-id="$id" --binlog-format=ROW \
    --gtid-strict-mode=ON --skip-slave-start --innodb-buffer-pool-size=512M \
    --innodb-log-file-size=256M --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 \
    --performance-schema=OFF --max-connections=300 --log-error="$d/error.log" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    mariadb -h 127.0.0.1 -P "$port" -u root -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  mariadb -h 127.0.0.1 -P "$port" -u root -e 'select 1' >/dev/null
  eval "PORT_$name=$port"
}
start_db src 1
start_db dst 2
SQL_SRC=(mariadb -h 127.0.0.1 -P "$PORT_src" -u root)
SQL_DST=(mariadb -h 127.0.0.1 -P "$PORT_dst" -u root)

# ~200 bytes a row in InnoDB with its overhead.
ROWS=$(( SIZE_MB * 1024 * 1024 / 200 / TABLES ))
echo "filling sbtest: $TABLES tables x $ROWS rows (~${SIZE_MB} MiB)..."
"${SQL_SRC[@]}" -e "CREATE DATABASE sbtest"
for t in $(seq 1 "$TABLES"); do
  "${SQL_SRC[@]}" sbtest -e "CREATE TABLE sbtest$t (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    k INT NOT NULL DEFAULT 0, c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '',
    KEY k_$t (k)) ENGINE=InnoDB;
    INSERT INTO sbtest$t (k, c, pad) SELECT FLOOR(RAND(seq) * $ROWS),
      SUBSTRING(REPEAT(MD5(seq), 4), 1, 120), SUBSTRING(REPEAT(SHA1(seq), 2), 1, 60)
      FROM seq_1_to_$ROWS;"
done
BYTES=$("${SQL_SRC[@]}" -N -e "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema='sbtest'")
echo "sbtest: $(( BYTES / 1024 / 1024 )) MiB on disk"
"${SQL_SRC[@]}" -e "CREATE USER app@'%' IDENTIFIED BY 'app-pw'; GRANT ALL ON sbtest.* TO app@'%'"

now() { date +%s.%N; }
drop_dst() { "${SQL_DST[@]}" -e "DROP DATABASE IF EXISTS sbtest"; }

s=$(now)
mariadb-dump -h 127.0.0.1 -P "$PORT_src" -u root --single-transaction --databases sbtest \
  | "${SQL_DST[@]}"
DUMP=$(echo "$(now) - $s" | bc)
drop_dst
echo "mariadb-dump | mariadb: ${DUMP}s"

mkdir -p "$W/mydumper"
s=$(now)
mydumper -h 127.0.0.1 -P "$PORT_src" -u root -B sbtest -t 2 -o "$W/mydumper" >/dev/null 2>&1
myloader -h 127.0.0.1 -P "$PORT_dst" -u root -d "$W/mydumper" -t 2 >/dev/null 2>&1
MYD=$(echo "$(now) - $s" | bc)
drop_dst
echo "mydumper + myloader: ${MYD}s"
# myloader turns the destination's binary log off for its session by default;
# ferry keeps it on (the destination's own replicas and Galera peers must see
# the rows). The like-for-like run keeps it on too.
rm -rf "$W/mydumper"; mkdir -p "$W/mydumper"
s=$(now)
mydumper -h 127.0.0.1 -P "$PORT_src" -u root -B sbtest -t 2 -o "$W/mydumper" >/dev/null 2>&1
myloader -h 127.0.0.1 -P "$PORT_dst" -u root -d "$W/mydumper" -t 2 --enable-binlog >/dev/null 2>&1
MYD_BINLOG=$(echo "$(now) - $s" | bc)
drop_dst
echo "mydumper + myloader --enable-binlog: ${MYD_BINLOG}s"

# A writer keeps changing rows during the move, so catch-up and the freeze
# have work to do.
# As the application's account: the freeze locks it (root is never fenced).
( while true; do
    mariadb -h 127.0.0.1 -P "$PORT_src" -u app -papp-pw sbtest -e "UPDATE sbtest1 SET k = k + 1 WHERE id = FLOOR(1 + RAND() * $ROWS);
      INSERT INTO sbtest2 (k, c, pad) VALUES (1, 'w', 'w')" 2>/dev/null || true
  done ) &
WRITER=$!
PIDS+=($WRITER)
s=$(now)
"$FERRY" db move --from "mysql://root@127.0.0.1:$PORT_src" --to "mysql://root@127.0.0.1:$PORT_dst" \
  --db sbtest --until-converged --verify --max-freeze 30s --state "$W/move.json" \
  >"$W/move.out" 2>&1 || { echo "ferry db move failed:" >&2; tail -20 "$W/move.out" >&2; exit 1; }
FERRY_ALL=$(echo "$(now) - $s" | bc)
kill "$WRITER" 2>/dev/null || true
cat "$W/move.out"
# Durations are printed as Rust prints them: 850.2ms, 12.3s.
secs() { awk '{ v = $1; if (v ~ /ms$/) { sub(/ms$/, "", v); print v / 1000 } else if (v ~ /µs$/) { sub(/µs$/, "", v); print v / 1000000 } else { sub(/s$/, "", v); print v } }'; }
FIRST=$(grep -oE 'rows in [0-9.]+(ms|µs|s) \(snapshot' "$W/move.out" | head -1 | awk '{print $3}' | secs || true)
FREEZE=$(grep -oE 'writes were blocked for [0-9.]+(ms|µs|s)' "$W/move.out" | tail -1 | awk '{print $NF}' | secs || true)

# Again with the copy kept out of the destination's binary log (what myloader
# does by default), first copy only: undo the first move by hand (the switch
# leaves the source's account locked and the destination holding the data).
drop_dst
"${SQL_DST[@]}" -e "DROP USER IF EXISTS app@'%'"
"${SQL_SRC[@]}" -e "ALTER USER app@'%' ACCOUNT UNLOCK"
"$FERRY" db move --from "mysql://root@127.0.0.1:$PORT_src" --to "mysql://root@127.0.0.1:$PORT_dst" \
  --db sbtest --no-dest-binlog --state "$W/move2.json" >"$W/move2.out" 2>&1 \
  || { echo "ferry db move --no-dest-binlog failed:" >&2; tail -20 "$W/move2.out" >&2; exit 1; }
FIRST_NOBINLOG=$(grep -oE 'rows in [0-9.]+(ms|µs|s) \(snapshot' "$W/move2.out" | head -1 | awk '{print $3}' | secs || true)

# Tunnel: SELECT 1 directly and through a ferry proxy tunnel.
TPORT=$(free_port); APORT=$(free_port); LPORT=$(free_port)
cat > "$W/proxy.toml" <<CONF
[router]
name = "bench"
[admin]
listen = "127.0.0.1:$APORT"
token = "bench-token-0123456789"
[[listener]]
listen = "127.0.0.1:$LPORT"
[[tunnels]]
name = "db"
listen = "127.0.0.1:$TPORT"
upstream = "127.0.0.1:$PORT_src"
CONF
"$FERRY" proxy --config "$W/proxy.toml" --ready-file "$W/ready" --log-level warn &
PIDS+=($!)
for _ in $(seq 1 300); do [ -f "$W/ready" ] && break; sleep 0.05; done
slap() { # PORT -> mean seconds per query
  mariadb-slap -h 127.0.0.1 -P "$1" -u root --create-schema=sbtest \
    --query="SELECT 1" --concurrency=1 --iterations=5 --number-of-queries=5000 2>/dev/null \
    | awk '/Average number of seconds/ {print $(NF-1)}'
}
DIRECT=$(slap "$PORT_src"); TUN=$(slap "$TPORT")
# The median, query by query (latency.py speaks the protocol itself), direct,
# through ferry's tunnel and through HAProxy in TCP mode (the peer: one
# thread, the same loopback hop), interleaved three times, best of each kept.
HPORT=$(free_port)
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend db
  bind 127.0.0.1:$HPORT
  default_backend db
backend db
  server src 127.0.0.1:$PORT_src
CONF
haproxy -f "$W/haproxy.cfg" -db &
PIDS+=($!)
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$HPORT") 2>/dev/null && break; sleep 0.05; done
p50() { python3 bench/db-move/latency.py 127.0.0.1 "$1" root 20000 | awk '{print $2}'; }
best() { sort -n | head -1; }
P50_DIRECT=$(for _ in 1 2 3; do p50 "$PORT_src"; done | best)
P50_TUN=$(for _ in 1 2 3; do p50 "$TPORT"; done | best)
P50_HAP=$(for _ in 1 2 3; do p50 "$HPORT"; done | best)

echo
echo "# db-move, $(date -u +%F), sbtest $(( BYTES / 1024 / 1024 )) MiB ($TABLES tables), loopback, 2 cores"
echo "mariadb-dump | mariadb   ${DUMP}s"
echo "mydumper + myloader      ${MYD}s"
echo "mydumper + myloader --enable-binlog ${MYD_BINLOG}s"
echo "ferry db move (whole, --until-converged --verify, under writes) ${FERRY_ALL}s"
echo "ferry first copy         ${FIRST:-?}s"
echo "ferry first copy --no-dest-binlog ${FIRST_NOBINLOG:-?}s"
echo "ferry freeze             ${FREEZE:-?}s"
echo "SELECT 1 x 5000: direct ${DIRECT}s, through the tunnel ${TUN}s (mean per run of 5000)"
echo "SELECT 1 one by one, p50: direct ${P50_DIRECT} us; ferry tunnel ${P50_TUN} us; haproxy tcp ${P50_HAP} us"
echo "ratios (peer time / ferry time; > 1 means ferry is faster):"
[ -n "${FIRST:-}" ] && echo "  first copy vs mariadb-dump  $(echo "scale=2; $DUMP / $FIRST" | bc)x"
[ -n "${FIRST_NOBINLOG:-}" ] && echo "  first copy vs mydumper, binlog off at both  $(echo "scale=2; $MYD / $FIRST_NOBINLOG" | bc)x"
[ -n "${FIRST:-}" ] && echo "  first copy vs mydumper, binlog on at both   $(echo "scale=2; $MYD_BINLOG / $FIRST" | bc)x"
echo "  tunnel added at p50: ferry $(echo "$P50_TUN - $P50_DIRECT" | bc) us, haproxy $(echo "$P50_HAP - $P50_DIRECT" | bc) us"
echo "  tunnel added per query: $(echo "scale=1; ($TUN - $DIRECT) * 1000000 / 5000" | bc) us (mean)"
