#!/usr/bin/env bash
# Runs Ferry's whole test suite. Installs, from Debian's packages, the real
# servers and clients the tests use (nginx, curl, openssl, h2load, wrk, rsync,
# chromium, MariaDB, Galera, Varnish, etcd) when missing, and protoc for the
# etcd client's build (ferry-store's `etcd` feature, on for these tests).
# Tests start their own instances on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx  >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl   >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v wrk    >/dev/null 2>&1 || need+=(wrk)
command -v rsync  >/dev/null 2>&1 || need+=(rsync)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
[ -f /usr/lib/galera/libgalera_smm.so ] || need+=(galera-4)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need+=(varnish)
# ferry-store's etcd backend: real members for its tests, protoc (and the
# well-known .proto files) for etcd-client's build.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
dpkg -s libprotobuf-dev >/dev/null 2>&1 || need+=(libprotobuf-dev)
# The package test: dpkg-deb, objcopy, systemd-analyze, systemd-sysusers.
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The operator's view: prometheus and promtool (alert rules, dashboard queries).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing test dependencies: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
    exit 2
  fi
  echo "installing test dependencies: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
# The end-to-end tests run the release-less debug binary; build it first so
# the first test does not pay for the build inside its timeouts.
# The etcd backend of ferry-store is a cargo feature (its client needs protoc to
# build); the tests run with it, and both commands name it so the binaries are
# built once. CI's workspace clippy does not enable it: lint it here, every
# crate, since the feature reaches the router, the orchestrator and the journal.
features=(--features ferry-store/etcd,ferry-proxy/etcd,ferry-journal/etcd,ferry-orch/etcd,ferry/etcd)
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings
cargo build --workspace --bins "${features[@]}"
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --no-fail-fast "${features[@]}" "$@"
