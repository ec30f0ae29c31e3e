#!/usr/bin/env bash
# Builds the Debian package of Ferry: the binary, systemd units, the `ferry`
# system user, /etc/ferry with commented example configs, /var/lib/ferry and
# /var/log/ferry with their owners, logrotate rules, man pages and shell
# completions generated from the binary itself.
#
#   bash scripts/build-deb.sh                      # cargo build --release, then the package in target-dir/debian/
#   bash scripts/build-deb.sh --binary PATH --out DIR [--fast]
#
# --binary packages an already built ferry (the tests pass their debug
# build); --fast skips compression (for tests). Prints the .deb's path last.
#
# lintian (Debian 12) on the package built without --fast reports only what
# is meant: non-standard-file-perm 0640 for /etc/ferry/*.toml (they hold
# tokens; root:ferry 0640 is set by postinst), and
# maintainer-script-should-not-parse-etc-passwd-or-group (only when installing
# into a directory tree with DPKG_ROOT, where getent would ask the host).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out=""
compress="-Zxz"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) compress="-Znone"; shift ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
if [ -z "$binary" ]; then
  # The package is what providers run: the etcd control plane is in it.
  cargo build --release -p ferry --bins --features etcd >&2
  binary="$CARGO_TARGET_DIR/release/ferry"
fi
out="${out:-$CARGO_TARGET_DIR/debian}"
mkdir -p "$out"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
root="$(mktemp -d)"
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT

# The binary (debug info stripped: the package is for running, not debugging).
install -d "$root/usr/bin"
strip --strip-unneeded -o "$root/usr/bin/ferry" "$binary"
chmod 0755 "$root/usr/bin/ferry"

# Units, with the binary where the package puts it.
install -d "$root/lib/systemd/system" "$root/usr/lib/sysusers.d"
for unit in dist/systemd/*.service; do
  sed 's|/usr/local/bin/ferry|/usr/bin/ferry|g' "$unit" > "$root/lib/systemd/system/$(basename "$unit")"
  chmod 0644 "$root/lib/systemd/system/$(basename "$unit")"
done
install -m 0644 dist/sysusers.d/ferry.conf "$root/usr/lib/sysusers.d/ferry.conf"

# Example configs: conffiles, so an operator's edits survive upgrades.
install -d -m 0755 "$root/etc/ferry" "$root/etc/ferry/migrate"
install -m 0640 examples/proxy.toml "$root/etc/ferry/proxy.toml"
install -m 0640 examples/agent.toml "$root/etc/ferry/agent.toml"
install -m 0644 examples/maintenance.html "$root/etc/ferry/maintenance.html"
install -d "$root/etc/logrotate.d"
cat > "$root/etc/logrotate.d/ferry" <<'EOF'
# Access logs and other log files Ferry writes under /var/log/ferry. The
# router reopens its access log at every reload; files written with
# --log-file rotate themselves at --log-max-size and are not listed here.
/var/log/ferry/*.log {
    daily
    rotate 14
    maxsize 1G
    compress
    delaycompress
    missingok
    notifempty
    create 0640 ferry ferry
    sharedscripts
    postrotate
        systemctl reload ferry-proxy.service >/dev/null 2>&1 || true
    endscript
}
EOF
chmod 0644 "$root/etc/logrotate.d/ferry"

# Man pages and completions from the binary's own flag definitions.
install -d "$root/usr/share/man/man1"
"$root/usr/bin/ferry" manpages "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$root/usr/bin/ferry" completions bash > "$root/usr/share/bash-completion/completions/ferry"
"$root/usr/bin/ferry" completions zsh > "$root/usr/share/zsh/vendor-completions/_ferry"
"$root/usr/bin/ferry" completions fish > "$root/usr/share/fish/vendor_completions.d/ferry.fish"

# Documentation Debian expects.
install -d "$root/usr/share/doc/ferry"
cat > "$root/usr/share/doc/ferry/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ferry

Files: *
Copyright: 2025-2026 Ferry's authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
printf 'ferry (%s) unstable; urgency=medium\n\n  * Package built from the repository.\n\n -- Ferry maintainers <maintainers@ferry-project.org>  %s\n' \
  "$version" "$(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(date +%s)}")" | gzip -9n > "$root/usr/share/doc/ferry/changelog.gz"
install -m 0644 dist/README.md "$root/usr/share/doc/ferry/README.install.md"

install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: ferry
Version: $version
Architecture: $arch
Maintainer: Ferry maintainers <maintainers@ferry-project.org>
Depends: libc6 (>= 2.34), libgcc-s1
Recommends: systemd
Section: net
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://ferry.invalid/
Description: keeps websites up while the infrastructure under them changes
 A site-aware reverse proxy (router) for millions of sites, a file and
 disk-image replicator, a MariaDB database mover, a planner and an
 orchestrator that moves sites between datacenters as durable runbooks
 without letting a site be writable in two places.
EOF
printf '/etc/ferry/proxy.toml\n/etc/ferry/agent.toml\n/etc/ferry/maintenance.html\n/etc/logrotate.d/ferry\n' > "$root/DEBIAN/conffiles"

# Maintainer scripts honour DPKG_ROOT, so the package also installs into a
# directory tree (dpkg --root DIR --force-script-chrootless), as the test does.
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
R="${DPKG_ROOT:-}"
if [ "$1" = configure ]; then
    # getent asks the system's user database; a tree has only its files.
    if [ -z "$R" ]; then
        known="$(getent passwd ferry || true)"
    else
        known="$(grep '^ferry:' "$R/etc/passwd" 2>/dev/null || true)"
    fi
    if [ -z "$known" ]; then
        if command -v systemd-sysusers >/dev/null 2>&1; then
            systemd-sysusers --root="${R:-/}" "$R/usr/lib/sysusers.d/ferry.conf"
        else
            useradd --prefix "${R:-/}" --system --user-group --home-dir /var/lib/ferry \
                --shell /usr/sbin/nologin ferry
        fi
    fi
    if [ -z "$R" ]; then
        uid="$(getent passwd ferry | cut -d: -f3)"
        gid="$(getent group ferry | cut -d: -f3)"
    else
        uid="$(awk -F: '$1 == "ferry" { print $3 }' "$R/etc/passwd")"
        gid="$(awk -F: '$1 == "ferry" { print $3 }' "$R/etc/group")"
    fi
    # State (stores, journals) and logs: the service's own, closed to others.
    for d in /var/lib/ferry /var/lib/ferry/migrate /var/log/ferry; do
        install -d -m 0750 "$R$d"
        chown "$uid:$gid" "$R$d"
    done
    # The configs hold tokens: root writes them, the service's group reads them.
    for f in /etc/ferry/proxy.toml /etc/ferry/agent.toml; do
        [ -e "$R$f" ] && chown "0:$gid" "$R$f" && chmod 0640 "$R$f"
    done
    chown "0:$gid" "$R/etc/ferry" && chmod 0750 "$R/etc/ferry"
    if [ -z "$R" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
R="${DPKG_ROOT:-}"
if [ "$1" = purge ]; then
    # Stores and journals are the operator's data: only an explicit purge removes them.
    rm -rf "$R/var/lib/ferry" "$R/var/log/ferry"
fi
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

deb="$out/ferry_${version}_${arch}.deb"
dpkg-deb --root-owner-group "$compress" --build "$root" "$deb" >&2
echo "$deb"
