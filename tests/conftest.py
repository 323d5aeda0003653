"""Shared fixtures: a local Slurm cluster, and the tiny demo run once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest
from helpers_workflow import Project, make_project, slurm_job_records


@dataclass(frozen=True)
class SlurmCluster:
    accounting: bool          # slurmdbd answers: sacct works
    partitions: tuple[str, ...]
    account: str | None       # an account the current user may submit with (accounting only)

    @property
    def cpu_partition(self) -> str:
        return "cpu" if "cpu" in self.partitions else self.partitions[0]

    @property
    def gpu_partition(self) -> str:
        return "gpu" if "gpu" in self.partitions else self.cpu_partition


def _slurm_unavailable(reason: str):
    if os.environ.get("PHENOICA_REQUIRE_SLURM") == "1":
        pytest.fail(f"PHENOICA_REQUIRE_SLURM=1 but {reason} (start it with bash .ci/slurm/up.sh)")
    pytest.skip(f"no Slurm cluster: {reason} (start one with bash .ci/slurm/up.sh)")


def _slurm_out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running cluster (.ci/slurm/up.sh); skips without one unless PHENOICA_REQUIRE_SLURM=1."""
    if shutil.which("sinfo") is None:
        _slurm_unavailable("'sinfo' is not installed")
    try:
        states = _slurm_out("sinfo", "-h", "-o", "%P %t").split()
    except (subprocess.SubprocessError, OSError) as err:
        _slurm_unavailable(f"'sinfo' does not answer ({err})")
    if not states:
        _slurm_unavailable("'sinfo' lists no partition")
    partitions = tuple(dict.fromkeys(p.rstrip("*") for p in states[0::2]))
    if not any(s in ("idle", "mix", "alloc") for s in states[1::2]):
        _slurm_unavailable(f"no node is up ({' '.join(states)})")
    config = _slurm_out("scontrol", "show", "config")
    accounting = "accounting_storage/slurmdbd" in config
    account = None
    if accounting:
        user = _slurm_out("id", "-un").strip()
        rows = _slurm_out("sacctmgr", "-n", "-P", "list", "assoc", f"user={user}",
                          "format=account").split()
        account = "phenoica" if "phenoica" in rows else (rows[0] if rows else None)
    return SlurmCluster(accounting=accounting, partitions=partitions, account=account)


@pytest.fixture
def one_torch_thread():
    """Tiny torch models run faster on one thread, above all on a shared, busy 2-core machine
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_thread():
    """torch and the BLAS pools on one thread for a whole module: on 2 shared cores their thread
    pools only oversubscribe (use with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Project:
    """The tiny demo, run once locally to completion: the outputs every other run must equal.

    Tests must not modify it; copy it with helpers_workflow.copy_project first.
    """
    project = make_project(tmp_path_factory.mktemp("reference") / "project")
    start = time.perf_counter()
    project.run()
    project.elapsed_s = time.perf_counter() - start  # type: ignore[attr-defined]
    return project


@dataclass
class SlurmRun:
    """One run of the tiny demo up to post-processing through `snakemake --profile slurm` on
    the local cluster, with one embed_plate job cancelled (scancel) while it ran."""

    project: Project
    run_id: str               # the executor's run UUID: the Slurm job name of every job
    output: str               # Snakemake's output (with --verbose: the sbatch calls)
    returncode: int
    cancelled_job: str | None  # Slurm id of the embed job that was scancelled
    cancelled_comment: str | None
    partials_after_cancel: list  # *.partial files seen right after the cancel
    unreadable_after_cancel: str | None  # a final-named output that did not open, then
    jobs: list[dict]          # one record per Slurm job of the run (sacct or squeue)


@pytest.fixture(scope="session")
def slurm_run(slurm_cluster, tmp_path_factory) -> SlurmRun:
    import re
    import threading

    from helpers_slurm import snakemake_run
    from helpers_workflow import PHENOICA, SNAKEMAKE, assert_complete_files, partial_files

    root = tmp_path_factory.mktemp("slurm")
    project = make_project(root / "project")
    home = root / "home"
    env = project.env({"HOME": str(home)})
    env.pop("XDG_CONFIG_HOME", None)
    install = [PHENOICA, "profile", "install", "slurm",
               "--partition", slurm_cluster.cpu_partition,
               "--gpu-partition", slurm_cluster.gpu_partition,
               # the same threads as the local run (2), so the outputs can be bit-identical
               "--cpus-per-gpu", "2", "--max-cores", "2", "--max-mem-mb", "8000",
               "--jobs", "8", "--status-wait", "3"]
    if slurm_cluster.account:
        install += ["--account", slurm_cluster.account]
    # squeue (the profile's default): the executor then sees the scancelled job as CANCELLED
    subprocess.run(install, env=env, check=True, capture_output=True)

    # up to post-processing: every kind of job (per-plate groups, GPU training and embedding,
    # CPU aggregates) goes through Slurm; scores, benchmarks and figures add only more CPU jobs
    config = project.config()
    targets = [f"results/postprocess/{config['model']['id']}/{method}.h5ad"
               for method in config["postprocess"]["methods"]]
    log_path = root / "snakemake.out"
    cancelled: dict = {}

    def embedding_started() -> bool:
        logs = (project.results() / "logs" / "embed").rglob("*.log")
        return any("rule embed_plate" in path.read_text(errors="replace") for path in logs)

    def cancel_one_embedding() -> None:
        # scancel the running embed_plate job once its rule function has started
        while proc.poll() is None and not cancelled:
            if not embedding_started():
                time.sleep(0.3)
                continue
            text = subprocess.run(["squeue", "--noheader", "--states=RUNNING",
                                   "--format=%i|%k"], capture_output=True, text=True).stdout
            for line in text.splitlines():
                job_id, comment = line.split("|", 1)
                if comment.startswith("rule_embed_plate"):
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled.update(id=job_id, comment=comment)
                    time.sleep(7)  # past Slurm's KillWait: the job's processes are gone
                    cancelled["partials"] = partial_files(project.root / "results")
                    try:
                        assert_complete_files(project.root / "results")
                    except Exception as err:  # noqa: BLE001 (reported by the test)
                        cancelled["unreadable"] = repr(err)
                    return
            time.sleep(0.3)

    # However this ends (Ctrl-C of pytest, the timeout, an error), snakemake_run stops Snakemake
    # and cancels the run's Slurm jobs before the session goes on.
    with snakemake_run([SNAKEMAKE, "--profile", "slurm", "--verbose", *targets], cwd=project.root,
                       env=env, log_path=log_path) as proc:
        watcher = threading.Thread(target=cancel_one_embedding, daemon=True)
        watcher.start()
        try:
            returncode = proc.wait(timeout=40 * 60)
        except subprocess.TimeoutExpired:
            returncode = -15
        watcher.join(timeout=5)
    output = log_path.read_text()
    match = re.search(r"SLURM run ID: (\S+)", output)
    run_id = match.group(1) if match else ""
    jobs = slurm_job_records(run_id, slurm_cluster.accounting) if run_id else []
    return SlurmRun(project=project, run_id=run_id, output=output, returncode=returncode,
                    cancelled_job=cancelled.get("id"), cancelled_comment=cancelled.get("comment"),
                    partials_after_cancel=cancelled.get("partials", []),
                    unreadable_after_cancel=cancelled.get("unreadable"), jobs=jobs)
