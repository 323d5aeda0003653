"""Running the real workflow on a tiny demo config in a temporary copy of the project.

Used by test_slurm, test_incremental and test_crash_determinism (fixtures in conftest.py) and
by tests/benchmarks/bench_dag.py. Nothing here writes into the checkout.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PHENOICA = str(Path(sys.executable).with_name("phenoica"))
# What a project needs to run the workflow; results/, logs/ and .snakemake/ are never copied.
PROJECT_ITEMS = ("Snakefile", "profiles", "workflow", "config", "envs")

# The demo made small: 2 plates in 2 batches, 12 wells, 1 site, 64 px (the demo MAE's crop), one
# training epoch, two post-processing methods. Keys follow config/config.yaml.
TINY_PLATES = ("P01", "P03")
TINY_OVERRIDES: dict[str, Any] = {
    "simulate": {"params": {
        "image_size": 64, "n_sites": 1, "n_rows": 2, "n_cols": 6, "n_control_wells": 4,
        "mechanism_sizes": [2, 2], "n_null": 1, "cells_per_site": 8.0,
    }},
    # a fixed training set: adding a plate later must not retrain (and re-embed) everything
    "train": {"epochs": 1, "batch_size": 8, "crops_per_site": 1, "plate_stats_sites": 4,
              "plates": list(TINY_PLATES)},
    "postprocess": {"methods": {"base": {}, "pca_ica": {"n_components": 4}}},
    # a PCA preview instead of UMAPs (umap-learn compiles for ~30 s per job; test_plots.py keeps
    # one real UMAP)
    "report": {"embedding": "pca"},
}


# Config sections that an override replaces whole instead of merging into.
REPLACED_KEYS = ("methods",)


def deep_update(base: dict, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` merged in, nested dicts merged key by key (except the
    sections in REPLACED_KEYS, e.g. the post-processing methods, which are replaced whole)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if (isinstance(value, Mapping) and isinstance(merged.get(key), dict)
                and key not in REPLACED_KEYS):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    output: list[str] = field(default_factory=list)
    input: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        wc = ",".join(f"{k}={v}" for k, v in sorted(self.wildcards.items()))
        return f"{self.rule}[{wc}]" if wc else self.rule


_JOB_RE = re.compile(r"^\s*(?:local)?rule (\w+):\s*$")
_FIELD_RE = re.compile(r"^\s*(wildcards|reason|output|input): (.*)$")


def parse_dry_run(text: str) -> list[Job]:
    """Jobs listed by ``snakemake -n`` (rule name, wildcards, reason), in printed order."""
    jobs: list[Job] = []
    for line in text.splitlines():
        if match := _JOB_RE.match(line):
            jobs.append(Job(match.group(1)))
        elif jobs and (match := _FIELD_RE.match(line)):
            if match.group(1) == "wildcards":
                jobs[-1].wildcards = dict(
                    item.split("=", 1) for item in match.group(2).split(", ") if "=" in item
                )
            elif match.group(1) in ("output", "input"):
                setattr(jobs[-1], match.group(1), match.group(2).split(", "))
            else:
                jobs[-1].reason = match.group(2)
    return jobs


class Project:
    """A copy of the workflow with its own config, plate sheet, results and .snakemake."""

    def __init__(self, root: Path, results: str = "results"):
        self.root = Path(root)
        self.results_folder = results  # the config's results folder (config key results)

    # --- config and sheet -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config" / "config.yaml"

    def config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    def update_config(self, overrides: Mapping) -> None:
        self.config_path.write_text(yaml.safe_dump(deep_update(self.config(), overrides)))

    @property
    def sheet_path(self) -> Path:
        return self.root / self.config()["plates"]

    def sheet(self) -> pd.DataFrame:
        return pd.read_csv(self.sheet_path, sep="\t", dtype=str, keep_default_na=False)

    def write_sheet(self, sheet: pd.DataFrame) -> None:
        sheet.to_csv(self.sheet_path, sep="\t", index=False)

    # --- running ----------------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
        env["PHENOICA_PROGRESS"] = "0"
        env.update(extra or {})
        return env

    def snakemake(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 900,
                  check: bool = True) -> subprocess.CompletedProcess:
        run = subprocess.run([SNAKEMAKE, *args], cwd=self.root, env=self.env(env),
                             capture_output=True, text=True, timeout=timeout)
        if check and run.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({run.returncode}):\n"
                                 f"{run.stdout[-4000:]}\n{run.stderr[-8000:]}")
        return run

    def run(self, *args: str, cores: int = 2, **kwargs) -> subprocess.CompletedProcess:
        return self.snakemake("--cores", str(cores), *args, **kwargs)

    def dry_run(self, *args: str) -> list[Job]:
        """Jobs a run would execute now."""
        run = self.snakemake("-n", *args)
        return parse_dry_run(run.stdout + "\n" + run.stderr)

    def start(self, *args: str, cores: int = 2, log_name: str = "snakemake.out",
              env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start a run in its own process group (so the test can kill it whole)."""
        out = open(self.root / log_name, "w")  # noqa: SIM115 (closed by the Popen's owner)
        return subprocess.Popen([SNAKEMAKE, "--cores", str(cores), *args], cwd=self.root,
                                env=self.env(env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    # --- outputs ----------------------------------------------------------------------------
    def results(self) -> Path:
        return self.root / self.results_folder


def copy_workflow(dest: Path) -> None:
    """Copy what a project needs to run the workflow (PROJECT_ITEMS) into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / item)


def make_project(dest: Path, *, plates: Iterable[str] = TINY_PLATES,
                 overrides: Mapping | None = None) -> Project:
    """Copy the workflow into ``dest`` with the tiny demo config and a sheet of ``plates``."""
    dest = Path(dest)
    copy_workflow(dest)
    project = Project(dest)
    project.update_config(deep_update(TINY_OVERRIDES, overrides or {}))
    sheet = project.sheet()
    missing = set(plates) - set(sheet["plate"])
    assert not missing, f"plates {missing} are not in the demo sheet"
    project.write_sheet(sheet[sheet["plate"].isin(list(plates))])
    return project


def copy_project(source: Project, dest: Path) -> Project:
    """A copy of a project with its results and Snakemake metadata (mtimes kept)."""
    shutil.copytree(source.root, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("locks", "incomplete", "__pycache__"))
    return Project(dest)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the run's whole process group (Snakemake and its job processes)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run (``snakemake -n --quiet rules``): rule -> jobs."""
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


# --- comparing results -------------------------------------------------------------------------
def embedding_arrays(results: Path) -> dict[str, np.ndarray]:
    """``X`` and every ``obsm``/``layers`` array of every .h5ad under ``results`` (by path)."""
    import anndata

    arrays: dict[str, np.ndarray] = {}
    for path in sorted(results.rglob("*.h5ad")):
        rel = path.relative_to(results).as_posix()
        adata = anndata.read_h5ad(path)
        arrays[f"{rel}:obs_names"] = np.asarray(adata.obs_names, dtype=str)
        if adata.X is not None:
            arrays[f"{rel}:X"] = np.asarray(adata.X)
        for key, value in adata.obsm.items():
            arrays[f"{rel}:obsm[{key}]"] = np.asarray(value)
        for key, value in adata.layers.items():
            arrays[f"{rel}:layers[{key}]"] = np.asarray(value)
    return arrays


def checkpoint_tensors(results: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for path in sorted(results.rglob("*.safetensors")):
        rel = path.relative_to(results).as_posix()
        for key, value in load_file(str(path)).items():
            tensors[f"{rel}:{key}"] = value
    return tensors


def result_tables(results: Path) -> dict[str, pd.DataFrame]:
    """Top-level result tables (scores, benchmarks): no timings in them."""
    return {p.name: pd.read_csv(p, sep="\t") for p in sorted(results.glob("*.tsv"))}


def assert_identical_results(a: Path, b: Path, *, partial: bool = False) -> None:
    """Bit-identical embeddings (X, obsm, layers of every .h5ad), checkpoints and tables.

    ``partial``: ``b`` is a run that stopped at an earlier target; every output it has must equal
    ``a``'s (and it must have some)."""
    for load in (embedding_arrays, checkpoint_tensors):
        left, right = load(a), load(b)
        assert left and right, f"no outputs under {a} or {b}"
        if partial:
            assert set(right) <= set(left), sorted(set(right) - set(left))
            left = {key: left[key] for key in right}
        assert sorted(left) == sorted(right)
        for key in left:
            assert left[key].dtype == right[key].dtype, key
            assert np.array_equal(left[key], right[key]), f"{key} differs between runs"
    left, right = result_tables(a), result_tables(b)
    if partial:
        left = {name: left[name] for name in right}
    assert sorted(left) == sorted(right)
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], check_exact=True, obj=name)


def partial_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".partial") or ".partial" in p.suffixes)


