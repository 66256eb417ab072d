#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian / Ubuntu, as root), to try dpm's cluster path on a workstation
# and for the tests marked `slurm` (.ci/run starts it). Nothing here is needed on a real cluster.
#
#   scripts/slurm-local.sh up       # install slurm-wlm + munge if missing, write the config, start the daemons,
#                                   # wait until the node is idle (again: nothing to do)
#   scripts/slurm-local.sh status   # exit 0 when the controller answers and the node is up
#   scripts/slurm-local.sh down     # cancel this cluster's jobs, stop slurmd, slurmctld and munged (packages stay)
#
# The node is this machine, named by `hostname -s` at 127.0.0.1, in one partition `local` (the default). It
# declares DPM_SLURM_CPUS CPUs (default: the machine's count, at least 4): on a 2-core machine SLURM then runs two
# 1-CPU jobs and a 2-task job side by side, the cores oversubscribed (the tests' trainings are tiny and use one
# thread each). Memory is not scheduled (CR_CPU). No accounting database: `sacct` is not available.
# The configuration goes to /etc/slurm/slurm.conf; a slurm.conf this script did not write is never touched.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by dpm's scripts/slurm-local.sh (a one-node test cluster); 'scripts/slurm-local.sh down' stops it"
LOGS=/var/log/slurm
STATE=/var/lib/slurm
NODE=$(hostname -s)
CPUS=${DPM_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
PACKAGES=(slurm-wlm munge)

say() { printf 'slurm-local: %s\n' "$*"; }
die() { printf 'slurm-local: error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root to install packages and start daemons: sudo $0 $1"
}

controller_answers() { command -v scontrol >/dev/null && timeout 10 scontrol ping 2>/dev/null | grep -q UP; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} = 0 ]; then
    say "packages: ${PACKAGES[*]} already installed ($(dpkg-query -W -f='${Version}' slurmctld))"
    return
  fi
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install SLURM and munge yourself"
  local start=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm-local-apt.log 2>&1; then
    say "apt-get install failed; updating the package lists and trying again"
    apt-get update -q >>/tmp/slurm-local-apt.log 2>&1 || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/slurm-local-apt.log 2>&1 \
      || die "apt-get install ${missing[*]} failed: see /tmp/slurm-local-apt.log"
  fi
  say "installed ${missing[*]} with apt-get in $((SECONDS - start)) s ($(dpkg-query -W -f='${Version}' slurmctld); log /tmp/slurm-local-apt.log)"
}

write_conf() {
  if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script (a real cluster's?): left as it is, nothing started"
  fi
  local mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm "$LOGS" "$STATE/slurmctld" "$STATE/slurmd"
  local tmp
  tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
  cat >"$tmp" <<EOF
$MARK
ClusterName=dpmlocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits the step credential's lifetime before it starts again: 10 s here instead of 120
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# look at pending jobs every 5 s (a requeued job starts once its wait is over, not up to a minute later)
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# the node as declared here, not as detected (more CPUs than cores: see the header of the script)
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    say "config: $CONF unchanged (node $NODE, $CPUS CPUs, partition local)"
  else
    mv "$tmp" "$CONF"
    chmod 644 "$CONF"
    say "config: wrote $CONF (node $NODE at 127.0.0.1, $CPUS CPUs, ${mem} MB, partition local)"
  fi
}

start_munge() {
  if running /run/munge/munged.pid; then
    say "munged already running (pid $(cat /run/munge/munged.pid))"
    return
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
    chown munge:munge /etc/munge/munge.key
    say "munge: created /etc/munge/munge.key"
  fi
  runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munged does not answer: see /var/log/munge/munged.log"
  say "started munged (log /var/log/munge/munged.log)"
}

start_daemon() {  # name
  local name=$1 pidfile=/run/$1.pid
  if running "$pidfile"; then
    say "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  "/usr/sbin/$name" || die "$name did not start: see $LOGS/$name.log"
  say "started $name (log $LOGS/$name.log)"
}

wait_idle() {
  local start=$SECONDS state=""
  while [ $((SECONDS - start)) -lt 60 ]; do
    if controller_answers; then
      state=$(node_state)
      case "$state" in
        idle*|mixed*|allocated*|completing*) say "node $NODE is $state after $((SECONDS - start)) s: sinfo, sbatch and srun work"; return ;;
        down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
      esac
    fi
    sleep 1
  done
  die "node $NODE not idle after 60 s (state: ${state:-no answer from slurmctld}); logs: $LOGS/slurmctld.log, $LOGS/slurmd.log"
}

up() {
  need_root up
  local start=$SECONDS
  if controller_answers && [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK"; then
    case "$(node_state)" in
      idle*|mixed*|allocated*|completing*) say "already up: node $NODE $(node_state) (logs in $LOGS)"; return ;;
    esac
  fi
  install
  write_conf
  start_munge
  start_daemon slurmctld
  start_daemon slurmd
  wait_idle
  say "up in $((SECONDS - start)) s; logs: $LOGS/slurmctld.log $LOGS/slurmd.log /var/log/munge/munged.log"
}

stop_pid() {  # name pidfile
  local name=$1 pidfile=$2 pid
  if ! running "$pidfile"; then
    say "$name not running"
    return
  fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || { say "stopped $name (pid $pid)"; return; }; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  say "killed $name (pid $pid): it did not stop within 10 s"
}

down() {
  need_root down
  if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF was not written by this script: not stopping a cluster it did not start"
  fi
  if controller_answers; then
    local jobs
    jobs=$(squeue -h -o '%i' | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      scancel $jobs || true
      say "cancelled jobs: $jobs"
      for _ in $(seq 40); do [ -z "$(squeue -h -o '%i')" ] && break; sleep 1; done
    fi
  fi
  stop_pid slurmd /run/slurmd.pid
  stop_pid slurmctld /run/slurmctld.pid
  stop_pid munged /run/munge/munged.pid
  say "down (packages kept; logs in $LOGS)"
}

status() {
  if controller_answers; then
    say "controller answers; node $NODE: $(node_state)"
    sinfo
    squeue
  else
    say "no controller answers (scripts/slurm-local.sh up starts one)"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
