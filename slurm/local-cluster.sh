#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm): slurmctld and slurmd on
# localhost, munge authentication, no cgroups and no accounting. Run as root.
#
#   slurm/local-cluster.sh start    install slurm-wlm if needed, write the config, start daemons
#   slurm/local-cluster.sh stop     stop the daemons this script started
#   slurm/local-cluster.sh status   exit 0 when the cluster answers and its node is usable
#
# It refuses to touch a slurm.conf it did not write, so it is safe on a machine that already
# belongs to a real cluster. CPUS (default: all cores) sets the node's size.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by harness slurm/local-cluster.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
CPUS=${CPUS:-$(nproc)}
# the memory a job may ask for (--mem): this machine's, less 1 GB for the system
MEMORY_MB=${MEMORY_MB:-$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        echo "local-cluster.sh: $CONF exists and was not written by this script; leaving it alone" >&2
        exit 1
    fi
    mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS"
    cat >"$CONF" <<CONF
$MARK
ClusterName=harness
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

ready() {
    scontrol ping 2>/dev/null | grep -q "is UP" &&
        sinfo -h -n localhost -o %t 2>/dev/null | grep -Eq "^(idle|mix|alloc)$"
}

start() {
    if ! command -v slurmctld >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
    fi
    write_config
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- munged
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd -N localhost
    for _ in $(seq 60); do
        if ready; then
            echo "local-cluster.sh: one-node cluster up ($CPUS CPUs, partition debug)"
            return 0
        fi
        sleep 0.5
    done
    echo "local-cluster.sh: cluster did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
    exit 1
}

stop() {
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
