#!/bin/bash
# base_image.sh - build the test base image orchestrate/debian-py:bookworm WITHOUT any registry.
#
#   debootstrap --variant=minbase bookworm (+ python3 ca-certificates iproute2 procps libnuma1)
#   -> rootfs tarball cached in $ORCH_CACHE (default /var/cache/orchestrate)
#   -> tar | docker import  (ENV PATH/LANG, CMD ["bash"])
#
# Usage: base_image.sh [--docker-host URL] [--tag TAG] [--force] [--rebuild-rootfs]
#   --docker-host URL   import into this engine (default: $DOCKER_HOST, else the root dockerd)
#   --tag TAG           image tag (default orchestrate/debian-py:bookworm)
#   --force             re-import even if the image exists
#   --rebuild-rootfs    ignore the cached rootfs tarball (implies --force)
# Env: ORCH_CACHE, BED_DEBIAN_MIRROR (default: first Debian URI in /etc/apt/sources.list*),
#      BED_DEBIAN_SUITE (default bookworm).
# Prints "base-image: <tag>" on its last stdout line; timings go to stderr. Must run as root.
set -euo pipefail

TAG=orchestrate/debian-py:bookworm
FORCE=0
REBUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --docker-host) export DOCKER_HOST="$2"; shift 2 ;;
    --docker-host=*) export DOCKER_HOST="${1#*=}"; shift ;;
    --tag) TAG="$2"; shift 2 ;;
    --tag=*) TAG="${1#*=}"; shift ;;
    --force) FORCE=1; shift ;;
    --rebuild-rootfs) REBUILD=1; FORCE=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "base_image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

CACHE=${ORCH_CACHE:-/var/cache/orchestrate}
SUITE=${BED_DEBIAN_SUITE:-bookworm}
PKGS="python3,ca-certificates,iproute2,procps,libnuma1"
DOCKER=${BED_DOCKER_CLI:-$(command -v docker || echo /usr/bin/docker)}
T0=$(date +%s.%N)

since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }

[ "$(id -u)" = 0 ] || { echo "base_image.sh: must run as root" >&2; exit 1; }

# bounded engine check: a hung engine must not hang the build
timeout 20 "$DOCKER" version >/dev/null 2>&1 || {
  echo "base_image.sh: docker engine ${DOCKER_HOST:-(default socket)} does not answer" >&2; exit 1; }

if [ "$FORCE" = 0 ] && timeout 20 "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image: $TAG (already present, $(since "$T0")s)" >&2
  echo "base-image: $TAG"
  exit 0
fi

mirror() {
  if [ -n "${BED_DEBIAN_MIRROR:-}" ]; then echo "$BED_DEBIAN_MIRROR"; return; fi
  local u
  # deb822 (*.sources: "URIs: ...") and one-line (*.list: "deb URI suite ...") formats
  u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i} /^deb / {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
      grep -E '/debian/?$' | grep -v security | head -1 || true)
  echo "${u:-http://deb.debian.org/debian}"
}

# cache key: suite + package list, so changing either builds a new rootfs
KEY=$(printf '%s %s v1' "$SUITE" "$PKGS" | sha256sum | cut -c1-12)
TARBALL="$CACHE/debian-py-$SUITE-$KEY.rootfs.tar"
mkdir -p "$CACHE"

if [ "$REBUILD" = 1 ] || [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "base_image.sh: debootstrap not installed" >&2; exit 1; }
  M=$(mirror)
  WORK=$(mktemp -d "$CACHE/build.XXXXXX")
  cleanup() {
    # debootstrap may leave proc/sys mounted inside the target when it fails
    local m
    for m in $(awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
  }
  trap cleanup EXIT
  t=$(date +%s.%N)
  echo "[base_image] debootstrap --variant=minbase $SUITE from $M (packages $PKGS)" >&2
  if ! timeout 1200 debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$WORK/rootfs" "$M" \
        > "$WORK/debootstrap.log" 2>&1; then
    tail -30 "$WORK/debootstrap.log" >&2
    [ -f "$WORK/rootfs/debootstrap/debootstrap.log" ] && tail -30 "$WORK/rootfs/debootstrap/debootstrap.log" >&2
    echo "base_image.sh: debootstrap failed" >&2; exit 1
  fi
  echo "[base_image] debootstrap: $(since "$t")s" >&2
  R="$WORK/rootfs"
  # slim down: package lists/caches, docs, man pages, locales; reset machine-specific files
  chroot "$R" apt-get clean >/dev/null 2>&1 || true
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old \
         "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* \
         "$R"/var/log/*.log "$R"/var/log/apt/* "$R"/tmp/* "$R"/var/tmp/* "$R"/debootstrap
  : > "$R/etc/resolv.conf"
  echo localhost > "$R/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
  rm -f "$R/etc/machine-id"; : > "$R/etc/machine-id"
  # docker mounts /dev, /proc and /sys itself: ship them empty
  rm -rf "$R"/dev/* "$R"/proc/* "$R"/sys/* 2>/dev/null || true
  t=$(date +%s.%N)
  tar --numeric-owner --xattrs -C "$R" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  echo "[base_image] rootfs tarball $TARBALL ($(du -m "$TARBALL" | cut -f1) MiB): $(since "$t")s" >&2
  cleanup; trap - EXIT
  # keep only the newest rootfs tarball(s) of this suite
  find "$CACHE" -maxdepth 1 -name "debian-py-$SUITE-*.rootfs.tar" ! -name "$(basename "$TARBALL")" -delete
else
  echo "[base_image] using cached rootfs $TARBALL" >&2
fi

old=$(timeout 20 "$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
t=$(date +%s.%N)
id=$(timeout 600 "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV DEBIAN_FRONTEND=noninteractive' \
      --change 'WORKDIR /' \
      --change 'CMD ["bash"]' \
      --message "orchestrate test base: debootstrap minbase $SUITE + $PKGS" \
      - "$TAG" < "$TARBALL")
echo "[base_image] docker import: $(since "$t")s -> $id" >&2
# --force: drop the previous, now untagged image (ignored if a container still uses it)
if [ -n "$old" ] && [ "$old" != "$id" ] &&
   [ "$(timeout 20 "$DOCKER" image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null)" = 0 ]; then
  timeout 60 "$DOCKER" rmi "$old" >/dev/null 2>&1 || true
fi
echo "[base_image] total: $(since "$T0")s" >&2
echo "base-image: $TAG"
