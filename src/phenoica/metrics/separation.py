"""Batch-vs-biology separation scores of a representation.

Per component (coordinate)
    ``batch_share``: share of the component's variance among control wells explained by batch;
    ``perturbation_share``: share of its within-batch variance explained by the perturbation
    nested in batch. Both are chance-corrected (epsilon-squared: between-group sum of squares
    minus its expectation under no effect, over the total; clipped to [0, 1]), so many small
    groups do not inflate them.
    ``label``: technical / biological / mixed (:func:`attribution_labels`), or ``unstable``
    for an ICA component whose stability index (matched |corr| across restarts, see
    :mod:`phenoica.postprocess.ica`) is below the method's ``stability_threshold``: its
    direction depends on the seed, so it is not judged.
    ``stability``: that index (ICA methods only).
Per representation
    Hoyer sparsity, concentration of biological signal in the top 25% of components, variance
    shares of groups of components (:func:`subspace_scores`: batch variance left in the whole
    representation and in its biology-labelled components, biology variance those components
    capture), MCC and linear R^2 against simulated ground truth, and (rotation-invariant)
    batch-mixing and biology-conservation scores (:func:`mixing_scores`).

Per-component scores change under rotation (that is where ICA differs from PCA); the mixing and
conservation scores do not (whitened PCA, PCA+ICA and PCA+Rand score the same).
Note: methods that centre every batch on its own controls (CenterScale, TVN) have a batch share
of exactly 0 on those controls by construction; judge them on held-out batches.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import section_values
from ..errors import InputError
from ..logs import get_logger
from .matching import mcc, mcc_split

log = get_logger(__name__)

LABELS = ("technical", "mixed", "biological")
#: Label of components too unstable across ICA restarts to be attributed.
UNSTABLE = "unstable"
#: Numeric encoding of the attribution label in the long scores table (``unstable``: NaN).
LABEL_CODES = {"technical": -1, "mixed": 0, "biological": 1, UNSTABLE: float("nan")}
#: Columns processed at once (bounds the float64 working copy to n x COLUMN_CHUNK).
COLUMN_CHUNK = 64


def _codes(labels) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(pd.Series(np.asarray(labels)).astype(str), sort=True)
    return codes.astype(np.int64), len(uniques)


def _indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    n = len(codes)
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))


def _chunks(k: int, size: int = COLUMN_CHUNK):
    for start in range(0, k, size):
        yield slice(start, min(k, start + size))


def _epsilon_squared(ss_between, ss_total, df_between, df_within):
    """Chance-corrected share (SS_b - df_b * MS_w) / SS_t, clipped to [0, 1]; NaN when undefined."""
    ss_within = ss_total - ss_between
    with np.errstate(invalid="ignore", divide="ignore"):
        ms_within = ss_within / df_within if df_within > 0 else np.full_like(ss_total, np.nan)
        share = (ss_between - df_between * ms_within) / ss_total
    share = np.where(ss_total > 0, share, np.nan)
    return np.clip(share, 0.0, 1.0)


def group_share(Z: np.ndarray, groups, *, adjusted: bool = True) -> np.ndarray:
    """Per column of ``Z`` (n x k), the share of variance explained by ``groups`` (one-way)."""
    Z = np.asarray(Z)
    codes, g = _codes(groups)
    n = Z.shape[0]
    ind = _indicator(codes, g)
    counts = np.asarray(ind.sum(axis=1)).ravel()
    out = np.empty(Z.shape[1])
    for cols in _chunks(Z.shape[1]):
        block = np.asarray(Z[:, cols], dtype=np.float64)
        block = block - block.mean(axis=0)
        sums = ind @ block
        ss_b = (sums ** 2 / counts[:, None]).sum(axis=0)
        ss_t = (block ** 2).sum(axis=0)
        if adjusted:
            out[cols] = _epsilon_squared(ss_b, ss_t, g - 1, n - g)
        else:
            out[cols] = np.where(ss_t > 0, ss_b / np.where(ss_t > 0, ss_t, 1), np.nan)
    return out


def nested_share(Z: np.ndarray, groups, blocks, *, adjusted: bool = True) -> np.ndarray:
    """Per column, the share of within-block variance explained by ``groups`` nested in ``blocks``
    (e.g. perturbation within batch): batch means are removed first."""
    Z = np.asarray(Z)
    n = Z.shape[0]
    bcodes, nb = _codes(blocks)
    cell = pd.Series(np.asarray(bcodes).astype(str)) + "\x1f" + pd.Series(np.asarray(groups)).astype(str).to_numpy()
    ccodes, nc = _codes(cell)
    bind, cind = _indicator(bcodes, nb), _indicator(ccodes, nc)
    bcounts = np.asarray(bind.sum(axis=1)).ravel()
    ccounts = np.asarray(cind.sum(axis=1)).ravel()
    out = np.empty(Z.shape[1])
    for cols in _chunks(Z.shape[1]):
        block = np.asarray(Z[:, cols], dtype=np.float64)
        block = block - ((bind @ block) / bcounts[:, None])[bcodes]
        ss_b = ((cind @ block) ** 2 / ccounts[:, None]).sum(axis=0)
        ss_t = (block ** 2).sum(axis=0)
        if adjusted:
            out[cols] = _epsilon_squared(ss_b, ss_t, nc - nb, n - nc)
        else:
            out[cols] = np.where(ss_t > 0, ss_b / np.where(ss_t > 0, ss_t, 1), np.nan)
    return out


def attribution_labels(batch_share: np.ndarray, perturbation_share: np.ndarray, *,
                       margin: float, min_share: float) -> np.ndarray:
    """technical if batch_share >= min_share and >= margin x perturbation_share; biological in the
    mirror case; mixed otherwise (neither dominates, or both are below ``min_share``)."""
    b = np.nan_to_num(np.asarray(batch_share, dtype=np.float64), nan=0.0)
    p = np.nan_to_num(np.asarray(perturbation_share, dtype=np.float64), nan=0.0)
    label = np.full(b.shape, "mixed", dtype=object)
    label[(b >= min_share) & (b >= margin * p)] = "technical"
    label[(p >= min_share) & (p >= margin * b)] = "biological"
    return label


def component_attribution(Z: np.ndarray, obs: pd.DataFrame, *, batch_key: str = "batch",
                          bio_key: str | None = "perturbation", control_key: str = "is_control",
                          margin: float, min_share: float, names: list[str] | None = None,
                          stability: np.ndarray | None = None,
                          stability_threshold: float | None = None) -> pd.DataFrame:
    """Per-component batch and biology shares and the technical/biological/mixed label.

    ``batch_share`` uses control wells only (NaN without at least two batches of controls);
    ``perturbation_share`` uses all wells, with ``bio_key`` nested in batch (NaN when
    ``bio_key`` is None). With ``stability`` (one value per component) and
    ``stability_threshold``, components below the threshold are labelled ``unstable`` instead
    (shares still computed); a NaN stability (unknown) does not make a component unstable.
    """
    Z = np.asarray(Z)
    for col in [batch_key, control_key] + ([bio_key] if bio_key else []):
        if col not in obs.columns:
            raise InputError("obs", f"missing column {col!r} needed for component attribution")
    k = Z.shape[1]
    batches = obs[batch_key].astype(str).to_numpy()
    ctrl = obs[control_key].to_numpy().astype(bool)
    if ctrl.sum() >= 3 and len(set(batches[ctrl])) >= 2:
        batch_share = group_share(Z[ctrl], batches[ctrl])
    else:
        log.warning("component attribution: fewer than 2 batches with controls; batch_share is NaN")
        batch_share = np.full(k, np.nan)
    if bio_key:
        pert_share = nested_share(Z, obs[bio_key].astype(str).to_numpy(), batches)
    else:
        pert_share = np.full(k, np.nan)
    table = pd.DataFrame({"batch_share": batch_share, "perturbation_share": pert_share},
                         index=names if names is not None else [str(i) for i in range(k)])
    labels = attribution_labels(batch_share, pert_share, margin=margin, min_share=min_share)
    if stability is not None:
        stability = np.asarray(stability, dtype=np.float64).reshape(-1)
        if stability.shape != (k,):
            raise InputError("stability", f"has {stability.size} values for {k} components")
        table["stability"] = stability
        if stability_threshold is not None:
            labels[np.nan_to_num(stability, nan=np.inf) < float(stability_threshold)] = UNSTABLE
    table["label"] = pd.Categorical(labels, categories=(*LABELS, UNSTABLE))
    return table


def hoyer(V: np.ndarray) -> np.ndarray:
    """Hoyer sparsity of each row of ``V`` (n x k): (sqrt(k) - |v|_1/|v|_2) / (sqrt(k) - 1).
    Zero rows get NaN; k = 1 is undefined (NaN)."""
    V = np.asarray(V, dtype=np.float64)
    k = V.shape[1]
    if k < 2:
        return np.full(V.shape[0], np.nan)
    l1 = np.abs(V).sum(axis=1)
    l2 = np.sqrt((V ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(l2 > 0, l1 / l2, np.nan)
    return (math.sqrt(k) - ratio) / (math.sqrt(k) - 1)


def mean_hoyer(Z: np.ndarray, controls: np.ndarray | None = None, chunk_rows: int = 16384) -> float:
    """Mean Hoyer sparsity of the treated wells' profiles.

    Each component is standardised (centred on the control wells' mean, divided by its standard
    deviation over all wells) so raw features in different units compare fairly; the mean is over
    non-control wells (all wells without controls).
    """
    Z = np.asarray(Z)
    n, k = Z.shape
    has_ctrl = controls is not None and np.any(controls) and not np.all(controls)
    center = np.zeros(k)
    mean = np.zeros(k)
    sq = np.zeros(k)
    for start in range(0, n, chunk_rows):
        block = np.asarray(Z[start:start + chunk_rows], dtype=np.float64)
        mean += block.sum(axis=0)
        sq += (block ** 2).sum(axis=0)
    mean /= n
    sd = np.sqrt(np.clip(sq / n - mean ** 2, 0.0, None))
    sd[sd <= 0] = 1.0
    center = np.asarray(Z[controls], dtype=np.float64).mean(axis=0) if has_ctrl else mean
    rows = np.flatnonzero(~np.asarray(controls, dtype=bool)) if has_ctrl else np.arange(n)
    total, count = 0.0, 0
    for start in range(0, len(rows), chunk_rows):
        idx = rows[start:start + chunk_rows]
        h = hoyer((np.asarray(Z[idx], dtype=np.float64) - center) / sd)
        total += float(np.nansum(h))
        count += int(np.sum(np.isfinite(h)))
    return total / count if count else float("nan")


def top_share(effect: np.ndarray, top_fraction: float) -> float:
    """Share of the summed (non-negative) ``effect`` held by the top ``top_fraction`` of
    components (at least one). At least ``top_fraction`` by construction; 1 = all signal there."""
    e = np.nan_to_num(np.clip(np.asarray(effect, dtype=np.float64), 0.0, None))
    if e.size == 0 or e.sum() <= 0:
        return float("nan")
    m = max(1, int(math.ceil(top_fraction * e.size)))
    return float(np.sort(e)[::-1][:m].sum() / e.sum())


def truth_mcc(Z: np.ndarray, truth: pd.DataFrame | np.ndarray, *, seed: int) -> tuple[float, float]:
    """MCC of the components of ``Z`` against ground-truth factors: in-sample, and with the
    matching fitted on a random half of the wells and scored on the other half."""
    T = truth.select_dtypes(include=[np.number]).to_numpy(dtype=np.float64) \
        if isinstance(truth, pd.DataFrame) else np.asarray(truth, dtype=np.float64)
    T = T[:, np.nanstd(T, axis=0) > 0]  # a constant factor cannot be matched
    if T.shape[1] == 0 or Z.shape[1] == 0:
        return float("nan"), float("nan")
    in_sample = mcc(Z, T)
    split = np.random.default_rng(seed).random(Z.shape[0]) < 0.5
    held = mcc_split(Z, T, split) if 2 < split.sum() < Z.shape[0] - 2 else float("nan")
    return in_sample, held


# --- subspace-level scores ---------------------------------------------------------------------


def _between_within(Z: np.ndarray, codes: np.ndarray, n_groups: int, blocks: np.ndarray | None = None,
                    n_blocks: int = 1) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per column: the between-group sum of squares (groups nested in ``blocks`` when given),
    the total sum of squares (within blocks), and the two degrees of freedom."""
    n = Z.shape[0]
    ind = _indicator(codes, n_groups)
    counts = np.asarray(ind.sum(axis=1)).ravel()
    ss_b, ss_t = np.empty(Z.shape[1]), np.empty(Z.shape[1])
    bind = _indicator(blocks, n_blocks) if blocks is not None else None
    for cols in _chunks(Z.shape[1]):
        block = np.asarray(Z[:, cols], dtype=np.float64)
        if bind is None:
            block = block - block.mean(axis=0)
        else:
            bcounts = np.asarray(bind.sum(axis=1)).ravel()
            block = block - ((bind @ block) / bcounts[:, None])[blocks]
        ss_b[cols] = ((ind @ block) ** 2 / counts[:, None]).sum(axis=0)
        ss_t[cols] = (block ** 2).sum(axis=0)
    df_b = n_groups - (n_blocks if blocks is not None else 1)
    return ss_b, ss_t, df_b, n - n_groups


