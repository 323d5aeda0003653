"""The rotation null: PCA+Rand over many seeded rotations, so ICA is judged against a
distribution of random rotations, never against one draw.

Whitened PCA, PCA+ICA and PCA+Rand differ only by a rotation of the same whitened space.
Every rotation-invariant score ties for them (a check); every coordinate-dependent score
(Hoyer sparsity, concentration of biology in the top components, component attribution counts,
MCC against ground truth, sparse and top-k probes, median profiles) changes with the rotation.
Whether ICA's rotation is special is the question: ICA's value is compared with the values of
``n_rotations`` Haar-random rotations (seeds ``first_seed``, ``first_seed + 1``, ...), each exactly
the ``pca_rand`` method with that seed, and "ICA beats random rotations" only when its value lies
outside the null's 5-95 % range.

Cost: the whitening of each fold (and of the whole data set) is fitted once and shared by all
rotations (:class:`SharedWhitening`); a rotation then costs a matrix product plus the scoring.

Output (``results/null_rotations.tsv``): columns exactly ``method, task, metric, seed, value``;
``method`` = the PCA+Rand output name, ``task`` = a benchmark task (values pooled over the
held-out folds, about the whole fold) or ``scores`` (separation scores of the whole
representation), ``seed`` = the rotation seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .logs import get_logger, progress

log = get_logger(__name__)

NULL_COLUMNS = ["method", "task", "metric", "seed", "value"]
#: ``task`` of separation-score rows in the null table.
SCORES_TASK = "scores"
#: The range outside which a value "beats" (or loses to) the null, in percent.
NULL_RANGE = (5.0, 95.0)

#: Whole-representation separation scores that do not change when a whitened representation
#: is rotated (the mixing/conservation scores are distances, k-means and kNN graphs; the
#: variance shares of the whole representation are traces; ``r2_<truth>`` is a regression on all
#: components). Everything else is coordinate-dependent.
ROTATION_INVARIANT_SCORES = frozenset({
    "n_components", "batch_silhouette", "batch_silhouette_raw", "ilisi", "graph_connectivity",
    "perturbation_silhouette", "label_silhouette", "nmi", "ari", "batch_variance_share",
})

#: Benchmark tasks whose every metric is rotation invariant on a representation whitened on
#: its fitting wells (cosine / Euclidean kNN, L2 probes on standardised coordinates, cosine
#: retrieval, mean profiles): the null does not rerun them.
INVARIANT_TASKS = frozenset({"classification", "retrieval", "retrieval_biology", "relationships"})


def rotation_invariant_benchmarks() -> frozenset[tuple[str, str]]:
    """``(task, metric)`` pairs that tie for PCA / PCA+ICA / PCA+Rand: the benchmark module's
    ``ROTATION_INVARIANT`` when it defines one, else the L2 probe of the ``auroc`` task."""
    from .benchmarks import generalization

    declared = getattr(generalization, "ROTATION_INVARIANT", None)
    if declared is not None:
        return frozenset((str(t), str(m)) for t, m in declared)
    return frozenset({("auroc", "auroc_l2")})


def is_rotation_invariant(task: str, metric: str) -> bool:
    """Whether a (task, metric) of the benchmark or scores table is rotation invariant."""
    if task == SCORES_TASK:
        return metric in ROTATION_INVARIANT_SCORES or metric.startswith("r2_")
    return task in INVARIANT_TASKS or (task, metric) in rotation_invariant_benchmarks()


def null_seeds(n_rotations: int, first_seed: int) -> list[int]:
    if int(n_rotations) < 1:
        raise InputError("rotation_null.n_rotations", f"must be at least 1, got {n_rotations}")
    return list(range(int(first_seed), int(first_seed) + int(n_rotations)))


# --------------------------------------------------------------------------------------------
# a method factory whose whitening is fitted once per fitting set
# --------------------------------------------------------------------------------------------

def _rows_key(obs: pd.DataFrame, n_features: int) -> str:
    digest = hashlib.sha256()
    digest.update(str(n_features).encode())
    for name in obs.index:
        digest.update(str(name).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


class _SharedRotation:
    """PCA+Rand with a cached whitening: ``fit``/``transform`` give exactly what
    ``make_method("pca_rand", seed=seed, **pca_params)`` gives."""

    transductive = False

    def __init__(self, cache: SharedWhitening, seed: int):
        self.cache = cache
        self.seed = int(seed)

    def fit(self, X: np.ndarray, obs: pd.DataFrame) -> _SharedRotation:
        from .postprocess.ica import random_orthogonal

        self.key, self.whitening = self.cache.whitening(X, obs)
        self.rotation = random_orthogonal(self.whitening.n_components, self.seed)
        return self

    def transform(self, X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        white = self.cache.whitened(self.key, self.whitening, X, obs)
        return (white.astype(np.float64) @ self.rotation.T).astype(np.float32)


class SharedWhitening:
    """A ``method_factory`` for :func:`phenoica.benchmarks.generalization.evaluate_method` that
    builds PCA+Rand models of any seed sharing one whitening per fitting set.

    The first fit on a set of wells fits ``make_method("pca", **pca_params)`` (the same whitening
    ``pca_rand`` fits, caps and warnings included); later fits on the same wells (same obs index)
    reuse it, and the whitened transform of the same wells is cached too. ``set_seed`` chooses the
    rotation of the next models.
    """

    def __init__(self, pca_params: Mapping[str, Any]):
        params = dict(pca_params)
        params.pop("seed", None)
        self.pca_params = params
        self.seed = 0
        self._fits: dict[str, Any] = {}
        self._white: dict[tuple[str, str], np.ndarray] = {}

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, method: str, **params: Any) -> _SharedRotation:
        if method != "pca_rand":
            raise InputError("rotation_null", f"the rotation null rotates PCA+Rand, got method {method!r}")
        return _SharedRotation(self, self.seed)

    def whitening(self, X: np.ndarray, obs: pd.DataFrame):
        from .postprocess import make_method

        key = _rows_key(obs, X.shape[1])
        if key not in self._fits:
            self._fits[key] = make_method("pca", **self.pca_params).fit(X, obs).whitening
        return key, self._fits[key]

    def whitened(self, key: str, whitening, X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        tkey = (key, _rows_key(obs, X.shape[1]))
        if tkey not in self._white:
            self._white[tkey] = whitening.transform(np.asarray(X))
        return self._white[tkey]


# --------------------------------------------------------------------------------------------
# the null of the separation scores and of the benchmarks
# --------------------------------------------------------------------------------------------

def _long(rows: list[tuple[str, str, int, float]], method: str) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=NULL_COLUMNS[1:])
    table.insert(0, "method", method)
    table["seed"] = table["seed"].astype(np.int64)
    table["value"] = table["value"].astype(np.float64)
    return table[NULL_COLUMNS]


def rotation_null_scores(white: np.ndarray, obs: pd.DataFrame, *, seeds: Sequence[int],
                         method: str = "pca_rand", truth: Mapping[str, pd.DataFrame] | None = None,
                         score_params: Mapping[str, Any], bio_key: str | None = None) -> pd.DataFrame:
    """Coordinate-dependent separation scores of ``white @ R_s.T`` for every seed ``s``.

    ``white`` is the whitened representation (n x k) that PCA+Rand rotates; ``R_s`` is the
    rotation PCA+Rand draws with seed ``s`` (so seed ``s`` reproduces ``pca_rand`` with that
    seed exactly). ``score_params``: the ``scores`` config section (keyword arguments of
    :func:`phenoica.metrics.separation.compute_scores`; the batch-mixing scores, all rotation
    invariant, are skipped); ``bio_key``: ``labels.biology``. Returns the long null table
    (``task = "scores"``).
    """
    from .metrics.separation import ALL, compute_scores
    from .postprocess.ica import random_orthogonal

    kwargs = {**dict(score_params), "mixing": False}
    white = np.asarray(white, dtype=np.float64)
    rows: list[tuple[str, str, int, float]] = []
    for seed in progress(list(seeds), desc=f"rotation null {method}: scores"):
        Z = (white @ random_orthogonal(white.shape[1], int(seed)).T).astype(np.float32)
        long, _ = compute_scores(Z, obs, method=method, truth=dict(truth or {}), bio_key=bio_key,
                                 **kwargs)
        whole = long[long["component"] == ALL]
        rows += [(SCORES_TASK, str(r.metric), int(seed), float(r.value))
                 for r in whole.itertuples(index=False)
                 if not is_rotation_invariant(SCORES_TASK, str(r.metric))]
    return _long(rows, method)


def null_tasks(tasks: Sequence[str]) -> list[str]:
    """The configured benchmark tasks with a coordinate-dependent metric."""
    return [t for t in dict.fromkeys(tasks) if t not in INVARIANT_TASKS]


def rotation_null_benchmarks(X: np.ndarray, obs: pd.DataFrame, *, seeds: Sequence[int],
                             method_params: Mapping[str, Any], params: Mapping[str, Any],
                             method: str = "pca_rand", fit_on: str = "all",
                             relations: pd.DataFrame | None = None,
                             labels: Mapping[str, Any] | None = None,
                             source: str = "wells") -> pd.DataFrame:
    """Held-out-batch benchmarks of PCA+Rand for every seed, on the coordinate-dependent tasks.

    ``X``/``obs``: the raw wells; ``method_params``: the PCA+Rand output's parameters (its own
    ``seed`` is replaced by each null seed); ``params``: the whole ``benchmark`` config section
    (every key, as :func:`phenoica.benchmarks.generalization.evaluate_method` takes it);
    ``labels``: the workflow's ``labels`` section. Every fold's whitening
    is fitted once (:class:`SharedWhitening`). Returns the pooled whole-fold rows of every
    coordinate-dependent (task, metric) as the long null table.
    """
    from .benchmarks.generalization import POOLED, evaluate_method

    tasks = null_tasks(params.get("tasks") or [])
    if not tasks:
        return _long([], method)
    factory = SharedWhitening(method_params)
    rows: list[tuple[str, str, int, float]] = []
    for seed in progress(list(seeds), desc=f"rotation null {method}: benchmarks"):
        factory.set_seed(seed)
        table = evaluate_method(X, obs, "pca_rand", dict(method_params), relations=relations,
                                method_factory=factory, name=method, fit_on=fit_on, source=source,
                                labels=labels, **{**dict(params), "tasks": tasks})
        pert = table["perturbation"].astype(object).fillna("").astype(str)
        whole = table[(table["fold"].astype(str) == POOLED) & (pert == "")
                      & (table["task"] != "protocol")]
        rows += [(str(r.task), str(r.metric), int(seed), float(r.value))
                 for r in whole.itertuples(index=False)
                 if not str(r.metric).startswith("n_")
                 and not is_rotation_invariant(str(r.task), str(r.metric))]
    return _long(rows, method)


def run_rotation_null(wells_path: str, postprocessed_path: str, *, out_tsv: str, method: str,
                      method_params: Mapping[str, Any], n_rotations: int, first_seed: int,
                      scores: Mapping[str, Any], labels: Mapping[str, Any],
                      benchmark: Mapping[str, Any], layer: str | None, fit_on: str,
                      relations_path: str | None) -> None:
    """The ``rotation_null`` rule: the null of one PCA+Rand output -> long TSV.

    Scores: the PCA+Rand output's own whitening (its fitted state, applied to the wells'
    representation ``layer``) rotated by every null seed. Benchmarks: :func:`rotation_null_benchmarks`
    with the ``benchmark`` section. ``n_rotations``/``first_seed``: the ``rotation_null`` section.
    """
    from .io import read_h5ad, write_tsv
    from .postprocess.run import TRUTH_KEYS, load_method, select_layer

    seeds = null_seeds(n_rotations, first_seed)
    try:
        wells = read_h5ad(wells_path)
        post = read_h5ad(postprocessed_path)
    except (OSError, KeyError) as exc:
        raise InputError(wells_path, f"cannot read as AnnData: {exc}") from exc
    fitted = load_method(post)
    if fitted.name != "pca_rand":
        raise InputError(postprocessed_path, f"the rotation null needs a pca_rand output, got {fitted.name!r}")
    X = select_layer(wells, layer, wells_path)
    white = fitted.whitening.transform(X)
    truth = {key: post.obsm[key] for key in TRUTH_KEYS if key in post.obsm}
    log.info("rotation null of %s: %d rotations (seeds %d-%d), %d wells, %d components", method,
             len(seeds), seeds[0], seeds[-1], white.shape[0], white.shape[1])
    score_table = rotation_null_scores(white, post.obs, seeds=seeds, method=method, truth=truth,
                                       score_params=scores, bio_key=labels.get("biology"))
    from .benchmarks.generalization import read_relations
    from .config import section_arguments

    relations = read_relations(relations_path) if relations_path else None
    bench_table = rotation_null_benchmarks(X, wells.obs, seeds=seeds, method_params=method_params,
                                           params=section_arguments("benchmark", benchmark),
                                           method=method, fit_on=fit_on,
                                           relations=relations, labels=labels, source=wells_path)
    table = pd.concat([score_table, bench_table], ignore_index=True)
    write_tsv(table, out_tsv)
    log.info("rotation null of %s: %d rows -> %s", method, len(table), out_tsv)


# --------------------------------------------------------------------------------------------
# reading a value against the null; bootstrap intervals
# --------------------------------------------------------------------------------------------

def percentile_in_null(value: float, null: Sequence[float]) -> float:
    """Percentile of ``value`` among the null values (ties count half), in [0, 100]."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(value):
        return float("nan")
    return float(100.0 * (np.sum(null < value) + 0.5 * np.sum(null == value)) / null.size)


