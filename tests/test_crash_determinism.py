"""Crash safety and determinism on the tiny demo.

- SIGKILL of the whole workflow (Snakemake and its jobs) in the middle of embedding: no
  half-written .h5ad/.safetensors under its final name; `snakemake --unlock` and the same command
  again complete, bit-identical (X, obsm, checkpoints, result tables) to the session's
  uninterrupted reference run in another folder, with no *.partial left anywhere: the one
  determinism check of the suite (two independent trainings and embeddings agree bit for bit).
- scancel of a Slurm embed job in the middle of its work: in test_slurm.py (all users of the
  session's Slurm run in one module, so that CI's workers run it once).
"""

from __future__ import annotations

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
