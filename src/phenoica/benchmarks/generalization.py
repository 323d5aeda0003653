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
flag and site counts) hidden, and the output says so (``task=protocol, metric=transductive, value=1``).

Tasks (``task`` column of the output)
-------------------------------------
- ``auroc``: control-vs-perturbed classification per perturbation (or per biology label,
  ``auroc_by``), trained on training batches, AUROC on the test batch. Three probes:
  ``auroc_l2`` (L2 logistic regression: rotation invariant, so identical for PCA, PCA+ICA and
  PCA+Rand), ``auroc_l1`` (L1-sparse logistic regression) and ``auroc_topk`` (L2 logistic
  regression on the ``top_k`` coordinates with the largest training effect size). Only the last two
  can show what a particular rotation (ICA) buys (``docs/science.md``). Before the
  logistic probes each coordinate is standardised with the training wells' mean and standard
  deviation (``probe_scaling``): raw features (``base``) can differ in scale by orders of magnitude,
  while a representation whitened on the same training wells is left unchanged, so the tie holds.
- ``classification``: multi-class classification of the biology label (perturbation if none) of
  non-control test wells: ``accuracy_linear``/``macro_f1_linear`` (multinomial L2 logistic
  regression), ``accuracy_knn``/``macro_f1_knn`` (kNN, cosine by default). Test wells whose class
  never occurs in the training batches are not scored (``n_test_wells`` counts the scored wells,
  ``n_unseen_class_wells`` the others).
- ``retrieval``: cross-batch replicate retrieval. Each non-control test well queries all wells;
  positives are wells of the same perturbation in *other* batches, negatives wells of other
  perturbations (controls included) in any batch (copairs: ``pos_sameby=[perturbation]``,
  ``pos_diffby=[batch]``, ``neg_diffby=[perturbation]``). ``map`` per perturbation, its permutation
  ``p_value`` and BH ``q_value``; ``fraction_significant`` = share with q < ``fdr_alpha``.
- ``retrieval_biology``: the same by biology label, with positives also from another perturbation
  (``pos_sameby=[label]``, ``pos_diffby=[batch, perturbation]``, ``neg_diffby=[label]``).
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
- ``protocol``: ``n_train_wells``/``n_test_wells`` per fold, ``n_folds`` and ``transductive``.

Output table
------------
Long format, columns exactly ``method, task, metric, value, fold, perturbation``. ``fold`` is the
held-out batch (LOBO) or ``fold<i>`` (k-fold), or ``pooled`` for summaries over all folds.
``perturbation`` names the perturbation (or biology label value, for ``auroc_by`` a label or the
``retrieval_biology`` task) a row is about, and is empty for rows about the whole fold. Pooled
rows: ``auroc`` per perturbation = mean over the folds that scored it, overall = mean over
perturbations; ``classification``/``moa`` = predictions of all folds scored together (each well or
treatment is predicted once, by the fold that held out its batch); ``retrieval``: mAP and p-values
of the per-well APs of all folds; ``relationships``: the related pairs of all folds.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
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
    average_precision,
    mean_average_precision,
    nearest_neighbor_labels,
    recall_at_percentile,
    relationship_ranks,
)

log = get_logger(__name__)

TABLE_COLUMNS = ["method", "task", "metric", "value", "fold", "perturbation"]
TASKS = ("auroc", "classification", "retrieval", "retrieval_biology", "relationships", "moa")
POOLED = "pooled"
#: obs columns a transductive method may see for test wells (everything else is hidden).
UNLABELLED_COLUMNS = ("plate", "well", "row", "col", "batch", "is_control", "n_sites", "site")

