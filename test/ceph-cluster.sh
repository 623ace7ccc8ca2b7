#!/usr/bin/env bash
# Start and stop throwaway single-host Ceph (Pacific) clusters for tests and
# the local demo: one mon, one mgr and one memstore OSD per cluster, cephx on,
# everything bound to 127.0.0.1 (or $BASALT_CEPH_ADDR) and kept under
# $BASALT_OUTPUT/ceph/NAME/.
#
# Daemons are started directly (no systemd) and stopped by the PIDs recorded
# at start, so several clusters can run side by side and be torn down cleanly.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
OUTPUT=${BASALT_OUTPUT:-$REPO_ROOT/_output}
MEMSTORE_BYTES=${BASALT_MEMSTORE_BYTES:-8589934592}
# Pool created by `start` so the cluster is proven to serve I/O and pool stats.
DEFAULT_POOL=${BASALT_CEPH_DEFAULT_POOL:-rbd}
PORT_BASE=16789
# The address every daemon binds to. Only the Kubernetes e2e changes it, to
# its node's address inside the private network namespace it runs in, where
# pods on the pod network can reach it (they cannot reach a loopback).
ADDR=${BASALT_CEPH_ADDR:-127.0.0.1}
# Deadline for each single ceph/rbd CLI call, and for the whole of `start`.
CMD_TIMEOUT=${BASALT_CEPH_CMD_TIMEOUT:-20}
START_TIMEOUT=${BASALT_CEPH_START_TIMEOUT:-90}
# The ceph CLI is Python; use the system interpreter for JSON parsing too, so
# pyenv/virtualenv shims on PATH cannot break us.
PY=/usr/bin/python3
DAEMONS=(osd mgr mon) # stop order
# Pacific's always-on mgr modules (the mgr reports an error if one is missing),
# iostat (enabled by "mgr initial modules") and their shared helpers.
SYSTEM_MGR_MODULES=/usr/share/ceph/mgr
MGR_MODULES=(balancer crash devicehealth orchestrator pg_autoscaler progress
  rbd_support status telemetry volumes iostat mgr_module.py mgr_util.py)

usage() {
  cat >&2 <<EOF
usage: $0 COMMAND [ARGS]

  install                 install the Debian packages needed (ceph, rbd-fuse, fuse, ...)
  start NAME [PORT]       start cluster NAME (1 mon, 1 mgr, 1 memstore OSD, cephx)
                          and print CEPH_CONF=, CEPH_KEYRING=, CEPH_FSID=, CEPH_MON=
                          lines for eval. The mon listens on ADDR:PORT (msgr v1)
                          and ADDR:PORT+1 (msgr v2); PORT defaults to the first
                          free pair from $PORT_BASE. No-op if NAME is already running.
  create-pool NAME POOL   create replicated (size 1) RBD pool POOL; idempotent
  stop NAME               kill NAME's daemons and remove its directory; idempotent
  stop-all                stop every cluster under \$BASALT_OUTPUT/ceph
  pause NAME DAEMON       SIGSTOP NAME's mon, mgr or osd (a stalled daemon, for outage tests)
  resume NAME DAEMON      SIGCONT it again
  env NAME                print the CEPH_* lines of running cluster NAME
  status                  list clusters and whether their daemons are alive

Clusters live in \$BASALT_OUTPUT/ceph/NAME (BASALT_OUTPUT defaults to <repo>/_output).
Env: BASALT_MEMSTORE_BYTES (OSD capacity, default 8 GiB),
     BASALT_CEPH_ADDR (the daemons' address ADDR, default 127.0.0.1),
     BASALT_CEPH_DEFAULT_POOL (pool created by start, default rbd).
EOF
  exit 2
}

log() { echo "ceph-cluster: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------- helpers --

ceph_root() {
  mkdir -p "$OUTPUT/ceph/.locks"
  # Absolute paths end up in ceph.conf, so resolve a relative BASALT_OUTPUT.
  (cd "$OUTPUT/ceph" && pwd)
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$ ]] || die "invalid cluster name '$1' (use [A-Za-z0-9_-], max 32 chars)"
}

