#!/bin/bash
# engine_rootfs.sh - a newer Docker Engine for the test bed, from Debian's own packages, cached.
#
#   debootstrap --variant=minbase SUITE (+ docker.io iptables) into
#   $ORCH_CACHE/engine-SUITE-KEY/rootfs   (default ORCH_CACHE=/var/cache/orchestrate, SUITE=trixie)
#
# bed.sh runs a host's dockerd with this rootfs's /usr bound over /usr, in a mount namespace of
# its own (BED_ENGINE_<i>=ROOTFS): dockerd, containerd, runc, docker-init, docker-proxy and iptables
# all come from SUITE; the host keeps its own /etc, /var, /run, sshd and docker CLI.
# Trixie ships docker.io 26.1.x (API 1.45), which honours DOCKER_MIN_API_VERSION (moby >= 25).
#
# Usage: engine_rootfs.sh [--rebuild]     (a fresh Debian 12 needs only debootstrap and the mirror)
# Env: ORCH_CACHE, BED_DEBIAN_MIRROR (default: first Debian URI in /etc/apt/sources.list*),
#      BED_ENGINE_SUITE (default trixie).
# Prints the rootfs path on its last stdout line; progress goes to stderr. Must run as root.
set -euo pipefail

REBUILD=0
case "${1:-}" in
  --rebuild) REBUILD=1 ;;
  "") ;;
  *) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0" >&2; exit 2 ;;
esac
CACHE=${ORCH_CACHE:-/var/cache/orchestrate}
SUITE=${BED_ENGINE_SUITE:-trixie}
PKGS="docker.io,iptables"
KEY=$(printf '%s %s v1' "$SUITE" "$PKGS" | sha256sum | cut -c1-12)
DIR="$CACHE/engine-$SUITE-$KEY"
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "engine_rootfs.sh: must run as root" >&2; exit 1; }

mirror() {
  if [ -n "${BED_DEBIAN_MIRROR:-}" ]; then echo "$BED_DEBIAN_MIRROR"; return; fi
  local u
  u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i} /^deb / {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
      grep -E '/debian/?$' | grep -v security | head -1 || true)
  echo "${u:-http://deb.debian.org/debian}"
}

mkdir -p "$CACHE"
exec 8>"$CACHE/.engine-$SUITE.lock"   # two test runs must not build the same rootfs at once
flock -w 1800 8 || { echo "engine_rootfs.sh: $CACHE/.engine-$SUITE.lock is held" >&2; exit 1; }

if [ "$REBUILD" = 1 ] || [ ! -f "$DIR/complete" ]; then
  command -v debootstrap >/dev/null || { echo "engine_rootfs.sh: debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }
  M=$(mirror)
  WORK=$(mktemp -d "$CACHE/engine-build.XXXXXX")
  cleanup() {
    local m
    for m in $(awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
  }
  trap cleanup EXIT
  echo "[engine_rootfs] debootstrap --variant=minbase $SUITE from $M (packages $PKGS)" >&2
  if ! timeout 1500 debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$WORK/rootfs" "$M" \
        > "$WORK/debootstrap.log" 2>&1; then
    tail -30 "$WORK/debootstrap.log" >&2
    [ -f "$WORK/rootfs/debootstrap/debootstrap.log" ] && tail -30 "$WORK/rootfs/debootstrap/debootstrap.log" >&2
    echo "engine_rootfs.sh: debootstrap of $SUITE failed" >&2; exit 1
  fi
  R="$WORK/rootfs"
  chroot "$R" /usr/sbin/dockerd --version >/dev/null ||
    { echo "engine_rootfs.sh: $SUITE's dockerd does not run" >&2; exit 1; }
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* \
         "$R"/usr/share/man/* "$R"/usr/share/locale/* "$R"/debootstrap
  chroot "$R" /usr/sbin/dockerd --version > "$R/ENGINE_VERSION"
  rm -rf --one-file-system "$DIR"
  mv "$R" "$DIR.rootfs.tmp"
  mkdir -p "$DIR"; mv "$DIR.rootfs.tmp" "$DIR/rootfs"
  cp "$DIR/rootfs/ENGINE_VERSION" "$DIR/complete"
  cleanup; trap - EXIT
  echo "[engine_rootfs] built in $(( $(date +%s) - T0 )) s: $(cat "$DIR/complete")" >&2
else
  echo "[engine_rootfs] cached: $(cat "$DIR/complete")" >&2
fi
echo "$DIR/rootfs"