def null_position(value: float, null: Sequence[float], direction: int = 1,
                  tol: float = 1e-9) -> str:
    """``above`` / ``below`` the null's 5-95 % range, or ``inside``; ``above`` means better when
    ``direction`` is -1 (lower is better) too, i.e. positions are read in the good direction:
    ``better``/``worse``/``inside`` with ``direction`` != 0, ``above``/``below``/``inside``
    otherwise."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(value):
        return "n/a"
    lo, hi = np.percentile(null, NULL_RANGE)
    if value > hi + tol:
        pos = "above"
    elif value < lo - tol:
        pos = "below"
    else:
        return "inside"
    if direction == 0:
        return pos
    return "better" if (pos == "above") == (direction > 0) else "worse"


def bootstrap_interval(values: Sequence[float], *, n_bootstrap: int, seed: int,
                       paired: Sequence[float] | None = None) -> tuple[float, float]:
    """5-95 % percentile interval of the mean of ``values`` (or of the mean difference
    ``values - paired``) over ``n_bootstrap`` resamples with replacement (seeded)."""
    a = np.asarray(values, dtype=np.float64)
    if paired is not None:
        a = a - np.asarray(paired, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2 or n_bootstrap < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, (int(n_bootstrap), a.size))].mean(axis=1)
    lo, hi = np.percentile(means, NULL_RANGE)
    return float(lo), float(hi)