# Every call that talks to the cluster gets a hard deadline, so a broken
# cluster fails the script instead of hanging it.
c_ceph() { timeout -k 5 "$CMD_TIMEOUT" ceph -c "$CONF" --connect-timeout "$CMD_TIMEOUT" "$@"; }
c_rbd() { timeout -k 5 "$CMD_TIMEOUT" rbd -c "$CONF" "$@"; }

# Sets the globals describing cluster $1.
load_cluster() {
  NAME=$1
  check_name "$NAME"
  DIR=$(ceph_root)/$NAME
  CONF=$DIR/ceph.conf
  KEYRING=$DIR/ceph.client.admin.keyring
}

# Prints the PID of daemon $1 of the loaded cluster if it is alive. The
# cmdline check guards against a recycled PID belonging to someone else.
daemon_pid() {
  local pid
  pid=$(cat "$DIR/pids/$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # grep without -q reads all: an early exit could SIGPIPE tr (pipefail).
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -F -- "-c $CONF " >/dev/null || return 1
  echo "$pid"
}

is_running() {
  local d
  for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null || return 1; done
  [[ -s $DIR/cluster.env ]]
}

print_env() { cat "$DIR/cluster.env"; }

port_in_use() {
  local p=$1 f
  # Ports reserved by other clusters of ours (even if their mon is down).
  for f in "$(ceph_root)"/*/port; do
    [[ -f $f ]] || continue
    local q
    q=$(cat "$f")
    [[ $q == "$p" || $((q + 1)) == "$p" ]] && return 0
  done
  # Only listeners matter (daemons bind with SO_REUSEADDR, TIME_WAIT is fine).
  [[ -n $(ss -Hltn "( sport = :$p )" 2>/dev/null) ]]
}

wait_until() { # wait_until DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2 end
  shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || die "timed out after ${secs}s waiting for $what"
    # Fail fast instead of waiting out the deadline if a daemon died.
    local f
    for f in "$DIR"/pids/*; do
      [[ -e $f ]] || continue
      daemon_pid "${f##*/}" >/dev/null || die "ceph-${f##*/} exited while waiting for $what"
    done
    sleep 0.3
  done
}

json() { # json PYTHON-EXPR: evaluates EXPR with j = JSON document from stdin
  "$PY" -c "import json,sys; j=json.load(sys.stdin); r=($1); sys.exit(0 if r else 1)"
}

mon_ready() { c_ceph quorum_status -f json | json 'len(j["quorum"]) == 1'; }
osd_ready() { c_ceph osd stat -f json | json 'j["num_up_osds"] == 1 and j["num_in_osds"] == 1'; }
mgr_ready() { c_ceph mgr stat -f json | json 'j["available"]'; }
pool_ready() {
  c_ceph pg ls-by-pool "$1" -f json |
    json "j['pg_stats'] and all(p['state'] == 'active+clean' for p in j['pg_stats'])" &&
    c_ceph df -f json | json "any(p['name'] == '$1' and p['stats']['max_avail'] > 0 for p in j['pools'])"
}

# Start a daemon detached from our session (so it outlives this script and
# the caller's terminal signals) with all fds redirected (so `$(... start)`
# does not wait on it), and record its PID.
spawn() { # spawn KIND BINARY ARGS...
  local kind=$1
  shift
  # 9>&-: the daemon must not inherit (and so hold forever) the cluster lock.
  setsid "$@" -f -c "$CONF" </dev/null >>"$DIR/log/$kind.out" 2>&1 9>&- &
  echo $! >"$DIR/pids/$kind"
}

# ---------------------------------------------------------------- install --

cmd_install() {
  # One package list for the whole project: test/packages.txt.
  "$SCRIPT_DIR/install-deps.sh"
}

# ------------------------------------------------------------------ start --

write_conf() { # write_conf FSID PORT
  local run=$DIR/run logd=$DIR/log
  cat >"$CONF" <<EOF
# Generated by test/ceph-cluster.sh for cluster "$NAME"; removed by "stop".
[global]
fsid = $1
# msgr v1 on PORT (so a bare $ADDR:PORT means v1), msgr v2 on PORT+1.
mon host = [v2:$ADDR:$(($2 + 1)),v1:$ADDR:$2]
public addr = $ADDR
cluster addr = $ADDR
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# Keep every runtime file inside the cluster directory.
run dir = $run
crash dir = $DIR/crash
mon cluster log file = $logd/cluster.log
# Single OSD: size-1 pools, few PGs, no autoscaler, no redundancy warnings.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# Test hosts may have full-ish disks; never warn about or stop on it.
mon data avail warn = 1
mon data avail crit = 0
# Report PG stats quickly so "ceph df" has numbers seconds after start.
mgr stats period = 1
mon mgr digest period = 1
# Commit map changes (pool create/set, OSD boot) after 0.1 s instead of 1 s.
paxos propose interval = 0.1
# layering only: understood by rbd-fuse/krbd, and all that cloning needs.
rbd default features = 1

[mon]
mon data = $DIR/mon
keyring = $DIR/mon/keyring
log file = $logd/\$name.log
# Only modules we rely on (always-on ones such as pg_autoscaler still load);
# notably no "restful", which would listen on all addresses.
mgr initial modules = iostat

[mgr]
mgr data = $DIR/mgr
# The mgr imports every module in its module path at startup (~20 s for all of
# them); load only the always-on ones plus iostat.
mgr module path = $DIR/mgr-modules
keyring = $DIR/mgr/keyring
log file = $logd/\$name.log

[osd]
osd data = $DIR/osd
keyring = $DIR/osd/keyring
log file = $logd/\$name.log
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
# memstore keeps data in RAM (bounded by memstore device bytes); the
# target (its minimum) only caps caches, which matter little here.
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1

[client]
keyring = $KEYRING
# rbd-fuse counts as a daemon and would otherwise log to /var/log/ceph.
log file = $logd/\$name.log
EOF
}

# On any failure during start: show the logs of the stage that failed, then
# tear down what we started.
on_start_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  log "start of cluster $NAME failed (stage: ${STAGE:-setup})"
  local logs f
  case ${STAGE:-} in
  mon) logs=(mon.out mon.a.log) ;;
  mgr) logs=(mgr.out mgr.x.log) ;;
  osd) logs=(osd.out osd.0.log) ;;
  *) logs=(cluster.log mgr.x.log osd.0.log) ;;
  esac
  for f in "${logs[@]}"; do
    [[ -s $DIR/log/$f ]] || continue
    echo "----- tail of $DIR/log/$f" >&2
    tail -n 30 "$DIR/log/$f" >&2
  done
  cmd_stop "$NAME" || true
  exit "$rc"
}

