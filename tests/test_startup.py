"""Snakemake starts fast: building the DAG imports no heavy library.

Every Snakemake start (each dry run, each cluster job) pays for what the Snakefile imports, so the
rule files import only light modules (settings are checked by the config schema and by light
helpers). The start-up time itself is measured by tests/benchmarks/bench_startup.py.
"""

from __future__ import annotations

from helpers_workflow import make_project, snakemake_modules

# Libraries a Snakemake start must not load (each costs from a few tenths of a second to seconds).
HEAVY = ("torch", "timm", "scanpy", "umap", "anndata", "scipy", "sklearn", "matplotlib", "numba",
         "h5py", "zarr", "safetensors", "tifffile")


def test_building_the_dag_imports_no_heavy_library(tmp_path):
    project = make_project(tmp_path / "p")
    # the main pipeline and the identifiability and synthetic-benchmark targets in one DAG
    loaded = snakemake_modules(project, "-n", "all", "identifiability", "synthetic_benchmark")
    assert "phenoica.config" in loaded  # the probe saw the Snakefile's imports
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"building the DAG imported {heavy}"
