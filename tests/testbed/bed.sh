#!/bin/bash
# bed.sh - multi-host test bed for orchestrate: N fake "hosts" on one Linux box.
#
# One host = its own network namespace (veth eth0 on a bridge) + mount/pid/uts/ipc namespaces,
# tini as pid 1, its own sshd on :22 and its own dockerd (+ dockerd-managed containerd), all with
# stock default paths. The hosts share the root filesystem except these private per-host binds:
#   /etc/ssh /etc/docker /var/lib/docker /root /var/log /etc/hosts /etc/hostname /etc/resolv.conf
#   /srv/bed-private /tmp          (+ private tmpfs on /run and /dev/shm)
# A shared dir, $BED_BASE/shared, is visible at the same path on every host.
#
#   bed.sh up N                  create/repair hosts hb1..hbN (idempotent: boots crashed hosts,
#                                restarts missing sshd/dockerd, thaws, heals, links up; stops hosts > N)
#   bed.sh down                  stop everything and delete all bed state (also strays of crashed runs)
#   bed.sh status
#   bed.sh exec I CMD...         run CMD inside host I (all its namespaces + cgroups)
#   bed.sh docker I ARGS...      docker CLI against host I's engine (via /proc/<pid>/root/run/docker.sock)
#   bed.sh sock I                print that socket path
#   bed.sh seed IMAGE...         docker save (root dockerd) | docker load, into every running host in
#                                parallel (BED_SEED_HOSTS="1 3" restricts; hosts that already have the
#                                same image IDs are skipped)
#   bed.sh rootd                 make sure the root-namespace dockerd answers (start it if needed)
# Faults (I = host index):
#   crash I / boot I             SIGKILL the host's init (everything in it dies; IP stays -> RST) / restart
#   kill-svc I sshd|dockerd [SIG]  (default KILL)   /   start-svc I sshd|dockerd
#   link-down I / link-up I      carrier loss (root-side veth down/up)
#   partition I / heal I         silent blackhole of the host's eth0 (iptables DROP in its netns)
#   freeze I / thaw I            cgroup freezer on every process of the host (containers included)
#
# Env: BED_BASE (state dir, default /var/tmp/orchestrate-bed), BED_NET (/24 prefix, default 10.123.0;
#      bridge = .1, host I = .(10+I)), BED_BRIDGE (default orchbr0; also names the netns "<bridge>-hbI",
#      veths "<bridge>hI" and iptables chain "BED-<bridge>"), BED_CGROUP_PREFIX (default "bed-h" for
#      orchbr0, else "bed-<bridge>-h"). Several beds can coexist with distinct BASE/NET/BRIDGE. Root only.
#      Another Docker Engine on host I (read by `up`, used whenever that host's dockerd starts):
#      BED_ENGINE_<I>=ROOTFS runs its dockerd with ROOTFS/usr bound over /usr in a mount namespace
#      of its own (dockerd, containerd, runc, docker-init, docker-proxy, iptables from ROOTFS; see
#      engine_rootfs.sh), BED_MIN_API_<I>=1.44 starts it with DOCKER_MIN_API_VERSION=1.44 (it then
#      refuses older clients; bed.sh's own docker CLI calls to that host send that version).
set -euo pipefail
export LC_ALL=C

SELF=$(readlink -f "$0")
BASE=${BED_BASE:-/var/tmp/orchestrate-bed}
NET=${BED_NET:-10.123.0}
BR=${BED_BRIDGE:-orchbr0}
CHAIN="BED-$BR"                       # root-ns FORWARD guard chain
# cgroup /bed-hI in every v1 controller (= dockerd cgroup-parent); a second bed (other bridge) gets
# its own prefix so that two beds can run side by side
CGPFX=${BED_CGROUP_PREFIX:-$([ "$BR" = orchbr0 ] && echo bed-h || echo "bed-$BR-h")}
CG_CTRLS="cpu cpuacct cpuset memory devices freezer blkio pids systemd"
KEY=$BASE/keys/id_ed25519
KH=$BASE/known_hosts
SHARED=$BASE/shared
PRIV_MNT=/srv/bed-private
DOCKER=${BED_DOCKER_CLI:-$(command -v docker || echo /usr/bin/docker)}
MAX_HOSTS=200
# daemons and commands in a host get a clean environment, like on a freshly booted machine
CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

T_START=${EPOCHREALTIME/./}
log() { local t=${EPOCHREALTIME/./}; printf '[bed +%d.%03ds] %s\n' $(( (t - T_START) / 1000000 )) $(( (t - T_START) / 1000 % 1000 )) "$*" >&2; }
die() { echo "[bed] ERROR: $*" >&2; exit 1; }