def _explained(ss_b: np.ndarray, ss_t: np.ndarray, df_b: int, df_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Chance-corrected explained sum of squares per column (may be negative) and the total."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ms_w = (ss_t - ss_b) / df_w if df_w > 0 else np.full_like(ss_t, np.nan)
    return ss_b - df_b * ms_w, ss_t


def _share(explained: np.ndarray, total: np.ndarray, cols: np.ndarray) -> float:
    den = float(np.sum(total[cols])) if cols.any() else 0.0
    if not den > 0:
        return float("nan")
    return float(np.clip(np.sum(explained[cols]) / den, 0.0, 1.0))


def subspace_scores(Z: np.ndarray, obs: pd.DataFrame, labels, *, batch_key: str = "batch",
                    perturbation_key: str = "perturbation",
                    control_key: str = "is_control") -> dict[str, float]:
    """Variance shares of groups of components rather than single components.

    ``batch_variance_share``: share of the control wells' variance (summed over all components)
    explained by batch, chance-corrected; a trace, so rotation invariant: it drops when
    components are removed (``ica_clean``), not when they are rotated.
    ``batch_variance_in_bio``: the same over the components labelled biological only: the batch
    effect left in what a user would keep as biology (NaN without biological components).
    ``bio_variance_captured``: of the perturbation variance within batches (summed over all
    components, chance-corrected), the share held by the components labelled biological.
    """
    Z = np.asarray(Z)
    labels = np.asarray(labels).astype(str)
    bio = labels == "biological"
    out = {"batch_variance_share": float("nan"), "batch_variance_in_bio": float("nan"),
           "bio_variance_captured": float("nan")}
    ctrl = obs[control_key].to_numpy().astype(bool)
    batches = obs[batch_key].astype(str).to_numpy()
    if ctrl.sum() >= 3 and len(set(batches[ctrl])) >= 2:
        codes, g = _codes(batches[ctrl])
        explained, total = _explained(*_between_within(Z[ctrl], codes, g))
        every = np.ones(Z.shape[1], dtype=bool)
        out["batch_variance_share"] = _share(explained, total, every)
        out["batch_variance_in_bio"] = _share(explained, total, bio)
    bcodes, nb = _codes(batches)
    cell = pd.Series(bcodes.astype(str)) + "\x1f" + pd.Series(obs[perturbation_key].astype(str).to_numpy())
    ccodes, nc = _codes(cell)
    if nc > nb:
        explained, _ = _explained(*_between_within(Z, ccodes, nc, bcodes, nb))
        total = float(np.sum(explained))
        if total > 0:
            out["bio_variance_captured"] = float(np.clip(np.sum(explained[bio]) / total, 0.0, 1.0))
    return out


def truth_r2(Z: np.ndarray, truth: pd.DataFrame | np.ndarray, *, seed: int = 0) -> float:
    """Mean over the ground-truth factors of the R^2 of a ridge regression (penalty chosen by
    cross-validation on the fitting half) from all components of ``Z`` (centred, one common
    scale), fitted on a random half of the wells and scored on the other half (the split of
    :func:`truth_mcc`). Rotation invariant: whether the representation holds the factors
    linearly, whatever its basis."""
    from sklearn.linear_model import RidgeCV

    T = truth.select_dtypes(include=[np.number]).to_numpy(dtype=np.float64) \
        if isinstance(truth, pd.DataFrame) else np.asarray(truth, dtype=np.float64)
    T = T[:, np.nanstd(T, axis=0) > 0]
    split = np.random.default_rng(seed).random(Z.shape[0]) < 0.5
    if T.shape[1] == 0 or Z.shape[1] == 0 or not 5 < split.sum() < Z.shape[0] - 5:
        return float("nan")
    Z = np.asarray(Z, dtype=np.float64)
    # one scale for all components (not one per component), so a rotation changes nothing
    mean = Z[split].mean(axis=0)
    scale = float(np.sqrt(np.mean((Z[split] - mean) ** 2)))
    Zs = (Z - mean) / (scale if scale > 0 else 1.0)
    model = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(Zs[split], T[split])
    pred = model.predict(Zs[~split])
    held = T[~split]
    ss_res = ((held - pred) ** 2).sum(axis=0)
    ss_tot = ((held - held.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)))


