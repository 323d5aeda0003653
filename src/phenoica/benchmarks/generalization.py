"""Held-out-batch generalization benchmarks: does a representation still find the biology on
batches it has never seen?

Protocol
--------
Batches are split into folds: leave-one-batch-out (LOBO), or k-fold over batches (seeded
``GroupKFold``) when there are more than ``max_lobo_batches`` batches (``split: auto``). In each
fold the post-processing method is fitted on the training batches only, then applied to every
well; probes, classifiers, feature rankings and thresholds are fitted on training wells only.
Methods that standardise each batch on that batch's own controls (CenterScale, TVN and their
variants) use the test batch's control wells for that, as their definition requires, and for
nothing else. Transductive methods (``method.transductive``: ComBat, Harmony) must see the wells
they correct: they are fitted on the training *and* test wells, with every label of the test
wells (perturbation, biology label, dose; everything but plate, well, row, col, batch, the control
flag and site counts) hidden, and the output says so (``task=protocol, metric=transductive,
value=1``). For the same reason ComBat with ``covariates`` cannot be benchmarked: the covariates
of the held-out wells are hidden labels (:func:`phenoica.benchmarks.checks.check_benchmark_methods`
refuses it when the workflow loads).

Probe standardisation (``probe_scaling: standardize``): before the logistic probes and the linear
classifier, each coordinate is centred and scaled with the mean and standard deviation of the
training wells the method was fitted on (``postprocess.fit_on``: all training wells, or only the
training controls). A representation whitened on those same wells is left as it is (up to one
common factor), so PCA, PCA+ICA and PCA+Rand, which differ by a rotation, tie exactly on the
rotation-invariant metrics (:data:`ROTATION_INVARIANT`) with either ``fit_on``; raw features
(``base``), whose scales can differ by orders of magnitude, are put on one scale.

Tasks (``task`` column of the output)
-------------------------------------
- ``auroc``: control-vs-perturbed classification per perturbation (or per biology label,
  ``auroc_by``), trained on training batches, AUROC of the held-out perturbed wells against the
  held-out batch's own control wells (the paper's task). Three probes: ``auroc_l2`` (L2 logistic
  regression: rotation invariant, so identical for PCA, PCA+ICA and PCA+Rand), ``auroc_l1``
  (L1-sparse logistic regression) and ``auroc_topk`` (L2 logistic regression on the ``top_k``
  coordinates with the largest training effect size). Only the last two can show what a
  particular rotation (ICA) buys. Test cases and test controls share their batch, so a constant
  batch shift moves both and changes no score: this task *cannot see* whether a method removes
  batch effects, only whether the biology is still linearly separable inside one batch.
- ``auroc_cross``: the same probes, AUROC of the held-out perturbed wells against control wells
  of the *training* batches that no probe was fitted on (``cross_controls``: a seeded share of each
  fold's training controls is reserved). A held-out batch that is shifted or scaled relative to the
  training batches separates its wells from those controls whatever the perturbation, so
  uncorrected batch effects pull this AUROC away from what the biology gives (towards 1 or 0);
  it *can see* batch removal, and mixes it with biology.
- ``auroc_pooled``: against the reserved training controls and the held-out batch's controls
  together (what a screen that pools controls across batches would see).
- ``classification``: multi-class classification of the biology label (perturbation if none) of
  non-control test wells: ``accuracy_linear``/``macro_f1_linear`` (multinomial L2 logistic
  regression), ``accuracy_knn``/``macro_f1_knn`` (kNN, cosine by default). Test wells whose class
  never occurs in the training batches are not scored (``n_test_wells`` counts the scored wells,
  ``n_unseen_class_wells`` the others). With more than ``classify_max_classes`` classes, a seeded
  random subset of that many classes (the same in every fold) is classified: training and test
  wells of the other classes are left out (protocol rows ``n_classes``, ``n_classes_total``), so
  the scores are those of a ``classify_max_classes``-way problem; chance level is
  ``1 / n_classes``.
- ``retrieval``: cross-batch replicate retrieval against controls (copairs' grouped approach).
  Each non-control test well queries its replicates and the controls of its own batch: positives
  are wells of the same perturbation in *other* batches, negatives the control wells of the
  query's batch (copairs, on the wells of one perturbation plus the controls:
  ``pos_sameby=[perturbation]``, ``pos_diffby=[batch]``, ``neg_sameby=[batch]``,
  ``neg_diffby=[perturbation]``). A replicate must beat the controls that share the query's batch
  effects. Cost grows with wells x controls per batch, not with the square of the wells. ``map``
  per perturbation, its permutation ``p_value`` and BH ``q_value``; ``fraction_significant`` =
  share with q < ``fdr_alpha``. (Before the screen-scale version the negatives were the wells of
  every other perturbation too, in every batch; values are not comparable with that version.)
- ``retrieval_biology``: the same by biology label, with positives also from another perturbation
  (``pos_sameby=[label]``, ``pos_diffby=[batch, perturbation]``; negatives the query batch's
  controls).
- ``relationships``: known-relationship recall (EFAAR convention). Perturbation profiles = mean of
  the test wells of each perturbation, each well first taken relative to the mean control well of
  its batch (``relationship_reference: controls``, the usual "perturbation minus control" profile;
  ``none`` uses the wells as they are); the cosine similarity of every known related pair is ranked
  among the similarities of all pairs; ``recall_<p>_<1-p>`` = share of related pairs in the bottom
  or top ``p`` of that null, ``recall_top_<p>`` = share in the top ``p``. Related pairs come from
  the relations table (simulator, or a user CSV/TSV with ``perturbation_a``, ``perturbation_b``);
  without one, perturbations that share a biology label are related.
- ``moa``: for compound screens with a dose column and a mechanism label (BBBC021): treatment
  profiles = per-coordinate median over the wells of each (compound, dose), from the fold's
  representation of all wells; each treatment of a test batch finds its nearest other treatment by
  cosine similarity: ``nsc_accuracy`` (not the same compound), ``nscb_accuracy`` (not the same
  compound or batch).
- ``protocol``: how the numbers were made. Per fold: ``n_train_wells``, ``n_test_wells``,
  ``n_reserved_controls`` (training controls kept out of every probe for ``auroc_cross``),
  ``n_probe_controls`` (mean control wells per probe), ``n_auroc_perturbations``,
  ``n_unconverged_probes``, ``n_classes``; pooled: ``n_folds``, ``transductive``,
  ``probe_controls_per_case`` (when set), ``cross_controls``, ``auroc_perturbations_total`` and
  ``n_classes_total`` (before any subsampling).

Screen-sized data
-----------------
The probes are what grows with a screen (three per perturbation and fold). They are fitted
together per fold (:mod:`phenoica.benchmarks.logistic`): the L2 probes of every perturbation by
batched, preconditioned L-BFGS on one shared, seeded order of the fold's probe controls (probe of
a perturbation with n training wells: the first ``probe_controls_per_case`` x n of them), the
top-k probes by batched Newton steps, and the L1 probes by liblinear (scikit-learn), which solves
this problem faster than any batched first-order method tried. All minimise scikit-learn's
objective with balanced class weights on the probe's rows, so they agree with ``LogisticRegression``
fitted on the same rows (tests: AUROC to 1e-4). Every probe of a perturbation is scored on the
held-out wells by one matrix product. ``auroc_max_perturbations`` bounds the number of
perturbations scored (a seeded subset, the same in every fold and for every method; the mean over
perturbations is then an estimate from that sample). Controls are never subsampled for the test
side.

Output table
------------
Long format, columns exactly ``method, task, metric, value, fold, perturbation``. ``fold`` is the
held-out batch (LOBO) or ``fold<i>`` (k-fold), or ``pooled`` for summaries over all folds.
``perturbation`` names the perturbation (or biology label value, for ``auroc_by`` a label or the
``retrieval_biology`` task) a row is about, and is empty for rows about the whole fold. Pooled
rows: ``auroc*`` per perturbation = mean over the folds that scored it, overall = mean over
perturbations; ``classification``/``moa`` = predictions of all folds scored together (each well or
treatment is predicted once, by the fold that held out its batch); ``retrieval``: mAP and p-values
of the per-well APs of all folds; ``relationships``: the related pairs of all folds.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn import config_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier

from ..errors import ConfigError, InputError
from ..io import read_h5ad, read_table, write_tsv
from ..logs import get_logger, progress
from ..metrics.retrieval import (
    grouped_average_precision,
    mean_average_precision,
    nearest_neighbor_labels,
    recall_at_percentile,
    relationship_ranks,
)
from .checks import check_benchmark_methods

log = get_logger(__name__)

TABLE_COLUMNS = ["method", "task", "metric", "value", "fold", "perturbation"]
AUROC_TASKS = ("auroc", "auroc_cross", "auroc_pooled")
TASKS = (*AUROC_TASKS, "classification", "retrieval", "retrieval_biology", "relationships", "moa")
PROBES = ("auroc_l2", "auroc_l1", "auroc_topk")
POOLED = "pooled"
#: obs columns a transductive method may see for test wells (everything else is hidden).
UNLABELLED_COLUMNS = ("plate", "well", "row", "col", "batch", "is_control", "n_sites", "site")
#: (task, metric) pairs whose values do not change when the representation is rotated: PCA,
#: PCA+ICA and PCA+Rand (whitened on the same wells) must tie on them, per fold and perturbation.
#: The relationship recalls are named for the default ``relationship_percentiles``.
ROTATION_INVARIANT: frozenset[tuple[str, str]] = frozenset({
    ("auroc", "auroc_l2"), ("auroc_cross", "auroc_l2"), ("auroc_pooled", "auroc_l2"),
    ("classification", "accuracy_linear"), ("classification", "macro_f1_linear"),
    ("classification", "accuracy_knn"), ("classification", "macro_f1_knn"),
    ("retrieval", "map"), ("retrieval_biology", "map"),
    ("relationships", "recall_0.05_0.95"), ("relationships", "recall_0.1_0.9"),
    ("relationships", "recall_top_0.05"), ("relationships", "recall_top_0.1"),
})


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fold:
    """One split: ``test`` is a boolean mask over wells; the rest are training wells."""

    name: str
    test: np.ndarray
    test_batches: tuple[str, ...] = field(default=())

    @property
    def train(self) -> np.ndarray:
        return ~self.test


def make_folds(batches: Sequence, *, split: str = "auto", n_folds: int = 5,
               max_lobo_batches: int = 12, seed: int = 0) -> list[Fold]:
    """Folds over batches: leave-one-batch-out, or seeded k-fold over batches."""
    batches = np.asarray(pd.Series(batches).astype(str))
    unique = sorted(set(batches))
    if len(unique) < 2:
        raise InputError("batch", f"held-out-batch benchmarks need at least 2 batches, got {unique}")
    if split == "auto":
        split = "leave_one_batch_out" if len(unique) <= max_lobo_batches else "kfold"
    if split == "leave_one_batch_out":
        return [Fold(name=b, test=batches == b, test_batches=(b,)) for b in unique]
    k = min(int(n_folds), len(unique))
    if k < 2:
        raise ConfigError(f"benchmark.n_folds: need at least 2 folds, got {n_folds}")
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for i, (_, test_idx) in enumerate(splitter.split(batches, groups=batches)):
        test = np.zeros(len(batches), dtype=bool)
        test[test_idx] = True
        folds.append(Fold(name=f"fold{i}", test=test, test_batches=tuple(sorted(set(batches[test])))))
    return folds


def _rows(task: str, metric: str, value: float, fold: str, perturbation: str = "") -> dict:
    return {"task": task, "metric": metric, "value": float(value), "fold": fold,
            "perturbation": perturbation}


def _label_values(obs: pd.DataFrame, column: str, exclude: Sequence[str]) -> pd.Series:
    """Labels as strings with missing and excluded values as NaN."""
    values = obs[column].astype(object).map(lambda v: None if pd.isna(v) else str(v))
    return values.mask(values.isna() | values.isin([str(e) for e in exclude]))


# --------------------------------------------------------------------------------------------
# tasks on plain arrays
# --------------------------------------------------------------------------------------------

def _fit_quietly(model, X, y, sample_weight=None):
    # Inputs are checked once upstream; sklearn's per-call validation dominated small fits.
    with warnings.catch_warnings(record=True) as caught, \
            config_context(assume_finite=True, skip_parameter_validation=True):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y, sample_weight=sample_weight)
    return model, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def scale_for_probes(Z_train: np.ndarray, Z_test: np.ndarray, scaling: str = "none",
                     reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies; ``standardize`` centres and scales each coordinate with the mean and
    standard deviation of the ``reference`` training rows (a boolean mask over ``Z_train``: the
    rows the method was fitted on; default all). On a representation whitened on those same
    rows this is one common factor, so the PCA / PCA+ICA / PCA+Rand tie of the L2 probe holds;
    otherwise it is a per-coordinate step."""
    Z_train = np.asarray(Z_train, dtype=np.float64)
    Z_test = np.asarray(Z_test, dtype=np.float64)
    if scaling == "none":
        return Z_train, Z_test
    if scaling != "standardize":
        raise ValueError(f"scaling must be 'none' or 'standardize', got {scaling!r}")
    ref = Z_train if reference is None else Z_train[np.asarray(reference, bool)]
    mean = ref.mean(axis=0)
    sd = ref.std(axis=0, ddof=1) if len(ref) > 1 else np.ones(Z_train.shape[1])
    sd[~(sd > 0)] = 1.0
    return (Z_train - mean) / sd, (Z_test - mean) / sd


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when one
    class is missing."""
    y_true = np.asarray(y_true, dtype=bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def effect_size(Z: np.ndarray, is_case: np.ndarray) -> np.ndarray:
    """Per coordinate |mean(case) - mean(rest)| / pooled standard deviation (Cohen's d)."""
    case, rest = Z[is_case], Z[~is_case]
    diff = np.abs(case.mean(axis=0) - rest.mean(axis=0))
    var = 0.5 * (case.var(axis=0, ddof=1 if len(case) > 1 else 0)
                 + rest.var(axis=0, ddof=1 if len(rest) > 1 else 0))
    return diff / np.sqrt(var + 1e-12)


@dataclass
class ProbeScores:
    """What :func:`auroc_task` returns: the rows (``task``, ``metric``, ``value``,
    ``perturbation``) and per-fold protocol numbers."""

    table: pd.DataFrame
    protocol: dict[str, float]


def _empty_auroc() -> pd.DataFrame:
    return pd.DataFrame(columns=["task", "metric", "value", "perturbation"])


def auroc_task(Z_train: np.ndarray, obs_train: pd.DataFrame, Z_test: np.ndarray,
               obs_test: pd.DataFrame, *, by: str = "perturbation", c_l2: float = 1.0,
               c_l1: float = 1.0, top_k: int = 8, min_wells: int = 2, max_iter: int = 1000,
               scaling: str = "none", exclude: Sequence[str] = (), seed: int = 0,
               controls_per_case: int | None = None, scale_rows: np.ndarray | None = None,
               reserved: np.ndarray | None = None, values: Sequence[str] | None = None,
               tasks: Sequence[str] = AUROC_TASKS) -> ProbeScores:
    """Control-vs-perturbed AUROC on the test wells for each value of ``obs[by]``: three probes
    (``auroc_l2``, ``auroc_l1``, ``auroc_topk``) fitted on training wells, scored against the
    test batch's controls (``auroc``), the ``reserved`` training controls (``auroc_cross``) and
    both (``auroc_pooled``).

    ``reserved``: boolean mask over the training rows (controls) that no probe is fitted on;
    ``controls_per_case``: probe controls per case well (None: all); ``scale_rows``: training rows
    whose statistics standardise the coordinates (``scaling``); ``values``: the values of
    ``obs[by]`` that may be scored (None: all). The probe controls are the unreserved training
    controls in one order drawn from ``seed``; a probe with n case wells uses the first
    ``controls_per_case * n``. Values with fewer than ``min_wells`` wells (or controls) on either
    side are skipped. Rows: per task, metric and value, the means over values (``perturbation``
    empty) and ``n_perturbations``.
    """
    import torch

    from .logistic import ProbeData, auroc_columns, fit_l2_probes, fit_small_probes

    for frame, name in ((obs_train, "train"), (obs_test, "test")):
        for col in (by, "is_control"):
            if col not in frame.columns:
                raise InputError(f"obs ({name})", f"missing column {col!r}")
    ctrl_tr = obs_train["is_control"].to_numpy(bool)
    ctrl_te = obs_test["is_control"].to_numpy(bool)
    reserved = np.zeros(len(obs_train), bool) if reserved is None else np.asarray(reserved, bool)
    if (reserved & ~ctrl_tr).any():
        raise ValueError("reserved rows must be training controls")
    lab_tr = _label_values(obs_train, by, exclude).to_numpy(object)
    lab_te = _label_values(obs_test, by, exclude).to_numpy(object)
    Z_train, Z_test = scale_for_probes(Z_train, Z_test, scaling, scale_rows)
    pool = np.flatnonzero(ctrl_tr & ~reserved)
    protocol = {"n_reserved_controls": float(reserved.sum())}
    tasks = [t for t in AUROC_TASKS if t in tasks and (t == "auroc" or reserved.any())]
    if len(pool) < min_wells or ctrl_te.sum() < min_wells:
        return ProbeScores(_empty_auroc(), protocol)
    tr_counts = pd.Series(lab_tr[~ctrl_tr]).value_counts()
    te_counts = pd.Series(lab_te[~ctrl_te]).value_counts()
    names = sorted(set(tr_counts.index[tr_counts >= min_wells])
                   & set(te_counts.index[te_counts >= min_wells]))
    if values is not None:
        names = sorted(set(names) & {str(v) for v in values})
    if not names:
        return ProbeScores(_empty_auroc(), protocol)
    P, d = len(names), Z_train.shape[1]
    code = {name: i for i, name in enumerate(names)}
    case_tr = [[] for _ in names]
    for row, value in zip(np.flatnonzero(~ctrl_tr), lab_tr[~ctrl_tr]):
        if value in code:
            case_tr[code[value]].append(row)
    n_case = np.array([len(r) for r in case_tr])
    order = np.random.default_rng(seed).permutation(pool)
    n_ctrl = (np.full(P, len(pool)) if controls_per_case is None
              else np.minimum(len(pool), int(controls_per_case) * n_case))
    n_ctrl = np.maximum(n_ctrl, min(len(pool), min_wells))
    C = Z_train[order[:int(n_ctrl.max())]]
    cases = np.zeros((P, int(n_case.max()), d))
    for p, rows in enumerate(case_tr):
        cases[p, :len(rows)] = Z_train[rows]
    protocol["n_probe_controls"] = float(n_ctrl.mean())

    # L2 probes on every coordinate: all at once
    data = ProbeData(torch.from_numpy(cases), torch.from_numpy(n_case), torch.from_numpy(C),
                     torch.from_numpy(n_ctrl))
    l2 = fit_l2_probes(data, C=c_l2, max_iter=max_iter)
    coef = {"auroc_l2": l2.coef.numpy()}
    intercept = {"auroc_l2": l2.intercept.numpy()}
    unconverged = int((~l2.converged).sum())
    # top-k probes: coordinates ranked by effect size on the probe's own rows, batched Newton
    k = min(int(top_k), d)
    csum, csq = np.cumsum(C, axis=0), np.cumsum(C ** 2, axis=0)
    top = np.empty((P, k), dtype=np.int64)
    for p in range(P):
        x = cases[p, :n_case[p]]
        m, c = n_case[p], n_ctrl[p]
        mu_c = csum[c - 1] / c
        var_c = (csq[c - 1] - c * mu_c ** 2) / (c - 1 if c > 1 else 1)
        var_x = x.var(axis=0, ddof=1 if m > 1 else 0)
        diff = np.abs(x.mean(axis=0) - mu_c)
        es = diff / np.sqrt(0.5 * (var_x + np.maximum(var_c, 0.0)) + 1e-12)
        top[p] = np.sort(np.argsort(-es, kind="stable")[:k])
    m_max, c_max = cases.shape[1], C.shape[0]
    rows = np.concatenate([np.take_along_axis(cases, top[:, None, :], axis=2),
                           C[:, top].transpose(1, 0, 2)], axis=1)          # (P, m + c, k)
    is_case = np.zeros((P, m_max + c_max), bool)
    valid = np.zeros((P, m_max + c_max), bool)
    for p in range(P):
        is_case[p, :n_case[p]] = True
        valid[p, :n_case[p]] = True
        valid[p, m_max:m_max + n_ctrl[p]] = True
    small = fit_small_probes(torch.from_numpy(rows), torch.from_numpy(is_case),
                             torch.from_numpy(valid), C=c_l2, max_iter=max_iter)
    full_top = np.zeros((P, d))
    np.put_along_axis(full_top, top, small.coef.numpy(), axis=1)
    coef["auroc_topk"], intercept["auroc_topk"] = full_top, small.intercept.numpy()
    unconverged += int((~small.converged).sum())
    # L1 probes: liblinear, one per perturbation (exactly the scikit-learn fit); liblinear
    # releases the GIL, so the fits run on the threads the job was given
    def fit_l1(p: int):
        X = np.concatenate([cases[p, :n_case[p]], C[:n_ctrl[p]]])
        y = np.r_[np.ones(n_case[p], int), np.zeros(n_ctrl[p], int)]
        weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
        model = LogisticRegression(C=c_l1, l1_ratio=1.0, solver="liblinear", intercept_scaling=10.0,
                                   tol=1e-6, max_iter=max_iter, random_state=seed)
        with config_context(assume_finite=True, skip_parameter_validation=True):
            return model.fit(X, y, sample_weight=weight)

    coef["auroc_l1"], intercept["auroc_l1"] = np.zeros((P, d)), np.zeros(P)
    with warnings.catch_warnings(), \
            ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool_:
        warnings.simplefilter("ignore", ConvergenceWarning)     # counted from n_iter_ instead
        for p, model in enumerate(pool_.map(fit_l1, range(P))):
            unconverged += int(np.max(model.n_iter_) >= max_iter)
            coef["auroc_l1"][p], intercept["auroc_l1"][p] = model.coef_[0], model.intercept_[0]
    protocol["n_unconverged_probes"] = float(unconverged)
    if unconverged:
        log.warning("auroc: %d of %d probe fits stopped at max_iter=%d", unconverged, 3 * P, max_iter)

    # scores: every probe on the test controls, the reserved controls and its own test cases
    case_te = [[] for _ in names]
    for row, value in zip(np.flatnonzero(~ctrl_te), lab_te[~ctrl_te]):
        if value in code:
            case_te[code[value]].append(row)
    refs = {"auroc": Z_test[ctrl_te], "auroc_cross": Z_train[reserved]}
    rows_out = []
    for probe in PROBES:
        W, b = coef[probe], intercept[probe]
        case_scores = [Z_test[r] @ W[p] + b[p] for p, r in enumerate(case_te)]
        against = {t: refs[t] @ W.T + b[None, :] for t in ("auroc", "auroc_cross") if t in tasks
                   or (t == "auroc_cross" and "auroc_pooled" in tasks)}
        if "auroc_pooled" in tasks:
            against["auroc_pooled"] = np.concatenate([against.get("auroc", refs["auroc"] @ W.T + b),
                                                      against["auroc_cross"]])
        for task in tasks:
            values_ = auroc_columns(case_scores, against[task])
            rows_out += [{"task": task, "metric": probe, "value": v, "perturbation": name}
                         for name, v in zip(names, values_)]
    out = pd.DataFrame(rows_out, columns=["task", "metric", "value", "perturbation"])
    means = out.groupby(["task", "metric"], sort=False)["value"].mean().reset_index()
    means["perturbation"] = ""
    counts = pd.DataFrame([{"task": t, "metric": "n_perturbations", "value": float(P),
                            "perturbation": ""} for t in tasks])
    protocol["n_auroc_perturbations"] = float(P)
    return ProbeScores(pd.concat([out, means, counts], ignore_index=True), protocol)


def classification_task(Z_train: np.ndarray, obs_train: pd.DataFrame, Z_test: np.ndarray,
                        obs_test: pd.DataFrame, *, label: str, include_controls: bool = False,
                        c: float = 1.0, knn_k: int = 5, knn_metric: str = "cosine",
                        max_iter: int = 1000, scaling: str = "none",
                        exclude: Sequence[str] = (), scale_rows: np.ndarray | None = None,
                        classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Predict ``obs[label]`` of test wells with a linear probe and kNN fitted on training wells.

    Returns one row per labelled test well: ``label``, ``linear``, ``knn`` (predictions) and
    ``seen`` (its class occurs among the training wells; unseen classes get no prediction).
    ``classes``: only wells of these classes take part (training and test); None: all.
    ``scaling`` (statistics of the training rows ``scale_rows``) applies to the linear probe only
    (kNN sees the representation as it is). Score it with :func:`classification_scores`.
    """
    y_tr = _label_values(obs_train, label, exclude)
    y_te = _label_values(obs_test, label, exclude)
    if classes is not None:
        allowed = {str(v) for v in classes}
        y_tr = y_tr.where(y_tr.isin(allowed))
        y_te = y_te.where(y_te.isin(allowed))
    keep_tr = y_tr.notna().to_numpy()
    keep_te = y_te.notna().to_numpy()
    if not include_controls:
        keep_tr &= ~obs_train["is_control"].to_numpy(bool)
        keep_te &= ~obs_test["is_control"].to_numpy(bool)
    seen_classes = set(y_tr[keep_tr])
    out = pd.DataFrame({"label": y_te[keep_te].to_numpy(object).astype(str), "linear": None,
                        "knn": None, "seen": y_te[keep_te].isin(seen_classes).to_numpy()},
                       index=obs_test.index[keep_te])
    scored = keep_te & y_te.isin(seen_classes).to_numpy()
    if len(seen_classes) < 2 or not scored.any():
        out["seen"] = False
        return out
    Xtr = np.asarray(Z_train, dtype=np.float64)[keep_tr]
    Xte = np.asarray(Z_test, dtype=np.float64)[scored]
    ytr = y_tr[keep_tr].to_numpy(object).astype(str)
    Str, Ste = scale_for_probes(Z_train, Z_test, scaling, scale_rows)
    Str, Ste = Str[keep_tr], Ste[scored]
    linear, warned = _fit_quietly(LogisticRegression(C=c, l1_ratio=0.0, max_iter=max_iter), Str, ytr)
    if warned:
        log.warning("classification: linear probe stopped at max_iter=%d", max_iter)
    knn = KNeighborsClassifier(n_neighbors=min(int(knn_k), len(ytr)), metric=knn_metric,
                               algorithm="brute").fit(Xtr, ytr)
    seen = out["seen"].to_numpy()
    out.loc[seen, "linear"] = linear.predict(Ste)
    out.loc[seen, "knn"] = knn.predict(Xte)
    return out


def classification_scores(predictions: pd.DataFrame) -> dict[str, float]:
    """Accuracy and macro-F1 (over the true classes present) of both classifiers on the test
    wells of classes seen in training; ``n_test_wells`` counts those, ``n_unseen_class_wells``
    the others (to score them as errors, as some papers do: accuracy * n / (n + n_unseen))."""
    seen = predictions[predictions["seen"].astype(bool)]
    out: dict[str, float] = {"n_test_wells": float(len(seen)),
                             "n_unseen_class_wells": float(len(predictions) - len(seen))}
    if seen.empty:
        return out
    labels = sorted(set(seen["label"]))
    for name in ("linear", "knn"):
        predicted = seen[name].astype(str)
        out[f"accuracy_{name}"] = float(np.mean(seen["label"] == predicted))
        out[f"macro_f1_{name}"] = float(f1_score(seen["label"], predicted, labels=labels,
                                                 average="macro", zero_division=0))
    return out


def retrieval_ap(Z: np.ndarray, obs: pd.DataFrame, query_mask: np.ndarray, *, by: str,
                 exclude: Sequence[str] = (), chunk_size: int = 512) -> pd.DataFrame:
    """Per-query AP of cross-batch retrieval grouped by ``obs[by]`` against the controls of the
    query's batch (see module docstring). Controls are never queries nor positives."""
    meta = pd.DataFrame(index=obs.index)
    meta["batch"] = obs["batch"].astype(str).to_numpy()
    meta["perturbation"] = obs["perturbation"].astype(str).to_numpy()
    controls = obs["is_control"].to_numpy(bool)
    if by == "perturbation":
        pos_diffby = ["batch"]
    else:
        key = _label_values(obs, by, exclude)
        key.iloc[np.flatnonzero(controls)] = "\x00control"
        meta[by] = key.to_numpy(object)
        pos_diffby = ["batch", "perturbation"]
    queries = np.asarray(query_mask, bool) & ~controls
    return grouped_average_precision(Z, meta, group=by, block="batch", reference=controls,
                                     pos_diffby=pos_diffby, query_mask=queries,
                                     chunk_size=chunk_size)


def retrieval_rows(ap: pd.DataFrame, *, by: str, task: str, fold: str, null_size: int,
                   alpha: float, seed: int) -> list[dict]:
    """mAP, p-value and q-value per group, mean mAP and the share significant, as table rows."""
    scored = mean_average_precision(ap, by, null_size=null_size, alpha=alpha, seed=seed)
    rows = []
    for rec in scored.itertuples(index=False):
        name = str(rec[0])
        rows += [_rows(task, "map", rec.mean_average_precision, fold, name),
                 _rows(task, "p_value", rec.p_value, fold, name),
                 _rows(task, "q_value", rec.corrected_p_value, fold, name)]
    if len(scored):
        rows += [_rows(task, "map", scored["mean_average_precision"].mean(), fold),
                 _rows(task, "fraction_significant", scored["below_corrected_p"].mean(), fold)]
    rows.append(_rows(task, "n_groups", len(scored), fold))
    return rows


def perturbation_profiles(Z: np.ndarray, obs: pd.DataFrame, *,
                          reference: str = "none") -> tuple[np.ndarray, list[str]]:
    """Mean profile of the non-control wells of each perturbation.

    ``reference="controls"`` first subtracts, from each well, the mean of the control wells of
    its batch (an evaluation-time centring on the batch's own controls).
    """
    Z = np.asarray(Z, dtype=np.float64)
    controls = obs["is_control"].to_numpy(bool)
    if reference == "controls":
        Z = Z.copy()
        batches = obs["batch"].astype(str).to_numpy()
        for b in np.unique(batches):
            rows = batches == b
            if (rows & controls).any():
                Z[rows] -= Z[rows & controls].mean(axis=0)
    names = obs["perturbation"].astype(str).to_numpy()[~controls]
    frame = pd.DataFrame(Z[~controls]).groupby(names, sort=True).mean()
    return frame.to_numpy(), [str(i) for i in frame.index]


def relations_from_labels(obs: pd.DataFrame, label: str, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Pairs of non-control perturbations that share a biology label (each perturbation takes
    its most frequent label)."""
    treated = obs[~obs["is_control"].to_numpy(bool)]
    labels = _label_values(treated, label, exclude)
    frame = pd.DataFrame({"perturbation": treated["perturbation"].astype(str).to_numpy(),
                          "label": labels.to_numpy(object)}).dropna()
    per = frame.groupby("perturbation")["label"].agg(lambda s: s.value_counts().index[0])
    rows = []
    for value, members in per.groupby(per):
        names = sorted(members.index)
        rows += [(a, b, str(value)) for i, a in enumerate(names) for b in names[i + 1:]]
    return pd.DataFrame(rows, columns=["perturbation_a", "perturbation_b", "relation"])


def read_relations(path: str | os.PathLike) -> pd.DataFrame:
    """A related-pairs table: ``perturbation_a``, ``perturbation_b`` (EFAAR's ``entity1``,
    ``entity2`` accepted), optional ``relation``."""
    try:
        table = read_table(path)
    except FileNotFoundError as exc:
        raise InputError(path, "relations table not found") from exc
    except Exception as exc:  # pandas raises many types for malformed files
        raise InputError(path, f"cannot read relations table ({type(exc).__name__}: {exc})") from exc
    if {"entity1", "entity2"} <= set(table.columns) and "perturbation_a" not in table.columns:
        table = table.rename(columns={"entity1": "perturbation_a", "entity2": "perturbation_b"})
    missing = {"perturbation_a", "perturbation_b"} - set(table.columns)
    if missing:
        raise InputError(path, f"relations table needs columns perturbation_a and perturbation_b "
                               f"(missing {sorted(missing)}; has {list(table.columns)})")
    table = table.dropna(subset=["perturbation_a", "perturbation_b"])
    if "relation" not in table.columns:
        table["relation"] = "related"
    return table[["perturbation_a", "perturbation_b", "relation"]].astype(str)


def treatment_profiles(Z: np.ndarray, obs: pd.DataFrame, *, dose: str, label: str,
                       exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Per (perturbation, dose) of non-control wells with a label: the median profile
    (``profile`` column holds arrays), ``label``, modal ``batch``."""
    controls = obs["is_control"].to_numpy(bool)
    labels = _label_values(obs, label, exclude)
    keep = ~controls & labels.notna().to_numpy()
    frame = pd.DataFrame({"perturbation": obs["perturbation"].astype(str).to_numpy()[keep],
                          "dose": obs[dose].astype(str).to_numpy()[keep],
                          "label": labels.to_numpy(object)[keep],
                          "batch": obs["batch"].astype(str).to_numpy()[keep]})
    Zk = np.asarray(Z, dtype=np.float64)[keep]
    records = []
    for (pert, dose_value), idx in frame.groupby(["perturbation", "dose"], sort=True).indices.items():
        sub = frame.iloc[idx]
        records.append({"perturbation": pert, "dose": dose_value,
                        "label": sub["label"].value_counts().index[0],
                        "batch": sub["batch"].value_counts().index[0],
                        "profile": np.median(Zk[idx], axis=0)})
    return pd.DataFrame(records, columns=["perturbation", "dose", "label", "batch", "profile"])


def moa_nearest_neighbors(treatments: pd.DataFrame, query_mask: np.ndarray | None = None) -> pd.DataFrame:
    """NSC and NSCB 1-NN predictions (cosine) for the query treatments: columns ``label``,
    ``nsc``, ``nscb`` (predicted labels; None when no candidate is left)."""
    if treatments.empty:
        return pd.DataFrame(columns=["label", "nsc", "nscb"])
    P = np.vstack(treatments["profile"].to_numpy())
    labels = treatments["label"].to_numpy(object)
    compound = treatments["perturbation"].to_numpy(object)
    batch = treatments["batch"].to_numpy(object)
    nsc = nearest_neighbor_labels(P, labels, exclude_same=[compound], query_mask=query_mask)
    nscb = nearest_neighbor_labels(P, labels, exclude_same=[compound, batch], query_mask=query_mask)
    return pd.DataFrame({"label": nsc["label"], "nsc": nsc["predicted"], "nscb": nscb["predicted"]},
                        index=nsc.index)


def moa_scores(predictions: pd.DataFrame) -> dict[str, float]:
    out = {"n_treatments": float(len(predictions))}
    if len(predictions):
        for name in ("nsc", "nscb"):
            out[f"{name}_accuracy"] = float(np.mean(predictions["label"] == predictions[name]))
    return out


# --------------------------------------------------------------------------------------------
# orchestration over folds
# --------------------------------------------------------------------------------------------

MethodFactory = Callable[..., Any]


def _default_factory() -> MethodFactory:
    from ..postprocess import make_method

    return make_method


def _hide_test_labels(obs: pd.DataFrame, test: np.ndarray) -> pd.DataFrame:
    """obs for a transductive fit: test wells keep only plate/well/batch/control columns."""
    hidden = obs.copy()
    for col in hidden.columns:
        if col in UNLABELLED_COLUMNS:
            continue
        series = hidden[col]
        if isinstance(series.dtype, pd.CategoricalDtype) or series.dtype == object:
            hidden[col] = series.astype(object).where(~test, None)
            if isinstance(series.dtype, pd.CategoricalDtype):
                hidden[col] = hidden[col].astype("category")
        elif pd.api.types.is_bool_dtype(series):
            hidden[col] = series.astype(object).where(~test, None)
        else:
            hidden[col] = series.astype(np.float64).where(~test, np.nan)
    return hidden


def fit_rows(obs: pd.DataFrame, fit_on: str = "all") -> np.ndarray:
    """Wells a method may be fitted on before the fold is applied: ``all`` or ``controls``
    (the postprocess ``fit_on`` setting; ``train_batches`` means all here, since the fold
    chooses the training batches)."""
    if fit_on in ("all", "train_batches"):
        return np.ones(len(obs), dtype=bool)
    if fit_on == "controls":
        return obs["is_control"].to_numpy(bool)
    raise ConfigError(f"postprocess.fit_on: {fit_on!r} is not all, controls or train_batches")


def fold_embedding(factory: MethodFactory, method: str, method_params: Mapping[str, Any],
                   X: np.ndarray, obs: pd.DataFrame, fold: Fold, *,
                   fit_on: str = "all") -> tuple[np.ndarray, bool]:
    """The method fitted for one fold and applied to all wells -> (Z float32, transductive).

    Inductive methods are fitted on the training wells selected by ``fit_on``; transductive ones
    on the ``fit_on`` wells of training and test batches with the test labels hidden, and then
    transform that same hidden-label view.
    """
    model = factory(method, **dict(method_params))
    transductive = bool(getattr(model, "transductive", False))
    if transductive:
        check_benchmark_methods({method: (getattr(model, "name", method),
                                          dict(getattr(model, "params", method_params)))})
    allowed = fit_rows(obs, fit_on)
    if transductive:
        hidden = _hide_test_labels(obs, fold.test)
        rows = np.flatnonzero(allowed)
        model.fit(X[rows], hidden.iloc[rows])
        Z = model.transform(X, hidden)
    else:
        rows = np.flatnonzero(allowed & fold.train)
        model.fit(X[rows], obs.iloc[rows])
        Z = model.transform(X, obs)
    Z = np.asarray(Z, dtype=np.float32)
    if Z.shape[0] != X.shape[0] or not np.isfinite(Z).all():
        raise ValueError(f"method {method!r} returned {Z.shape} with non-finite values or wrong rows")
    return Z, transductive


def _check_obs(obs: pd.DataFrame, source: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise InputError(source, f"obs lacks column(s) {missing} (has {list(obs.columns)})")


def _sample(values: Sequence[str], limit: int | None, seed: int, salt: int) -> list[str] | None:
    """A seeded subset of ``limit`` of the sorted ``values`` (None when all are kept)."""
    values = sorted({str(v) for v in values})
    if limit is None or len(values) <= int(limit):
        return None
    rng = np.random.default_rng([int(seed), salt])
    return sorted(rng.choice(values, size=int(limit), replace=False).tolist())


def _reserve_controls(obs: pd.DataFrame, train: np.ndarray, share: float, seed: int,
                      fold_index: int) -> np.ndarray:
    """A seeded share of the fold's training controls (mask over all wells)."""
    rows = np.flatnonzero(train & obs["is_control"].to_numpy(bool))
    n = int(np.floor(float(share) * len(rows)))
    mask = np.zeros(len(obs), bool)
    if n:
        mask[np.random.default_rng([int(seed), 1, fold_index]).choice(rows, n, replace=False)] = True
    return mask


def evaluate_method(X: np.ndarray, obs: pd.DataFrame, method: str,
                    method_params: Mapping[str, Any] | None = None,
                    relations: pd.DataFrame | None = None,
                    method_factory: MethodFactory | None = None, name: str | None = None,
                    fit_on: str = "all", source: str = "wells",
                    labels: Mapping[str, Any] | None = None,
                    timings: dict[str, float] | None = None, *,
                    split: str, n_folds: int, max_lobo_batches: int, tasks: Sequence[str],
                    label: str | None, dose: str | None, label_exclude: Sequence[str],
                    auroc_by: str, min_wells: int, probe_c_l2: float, probe_c_l1: float,
                    top_k: int, probe_max_iter: int, probe_scaling: str,
                    probe_controls_per_case: int | None, cross_controls: float,
                    auroc_max_perturbations: int | None, classify_by: str | None,
                    classifier_c: float, knn_k: int, knn_metric: str,
                    classify_max_classes: int | None, retrieval_permutations: int,
                    fdr_alpha: float, retrieval_chunk_size: int,
                    relationship_percentiles: Sequence[float], relationship_reference: str,
                    max_null_entities: int, seed: int) -> pd.DataFrame:
    """Run every configured task for one post-processing method over all folds.

    Parameters
    ----------
    X, obs
        Raw wells representation (n x d) and its obs (``batch``, ``perturbation``, ``is_control``;
        the biology label and dose columns when configured).
    method, method_params
        Post-processing algorithm name and parameters for ``method_factory`` (default
        ``phenoica.postprocess.make_method``).
    relations
        Related-pairs table (``perturbation_a``, ``perturbation_b``); None derives pairs from the
        biology label when there is one.
    name
        Value of the ``method`` column (default ``method``).
    fit_on
        ``all`` or ``controls``: which training wells the method is fitted on (postprocess.fit_on).
    source
        Name used in error messages (the wells file).
    labels
        The workflow's ``labels`` section (``biology``, ``dose``): used where ``label`` / ``dose``
        are null.
    timings
        If given, filled with the seconds spent per part (``fit`` = the method's fold fits, then
        one entry per task), summed over folds.
    split, n_folds, ... seed
        The ``benchmark`` config section (config/README.md). Outside the workflow pass
        ``**{**phenoica.config.schema_defaults("benchmark"), **overrides}``.

    Returns
    -------
    The long table (``TABLE_COLUMNS``).
    """
    factory = method_factory or _default_factory()
    X = np.asarray(X)
    _check_obs(obs, source, ["batch", "perturbation", "is_control"])
    obs = obs.copy()
    obs["is_control"] = obs["is_control"].to_numpy(bool)
    labels = dict(labels or {})
    label = label if label is not None else labels.get("biology")
    dose = dose if dose is not None else labels.get("dose")
    if label is not None and label not in obs.columns:
        log.warning("%s: biology label column %r not in obs; label tasks fall back to perturbation "
                    "or are skipped", source, label)
        label = None
    dose = dose if dose in obs.columns else None
    if auroc_by not in obs.columns:
        raise InputError(source, f"benchmark.auroc_by column {auroc_by!r} not in obs")
    classify_by = classify_by or label or "perturbation"
    if classify_by not in obs.columns:
        raise InputError(source, f"benchmark.classify_by column {classify_by!r} not in obs")
    exclude = [str(v) for v in label_exclude]
    tasks = list(dict.fromkeys(tasks))
    if "retrieval_biology" in tasks and label is None:
        log.info("retrieval_biology skipped: no biology label")
        tasks.remove("retrieval_biology")
    if "moa" in tasks and (label is None or dose is None):
        log.info("moa task skipped: needs a biology label and a dose column (labels.dose)")
        tasks.remove("moa")
    if "relationships" in tasks and relations is None:
        if label is not None:
            relations = relations_from_labels(obs, label, exclude)
            log.info("relationships: %d pairs sharing %r (no relations table)", len(relations), label)
        else:
            log.info("relationships skipped: no relations table and no biology label")
            tasks.remove("relationships")
    if {"auroc_cross", "auroc_pooled"} & set(tasks) and not cross_controls > 0:
        log.info("auroc_cross/auroc_pooled skipped: benchmark.cross_controls is 0")
        tasks = [t for t in tasks if t not in ("auroc_cross", "auroc_pooled")]
    auroc_tasks = [t for t in AUROC_TASKS if t in tasks]

    treated = ~obs["is_control"].to_numpy(bool)
    auroc_values = _label_values(obs[treated], auroc_by, exclude).dropna().unique()
    auroc_subset = _sample(auroc_values, auroc_max_perturbations, seed, salt=2)
    class_values = _label_values(obs[treated], classify_by, exclude).dropna().unique()
    class_subset = _sample(class_values, classify_max_classes, seed, salt=3)
    if auroc_subset is not None and auroc_tasks:
        log.info("auroc: %d of %d %s values scored (auroc_max_perturbations, seed %d)",
                 len(auroc_subset), len(auroc_values), auroc_by, seed)
    if class_subset is not None and "classification" in tasks:
        log.info("classification: %d of %d classes (classify_max_classes, seed %d)",
                 len(class_subset), len(class_values), seed)

    folds = make_folds(obs["batch"], split=split, n_folds=n_folds,
                       max_lobo_batches=max_lobo_batches, seed=seed)
    log.info("%s: %d folds (%s), tasks %s", name or method, len(folds),
             ", ".join(f.name for f in folds), tasks)
    fitted = fit_rows(obs, fit_on)
    timings = {} if timings is None else timings
    clock = [time.perf_counter()]

    def lap(part: str) -> None:
        now = time.perf_counter()
        timings[part] = timings.get(part, 0.0) + now - clock[0]
        clock[0] = now

    rows: list[dict] = []
    pooled: dict[str, list] = {t: [] for t in (*TASKS, "auroc_all")}
    transductive = False
    for i, fold in enumerate(progress(folds, desc=f"benchmark {name or method}")):
        clock[0] = time.perf_counter()
        Z, transductive = fold_embedding(factory, method, method_params or {}, X, obs, fold,
                                         fit_on=fit_on)
        lap("fit")
        train_idx, test_idx = np.flatnonzero(fold.train), np.flatnonzero(fold.test)
        obs_tr, obs_te = obs.iloc[train_idx], obs.iloc[test_idx]
        scale_rows = fitted[train_idx]
        rows += [_rows("protocol", "n_train_wells", len(train_idx), fold.name),
                 _rows("protocol", "n_test_wells", len(test_idx), fold.name)]
        if auroc_tasks:
            reserved = _reserve_controls(obs, fold.train, cross_controls, seed, i)[train_idx]
            scores = auroc_task(Z[train_idx], obs_tr, Z[test_idx], obs_te, by=auroc_by,
                                c_l2=probe_c_l2, c_l1=probe_c_l1, top_k=top_k, min_wells=min_wells,
                                max_iter=probe_max_iter, scaling=probe_scaling, exclude=exclude,
                                seed=int(np.random.default_rng([seed, 4, i]).integers(2**31)),
                                controls_per_case=probe_controls_per_case, scale_rows=scale_rows,
                                reserved=reserved, values=auroc_subset, tasks=auroc_tasks)
            rows += [_rows(r.task, r.metric, r.value, fold.name, r.perturbation)
                     for r in scores.table.itertuples(index=False)]
            rows += [_rows("protocol", k, v, fold.name) for k, v in scores.protocol.items()]
            pooled["auroc_all"].append(scores.table)
            lap("auroc")
        if "classification" in tasks:
            pred = classification_task(Z[train_idx], obs_tr, Z[test_idx], obs_te, label=classify_by,
                                       c=classifier_c, knn_k=knn_k, knn_metric=knn_metric,
                                       max_iter=probe_max_iter, scaling=probe_scaling,
                                       exclude=exclude, scale_rows=scale_rows, classes=class_subset)
            rows += [_rows("classification", k, v, fold.name)
                     for k, v in classification_scores(pred).items()]
            rows.append(_rows("protocol", "n_classes", pred.loc[pred["seen"], "label"].nunique(),
                              fold.name))
            pooled["classification"].append(pred)
            lap("classification")
        for task, by in (("retrieval", "perturbation"), ("retrieval_biology", label)):
            if task not in tasks:
                continue
            ap = retrieval_ap(Z, obs, fold.test, by=by, exclude=exclude,
                              chunk_size=retrieval_chunk_size)
            rows += retrieval_rows(ap, by=by, task=task, fold=fold.name,
                                   null_size=retrieval_permutations, alpha=fdr_alpha, seed=seed)
            pooled[task].append(ap)
            lap(task)
        if "relationships" in tasks:
            profiles, names = perturbation_profiles(Z[test_idx], obs_te,
                                                    reference=relationship_reference)
            if len(names) >= 3:
                ranks = relationship_ranks(profiles, names, relations,
                                           max_null_entities=max_null_entities, seed=seed)
                rows += _relationship_rows(ranks.rank_left, ranks.rank_right,
                                           relationship_percentiles, fold.name)
                pooled["relationships"].append(ranks)
            lap("relationships")
        if "moa" in tasks:
            treatments = treatment_profiles(Z, obs, dose=dose, label=label, exclude=exclude)
            query = treatments["batch"].isin(fold.test_batches).to_numpy()
            pred = moa_nearest_neighbors(treatments, query)
            rows += [_rows("moa", k, v, fold.name) for k, v in moa_scores(pred).items()]
            pooled["moa"].append(pred)
            lap("moa")

    clock[0] = time.perf_counter()
    rows += _pooled_rows(pooled, label, retrieval_permutations=retrieval_permutations,
                         fdr_alpha=fdr_alpha, relationship_percentiles=relationship_percentiles,
                         seed=seed)
    rows += [_rows("protocol", "n_folds", len(folds), POOLED),
             _rows("protocol", "transductive", float(transductive), POOLED)]
    if auroc_tasks:
        rows += [_rows("protocol", "cross_controls", cross_controls, POOLED),
                 _rows("protocol", "auroc_perturbations_total", len(auroc_values), POOLED)]
        if probe_controls_per_case is not None:
            rows.append(_rows("protocol", "probe_controls_per_case", probe_controls_per_case, POOLED))
    if "classification" in tasks:
        rows.append(_rows("protocol", "n_classes_total", len(class_values), POOLED))
    lap("pooled")
    log.info("%s: seconds per part (all folds): %s", name or method,
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if transductive:
        log.warning("%s is transductive: fitted on training and test wells (test labels hidden)",
                    name or method)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[1:])
    table.insert(0, "method", name or method)
    return table[TABLE_COLUMNS]


def _relationship_rows(left: np.ndarray, right: np.ndarray, percentiles: Sequence[float],
                       fold: str) -> list[dict]:
    rows = [_rows("relationships", "n_pairs", len(left), fold)]
    if len(left) == 0:
        return rows
    for pct in percentiles:
        pct = float(pct)
        rows += [_rows("relationships", f"recall_{pct:g}_{1 - pct:g}",
                       recall_at_percentile(left, right, pct, tails="both"), fold),
                 _rows("relationships", f"recall_top_{pct:g}",
                       recall_at_percentile(left, right, pct, tails="top"), fold)]
    return rows


def _pooled_rows(pooled: dict[str, list], label: str | None, *, retrieval_permutations: int,
                 fdr_alpha: float, relationship_percentiles: Sequence[float],
                 seed: int) -> list[dict]:
    rows: list[dict] = []
    if pooled["auroc_all"]:
        table = pd.concat(pooled["auroc_all"], ignore_index=True)
        per = table[(table["perturbation"] != "") & table["metric"].isin(PROBES)]
        if not per.empty:
            per = (per.groupby(["task", "metric", "perturbation"], sort=True)["value"].mean()
                   .reset_index())
            rows += [_rows(r.task, r.metric, r.value, POOLED, r.perturbation)
                     for r in per.itertuples(index=False)]
            means = per.groupby(["task", "metric"], sort=True)["value"].mean()
            rows += [_rows(t, m, v, POOLED) for (t, m), v in means.items()]
            counts = per[per["metric"] == PROBES[0]].groupby("task")["perturbation"].nunique()
            rows += [_rows(t, "n_perturbations", n, POOLED) for t, n in counts.items()]
    if pooled["classification"]:
        pred = pd.concat(pooled["classification"])
        rows += [_rows("classification", k, v, POOLED) for k, v in classification_scores(pred).items()]
    for task, by in (("retrieval", "perturbation"), ("retrieval_biology", label)):
        if pooled[task]:
            ap = pd.concat(pooled[task], ignore_index=True)
            rows += retrieval_rows(ap, by=by, task=task, fold=POOLED, null_size=retrieval_permutations,
                                   alpha=fdr_alpha, seed=seed)
    if pooled["relationships"]:
        left = np.concatenate([r.rank_left for r in pooled["relationships"]])
        right = np.concatenate([r.rank_right for r in pooled["relationships"]])
        rows += _relationship_rows(left, right, relationship_percentiles, POOLED)
    if pooled["moa"]:
        pred = pd.concat(pooled["moa"])
        rows += [_rows("moa", k, v, POOLED) for k, v in moa_scores(pred).items()]
    return rows


def run_generalization(wells_path: str, out_tsv: str, method: str, method_params: dict,
                       relations_path: str | None = None, layer: str | None = None,
                       name: str | None = None, fit_on: str = "all",
                       labels: Mapping[str, Any] | None = None,
                       method_factory: MethodFactory | None = None, **section: Any) -> None:
    """The ``benchmark_generalization`` rule: held-out-batch benchmarks of one post-processing
    method on a wells AnnData -> long TSV (columns ``TABLE_COLUMNS``, written atomically).

    ``method``/``method_params``: the post-processing algorithm and its parameters;
    ``relations_path``: related-pairs table for the relationships task; ``layer``: None for
    ``X`` or an ``obsm`` key (``X_layer2``); ``name``: the ``method`` column (default ``method``);
    ``fit_on``: postprocess.fit_on (``all`` or ``controls``); ``labels``: the workflow's
    ``labels`` section. ``section``: the ``benchmark`` config section without its workflow-only
    keys, passed on to :func:`evaluate_method` (whose keyword-only arguments they are).
    """
    from ..postprocess.run import select_layer

    log.info("benchmark %s (%s %s) on %s, benchmark %s, labels %s", name or method, method,
             json.dumps(method_params, sort_keys=True, default=str), wells_path,
             json.dumps(section, sort_keys=True, default=str), json.dumps(dict(labels or {})))
    try:
        adata = read_h5ad(wells_path)
    except (OSError, KeyError) as exc:
        raise InputError(wells_path, f"cannot read as AnnData: {exc}") from exc
    X = select_layer(adata, layer, wells_path)
    if not np.isfinite(X).all():
        raise InputError(wells_path, "the representation contains NaN or infinite values")
    relations = read_relations(relations_path) if relations_path else None
    table = evaluate_method(X, adata.obs, method, method_params, relations, method_factory, name,
                            fit_on, wells_path, labels, **section)
    write_tsv(table, out_tsv)
    log.info("wrote %d rows to %s", len(table), out_tsv)
