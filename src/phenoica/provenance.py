"""What every stage records in ``uns["phenoica"]``: versions, parameters, seeds, inputs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from . import __version__

_TRACKED = ("numpy", "pandas", "anndata", "scanpy", "scikit-learn", "scipy", "torch", "timm", "tifffile")


def package_versions() -> dict[str, str]:
    out = {"phenoica": __version__, "python": sys.version.split()[0]}
    for name in _TRACKED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record(stage: str, params: dict | None = None, seeds: dict | None = None,
           inputs: list[str | os.PathLike] | None = None) -> dict:
    """A provenance record for ``uns``. ``params`` is stored as JSON text so that any nested
    config snapshot survives the round trip through .h5ad unchanged."""
    return {
        "stage": stage,
        "versions": package_versions(),
        "params_json": json.dumps(params or {}, sort_keys=True, default=str),
        "seeds_json": json.dumps(seeds or {}, sort_keys=True, default=str),
        "inputs": [str(p) for p in (inputs or [])],
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def add_record(uns: dict, stage: str, **kwargs) -> dict:
    """Append a provenance record under ``uns["phenoica"]["stages"][stage]`` and return it."""
    block = uns.setdefault("phenoica", {})
    block.setdefault("version", __version__)
    stages = block.setdefault("stages", {})
    stages[stage] = record(stage, **kwargs)
    return stages[stage]