cmd_start() { # cmd_start NAME [PORT]
  local port=${2:-}
  # A fresh machine: install Ceph first (quiet and quick when present).
  command -v ceph-mon >/dev/null 2>&1 && command -v rbd-fuse >/dev/null 2>&1 || cmd_install
  load_cluster "$1"
  if is_running; then
    log "cluster $NAME already running"
    print_env
    return 0
  fi
  [[ -z $port || $port =~ ^[0-9]+$ ]] || usage
  # Leftovers of a crashed or half-started cluster: clear them first.
  [[ -e $DIR ]] && cmd_stop "$NAME"

  local t0=$SECONDS root
  root=$(ceph_root)
  # Port choice and directory creation under a lock, so concurrent starts
  # never pick the same ports.
  exec 8>"$root/.locks/ports"
  flock -w 60 8 || die "could not lock $root/.locks/ports"
  if [[ -n $port ]]; then
    if port_in_use "$port" || port_in_use $((port + 1)); then
      die "port $port or $((port + 1)) already in use"
    fi
  else
    port=$PORT_BASE
    while port_in_use "$port" || port_in_use $((port + 1)); do
      port=$((port + 2))
      ((port < PORT_BASE + 1000)) || die "no free port pair from $PORT_BASE"
    done
  fi
  mkdir -p "$DIR"/{mon,mgr,mgr-modules,osd,run,log,crash,pids}
  echo "$port" >"$DIR/port"
  exec 8>&-

  trap on_start_exit EXIT
  STAGE=setup
  local fsid mgr_key osd_key osd_uuid
  # mkfs wants an empty mon data dir; it copies this keyring into it.
  local mon_keyring=$DIR/run/mon-mkfs.keyring
  fsid=$(uuidgen)
  osd_uuid=$(uuidgen)
  write_conf "$fsid" "$port"
  local m
  for m in "${MGR_MODULES[@]}"; do
    ln -s "$SYSTEM_MGR_MODULES/$m" "$DIR/mgr-modules/$m"
  done

  # The admin and mgr keys are seeded into the mon's auth database at mkfs
  # time, saving CLI round trips (~0.5 s each); the OSD key is registered by
  # "ceph osd new", which needs a round trip anyway.
  mgr_key=$(ceph-authtool --gen-print-key)
  osd_key=$(ceph-authtool --gen-print-key)
  {
    ceph-authtool "$KEYRING" --create-keyring --gen-key -n client.admin \
      --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    ceph-authtool "$DIR/mgr/keyring" --create-keyring -n mgr.x --add-key "$mgr_key" \
      --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
    ceph-authtool "$DIR/osd/keyring" --create-keyring -n osd.0 --add-key "$osd_key" \
      --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
    ceph-authtool "$mon_keyring" --create-keyring --gen-key -n mon. --cap mon 'allow *'
    ceph-authtool "$mon_keyring" --import-keyring "$KEYRING"
    ceph-authtool "$mon_keyring" --import-keyring "$DIR/mgr/keyring"
  } >/dev/null # chatty on stdout, which is reserved for the CEPH_* lines
  chmod 600 "$KEYRING" "$mon_keyring" "$DIR"/{mgr,osd}/keyring

  STAGE=mon
  log "starting cluster $NAME (mon $ADDR:$port v1, :$((port + 1)) v2) in $DIR"
  monmaptool --create --fsid "$fsid" --enable-all-features --set-min-mon-release 16 \
    --addv a "[v2:$ADDR:$((port + 1)),v1:$ADDR:$port]" "$DIR/run/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/run/monmap" --keyring "$mon_keyring" \
    >>"$DIR/log/mon.out" 2>&1
  spawn mon ceph-mon -i a
  wait_until "mon quorum" 30 mon_ready

  # The mgr is slowest to come up (Python modules), so start it first and
  # create the OSD meanwhile.
  STAGE=mgr
  spawn mgr ceph-mgr -i x

  STAGE=osd
  echo "{\"cephx_secret\": \"$osd_key\"}" | c_ceph osd new "$osd_uuid" 0 -i - >/dev/null
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd.out" 2>&1
  spawn osd ceph-osd -i 0
  wait_until "OSD up and in" 60 osd_ready

  STAGE=mgr
  wait_until "active mgr" 60 mgr_ready

  STAGE=pool
  if [[ -n $DEFAULT_POOL ]]; then create_pool "$DEFAULT_POOL"; fi

  ((SECONDS - t0 < START_TIMEOUT)) || die "start took longer than ${START_TIMEOUT}s"
  cat >"$DIR/cluster.env" <<EOF
CEPH_CONF=$CONF
CEPH_KEYRING=$KEYRING
CEPH_FSID=$fsid
CEPH_MON=$ADDR:$port
EOF
  trap - EXIT
  log "cluster $NAME ready in $((SECONDS - t0))s"
  print_env
}