# --- the whole table --------------------------------------------------------------------------

#: ``component`` value of whole-representation rows in the long scores table.
ALL = "all"
SCORE_COLUMNS = ["method", "component", "metric", "value"]


def compute_scores(Z: np.ndarray, obs: pd.DataFrame, method: str, names: list[str] | None = None,
                   truth: dict[str, pd.DataFrame] | None = None,
                   stability: np.ndarray | None = None, stability_threshold: float | None = None,
                   batch_key: str = "batch", perturbation_key: str = "perturbation",
                   bio_key: str | None = None, control_key: str = "is_control",
                   timings: dict[str, float] | None = None, *,
                   margin: float, min_share: float, top_fraction: float, mixing: bool, max_wells: int,
                   n_neighbors: int, max_labels: int, perplexity: float,
                   seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All separation scores of one representation ``Z`` (n x k).

    The keyword-only arguments are the ``scores`` config section (config/README.md; outside the
    workflow pass ``**{**phenoica.config.schema_defaults("scores"), **overrides}``).

    Returns ``(long, attribution)``: the long table (columns ``method, component, metric,
    value``; per-component rows carry the component name, whole-representation rows
    ``component == "all"``) and the per-component attribution table (with the text label).

    Per-component metrics: ``batch_share``, ``perturbation_share`` (``perturbation_key`` nested
    in batch), ``attribution`` (:data:`LABEL_CODES`: -1 technical, 0 mixed, 1 biological, NaN
    unstable) and, when ``stability`` is given (ICA methods: the fitted method's
    ``component_stability()``), ``stability``; components below ``stability_threshold`` are
    labelled unstable. Whole-representation metrics: ``n_components``, ``n_technical``,
    ``n_mixed``, ``n_biological``, ``n_unstable``, ``hoyer``, ``bio_top<100*top_fraction>_share``
    (share of the summed ``perturbation_share`` in the top components), the subspace scores of
    :func:`subspace_scores` (``batch_variance_share``, ``batch_variance_in_bio``,
    ``bio_variance_captured``), ``mcc_<truth>``, ``mcc_<truth>_split`` and ``r2_<truth>``
    (:func:`truth_r2`) per ground-truth table (``truth_biology`` -> ``mcc_biology``), and with
    ``mixing`` those of
    :func:`mixing_scores` (biology label ``bio_key``, default the perturbation).
    ``timings``, when given, receives the seconds spent in each part.
    """
    import time

    clock = {"t": time.perf_counter()}

    def lap(part: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[part] = timings.get(part, 0.0) + now - clock["t"]
        log.info("scores %s: %s done in %.1f s", method, part, now - clock["t"])
        clock["t"] = now

    Z = np.asarray(Z)
    if Z.ndim != 2 or Z.shape[0] != len(obs):
        raise InputError("X", f"shape {Z.shape} does not match {len(obs)} obs rows")
    if not np.isfinite(Z).all():
        raise InputError("X", "contains NaN or infinite values")
    bio_key = bio_key or perturbation_key
    for col in dict.fromkeys((batch_key, perturbation_key, bio_key, control_key)):
        if col not in obs.columns:
            raise InputError("obs", f"missing column {col!r} needed for scoring")
    names = [str(c) for c in (names if names is not None else range(1, Z.shape[1] + 1))]
    controls = obs[control_key].to_numpy().astype(bool)
    attribution = component_attribution(Z, obs, batch_key=batch_key, bio_key=perturbation_key,
                                        control_key=control_key, margin=margin,
                                        min_share=min_share, names=names, stability=stability,
                                        stability_threshold=stability_threshold)
    lap("attribution")
    rows: list[tuple[str, str, float]] = []
    for name, rec in attribution.iterrows():
        rows.append((name, "batch_share", rec["batch_share"]))
        rows.append((name, "perturbation_share", rec["perturbation_share"]))
        rows.append((name, "attribution", LABEL_CODES[rec["label"]]))
        if stability is not None:
            rows.append((name, "stability", rec["stability"]))
    counts = attribution["label"].value_counts()
    rows.append((ALL, "n_components", Z.shape[1]))
    for label in (*LABELS, UNSTABLE):
        rows.append((ALL, f"n_{label}", int(counts.get(label, 0))))
    rows.append((ALL, "hoyer", mean_hoyer(Z, controls)))
    rows.append((ALL, f"bio_top{round(100 * top_fraction)}_share",
                 top_share(attribution["perturbation_share"].to_numpy(), top_fraction)))
    subspace = subspace_scores(Z, obs, attribution["label"].to_numpy(), batch_key=batch_key,
                               perturbation_key=perturbation_key, control_key=control_key)
    rows += [(ALL, metric, value) for metric, value in subspace.items()]
    lap("hoyer_concentration")
    for key, table in (truth or {}).items():
        short = key.removeprefix("truth_")
        in_sample, held = truth_mcc(Z, table, seed=seed)
        rows.append((ALL, f"mcc_{short}", in_sample))
        rows.append((ALL, f"mcc_{short}_split", held))
        rows.append((ALL, f"r2_{short}", truth_r2(Z, table, seed=seed)))
    if truth:
        lap("mcc_truth")
    if mixing:
        scores = mixing_scores(Z, obs, batch_key=batch_key, perturbation_key=perturbation_key,
                               bio_key=bio_key, control_key=control_key, max_wells=max_wells,
                               n_neighbors=n_neighbors, max_labels=max_labels,
                               perplexity=perplexity, seed=seed)
        rows += [(ALL, metric, value) for metric, value in scores.items()]
        lap("mixing_conservation")
    long = pd.DataFrame(rows, columns=["component", "metric", "value"])
    long.insert(0, "method", method)
    long["value"] = long["value"].astype(np.float64)
    return long[SCORE_COLUMNS], attribution


def run_scores(postprocessed_path: str, out_tsv: str, method: str, bio_key: str | None, *, margin: float,
               min_share: float, top_fraction: float, mixing: bool, max_wells: int, n_neighbors: int,
               max_labels: int, perplexity: float, seed: int) -> None:
    """The ``score_separation`` rule: score a post-processed AnnData and write the long TSV
    (columns exactly ``method, component, metric, value``; see :func:`compute_scores`).

    ``bio_key``: obs column of the biology label (``labels.biology``; null = the perturbation);
    the keyword-only arguments: the ``scores`` config section. Ground truth is scored when the
    AnnData has ``obsm["truth_biology"]`` / ``obsm["truth_batch"]``; the ICA stability index
    and threshold come from the fitted method in ``uns["method"]`` (:func:`phenoica.tl.score`).
    """
    from .. import tl
    from ..io import read_h5ad, write_tsv

    scores = section_values(run_scores, locals())
    adata = read_h5ad(postprocessed_path)
    try:  # the notebook verb: read, phenoica.tl.score, write
        long = tl.score(adata, use_rep="X", method=method, bio_key=bio_key or None, **scores)
    except InputError as exc:
        where = "" if exc.source == "adata" else f"{exc.source}: "
        raise InputError(postprocessed_path, f"{where}{exc.problem}") from exc
    write_tsv(long, out_tsv)
    log.info("scores for %s: %d rows -> %s", method, len(long), out_tsv)


# --- batch mixing and biology conservation (rotation invariant) ------------------------------


def _subsample(rows: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= max_rows:
        return rows
    return np.sort(rng.choice(rows, size=max_rows, replace=False))


def knn(Z: np.ndarray, n_neighbors: int):
    """Exact Euclidean k nearest neighbours (self included) as scib-metrics ``NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors + 1, Z.shape[0])
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Z).kneighbors(Z)
    return NeighborsResults(indices=idx, distances=dist)


