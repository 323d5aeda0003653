"""Which config keys each identifiability and synthetic-benchmark rule reads.

The Snakefile needs these key lists on every start (a rule's params hold only the settings its
function reads, so changing a scoring setting rescores without retraining), but the modules that
implement the rules import anndata and scipy. The lists are therefore written here, in a module
that imports nothing; :mod:`phenoica.benchmarks.identifiability` and
:mod:`phenoica.benchmarks.synthetic` check them against their functions' keyword-only arguments
(:func:`check_keys`) when they are imported, so they cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

#: identifiability keys of alignment_table + summarize_alignment (rule identifiability_alignment)
ALIGNMENT_KEYS: tuple[str, ...] = (
    "diameter", "dims", "fit_fraction", "ica_backend", "ica_seed", "k", "layers", "linear_ridge", "maps",
    "max_rows", "split_seed", "stability_seeds", "stability_threshold",
)
#: identifiability keys of isometry_table (rule identifiability_isometry)
ISOMETRY_KEYS: tuple[str, ...] = (
    "diameter", "fit_fraction", "layer", "local_pairs", "max_probe_crops", "n_pairs", "probe_seed",
    "ratio_quantile", "split_seed",
)
#: synthetic keys of make_synthetic_dataset (rule synthetic_dataset)
DATASET_KEYS: tuple[str, ...] = ("data_seed", "n_train", "n_eval", "image_size", "n_values")
#: synthetic keys of train_synthetic (rule synthetic_train)
TRAIN_KEYS: tuple[str, ...] = ("n_train", "n_eval", "latent_dim", "width", "hidden", "steps", "batch_size",
                               "lr", "weight_decay", "beta")
#: synthetic keys of score_synthetic (rule synthetic_score)
SCORE_KEYS: tuple[str, ...] = ("n_neighbors", "dci_estimator")


def keyword_only(func: Callable[..., object]) -> tuple[str, ...]:
    """The keyword-only argument names of ``func``, in signature order."""
    return tuple(name for name, p in inspect.signature(func).parameters.items() if p.kind is p.KEYWORD_ONLY)


def check_keys(written: Iterable[str], *functions: Callable[..., object]) -> None:
    """Raise if ``written`` is not the set of the ``functions``' keyword-only arguments."""
    actual = set().union(*(keyword_only(f) for f in functions))
    if set(written) != actual:
        names = ", ".join(f.__name__ for f in functions)
        raise AssertionError(f"phenoica.benchmarks.rule_keys lists {sorted(written)} for {names}, "
                             f"whose keyword-only arguments are {sorted(actual)}")
