"""The grid of the synthetic disentanglement benchmark: which models it compares, which of them
are trained, and whose codes each one scores.

Kept apart from :mod:`phenoica.benchmarks.synthetic` because the Snakefile reads it on every
start (wildcard constraints, inputs of ``synthetic_score``): it imports nothing.
"""

from __future__ import annotations

from ..errors import ConfigError

#: Models compared (the ``synthetic.models`` values): ``ae_ica`` scores the ``ae`` codes after
#: whitening + ICA, so it is not trained itself.
MODELS: tuple[str, ...] = ("ae", "ae_ica", "beta_vae", "beta_tcvae")
TRAINED_MODELS: tuple[str, ...] = ("ae", "beta_vae", "beta_tcvae")


def base_model(model: str) -> str:
    """The trained model whose codes a benchmark model scores (``ae_ica`` -> ``ae``)."""
    if model not in MODELS:
        raise ConfigError(f"synthetic.models: unknown model {model!r}; known: {MODELS}")
    return "ae" if model == "ae_ica" else model