def _frequent_label_rows(rows: np.ndarray, labels: np.ndarray, max_labels: int) -> np.ndarray:
    """Rows whose label is among the ``max_labels`` most frequent labels with >= 2 rows."""
    counts = pd.Series(labels[rows]).value_counts()
    keep = counts[counts >= 2].index[:max_labels]
    return rows[np.isin(labels[rows], keep)]


def mixing_scores(Z: np.ndarray, obs: pd.DataFrame, *, batch_key: str = "batch",
                  perturbation_key: str = "perturbation", bio_key: str | None = None,
                  control_key: str = "is_control", max_wells: int, n_neighbors: int, max_labels: int,
                  perplexity: float, seed: int) -> dict[str, float]:
    """Batch mixing and biology conservation (scIB definitions), on bounded subsamples.

    Batch mixing, on control wells (where batch is the only systematic difference):
      ``batch_silhouette``      scIB batch ASW, mean of 1 - |silhouette(batch)|; higher = mixed;
      ``batch_silhouette_raw``  mean silhouette of batch; lower = better mixed;
      ``ilisi``                 scIB-scaled iLISI (median LISI - 1) / (n_batches - 1); higher = mixed;
    ``graph_connectivity``      scib-metrics, kNN graph of all sampled wells, per biology label.
    Biology conservation, on treated wells of the ``max_labels`` most frequent labels with >= 2
    wells (higher = better kept):
      ``perturbation_silhouette`` silhouette of the perturbation, rescaled to [0, 1] as scIB;
      ``label_silhouette``        the same for the biology label ``bio_key`` (e.g. MOA);
      ``nmi``, ``ari``            k-means (k = number of biology labels) vs the biology label.

    Implementations: scib-metrics' silhouette, LISI and k-means are jax functions that compile
    for every input shape (5-15 s per metric and call on a 2-core machine, more than the
    computation), so the same scIB formulas run on scikit-learn (silhouette, k-means, NMI/ARI)
    and :func:`lisi`; graph connectivity is scib-metrics' own. Silhouettes and kNN are
    quadratic in the wells, so each part draws at most ``max_wells`` wells at random (seeded).
    Undefined scores (e.g. a single batch) are NaN.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_samples

    Z = np.asarray(Z, dtype=np.float32)
    rng = np.random.default_rng(seed)
    batches = obs[batch_key].astype(str).to_numpy()
    perts = obs[perturbation_key].astype(str).to_numpy()
    bio = obs[bio_key or perturbation_key].astype(str).to_numpy()
    ctrl = obs[control_key].to_numpy().astype(bool)
    out = {m: float("nan") for m in ("batch_silhouette", "batch_silhouette_raw", "ilisi",
                                     "graph_connectivity", "perturbation_silhouette",
                                     "label_silhouette", "nmi", "ari")}

    c_rows = _subsample(np.flatnonzero(ctrl), max_wells, rng)
    n_batches = len(set(batches[c_rows]))
    if len(c_rows) > n_batches >= 2:
        Zc, bc = Z[c_rows], batches[c_rows]
        sil = silhouette_samples(Zc, bc)
        out["batch_silhouette"] = float(np.mean(1.0 - np.abs(sil)))
        out["batch_silhouette_raw"] = float(np.mean(sil))
        out["ilisi"] = ilisi(Zc, bc, perplexity=perplexity)

    all_rows = _subsample(np.arange(len(obs)), max_wells, rng)
    if len(all_rows) > n_neighbors:
        from scib_metrics import graph_connectivity

        out["graph_connectivity"] = float(graph_connectivity(knn(Z[all_rows], n_neighbors),
                                                             bio[all_rows]))

    treated = np.flatnonzero(~ctrl) if (~ctrl).any() else np.arange(len(obs))
    same_labels = (bio_key or perturbation_key) == perturbation_key
    for metric, labels in (("perturbation_silhouette", perts), ("label_silhouette", bio)):
        rows = _subsample(_frequent_label_rows(treated, labels, max_labels), max_wells, rng)
        n_labels = len(set(labels[rows]))
        if metric == "label_silhouette" and same_labels:
            out[metric] = out["perturbation_silhouette"]
        elif len(rows) > n_labels >= 2:
            out[metric] = float((np.mean(silhouette_samples(Z[rows], labels[rows])) + 1.0) / 2.0)
        if metric == "label_silhouette" and len(rows) > n_labels >= 2:
            clusters = KMeans(n_clusters=n_labels, n_init=1, max_iter=100,
                              random_state=seed).fit_predict(Z[rows])
            out["nmi"] = float(normalized_mutual_info_score(labels[rows], clusters,
                                                            average_method="arithmetic"))
            out["ari"] = float(adjusted_rand_score(labels[rows], clusters))
    return out


def lisi(Z: np.ndarray, labels: np.ndarray, *, perplexity: float) -> np.ndarray:
    """Local inverse Simpson index of ``labels`` around every row (Korsunsky et al. 2019).

    The LISI of scIB / harmonypy: Gaussian weights on the ``3 * perplexity`` nearest neighbours
    (exact Euclidean kNN, self excluded), bandwidth set per row by bisection so the weights'
    perplexity matches ``perplexity``, then 1 / sum over labels of (weight in label)^2. Written
    here, vectorised over rows, because scib-metrics' version recompiles (jax) for every input
    shape and harmonypy's C++ one grows faster than quadratically with the rows (25 s for 2,000
    rows x 384 dims).
    """
    from sklearn.neighbors import NearestNeighbors

    Z = np.asarray(Z, dtype=np.float32)
    n = Z.shape[0]
    k = int(min(n - 1, max(1, round(3 * perplexity))))
    perplexity = min(perplexity, k / 3.0) if k >= 3 else 1.0
    dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(Z).kneighbors(Z)
    dist, idx = dist[:, 1:].astype(np.float64), idx[:, 1:]
    dist -= dist[:, :1]  # shifting distances does not change the normalised weights
    target = np.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    for _ in range(60):
        P = np.exp(-dist * beta[:, None])
        P /= P.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            H = -np.nansum(np.where(P > 0, P * np.log(P), 0.0), axis=1)
        too_flat = H > target  # entropy too high: sharpen (raise beta)
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(too_flat, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
                        np.where(np.isinf(lo), beta / 2, (beta + lo) / 2))
        if np.all(np.abs(H - target) < 1e-5):
            break
    codes, n_labels = _codes(labels)
    neigh = codes[idx]
    simpson = np.zeros(n)
    for c in range(n_labels):
        simpson += (P * (neigh == c)).sum(axis=1) ** 2
    return 1.0 / simpson


def ilisi(Z: np.ndarray, batches: np.ndarray, *, perplexity: float) -> float:
    """scIB-scaled iLISI: (median LISI of ``batches`` - 1) / (n_batches - 1), in [0, 1]."""
    n_batches = len(set(batches))
    if n_batches < 2 or len(batches) < 3:
        return float("nan")
    return float((np.nanmedian(lisi(Z, batches, perplexity=perplexity)) - 1.0) / (n_batches - 1))
