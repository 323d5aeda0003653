"""Checks of the benchmark protocol that need no data: cheap enough for the workflow to run
when it loads (``snakemake -n`` fails before any job runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

#: Transductive algorithms and the parameters that would read labels of the wells they correct.
LABEL_PARAMETERS = {"combat": ("covariates",)}


def check_benchmark_methods(methods: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """Refuse post-processing methods the held-out-batch benchmarks cannot run honestly.

    ``methods``: output name -> (algorithm, parameters). ComBat is transductive: in every fold
    it is fitted on the training *and* held-out wells, with the held-out wells' labels hidden.
    ComBat ``covariates`` (e.g. the perturbation) are labels, so for the held-out wells they
    would be unknown (or, if shown, leak the answer into the correction): a ComBat with
    covariates cannot be benchmarked. Raises ConfigError naming the method and the key.
    """
    for name, (algorithm, params) in methods.items():
        for key in LABEL_PARAMETERS.get(str(algorithm), ()):
            if params.get(key):
                raise ConfigError(
                    f"postprocess.methods.{name}.{key}: {algorithm} with {key} "
                    f"{list(params[key])} cannot be benchmarked on held-out batches: it is fitted "
                    f"on the held-out wells too (transductive), and their {key} are hidden labels "
                    f"there (showing them would leak the answer). Remove {key} from {name!r}, or "
                    "add a second method without them for the benchmarks")