# ------------------------------------------------------------ create-pool --

create_pool() {
  local pool=$1
  [[ $pool =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "invalid pool name '$pool'"
  log "creating pool $pool"
  # Both steps succeed (as no-ops) when the pool already exists.
  c_ceph osd pool create "$pool" 8 8 replicated --size 1 --autoscale-mode off 2>&1 |
    sed 's/^/  /' >&2
  c_rbd pool init "$pool" # sets application "rbd"
  # PG states and "ceph df" numbers come from the mgr (reported by the OSD
  # every mgr_stats_period); wait until they show the pool usable.
  wait_until "active+clean PGs and ceph df stats for pool $pool" 30 pool_ready "$pool"
}

cmd_create_pool() {
  load_cluster "$1"
  is_running || die "cluster $NAME is not running"
  create_pool "$2"
}

# ------------------------------------------------------------------- stop --

# PIDs of this cluster's daemons not in our records, e.g. spawned by a start
# that died before writing the PID file. Matched by their exact conf path.
stray_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    [[ $cmd =~ ^(/usr/bin/)?ceph-(mon|mgr|osd)\  && $cmd == *"-c $CONF "* ]] && echo "${p#/proc/}"
  done
  return 0
}

# True while PID $1 exists and is not a zombie. Our daemons are reparented to
# PID 1, which may reap them only seconds after they exit.
alive() {
  local stat
  stat=$(cat 2>/dev/null "/proc/$1/stat") || return 1
  stat=${stat##*) }
  [[ -n $stat && ${stat%% *} != Z ]]
}

# TERM the PIDs given, wait up to 10 s, then KILL whatever is left.
terminate() {
  local pid end=$((SECONDS + 10)) left
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    if ((SECONDS >= end)); then
      log "killing ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

cmd_stop() {
  load_cluster "$1"
  local osd=() rest=() d pid
  for d in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$d"); then
      if [[ $d == osd ]]; then osd+=("$pid"); else rest+=("$pid"); fi
    fi
  done
  while read -r pid; do
    [[ " ${osd[*]} ${rest[*]} " == *" $pid "* ]] || rest+=("$pid")
  done < <(stray_pids)
  if ((${#osd[@]} + ${#rest[@]})); then
    log "stopping cluster $NAME (pids ${osd[*]} ${rest[*]})"
    # OSD first: while the mon is up it shuts down in ~1 s, without it the OSD
    # waits osd_mon_shutdown_timeout (5 s) trying to report itself down.
    ((${#osd[@]} == 0)) || terminate "${osd[@]}"
    ((${#rest[@]} == 0)) || terminate "${rest[@]}"
  fi
  rm -rf -- "$DIR"
}

cmd_stop_all() {
  local root d
  root=$(ceph_root)
  for d in "$root"/*/; do
    [[ -d $d ]] || continue
    (locked "$(basename "$d")" cmd_stop "$(basename "$d")")
  done
}

# A stalled daemon (SIGSTOP) is what a hung cluster looks like to a client:
# connections stay open, calls get no answer.
cmd_signal() { # cmd_signal NAME DAEMON SIGNAL
  load_cluster "$1"
  [[ $2 =~ ^(mon|mgr|osd)$ ]] || die "daemon must be mon, mgr or osd, not '$2'"
  local pid
  pid=$(daemon_pid "$2") || die "ceph-$2 of $NAME is not running"
  kill -"$3" "$pid"
}

# ----------------------------------------------------------- env / status --

cmd_env() {
  load_cluster "$1"
  is_running || {
    log "cluster $NAME is not running"
    exit 1
  }
  print_env
}

cmd_status() {
  local root d n any=0
  root=$(ceph_root)
  for d in "$root"/*/; do
    [[ -d $d ]] || continue
    any=1
    n=$(basename "$d")
    load_cluster "$n"
    local line k pid
    line="$n port=$(cat "$DIR/port" 2>/dev/null || echo '?')"
    for k in mon mgr osd; do
      if pid=$(daemon_pid "$k"); then line+=" $k=up($pid)"; else line+=" $k=down"; fi
    done
    if is_running; then line+=" [running]"; else line+=" [broken]"; fi
    echo "$line"
  done
  ((any)) || echo "no clusters under $root"
}

# ------------------------------------------------------------------- main --

# Runs "FUNC NAME ARGS..." holding NAME's lock (fd 9), so that e.g. parallel
# test packages doing "start c1" wait for one another instead of racing.
locked() { # locked NAME FUNC ARGS...
  local name=$1 fn=$2
  shift 2
  check_name "$name"
  exec 9>"$(ceph_root)/.locks/$name"
  flock -w 300 9 || die "could not lock cluster $name"
  "$fn" "$name" "$@"
}

(($#)) || usage
cmd=$1
shift
case $cmd:$# in
install:0) cmd_install ;;
start:1 | start:2) locked "$1" cmd_start "${@:2}" ;;
create-pool:2) locked "$1" cmd_create_pool "$2" ;;
stop:1) locked "$1" cmd_stop ;;
stop-all:0) cmd_stop_all ;;
pause:2) cmd_signal "$1" "$2" STOP ;;
resume:2) cmd_signal "$1" "$2" CONT ;;
env:1) cmd_env "$@" ;;
status:0) cmd_status ;;
*) usage ;;
esac
