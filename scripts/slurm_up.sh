#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld + slurmd + munge, all on localhost), for the Slurm tests
# and for trying `tuneforge train launcher=slurm` without a cluster. Idempotent: run it again and it only checks.
#
#   sudo scripts/slurm_up.sh          # Debian/Ubuntu: installs slurm-wlm + munge with apt if missing
#   sinfo                             # -> partition "debug", one node, idle
#   scripts/slurm_up.sh --down        # stop the daemons
#
# It never fails CI by itself: any problem is printed and it exits 0 (the Slurm tests then skip, saying why).
# Set SLURM_UP_STRICT=1 to exit non-zero instead. State lives under /var/spool/tuneforge-slurm and logs under
# /var/log/tuneforge-slurm; the config is /etc/slurm/slurm.conf (written only if absent or ours).
set -uo pipefail

STATE=/var/spool/tuneforge-slurm
LOGS=/var/log/tuneforge-slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by tuneforge scripts/slurm_up.sh"

say() { echo "slurm_up: $*" >&2; }
give_up() {
    say "$* -- the Slurm tests will skip"
    [ "${SLURM_UP_STRICT:-0}" = 1 ] && exit 1
    exit 0
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

if [ "${1:-}" = "--down" ]; then
    for d in slurmd slurmctld munged; do as_root pkill -x "$d" 2>/dev/null && say "stopped $d"; done
    exit 0
fi

if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    say "already running: $(sinfo -h -o '%P %D %T' | head -1)"
    exit 0
fi

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    command -v apt-get >/dev/null || give_up "slurm-wlm is not installed and there is no apt-get to install it"
    say "installing slurm-wlm and munge with apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurm-wlm munge >/dev/null || give_up "apt-get install slurm-wlm munge failed (root and network needed)"
}

munge_up() {
    pgrep -x munged >/dev/null && return 0
    if [ ! -s /etc/munge/munge.key ]; then
        as_root mkdir -p /etc/munge
        as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    as_root mkdir -p /run/munge /var/lib/munge /var/log/munge
    as_root chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
    as_root chmod 0400 /etc/munge/munge.key
    as_root chmod 0755 /run/munge
    as_root runuser -u munge -- munged --force 2>/dev/null || as_root munged --force ||
        give_up "munged did not start (see /var/log/munge/munged.log)"
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        say "keeping the existing $CONF (not written by this script)"
        return 0
    fi
    local node host
    host=$(hostname -s)
    # `slurmd -C` prints this machine's NodeName line (CPUs, sockets, cores, threads, RealMemory).
    node=$(slurmd -C 2>/dev/null | grep '^NodeName=') || give_up "slurmd -C could not describe this machine"
    as_root mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
    as_root tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=tuneforge
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

daemons_up() {
    pgrep -x slurmctld >/dev/null || as_root slurmctld || give_up "slurmctld did not start (see $LOGS/slurmctld.log)"
    pgrep -x slurmd >/dev/null || as_root slurmd || give_up "slurmd did not start (see $LOGS/slurmd.log)"
    for _ in $(seq 60); do
        state=$(sinfo -h -o %T 2>/dev/null | head -1)
        case "$state" in
            idle|mixed|allocated) say "up: $(sinfo -h -o '%P %D %T %c CPUs' | head -1)"; return 0 ;;
            down*|drain*) as_root scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null ;;
        esac
        sleep 1
    done
    give_up "sinfo never reported the node idle (last state: '${state:-no answer}'; see $LOGS)"
}

install
munge_up
write_conf
daemons_up