DEFAULT_PARAMS: dict[str, Any] = {
    # split protocol
    "split": "auto",              # auto | leave_one_batch_out | kfold
    "n_folds": 5,                 # folds for kfold (auto: kfold when batches > max_lobo_batches)
    "max_lobo_batches": 12,
    "tasks": list(TASKS),         # tasks to run; inapplicable ones are skipped with a log line
    # labels (the workflow passes config["labels"] as params["labels"]; these override it)
    "label": None,                # biology label column (e.g. mechanism, moa); None: labels.biology
    "dose": None,                 # dose column (moa task); None: labels.dose
    "label_exclude": ["none"],    # label values that mean "no label" (simulator's inactive perturbations)
    # control-vs-perturbed AUROC
    "auroc_by": "perturbation",   # obs column whose values are scored one by one
    "min_wells": 2,               # wells needed per class on each side of a split
    "probe_c_l2": 1.0,            # inverse regularisation of the L2 probe (and the top-k probe)
    "probe_c_l1": 1.0,            # inverse regularisation of the L1 probe
    "top_k": 8,                   # coordinates kept by the top-k probe (ranked on training wells)
    "probe_max_iter": 1000,
    "probe_scaling": "standardize",  # standardize (per coordinate, on the training wells) | none
    # multi-class classification
    "classify_by": None,          # None: the biology label if set, else perturbation
    "classifier_c": 1.0,
    "knn_k": 5,
    "knn_metric": "cosine",
    # retrieval
    "retrieval_permutations": 1000,
    "fdr_alpha": 0.05,
    "retrieval_chunk_size": 512,
    # known relationships
    "relationship_percentiles": [0.05, 0.1],
    "relationship_reference": "controls",  # controls (profiles relative to their batch's controls) | none
    "max_null_entities": 4000,
    "relations": None,            # path of the relations table (read by the workflow rule)
    "seed": 0,
}
_EXTRA_KEYS = {"labels"}


# --------------------------------------------------------------------------------------------
# parameters and folds
# --------------------------------------------------------------------------------------------

