"""Crash safety and determinism on the tiny demo.

- SIGKILL of the whole workflow (Snakemake and its jobs) in the middle of embedding: no
  half-written .h5ad/.safetensors under its final name; `snakemake --unlock` and the same command
  again complete, bit-identical (X, obsm, checkpoints, result tables) to the session's
  uninterrupted reference run in another folder, with no *.partial left anywhere: the one
  determinism check of the suite (two independent trainings and embeddings agree bit for bit).
- scancel of a Slurm embed job in the middle of its work: the executor's retry (memory x attempt)
  completes the run (fixture slurm_run, conftest.py; test_slurm.py compares its outputs with the
  local run).
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from helpers_workflow import (
    assert_complete_files,
    assert_identical_results,
    kill_group,
    make_project,
    partial_files,
    wait_for,
)

pytestmark = pytest.mark.slow


def _embedding_started(project) -> bool:
    logs = (project.results() / "logs" / "embed").rglob("*.log")
    return any("rule embed_plate" in path.read_text(errors="replace") for path in logs)


@pytest.mark.xdist_group("reference_run")  # shares the session fixtures: .ci/run, -n 2
def test_sigkill_during_embedding_then_rerun_is_identical(reference_run, tmp_path):
    project = make_project(tmp_path / "crash")
    proc = project.start()
    try:
        wait_for(lambda: _embedding_started(project) or proc.poll() is not None, timeout=1200,
                 what="embedding to start")
        assert proc.poll() is None, (project.root / "snakemake.out").read_text()[-4000:]
        time.sleep(0.5)
    finally:
        kill_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    results = project.results()
    sites = sorted(results.glob("embeddings/*/sites/*.h5ad"))
    plates = project.sheet()["plate"]
    assert len(sites) < len(plates), "the kill came after embedding had finished"
    assert assert_complete_files(results) >= 1  # at least the checkpoint, readable in full

    # Snakemake's lock outlives a SIGKILL: unlock, then the same command again.
    project.snakemake("--unlock")
    project.run()
    assert partial_files(project.root) == []
    assert_complete_files(results)
    assert_identical_results(reference_run.results(), results)


@pytest.mark.slurm
@pytest.mark.xdist_group("reference_run")  # shares the session fixtures: .ci/run, -n 2
def test_scancel_during_embedding_is_retried(slurm_run):
    assert slurm_run.cancelled_job, "no running embed_plate job was seen to scancel"
    assert slurm_run.returncode == 0, slurm_run.output[-6000:]
    by_id = {job["id"]: job for job in slurm_run.jobs}
    cancelled = by_id[slurm_run.cancelled_job]
    assert cancelled["state"].startswith("CANCELLED"), cancelled
    # the same plate's embedding was submitted again and completed
    retries = [job for job in slurm_run.jobs if job["comment"] == slurm_run.cancelled_comment
               and job["id"] != slurm_run.cancelled_job]
    assert [job["state"] for job in retries] == ["COMPLETED"], retries
    # ... asking for more memory: mem_mb x attempt
    first, second = (int(re.match(r"(\d+)", job["mem"]).group(1)) for job in (cancelled, retries[0]))
    assert second == min(2 * first, 8000), (cancelled["mem"], retries[0]["mem"])  # 8000: --max-mem-mb
    # No half-written file under a final name, then or now; nothing partial after the retry.
    assert slurm_run.unreadable_after_cancel is None, slurm_run.unreadable_after_cancel
    assert all(p.name.startswith(".") for p in slurm_run.partials_after_cancel)
    results = slurm_run.project.results()
    assert partial_files(slurm_run.project.root) == []
    assert_complete_files(results)