ip_of()  { echo "$NET.$((10 + $1))"; }
hdir()   { echo "$BASE/hosts/h$1"; }
ns_of()  { echo "$BR-hb$1"; }          # netns name
veth_of() { echo "${BR}h$1"; }          # root-side veth (<= 15 chars)
cg_path() { echo "/sys/fs/cgroup/$1/$CGPFX$2"; }

check_index() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$MAX_HOSTS" ] || die "bad host index '${1:-}'"
}

# wait_for SECONDS CMD... : poll CMD every 0.1 s until it succeeds; 1 on timeout (always bounded)
wait_for() {
  local limit=$1; shift
  local end=$(( $(date +%s%N) + limit * 1000000000 ))
  until "$@"; do
    [ "$(date +%s%N)" -lt "$end" ] || return 1
    sleep 0.1
  done
}
gone() { ! [ -d "/proc/$1" ]; }

lock() {  # serialise up/down/boot/crash across concurrent bed.sh calls (fd 9; daemons close it)
  mkdir -p "$BASE"
  exec 9>"$BASE/.lock"
  flock -w 600 9 || die "could not get $BASE/.lock within 600 s"
}

# ------------------------------------------------------------------ host process bookkeeping
# root-ns pid of host I's init (tini = pid 1 inside the host); empty if not running
init_pid() {
  local f u c
  f="$(hdir "$1")/state/unshare.pid"
  [ -s "$f" ] || return 0
  u=$(cat "$f")
  [ -d "/proc/$u" ] && [ "$(cat "/proc/$u/comm" 2>/dev/null)" = unshare ] || return 0
  c=$(awk '{print $1}' "/proc/$u/task/$u/children" 2>/dev/null || true)
  [ -n "$c" ] && echo "$c"
  return 0
}
host_running() { [ -n "$(init_pid "$1")" ]; }

# root-ns pid of a daemon of host I (pid file inside the host's private /run holds the inner pid)
svc_pid() {
  local i=$1 s=$2 p f inner pidns q
  p=$(init_pid "$i"); [ -n "$p" ] || return 0
  case "$s" in dockerd) f=docker.pid ;; sshd) f=sshd.pid ;; *) return 0 ;; esac
  [ -s "/proc/$p/root/run/$f" ] || return 0
  inner=$(cat "/proc/$p/root/run/$f" 2>/dev/null) || return 0
  pidns=$(readlink "/proc/$p/ns/pid")
  for q in $(pgrep -x "$s" || true); do
    [ "$(readlink "/proc/$q/ns/pid" 2>/dev/null)" = "$pidns" ] || continue
    [ "$(awk '/^NSpid:/ {print $NF}' "/proc/$q/status" 2>/dev/null)" = "$inner" ] && { echo "$q"; return 0; }
  done
  return 0
}

sock_of() { local p; p=$(init_pid "$1"); [ -n "$p" ] && echo "/proc/$p/root/run/docker.sock"; }
# host I's engine override (BED_ENGINE_<I> / BED_MIN_API_<I>, recorded by `up` in $H/engine)
engine_opt() { local f; f="$(hdir "$1")/engine"; [ -f "$f" ] && sed -n "s/^$2=//p" "$f"; return 0; }
cli_env() {  # env for bed.sh's own docker CLI against host I: an engine with a raised minimum API
  local m; m=$(engine_opt "$1" MIN_API)   # refuses an old CLI's negotiated version (20.10: 1.41)
  echo "${m:+DOCKER_API_VERSION=$m}"
}
hdocker() {  # hdocker I ARGS... : docker CLI against host I's engine
  local s i=$1; s=$(sock_of "$1") || true
  [ -n "$s" ] || die "hb$1 is not running"
  shift
  # shellcheck disable=SC2046
  env DOCKER_CONFIG="$BASE/docker-cli" $(cli_env "$i") "$DOCKER" -H "unix://$s" "$@"
}

