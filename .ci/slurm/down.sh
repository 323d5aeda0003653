#!/usr/bin/env bash
# Stop the local test cluster started by .ci/slurm/up.sh (slurmd, slurmctld, slurmdbd,
# MariaDB, munged), each by the pid in its own pid file. `--purge` also clears Slurm's saved
# state (queued jobs, job-id counter); the accounting database is kept.
set -uo pipefail
RUN_DIR=/run/slurm
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1

stop_pidfile() {  # name pidfile
    [ -f "$2" ] || return 0
    local pid; pid="$(cat "$2")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "[slurm-down] stopping $1 ($pid)" >&2
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
}

# Cancel what is still queued so a later up.sh starts from an empty queue.
if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    scancel --full --quiet --user=root 2>/dev/null || true
fi
stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"
if command -v mariadb-admin >/dev/null && mariadb-admin ping >/dev/null 2>&1; then
    echo "[slurm-down] stopping MariaDB" >&2
    mariadb-admin shutdown 2>/dev/null || true
fi
stop_pidfile munged /run/munge/munged.pid
[ "$PURGE" = 1 ] && rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
exit 0
