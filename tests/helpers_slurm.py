"""Running `snakemake --profile slurm` from a test without leaving anything behind.

:func:`snakemake_run` starts Snakemake in its own session (so a Ctrl-C of pytest does not reach
it half-way) and, however the test ends -- normally, by an assertion, a timeout or
KeyboardInterrupt -- stops it and cancels its Slurm jobs: SIGINT to the whole process group
(Snakemake then scancels its own jobs), SIGKILL after ``grace_s`` (a Snakemake that ignores
SIGTERM is still stopped), then ``scancel`` of every job of the run (by the executor's run ID,
the job name, and by the project folder the jobs were submitted from), waiting until squeue no
longer lists them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def run_id_of(output: str) -> str | None:
    """The executor's run UUID (every job of the run is named after it)."""
    match = re.search(r"SLURM run ID: (\S+)", output)
    return match.group(1) if match else None


def project_jobs(workdir: str | os.PathLike, run_id: str | None = None) -> list[tuple[str, str]]:
    """(job id, state) of this user's jobs squeue still lists that were submitted from
    ``workdir`` or are named ``run_id``."""
    text = subprocess.run(["squeue", "--me", "--noheader", "--format=%i|%T|%j|%Z"],
                          capture_output=True, text=True, timeout=30).stdout
    folder = os.path.realpath(workdir)
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4 and (os.path.realpath(parts[3]) == folder or (run_id and parts[2] == run_id)):
            jobs.append((parts[0].strip(), parts[1].strip()))
    return jobs


def cancel_project_jobs(workdir: str | os.PathLike, run_id: str | None = None,
                        timeout_s: float = 60.0) -> list[str]:
    """scancel every job of the run and wait until squeue lists none; returns the ids cancelled."""
    cancelled: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = project_jobs(workdir, run_id)
        if not jobs:
            return cancelled
        active = [job_id for job_id, state in jobs if state not in ("COMPLETING", "CANCELLED")]
        if active:
            subprocess.run(["scancel", *active], capture_output=True, timeout=60)
            cancelled += [j for j in active if j not in cancelled]
        if time.monotonic() > deadline:
            raise AssertionError(f"Slurm jobs of {workdir} still listed after scancel: {jobs}")
        time.sleep(1)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_snakemake(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Ctrl-C for the whole process group, then SIGKILL if it is still there after ``grace_s``."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc, signal.SIGKILL)  # also whatever it started and left in its session
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def snakemake_run(command: Sequence[str], *, cwd: str | os.PathLike, env: Mapping[str, str],
                  log_path: str | os.PathLike, grace_s: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run ``command`` (Snakemake) in ``cwd`` with its output in ``log_path``; on leaving the
    block, stop it and cancel its Slurm jobs (see the module docstring)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop_snakemake(proc, grace_s)
            cancel_project_jobs(cwd, run_id_of(Path(log_path).read_text(errors="replace")))


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