def resolve_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_PARAMS updated with ``params``; ``labels: {biology, dose}`` fills ``label``/``dose``.

    Raises ConfigError for unknown keys or values out of range.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS) - _EXTRA_KEYS)
    if unknown:
        raise ConfigError(f"benchmark: unknown parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    labels = dict(params.pop("labels", None) or {})
    out = {**DEFAULT_PARAMS, **params}
    if out["label"] is None:
        out["label"] = labels.get("biology")
    if out["dose"] is None:
        out["dose"] = labels.get("dose")
    if out["split"] not in ("auto", "leave_one_batch_out", "kfold"):
        raise ConfigError(f"benchmark.split: {out['split']!r} is not auto, leave_one_batch_out or kfold")
    bad_tasks = sorted(set(out["tasks"]) - set(TASKS))
    if bad_tasks:
        raise ConfigError(f"benchmark.tasks: unknown task(s) {bad_tasks}; known: {list(TASKS)}")
    if out["probe_scaling"] not in ("none", "standardize"):
        raise ConfigError("benchmark.probe_scaling: must be 'none' or 'standardize', "
                          f"got {out['probe_scaling']!r}")
    if out["relationship_reference"] not in ("none", "controls"):
        raise ConfigError("benchmark.relationship_reference: must be 'none' or 'controls', "
                          f"got {out['relationship_reference']!r}")
    for key in ("n_folds", "knn_k", "top_k", "min_wells", "retrieval_permutations"):
        if int(out[key]) < 1:
            raise ConfigError(f"benchmark.{key}: must be >= 1, got {out[key]!r}")
    for p in out["relationship_percentiles"]:
        if not 0 < float(p) < 0.5:
            raise ConfigError(f"benchmark.relationship_percentiles: {p!r} is not in (0, 0.5)")
    return out


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


def scale_for_probes(Z_train: np.ndarray, Z_test: np.ndarray,
                     scaling: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """float64 copies; ``standardize`` centres and scales each coordinate with the training
    wells' mean and standard deviation. On a representation whitened on those same wells this
    changes nothing, so the PCA / PCA+ICA / PCA+Rand tie of the L2 probe survives; otherwise it
    is a per-coordinate step and breaks it slightly."""
    Z_train = np.asarray(Z_train, dtype=np.float64)
    Z_test = np.asarray(Z_test, dtype=np.float64)
    if scaling == "none":
        return Z_train, Z_test
    if scaling != "standardize":
        raise ValueError(f"scaling must be 'none' or 'standardize', got {scaling!r}")
    mean = Z_train.mean(axis=0)
    sd = Z_train.std(axis=0, ddof=1) if len(Z_train) > 1 else np.ones(Z_train.shape[1])
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


def auroc_task(Z_train: np.ndarray, obs_train: pd.DataFrame, Z_test: np.ndarray,
               obs_test: pd.DataFrame, *, by: str = "perturbation", c_l2: float = 1.0,
               c_l1: float = 1.0, top_k: int = 8, min_wells: int = 2, max_iter: int = 1000,
               scaling: str = "none", exclude: Sequence[str] = (), seed: int = 0) -> pd.DataFrame:
    """Control-vs-perturbed AUROC on the test wells for each value of ``obs[by]``.

    Returns rows (``metric``, ``value``, ``perturbation``): ``auroc_l2``, ``auroc_l1``,
    ``auroc_topk`` per value and their means (``perturbation`` empty), and ``n_perturbations``.
    Values with fewer than ``min_wells`` wells (or controls) on either side are skipped.
    """
    for frame, name in ((obs_train, "train"), (obs_test, "test")):
        for col in (by, "is_control"):
            if col not in frame.columns:
                raise InputError(f"obs ({name})", f"missing column {col!r}")
    ctrl_tr = obs_train["is_control"].to_numpy(bool)
    ctrl_te = obs_test["is_control"].to_numpy(bool)
    lab_tr = _label_values(obs_train, by, exclude).to_numpy(object)
    lab_te = _label_values(obs_test, by, exclude).to_numpy(object)
    Z_train, Z_test = scale_for_probes(Z_train, Z_test, scaling)
    if ctrl_tr.sum() < min_wells or ctrl_te.sum() < min_wells:
        return pd.DataFrame(columns=["metric", "value", "perturbation"])
    in_train = {v for v in lab_tr[~ctrl_tr] if v is not None}
    values = sorted(in_train & {v for v in lab_te[~ctrl_te] if v is not None})
    rows, unconverged = [], 0
    k = min(int(top_k), Z_train.shape[1])
    for value in values:
        case_tr = (lab_tr == value) & ~ctrl_tr
        case_te = (lab_te == value) & ~ctrl_te
        if case_tr.sum() < min_wells or case_te.sum() < min_wells:
            continue
        rows_tr, rows_te = case_tr | ctrl_tr, case_te | ctrl_te
        Xtr, ytr = Z_train[rows_tr], case_tr[rows_tr].astype(int)
        Xte, yte = Z_test[rows_te], case_te[rows_te].astype(int)
        # balanced classes: controls usually outnumber the wells of one perturbation
        weight = np.where(ytr == 1, 0.5 / ytr.mean(), 0.5 / (1 - ytr.mean()))
        l2 = LogisticRegression(C=c_l2, l1_ratio=0.0, solver="newton-cholesky", tol=1e-8,
                                max_iter=max_iter)
        l1 = LogisticRegression(C=c_l1, l1_ratio=1.0, solver="liblinear", intercept_scaling=10.0,
                                tol=1e-6, max_iter=max_iter, random_state=seed)
        top = np.sort(np.argsort(-effect_size(Xtr, ytr.astype(bool)), kind="stable")[:k])
        topk = LogisticRegression(C=c_l2, l1_ratio=0.0, solver="newton-cholesky", tol=1e-8,
                                  max_iter=max_iter)
        for metric, model, cols in (("auroc_l2", l2, slice(None)), ("auroc_l1", l1, slice(None)),
                                    ("auroc_topk", topk, top)):
            model, warned = _fit_quietly(model, Xtr[:, cols], ytr, weight)
            unconverged += warned
            score = model.decision_function(Xte[:, cols])
            rows.append({"metric": metric, "value": auroc(yte, score), "perturbation": value})
    if unconverged:
        log.warning("auroc: %d probe fits stopped at max_iter=%d", unconverged, max_iter)
    out = pd.DataFrame(rows, columns=["metric", "value", "perturbation"])
    if not out.empty:
        means = out.groupby("metric", sort=False)["value"].mean()
        out = pd.concat([out, pd.DataFrame({"metric": means.index, "value": means.to_numpy(),
                                            "perturbation": ""})], ignore_index=True)
    n = out.loc[out["metric"] == "auroc_l2", "perturbation"].ne("").sum() if not out.empty else 0
    count = pd.DataFrame([{"metric": "n_perturbations", "value": float(n), "perturbation": ""}])
    return pd.concat([out, count], ignore_index=True)


def classification_task(Z_train: np.ndarray, obs_train: pd.DataFrame, Z_test: np.ndarray,
                        obs_test: pd.DataFrame, *, label: str, include_controls: bool = False,
                        c: float = 1.0, knn_k: int = 5, knn_metric: str = "cosine",
                        max_iter: int = 1000, scaling: str = "none",
                        exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Predict ``obs[label]`` of test wells with a linear probe and kNN fitted on training wells.

    Returns one row per labelled test well: ``label``, ``linear``, ``knn`` (predictions) and
    ``seen`` (its class occurs among the training wells; unseen classes get no prediction).
    ``scaling`` applies to the linear probe only (kNN sees the representation as it is).
    Score it with :func:`classification_scores`.
    """
    y_tr = _label_values(obs_train, label, exclude)
    y_te = _label_values(obs_test, label, exclude)
    keep_tr = y_tr.notna().to_numpy()
    keep_te = y_te.notna().to_numpy()
    if not include_controls:
        keep_tr &= ~obs_train["is_control"].to_numpy(bool)
        keep_te &= ~obs_test["is_control"].to_numpy(bool)
    classes = set(y_tr[keep_tr])
    out = pd.DataFrame({"label": y_te[keep_te].to_numpy(object).astype(str), "linear": None,
                        "knn": None, "seen": y_te[keep_te].isin(classes).to_numpy()},
                       index=obs_test.index[keep_te])
    scored = keep_te & y_te.isin(classes).to_numpy()
    if len(classes) < 2 or not scored.any():
        out["seen"] = False
        return out
    Xtr = np.asarray(Z_train, dtype=np.float64)[keep_tr]
    Xte = np.asarray(Z_test, dtype=np.float64)[scored]
    ytr = y_tr[keep_tr].to_numpy(object).astype(str)
    # scaling statistics from all training wells, as in auroc_task
    Str, Ste = scale_for_probes(Z_train, Z_test, scaling)
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
                 exclude: Sequence[str] = (), chunk_size: int = 512,
                 show_progress: bool = True) -> pd.DataFrame:
    """Per-query AP of cross-batch retrieval grouped by ``obs[by]`` (see module docstring).

    Controls are never queries but stay in every rank list as negatives.
    """
    meta = pd.DataFrame(index=obs.index)
    meta["batch"] = obs["batch"].astype(str).to_numpy()
    meta["perturbation"] = obs["perturbation"].astype(str).to_numpy()
    controls = obs["is_control"].to_numpy(bool)
    if by == "perturbation":
        pos_diffby = ["batch"]
    else:
        key = _label_values(obs, by, exclude)
        # controls: negatives for every label, never positives
        key.iloc[np.flatnonzero(controls)] = "\x00control"
        meta[by] = key.to_numpy(object)
        pos_diffby = ["batch", "perturbation"]
    queries = np.asarray(query_mask, bool) & ~controls
    return average_precision(Z, meta, pos_sameby=[by], pos_diffby=pos_diffby, neg_diffby=[by],
                             query_mask=queries, chunk_size=chunk_size, show_progress=show_progress)


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


def evaluate_method(X: np.ndarray, obs: pd.DataFrame, *, method: str,
                    method_params: Mapping[str, Any] | None = None,
                    params: Mapping[str, Any] | None = None,
                    relations: pd.DataFrame | None = None,
                    method_factory: MethodFactory | None = None,
                    name: str | None = None, fit_on: str = "all",
                    source: str = "wells") -> pd.DataFrame:
    """Run every configured task for one post-processing method over all folds.

    Parameters
    ----------
    X, obs
        Raw wells representation (n x d) and its obs (``batch``, ``perturbation``, ``is_control``;
        the biology label and dose columns when configured).
    method, method_params
        Post-processing algorithm name and parameters for ``method_factory`` (default
        ``phenoica.postprocess.make_method``).
    params
        The ``benchmark`` config section (see ``DEFAULT_PARAMS``).
    relations
        Related-pairs table (``perturbation_a``, ``perturbation_b``); None derives pairs from the
        biology label when there is one.
    name
        Value of the ``method`` column (default ``method``).
    fit_on
        ``all`` or ``controls``: which training wells the method is fitted on (postprocess.fit_on).
    source
        Name used in error messages (the wells file).

    Returns
    -------
    The long table (``TABLE_COLUMNS``).
    """
    p = resolve_params(params)
    factory = method_factory or _default_factory()
    X = np.asarray(X)
    _check_obs(obs, source, ["batch", "perturbation", "is_control"])
    obs = obs.copy()
    obs["is_control"] = obs["is_control"].to_numpy(bool)
    label = p["label"]
    if label is not None and label not in obs.columns:
        log.warning("%s: biology label column %r not in obs; label tasks fall back to perturbation "
                    "or are skipped", source, label)
        label = None
    dose = p["dose"] if p["dose"] in obs.columns else None
    if p["auroc_by"] not in obs.columns:
        raise InputError(source, f"benchmark.auroc_by column {p['auroc_by']!r} not in obs")
    classify_by = p["classify_by"] or label or "perturbation"
    if classify_by not in obs.columns:
        raise InputError(source, f"benchmark.classify_by column {classify_by!r} not in obs")
    exclude = [str(v) for v in p["label_exclude"]]
    tasks = list(dict.fromkeys(p["tasks"]))
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

    folds = make_folds(obs["batch"], split=p["split"], n_folds=p["n_folds"],
                       max_lobo_batches=p["max_lobo_batches"], seed=p["seed"])
    log.info("%s: %d folds (%s), tasks %s", name or method, len(folds),
             ", ".join(f.name for f in folds), tasks)
    rows: list[dict] = []
    pooled: dict[str, list] = {t: [] for t in TASKS}
    transductive = False
    for fold in progress(folds, desc=f"benchmark {name or method}"):
        Z, transductive = fold_embedding(factory, method, method_params or {}, X, obs, fold,
                                         fit_on=fit_on)
        train_idx, test_idx = np.flatnonzero(fold.train), np.flatnonzero(fold.test)
        obs_tr, obs_te = obs.iloc[train_idx], obs.iloc[test_idx]
        rows += [_rows("protocol", "n_train_wells", len(train_idx), fold.name),
                 _rows("protocol", "n_test_wells", len(test_idx), fold.name)]
        if "auroc" in tasks:
            table = auroc_task(Z[train_idx], obs_tr, Z[test_idx], obs_te, by=p["auroc_by"],
                               c_l2=p["probe_c_l2"], c_l1=p["probe_c_l1"], top_k=p["top_k"],
                               min_wells=p["min_wells"], max_iter=p["probe_max_iter"],
                               scaling=p["probe_scaling"], exclude=exclude, seed=p["seed"])
            rows += [_rows("auroc", r.metric, r.value, fold.name, r.perturbation)
                     for r in table.itertuples(index=False)]
            pooled["auroc"].append(table)
        if "classification" in tasks:
            pred = classification_task(Z[train_idx], obs_tr, Z[test_idx], obs_te, label=classify_by,
                                       c=p["classifier_c"], knn_k=p["knn_k"],
                                       knn_metric=p["knn_metric"], max_iter=p["probe_max_iter"],
                                       scaling=p["probe_scaling"], exclude=exclude)
            rows += [_rows("classification", k, v, fold.name)
                     for k, v in classification_scores(pred).items()]
            pooled["classification"].append(pred)
        for task, by in (("retrieval", "perturbation"), ("retrieval_biology", label)):
            if task not in tasks:
                continue
            ap = retrieval_ap(Z, obs, fold.test, by=by, exclude=exclude,
                              chunk_size=p["retrieval_chunk_size"])
            rows += retrieval_rows(ap, by=by, task=task, fold=fold.name,
                                   null_size=p["retrieval_permutations"], alpha=p["fdr_alpha"],
                                   seed=p["seed"])
            pooled[task].append(ap)
        if "relationships" in tasks:
            profiles, names = perturbation_profiles(Z[test_idx], obs_te,
                                                    reference=p["relationship_reference"])
            if len(names) >= 3:
                ranks = relationship_ranks(profiles, names, relations,
                                           max_null_entities=p["max_null_entities"], seed=p["seed"])
                rows += _relationship_rows(ranks.rank_left, ranks.rank_right,
                                           p["relationship_percentiles"], fold.name)
                pooled["relationships"].append(ranks)
        if "moa" in tasks:
            treatments = treatment_profiles(Z, obs, dose=dose, label=label, exclude=exclude)
            query = treatments["batch"].isin(fold.test_batches).to_numpy()
            pred = moa_nearest_neighbors(treatments, query)
            rows += [_rows("moa", k, v, fold.name) for k, v in moa_scores(pred).items()]
            pooled["moa"].append(pred)

    rows += _pooled_rows(pooled, p, label)
    rows += [_rows("protocol", "n_folds", len(folds), POOLED),
             _rows("protocol", "transductive", float(transductive), POOLED)]
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


def _pooled_rows(pooled: dict[str, list], p: Mapping[str, Any], label: str | None) -> list[dict]:
    rows: list[dict] = []
    if pooled["auroc"]:
        table = pd.concat(pooled["auroc"], ignore_index=True)
        per = table[(table["perturbation"] != "") & table["metric"].str.startswith("auroc")]
        if not per.empty:
            per = per.groupby(["metric", "perturbation"], sort=True)["value"].mean().reset_index()
            rows += [_rows("auroc", r.metric, r.value, POOLED, r.perturbation)
                     for r in per.itertuples(index=False)]
            rows += [_rows("auroc", m, v, POOLED) for m, v in per.groupby("metric")["value"].mean().items()]
            rows.append(_rows("auroc", "n_perturbations", per["perturbation"].nunique(), POOLED))
    if pooled["classification"]:
        pred = pd.concat(pooled["classification"])
        rows += [_rows("classification", k, v, POOLED) for k, v in classification_scores(pred).items()]
    for task, by in (("retrieval", "perturbation"), ("retrieval_biology", label)):
        if pooled[task]:
            ap = pd.concat(pooled[task], ignore_index=True)
            rows += retrieval_rows(ap, by=by, task=task, fold=POOLED,
                                   null_size=p["retrieval_permutations"], alpha=p["fdr_alpha"],
                                   seed=p["seed"])
    if pooled["relationships"]:
        left = np.concatenate([r.rank_left for r in pooled["relationships"]])
        right = np.concatenate([r.rank_right for r in pooled["relationships"]])
        rows += _relationship_rows(left, right, p["relationship_percentiles"], POOLED)
    if pooled["moa"]:
        pred = pd.concat(pooled["moa"])
        rows += [_rows("moa", k, v, POOLED) for k, v in moa_scores(pred).items()]
    return rows


def run_generalization(wells_path: str, *, out_tsv: str, method: str, method_params: dict,
                       params: dict | None = None, relations_path: str | None = None,
                       layer: str | None = None, name: str | None = None, fit_on: str = "all",
                       method_factory: MethodFactory | None = None) -> None:
    """Held-out-batch benchmarks of one post-processing method on a wells AnnData -> long TSV.

    ``method``/``method_params``: the post-processing algorithm and its parameters;
    ``params``: the ``benchmark`` config section (``DEFAULT_PARAMS``; ``labels`` from the config
    accepted); ``relations_path``: related-pairs table for the relationships task; ``layer``:
    None for ``X`` or an ``obsm`` key (``X_layer2``); ``name``: the ``method`` column (default
    ``method``); ``fit_on``: postprocess.fit_on (``all`` or ``controls``). Writes ``out_tsv``
    atomically with columns ``TABLE_COLUMNS``.
    """
    from ..postprocess.run import select_layer

    effective = resolve_params(params)
    log.info("benchmark %s (%s %s) on %s, params %s", name or method, method,
             json.dumps(method_params, sort_keys=True, default=str), wells_path,
             json.dumps(effective, sort_keys=True, default=str))
    try:
        adata = read_h5ad(wells_path)
    except (OSError, KeyError) as exc:
        raise InputError(wells_path, f"cannot read as AnnData: {exc}") from exc
    X = select_layer(adata, layer, wells_path)
    if not np.isfinite(X).all():
        raise InputError(wells_path, "the representation contains NaN or infinite values")
    relations = read_relations(relations_path) if relations_path else None
    table = evaluate_method(X, adata.obs, method=method, method_params=method_params,
                            params=params, relations=relations, method_factory=method_factory,
                            name=name, fit_on=fit_on, source=wells_path)
    write_tsv(table, out_tsv)
    log.info("wrote %d rows to %s", len(table), out_tsv)
