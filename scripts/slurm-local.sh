#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests that submit a real sweep
# (crates/cli/tests/slurm_cluster.rs) and for trying `--emit slurm` by hand.
#
#   source scripts/slurm-local.sh          # installs (Debian), starts, exports SLURM_CONF
#   sinfo; sbatch …; squeue …
#   scripts/slurm-local.sh stop             # stops the daemons it started
#
# Debian's slurm-wlm and munge, no systemd and no cgroups: ProctrackType=proctrack/linuxproc,
# TaskPlugin=task/none. Everything lives in $RECALLSEG_SLURM_DIR (default /tmp/recallseg-slurm):
# slurm.conf, the state, the spool and the daemons' logs. The one node has this machine's CPUs
# and memory, in one partition `debug` (the default). It must run as root (slurmd starts jobs
# as their user). Sourced, it exports SLURM_CONF so that sinfo/sbatch find the cluster;
# executed, it prints the export line.

_slurm_local() {
    local dir="${RECALLSEG_SLURM_DIR:-/tmp/recallseg-slurm}"
    local conf="$dir/slurm.conf"
    if [ "${1:-start}" = stop ]; then
        for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
            [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
        done
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "slurm-local.sh: needs root (slurmd runs jobs as their user)" >&2
        return 1
    fi
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "slurm-local.sh: installing slurm-wlm and munge (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null ||
            { echo "slurm-local.sh: apt-get install slurm-wlm munge failed" >&2; return 1; }
    fi
    mkdir -p "$dir/state" "$dir/spool"
    # munge: the package made a key; the daemon needs its run folder.
    mkdir -p /run/munge && { chown munge:munge /run/munge 2>/dev/null || true; }
    if ! munge -n </dev/null >/dev/null 2>&1; then
        if [ ! -s /etc/munge/munge.key ]; then
            mungekey --create >/dev/null 2>&1 || create-munge-key -f >/dev/null 2>&1
        fi
        runuser -u munge -- munged --force 2>/dev/null || munged --force ||
            { echo "slurm-local.sh: munged did not start" >&2; return 1; }
    fi
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)"
    cat >"$conf" <<EOF
ClusterName=recallseg-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
KillWait=10
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    export SLURM_CONF="$conf"
    if ! sinfo >/dev/null 2>&1; then
        slurmctld -f "$conf" || { echo "slurm-local.sh: slurmctld did not start ($dir/slurmctld.log)" >&2; return 1; }
        slurmd -f "$conf" || { echo "slurm-local.sh: slurmd did not start ($dir/slurmd.log)" >&2; return 1; }
    fi
    # Wait (up to 30 s) for the node to be usable.
    local i
    for i in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "slurm-local.sh: cluster up ($(sinfo -h -o '%P %D %c %t')); SLURM_CONF=$conf" >&2
            return 0
        fi
        sleep 0.5
    done
    echo "slurm-local.sh: the node did not become idle: $(sinfo 2>&1 | tail -n 1) (logs in $dir)" >&2
    return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _slurm_local "$@" || exit 1
    [ "${1:-start}" = stop ] || echo "export SLURM_CONF=${RECALLSEG_SLURM_DIR:-/tmp/recallseg-slurm}/slurm.conf"
else
    _slurm_local "$@"
fi