# known host indexes: per-host dirs, netns, cgroups (strays of crashed runs included)
known_hosts_idx() {
  {
    ls -d "$BASE"/hosts/h* 2>/dev/null | sed -n 's/.*\/h\([0-9]\+\)$/\1/p'
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$BR-hb\([0-9]\+\)$/\1/p"
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | sed -n "s/^${BR}h\([0-9]\+\)$/\1/p"
    ls -d /sys/fs/cgroup/*/"$CGPFX"* 2>/dev/null | sed -n "s/.*\/$CGPFX\([0-9]\+\)$/\1/p"
    true   # (pipefail: a failing ls of nothing must not fail the caller)
  } | sort -nu
}

# ------------------------------------------------------------------ network
net_up() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
  fi
  ip addr replace "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  # The root dockerd sets FORWARD policy DROP and br_netfilter makes even bridged host<->host
  # frames go through FORWARD: accept within the bridge, drop anything leaving it.
  iptables -w 10 -N "$CHAIN" 2>/dev/null || true
  iptables -w 10 -F "$CHAIN"
  iptables -w 10 -A "$CHAIN" -i "$BR" -o "$BR" -j ACCEPT
  iptables -w 10 -A "$CHAIN" -i "$BR" -j DROP
  iptables -w 10 -A "$CHAIN" -o "$BR" -j DROP
  iptables -w 10 -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -w 10 -I FORWARD 1 -j "$CHAIN"
}

net_down() {
  while iptables -w 10 -C FORWARD -j "$CHAIN" 2>/dev/null; do iptables -w 10 -D FORWARD -j "$CHAIN"; done
  iptables -w 10 -F "$CHAIN" 2>/dev/null || true
  iptables -w 10 -X "$CHAIN" 2>/dev/null || true
  ip link del "$BR" 2>/dev/null || true
}

host_net_up() {
  local i=$1 ns veth ip
  ns=$(ns_of "$i"); veth=$(veth_of "$i"); ip=$(ip_of "$i")
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip -n "$ns" link del eth0 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BR" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  # default route so "which IP am I" heuristics (UDP connect to 8.8.8.8) pick eth0; the root ns
  # drops everything forwarded off the bridge, so nothing leaves the machine.
  ip -n "$ns" route replace default via "$NET.1"
}

host_net_down() {
  local ns; ns=$(ns_of "$1")
  ip link del "$(veth_of "$1")" 2>/dev/null || true
  if [ -e "/run/netns/$ns" ]; then
    ip netns del "$ns" 2>/dev/null || { umount -l "/run/netns/$ns" 2>/dev/null || true; rm -f "/run/netns/$ns"; }
  fi
}

# partition/heal: silent DROP of all IP traffic on host I's eth0, in raw PREROUTING (inbound) and
# mangle POSTROUTING (outbound, forwarded container traffic included). The host's own dockerd
# never touches these tables, so its FORWARD rules cannot bypass the blackhole.
NSIPT() { nsenter --net="/run/netns/$(ns_of "$1")" iptables -w 10 "${@:2}"; }
fw_rules() {
  local i=$1 act=$2 spec t c f
  [ -e "/run/netns/$(ns_of "$i")" ] || die "hb$i has no netns"
  for spec in raw:PREROUTING:-i mangle:POSTROUTING:-o; do
    IFS=: read -r t c f <<< "$spec"
    if [ "$act" = add ]; then
      NSIPT "$i" -t "$t" -C "$c" "$f" eth0 -j DROP 2>/dev/null || NSIPT "$i" -t "$t" -I "$c" 1 "$f" eth0 -j DROP
    else
      while NSIPT "$i" -t "$t" -C "$c" "$f" eth0 -j DROP 2>/dev/null; do NSIPT "$i" -t "$t" -D "$c" "$f" eth0 -j DROP; done
    fi
  done
}
partitioned() { NSIPT "$1" -t raw -C PREROUTING -i eth0 -j DROP 2>/dev/null; }

# ------------------------------------------------------------------ per-host files
host_files() {
  local i=$1 n=$2 H ip j
  H=$(hdir "$i"); ip=$(ip_of "$i")
  mkdir -p "$H"/{etc-ssh,etc-docker,var-lib-docker,root/.ssh,log,tmp,private,state}
  chmod 700 "$H/root" "$H/root/.ssh"; chmod 1777 "$H/tmp"; chmod 755 "$H/private"
  [ -f "$H/etc-ssh/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "hb$i" -f "$H/etc-ssh/ssh_host_ed25519_key"
  [ -f /etc/ssh/moduli ] && [ ! -f "$H/etc-ssh/moduli" ] && cp /etc/ssh/moduli "$H/etc-ssh/moduli"
  # NOTE: files that are bind-mounted into a running host are rewritten in place (same inode)
  cat "$KEY.pub" > "$H/etc-ssh/authorized_keys"
  cat > "$H/etc-ssh/sshd_config" <<EOF
# bed host hb$i ($ip) - generated by bed.sh
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile /etc/ssh/authorized_keys .ssh/authorized_keys
PidFile /run/sshd.pid
PrintMotd no
# docker-py over paramiko opens one channel per pooled HTTP connection (default MaxSessions 10)
MaxSessions 100
MaxStartups 100:30:200
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  # host -> host ssh (same client key, strict known hosts)
  cat "$KEY" > "$H/root/.ssh/id_ed25519"; chmod 600 "$H/root/.ssh/id_ed25519"
  cat "$KEY.pub" > "$H/root/.ssh/id_ed25519.pub"
  printf 'Host %s.* hb*\n  User root\n  UserKnownHostsFile /etc/ssh/ssh_known_hosts\n  StrictHostKeyChecking yes\n  ConnectTimeout 5\n' \
    "$NET" > "$H/etc-ssh/ssh_config"
  cat > "$H/etc-docker/daemon.json" <<EOF
{
  "cgroup-parent": "/$CGPFX$i",
  "insecure-registries": ["$NET.0/24"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "20m", "max-file": "2"}
}
EOF
  engine_file "$i"
  echo "hb$i" > "$H/etc-hostname"
  { printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
    for j in $(seq 1 "$n"); do printf '%s\thb%s\n' "$(ip_of "$j")" "$j"; done; } > "$H/etc-hosts"
  # resolver = the bridge IP where nothing listens: lookups fail at once, nothing leaves the VM
  echo "nameserver $NET.1" > "$H/etc-resolv.conf"
}

engine_file() {  # record host I's engine override from the environment (none: the machine's dockerd)
  local i=$1 f r m
  f="$(hdir "$i")/engine"
  r=$(printenv "BED_ENGINE_$i" || true); m=$(printenv "BED_MIN_API_$i" || true)
  if [ -z "$r" ] && [ -z "$m" ]; then rm -f "$f"; return 0; fi
  [ -z "$r" ] || [ -x "$r/usr/sbin/dockerd" ] || die "BED_ENGINE_$i=$r has no usr/sbin/dockerd (build one: engine_rootfs.sh)"
  [ -z "$m" ] || [[ "$m" =~ ^1\.[0-9]+$ ]] || die "BED_MIN_API_$i=$m is not an API version like 1.44"
  printf 'ROOTFS=%s\nMIN_API=%s\n' "$r" "$m" > "$f"
}

write_client_files() {
  local n=$1 i pub
  : > "$KH.tmp"
  for i in $(seq 1 "$n"); do
    pub=$(cut -d' ' -f1,2 "$(hdir "$i")/etc-ssh/ssh_host_ed25519_key.pub")
    echo "$(ip_of "$i") $pub" >> "$KH.tmp"
    echo "hb$i $pub" >> "$KH.tmp"
  done
  mv -f "$KH.tmp" "$KH"
  for i in $(seq 1 "$n"); do cat "$KH" > "$(hdir "$i")/etc-ssh/ssh_known_hosts"; done
  {
    cat <<EOF
# generated by bed.sh: ssh -F $BASE/ssh_config hb2
Host $NET.* hb*
  User root
  IdentityFile $KEY
  IdentitiesOnly yes
  UserKnownHostsFile $KH
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  ServerAliveInterval 5
  ServerAliveCountMax 3
  LogLevel ERROR
EOF
    for i in $(seq 1 "$n"); do printf 'Host hb%s\n  HostName %s\n' "$i" "$(ip_of "$i")"; done
  } > "$BASE/ssh_config.tmp"
  mv -f "$BASE/ssh_config.tmp" "$BASE/ssh_config"
}

# ------------------------------------------------------------------ cgroups
cg_setup() {
  local i=$1 c p
  for c in $CG_CTRLS; do
    [ -d "/sys/fs/cgroup/$c" ] || continue
    p=$(cg_path "$c" "$i"); mkdir -p "$p"
    if [ "$c" = cpuset ]; then   # a cpuset cgroup needs cpus/mems before tasks can join
      cat /sys/fs/cgroup/cpuset/cpuset.cpus > "$p/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems > "$p/cpuset.mems"
    fi
  done
}
cg_join() {  # cg_join I PID
  local c f
  for c in $CG_CTRLS; do f="$(cg_path "$c" "$1")/cgroup.procs"; [ -f "$f" ] && echo "$2" > "$f"; done
  return 0
}
cg_pids() {  # every pid in host I's cgroup subtree (any controller that exists)
  local c p
  for c in freezer pids memory systemd; do
    p=$(cg_path "$c" "$1"); [ -d "$p" ] || continue
    find "$p" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -nu
}
cg_empty() { [ -z "$(cg_pids "$1")" ]; }
thaw() {
  local f; f="$(cg_path freezer "$1")/freezer.state"
  [ -f "$f" ] || return 0
  find "$(cg_path freezer "$1")" -name freezer.state | while read -r s; do echo THAWED > "$s" 2>/dev/null || true; done
  wait_for 10 grep -qx THAWED "$f" || log "hb$1: freezer did not report THAWED"
}
frozen() { local f; f="$(cg_path freezer "$1")/freezer.state"; [ -f "$f" ] && ! grep -qx THAWED "$f"; }
cg_cleanup() {
  local i=$1 c p
  for c in $CG_CTRLS unified; do   # runc mirrors container cgroups into the cgroup2 "unified" tree too
    p=$(cg_path "$c" "$i"); [ -d "$p" ] || continue
    find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$p" ] && log "hb$i: cgroup $p still busy"
  done
  return 0
}
cg_kill_all() {  # SIGKILL whatever is left in host I's cgroups (e.g. strays of a crashed run)
  local i=$1 pids
  thaw "$i"
  pids=$(cg_pids "$i")
  [ -n "$pids" ] || return 0
  log "hb$i: killing leftover processes: $(echo $pids)"
  # host processes first, the root-ns "unshare" parents last: they reap the host's tini, which
  # would otherwise be reparented to the machine's pid 1
  local p inner=() outer=()
  for p in $pids; do
    if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = unshare ]; then outer+=("$p"); else inner+=("$p"); fi
  done
  [ ${#inner[@]} -eq 0 ] || kill -KILL "${inner[@]}" 2>/dev/null || true
  for p in "${outer[@]}"; do wait_for 3 gone "$p" || kill -KILL "$p" 2>/dev/null || true; done
  wait_for 10 cg_empty "$i" ||
    log "hb$i: processes survive in its cgroups: $(cg_pids "$i" | tr '\n' ' ')"
}

# ------------------------------------------------------------------ host lifecycle
dockerd_cmd() {  # dockerd_cmd I : how host I starts its dockerd (the machine's, or its override)
  local r m; r=$(engine_opt "$1" ROOTFS); m=$(engine_opt "$1" MIN_API)
  printf '%s' "${m:+env DOCKER_MIN_API_VERSION=$m }"
  if [ -z "$r" ]; then echo /usr/sbin/dockerd; return 0; fi
  # its own mount namespace, so that only this dockerd and what it execs see the other /usr
  printf 'unshare --mount --propagation slave /bin/sh -c %q\n' "mount --bind $r/usr /usr && exec /usr/sbin/dockerd"
}

svc_cmd() {  # svc_cmd SERVICE I : shell snippet starting a daemon detached inside host I's namespaces
  case "$1" in
    dockerd) echo "setsid $(dockerd_cmd "$2") >>/var/log/dockerd.log 2>&1 </dev/null &" ;;
    sshd)    echo 'mkdir -p /run/sshd; setsid /usr/sbin/sshd -D -e >>/var/log/sshd.log 2>&1 </dev/null &' ;;
    *) die "unknown service '$1' (sshd|dockerd)" ;;
  esac
}

# shellcheck disable=SC2046
dockerd_ok() { local s; s=$(sock_of "$1") && [ -n "$s" ] && timeout 3 env $(cli_env "$1") "$DOCKER" -H "unix://$s" version >/dev/null 2>&1; }
sshd_ok()    { timeout 1 bash -c "exec 3<>/dev/tcp/$(ip_of "$1")/22" 2>/dev/null; }
host_ready() { dockerd_ok "$1" && sshd_ok "$1"; }

launch() {  # start host I's init in the background (does not wait)
  local i=$1 H cgs="" c
  H=$(hdir "$i")
  cg_setup "$i"
  for c in $CG_CTRLS; do [ -d "/sys/fs/cgroup/$c" ] && cgs="$cgs $(cg_path "$c" "$i")/cgroup.procs"; done
  rm -f "$H/state/unshare.pid"
  # The launcher joins the /bed-hI cgroups (so the whole host, containers included through dockerd's
  # cgroup-parent, can be frozen and killed), records its pid, then becomes
  #   nsenter(netns) -> unshare(mnt,uts,ipc,pid) -> tini (pid 1) -> "bed.sh _init I".
  # Not "ip netns exec": it remounts /sys without /sys/fs/cgroup and dockerd then fails with
  # "Devices cgroup isn't mounted".
  "${CLEAN_ENV[@]}" BED_BASE="$BASE" BED_NET="$NET" BED_BRIDGE="$BR" setsid bash -c '
    for f in '"$cgs"'; do echo $$ > "$f"; done
    cd /
    echo $$ > '"$H"'/state/unshare.pid
    exec nsenter --net=/run/netns/'"$(ns_of "$i")"' unshare --mount --uts --ipc --pid --fork \
         --mount-proc --propagation slave /usr/bin/docker-init -- /bin/bash '"$SELF"' _init '"$i"'
  ' > "$H/log/init.log" 2>&1 < /dev/null 9>&- &
}

wait_ready() {  # wait_ready I [SECONDS]
  local i=$1 limit=${2:-60} H; H=$(hdir "$i")
  if ! wait_for 10 host_running "$i"; then
    log "hb$i: init did not start"; tail -20 "$H/log/init.log" >&2 || true; return 1
  fi
  if ! wait_for "$limit" host_ready "$i"; then
    log "hb$i: not ready after ${limit}s (dockerd_ok=$(dockerd_ok "$i" && echo y || echo n) sshd_ok=$(sshd_ok "$i" && echo y || echo n))"
    tail -5 "$H/log/init.log" "$H/log/dockerd.log" "$H/log/sshd.log" >&2 2>/dev/null || true
    return 1
  fi
}

# runs as tini's child inside the new namespaces: builds the host's private view, starts daemons
_init() {
  local i=$1 H; H=$(hdir "$1")
  hostname "hb$i"
  # fresh sysfs (so /sys/class/net shows this netns) but keep the cgroup v1 mounts
  mkdir -p "$H/state/cg"
  mount --rbind /sys/fs/cgroup "$H/state/cg"
  mount -t sysfs sysfs /sys
  mount --rbind "$H/state/cg" /sys/fs/cgroup
  umount -l "$H/state/cg"
  # private /run (= /var/run): docker.sock, docker.pid, /run/docker (exec-root, containerd.sock),
  # sshd.pid all at their default paths, per host
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
  mkdir -p /run/sshd /run/lock
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
  mount --bind "$H/etc-hostname"    /etc/hostname
  mount --bind "$H/etc-hosts"       /etc/hosts
  mount --bind "$H/etc-resolv.conf" /etc/resolv.conf
  mount --bind "$H/etc-ssh"         /etc/ssh
  mount --bind "$H/etc-docker"      /etc/docker
  mount --bind "$H/var-lib-docker"  /var/lib/docker
  mount --bind "$H/root"            /root
  mount --bind "$H/log"             /var/log
  mount --bind "$H/private"         "$PRIV_MNT"
  mount --bind "$H/tmp"             /tmp        # last: BED_BASE may live under /tmp
  cd /
  "${CLEAN_ENV[@]}" bash -c "$(svc_cmd dockerd "$i")"
  "${CLEAN_ENV[@]}" bash -c "$(svc_cmd sshd "$i")"
  exec sleep infinity
}

hexec() {  # hexec I CMD... : run CMD inside host I (its cgroups first, then all its namespaces)
  local i=$1; shift
  local p; p=$(init_pid "$i")
  [ -n "$p" ] || die "hb$i is not running"
  ( cg_join "$i" "$BASHPID"
    exec "${CLEAN_ENV[@]}" nsenter -t "$p" --mount --uts --ipc --net --pid --wd=/ -- "$@" )
}

start_svc() {
  local i=$1 s=$2
  [ -n "$(svc_pid "$i" "$s")" ] && { log "hb$i: $s already running"; return 0; }
  hexec "$i" bash -c "$(svc_cmd "$s" "$i")" 9>&-
  case "$s" in
    dockerd) wait_for 60 dockerd_ok "$i" || die "hb$i: dockerd did not come up (see $(hdir "$i")/log/dockerd.log)" ;;
    sshd)    wait_for 20 sshd_ok "$i"    || die "hb$i: sshd did not come up (see $(hdir "$i")/log/sshd.log)" ;;
  esac
  log "hb$i: $s started"
}

kill_svc() {
  local i=$1 s=$2 sig=${3:-KILL} p
  case "$s" in sshd|dockerd) ;; *) die "unknown service '$s' (sshd|dockerd)" ;; esac
  p=$(svc_pid "$i" "$s"); [ -n "$p" ] || die "hb$i: $s is not running"
  kill -s "$sig" "$p"
  case "$sig" in KILL|9|SIGKILL|TERM|15|SIGTERM|INT|2|SIGINT)
    wait_for 30 gone "$p" || log "hb$i: $s (pid $p) still alive 30 s after SIG$sig" ;;
  esac
  log "hb$i: sent SIG${sig#SIG} to $s (pid $p)"
}

host_stop() {  # graceful: stop dockerd (which stops its containers), kill init, kill leftovers
  local i=$1 p d u
  thaw "$i"   # frozen tasks ignore even SIGKILL
  p=$(init_pid "$i")
  if [ -n "$p" ]; then
    d=$(svc_pid "$i" dockerd)
    if [ -n "$d" ]; then
      kill -TERM "$d" 2>/dev/null || true
      wait_for 40 gone "$d" || log "hb$i: dockerd did not stop in 40 s, killing the host"
    fi
    log "hb$i: dockerd stopped"
    kill -KILL "$p" 2>/dev/null || true
    u=$(cat "$(hdir "$i")/state/unshare.pid" 2>/dev/null || true)
    [ -z "$u" ] || wait_for 10 gone "$u" || log "hb$i: unshare $u still alive"
  fi
  rm -f "$(hdir "$i")/state/unshare.pid"
  cg_kill_all "$i"
  cg_cleanup "$i"
}

crash() {
  local i=$1 p u
  thaw "$i"
  p=$(init_pid "$i"); [ -n "$p" ] || { log "hb$i is not running"; return 0; }
  u=$(cat "$(hdir "$i")/state/unshare.pid")
  kill -KILL "$p"
  # the kernel tears the whole pid namespace down (containers included): seconds on a loaded
  # machine, not instant
  wait_for 60 gone "$u" || die "hb$i: init did not die within 60 s"
  log "hb$i crashed (init $p killed)"
}

boot() {  # boot I : start host I if it is not running, wait until sshd + dockerd answer
  local i=$1
  [ -d "$(hdir "$i")/etc-ssh" ] || die "hb$i was never set up (run: bed.sh up N)"
  host_running "$i" && { log "hb$i already running"; return 0; }
  host_net_up "$i"
  cg_kill_all "$i"      # leftovers of the crashed incarnation (there should be none)
  launch "$i"
  wait_ready "$i"
  log "hb$i booted"
}

# ------------------------------------------------------------------ commands
cmd_up() {
  local n=${1:-} i j t0 rc=0
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_HOSTS" ] || die "usage: bed.sh up N (1..$MAX_HOSTS)"
  t0=$(date +%s%N)
  lock
  mkdir -p "$BASE/keys" "$BASE/hosts" "$SHARED" "$BASE/docker-cli" "$PRIV_MNT"
  chmod 1777 "$SHARED"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C orchestrate-bed-client -f "$KEY"
  # hosts beyond N (from a bigger previous run) go away
  for j in $(known_hosts_idx); do
    [ "$j" -gt "$n" ] || continue
    log "stopping surplus host hb$j"; host_stop "$j"; host_net_down "$j"; rm -rf --one-file-system "$(hdir "$j")"
  done
  net_up
  for i in $(seq 1 "$n"); do host_files "$i" "$n"; done
  write_client_files "$n"
  local started=()
  for i in $(seq 1 "$n"); do
    host_net_up "$i"
    if host_running "$i"; then
      # repair faults left by a previous test: thaw, heal, restart missing daemons
      frozen "$i" && { log "hb$i: thawing"; thaw "$i"; }
      partitioned "$i" && { log "hb$i: healing partition"; fw_rules "$i" del; }
      [ -n "$(svc_pid "$i" dockerd)" ] || start_svc "$i" dockerd
      [ -n "$(svc_pid "$i" sshd)" ] || start_svc "$i" sshd
    else
      cg_kill_all "$i"
      launch "$i"; started+=("$i")
    fi
  done
  for i in $(seq 1 "$n"); do wait_ready "$i" 60 || rc=1; done
  [ "$rc" = 0 ] || die "up: some hosts did not become ready (logs in $BASE/hosts/h*/log)"
  log "up: $n hosts ready (booted: ${started[*]:-none}) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

cmd_down() {
  local idx i t0 m
  t0=$(date +%s%N)
  lock
  idx=$(known_hosts_idx)
  for i in $idx; do host_stop "$i" & done
  wait
  log "down: hosts stopped"
  for i in $idx; do host_net_down "$i"; done
  net_down
  # anything of ours still mounted in the root namespace (should be nothing)
  for m in $(awk -v b="$BASE/" 'index($2, b) == 1 {print $2}' /proc/self/mounts | sort -r); do
    log "unmounting stray $m"; umount -l "$m" || true
  done
  log "down: network removed"
  rm -rf --one-file-system "$BASE/hosts" "$SHARED" "$BASE/keys" "$KH" "$BASE/ssh_config" "$BASE/docker-cli"
  # leftover check
  local left=""
  ip link show "$BR" >/dev/null 2>&1 && left="$left bridge:$BR"
  for i in $(known_hosts_idx); do left="$left host:hb$i"; done
  iptables -w 10 -S "$CHAIN" >/dev/null 2>&1 && left="$left chain:$CHAIN"
  [ -z "$left" ] || die "down: leftovers:$left"
  log "down: clean in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

cmd_status() {
  local i p
  if ip link show "$BR" >/dev/null 2>&1; then ip -br addr show "$BR"; else echo "bridge $BR: absent"; fi
  for i in $(known_hosts_idx); do
    p=$(init_pid "$i")
    printf 'hb%-3s %-15s init=%-7s dockerd=%-7s sshd=%-7s link=%-5s frozen=%s partitioned=%s\n' \
      "$i" "$(ip_of "$i")" "${p:--}" "$(svc_pid "$i" dockerd)" "$(svc_pid "$i" sshd)" \
      "$(ip -br link show "$(veth_of "$i")" 2>/dev/null | awk '{print $2}')" \
      "$(frozen "$i" && echo yes || echo no)" \
      "$( [ -e "/run/netns/$(ns_of "$i")" ] && partitioned "$i" && echo yes || echo no)"
  done
}

cmd_seed() {
  [ $# -gt 0 ] || die "usage: bed.sh seed IMAGE..."
  local img ids hosts i p want have t0 rc=0
  t0=$(date +%s%N)
  for img in "$@"; do
    timeout 30 "$DOCKER" image inspect "$img" >/dev/null 2>&1 || die "seed: $img not in the root dockerd"
  done
  want=$(for img in "$@"; do timeout 30 "$DOCKER" image inspect --format '{{.Id}}' "$img"; done)
  hosts=${BED_SEED_HOSTS:-$(known_hosts_idx)}
  declare -A pids=()
  for i in $hosts; do
    p=$(init_pid "$i"); [ -n "$p" ] || { log "seed: hb$i not running, skipped"; continue; }
    # shellcheck disable=SC2046
    have=$(for img in "$@"; do timeout 30 env $(cli_env "$i") "$DOCKER" -H "unix:///proc/$p/root/run/docker.sock" \
             image inspect --format '{{.Id}}' "$img" 2>/dev/null || echo missing; done)
    if [ "$have" = "$want" ]; then log "seed: hb$i already has $*"; continue; fi
    ( set -o pipefail
      timeout 900 "$DOCKER" save "$@" |
        timeout 900 env $(cli_env "$i") "$DOCKER" -H "unix:///proc/$p/root/run/docker.sock" load -q >/dev/null ) &
    pids[$i]=$!
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then log "seed: hb$i loaded $*"; else log "seed: hb$i FAILED"; rc=1; fi
  done
  [ "$rc" = 0 ] || die "seed failed"
  log "seed: done in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

cmd_rootd() {
  local sock=/var/run/docker.sock
  if timeout 10 "$DOCKER" -H "unix://$sock" version >/dev/null 2>&1; then log "root dockerd answers"; return 0; fi
  mkdir -p "$BASE"
  local pid; pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    log "a dockerd process exists but $sock does not answer yet; waiting"
  else
    log "starting root dockerd (log $BASE/rootd.log)"
    "${CLEAN_ENV[@]}" setsid /usr/sbin/dockerd >> "$BASE/rootd.log" 2>&1 < /dev/null 9>&- &
  fi
  wait_for 30 timeout 5 "$DOCKER" -H "unix://$sock" version >/dev/null 2>&1 ||
    { tail -20 "$BASE/rootd.log" >&2 2>/dev/null || true; die "root dockerd did not answer within 30 s"; }
  log "root dockerd answers"
}

[ "$(id -u)" = 0 ] || die "must run as root"
cmd="${1:-}"; shift || true
case "$cmd" in
  up)        cmd_up "$@" ;;
  down)      cmd_down ;;
  status)    cmd_status ;;
  _init)     _init "$@" ;;
  exec)      check_index "${1:-}"; i=$1; shift; [ $# -gt 0 ] || die "usage: bed.sh exec I CMD..."; hexec "$i" "$@" ;;
  docker)    check_index "${1:-}"; i=$1; shift; hdocker "$i" "$@" ;;
  sock)      check_index "${1:-}"; sock_of "$1" || die "hb$1 is not running" ;;
  seed)      cmd_seed "$@" ;;
  rootd)     cmd_rootd ;;
  crash)     check_index "${1:-}"; lock; crash "$1" ;;
  boot)      check_index "${1:-}"; lock; boot "$1" ;;
  kill-svc)  check_index "${1:-}"; kill_svc "$1" "${2:-}" "${3:-KILL}" ;;
  start-svc) check_index "${1:-}"; start_svc "$1" "${2:-}" ;;
  link-down) check_index "${1:-}"; ip link set "$(veth_of "$1")" down ;;
  link-up)   check_index "${1:-}"; ip link set "$(veth_of "$1")" up ;;
  partition) check_index "${1:-}"; fw_rules "$1" add ;;
  heal)      check_index "${1:-}"; fw_rules "$1" del ;;
  freeze)    check_index "${1:-}"; host_running "$1" || die "hb$1 is not running"
             echo FROZEN > "$(cg_path freezer "$1")/freezer.state"
             wait_for 10 grep -qx FROZEN "$(cg_path freezer "$1")/freezer.state" || die "hb$1: freeze did not complete" ;;
  thaw)      check_index "${1:-}"; thaw "$1" ;;
  *)         awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$SELF" >&2; exit 2 ;;
esac
