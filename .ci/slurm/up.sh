#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on localhost for phenoica's workflow tests.
#
#   bash .ci/slurm/up.sh                  # with accounting: MariaDB + slurmdbd (sacct works)
#   bash .ci/slurm/up.sh --no-accounting  # without: jobs are tracked by squeue only
#
# Idempotent: installs what is missing (Debian packages), rewrites the config, (re)starts only
# what is not already running with that config, and waits until `sinfo` shows the node idle.
# Runs as root (SlurmUser=root). One GPU is declared as a gres backed by /dev/null, so jobs
# that ask for a GPU are scheduled and get CUDA_VISIBLE_DEVICES, while the code inside falls
# back to the CPU. Stop everything with .ci/slurm/down.sh.
set -euo pipefail

ACCOUNTING="${PHENOICA_SLURM_ACCOUNTING:-1}"
for arg in "$@"; do
    case "$arg" in
        --accounting) ACCOUNTING=1 ;;
        --no-accounting) ACCOUNTING=0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "up.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

CLUSTER=phenoica
ACCOUNT=phenoica            # a Slurm account for `--account`, registered when accounting is on
CPU_PARTITION=cpu
GPU_PARTITION=gpu
MIN_JOB_AGE=900             # squeue keeps finished jobs this long (the executor's squeue mode)
DB_PASS=phenoica-slurmdbd   # local socket-only MariaDB on a throwaway CI machine
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
WAIT_S="${PHENOICA_SLURM_WAIT_S:-120}"

log() { echo "[slurm-up] $*" >&2; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (Slurm runs here with SlurmUser=root)"

# --- packages --------------------------------------------------------------------------
need=()
command -v munged >/dev/null || need+=(munge)
command -v slurmctld >/dev/null || need+=(slurmctld slurm-client)
command -v slurmd >/dev/null || need+=(slurmd)
if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" /var/spool/slurmctld /var/spool/slurmd

# --- munge -----------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
chown -R munge:munge /etc/munge; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    # --force: start even where the state folders are not root-owned the way munged wants
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# --- slurm.conf ------------------------------------------------------------------------
NODE="$(hostname -s)"
read -r CPUS SOCKETS CORES THREADS MEM < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
    $1=="CPUs"{c=$2} $1=="SocketsPerBoard"{s=$2} $1=="CoresPerSocket"{k=$2}
    $1=="ThreadsPerCore"{t=$2} $1=="RealMemory"{m=$2} END{print c, s, k, t, m}')
[ -n "$MEM" ] || die "could not read the node's CPUs and memory from 'slurmd -C'"
# Leave a little memory to the OS so slurmd never reports less than the config asks for.
MEM=$(( MEM * 97 / 100 ))

if [ "$ACCOUNTING" = 1 ]; then
    ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
    ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

NEW_CONF="$(cat <<CONF
# Written by phenoica .ci/slurm/up.sh (accounting=$ACCOUNTING): a one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$CONF_DIR/task_prolog.sh
AccountingStoreFlags=job_comment
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=5
SlurmctldTimeout=60
SlurmdTimeout=60
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$ACCT_LINES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$CPU_PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
CONF
)"
# A GPU backed by /dev/null: Slurm schedules it and exports CUDA_VISIBLE_DEVICES; CUDA finds
# no device there, so torch falls back to the CPU.
NEW_GRES="NodeName=$NODE Name=gpu File=/dev/null"
NEW_CGROUP="CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no"

# Every task (batch script and srun step) appends its GPU environment to task_env.log, so tests
# can check that GPU jobs ran with CUDA_VISIBLE_DEVICES set.
NEW_PROLOG='#!/bin/sh
echo "job=$SLURM_JOB_ID step=${SLURM_STEP_ID:-batch} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" >> '"$LOG_DIR"'/task_env.log'

changed=0
write_if_changed() {  # path mode content
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$3" ]; then
        printf '%s\n' "$3" > "$1.tmp" && chmod "$2" "$1.tmp" && mv "$1.tmp" "$1"
        changed=1
    fi
}
write_if_changed "$CONF_DIR/slurm.conf" 644 "$NEW_CONF"
write_if_changed "$CONF_DIR/gres.conf" 644 "$NEW_GRES"
write_if_changed "$CONF_DIR/cgroup.conf" 644 "$NEW_CGROUP"
write_if_changed "$CONF_DIR/task_prolog.sh" 755 "$NEW_PROLOG"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # pidfile
    if running "$1"; then
        local pid; pid="$(cat "$1")"; kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

if [ "$changed" = 1 ]; then
    log "configuration changed: restarting slurm daemons"
    stop_pidfile "$RUN_DIR/slurmd.pid"
    stop_pidfile "$RUN_DIR/slurmctld.pid"
fi

# --- accounting: MariaDB + slurmdbd ----------------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    if ! mariadb-admin ping >/dev/null 2>&1; then
        log "starting MariaDB"
        setsid mariadbd-safe --user=mysql --skip-networking >/dev/null 2>&1 < /dev/null &
        for _ in $(seq 150); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
        mariadb-admin ping >/dev/null 2>&1 || die "MariaDB did not start (see /var/log/mysql)"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    NEW_DBD="DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log"
    changed=0
    write_if_changed "$CONF_DIR/slurmdbd.conf" 600 "$NEW_DBD"
    [ "$changed" = 1 ] && stop_pidfile "$RUN_DIR/slurmdbd.pid"
    if ! running "$RUN_DIR/slurmdbd.pid"; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd
        for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
        sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $LOG_DIR/slurmdbd.log)"
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
else
    stop_pidfile "$RUN_DIR/slurmdbd.pid"
fi

# --- slurmctld + slurmd ----------------------------------------------------------------
if ! running "$RUN_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld is not up (see $LOG_DIR/slurmctld.log)"
if ! running "$RUN_DIR/slurmd.pid"; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi

if [ "$ACCOUNTING" = 1 ]; then
    # An account for `--account`, with root as a user, so the executor's account check passes.
    if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=phenoica-ci >/dev/null
    fi
    if ! sacctmgr -n -P list assoc user=root format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    fi
fi

# --- wait for an idle node ------------------------------------------------------------------
deadline=$(( SECONDS + WAIT_S ))
while :; do
    state="$(sinfo -h -n "$NODE" -p "$CPU_PARTITION" -o '%t' 2>/dev/null | head -1)"
    case "$state" in
        idle|mix|alloc) break ;;
        down*|drain*|drng*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "node $NODE is '$state', not idle after ${WAIT_S}s (see $LOG_DIR/slurmd.log)"
    sleep 1
done
log "cluster '$CLUSTER' is up: node $NODE ($CPUS CPUs, ${MEM} MB, gres gpu:1), partitions" \
    "$CPU_PARTITION (default) and $GPU_PARTITION, accounting=$ACCOUNTING"
sinfo