def assert_complete_files(results: Path) -> int:
    """Every .h5ad and .safetensors under ``results`` opens in full; returns how many."""
    import h5py
    from safetensors.numpy import load_file

    count = 0
    for path in results.rglob("*.h5ad"):
        with h5py.File(path, "r") as handle:  # a truncated file fails to open
            assert "X" in handle or "obsm" in handle, f"{path} has no X"
        count += 1
    for path in results.rglob("*.safetensors"):
        load_file(str(path))
        count += 1
    return count


# --- Slurm -------------------------------------------------------------------------------------
def _command_out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


SLURM_TASK_ENV_LOG = "/var/log/slurm/task_env.log"  # written by up.sh's TaskProlog


def slurm_job_records(run_id: str, accounting: bool) -> list[dict]:
    """Every Slurm job named ``run_id``: id, state, partition, memory, GPUs, comment."""
    if accounting:
        text = _command_out("sacct", "-X", "--parsable2", "--noheader", "--name", run_id,
                          "--starttime", "now-1days", "--format",
                          "JobIdRaw,State,Partition,ReqMem,AllocTRES,Comment")
        fields = ("id", "state", "partition", "mem", "tres", "comment")
    else:
        text = _command_out("squeue", "--states=all", "--noheader", "--name", run_id,
                          "--format=%i|%T|%P|%m|%b|%k")
        fields = ("id", "state", "partition", "mem", "tres", "comment")
    return [dict(zip(fields, line.split("|"))) for line in text.splitlines() if line.strip()]


# --- what a Snakemake start imports ------------------------------------------------------------
# Runs Snakemake's entry point in a fresh interpreter that writes the names of every module it
# has loaded to PHENOICA_MODULES_OUT when it exits (test_startup.py, benchmarks/bench_startup.py).
_MODULES_PROBE = """
import atexit, os, sys

def _dump():
    with open(os.environ["PHENOICA_MODULES_OUT"], "w") as handle:
        handle.write("\\n".join(sorted(sys.modules)))

atexit.register(_dump)
from snakemake.cli import main

sys.argv[0] = "snakemake"
sys.exit(main())
"""


def snakemake_modules(project: Project, *args: str, timeout: float = 600) -> set[str]:
    """Modules loaded by ``snakemake <args>`` run in ``project`` (a fresh process)."""
    out = project.root / ".modules.txt"
    out.unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-c", _MODULES_PROBE, *args], cwd=project.root,
                         env=project.env({"PHENOICA_MODULES_OUT": str(out)}),
                         capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({run.returncode}):\n"
                             f"{run.stdout[-4000:]}\n{run.stderr[-8000:]}")
    return set(out.read_text().split())
