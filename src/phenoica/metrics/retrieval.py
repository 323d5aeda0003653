"""Retrieval metrics on embeddings: average precision with copairs' pair semantics, permutation
nulls and FDR, known-relationship recall (EFAAR convention), nearest-neighbour accuracy.

Everything here is memory-bounded: similarities are computed for ``chunk_size`` query rows at a
time (float32, ``chunk_size x n``), never as an ``n x n`` matrix.

Pair semantics (as in copairs' ``average_precision``): for a query row ``i`` and another row ``j``,
``(i, j)`` is a *positive* pair when the rows share every ``pos_sameby`` column and differ in every
``pos_diffby`` column; a *negative* pair when they share every ``neg_sameby`` column and differ in
every ``neg_diffby`` column. The query's rank list holds its positive and negative partners sorted
by cosine similarity (descending); AP is the mean precision at the ranks of the positives.
Differences from copairs, on purpose: a pair that matches both rules counts once, as positive
(copairs would list it twice); ties in similarity put positives first, as copairs' stable sort
does; rows with a missing value in a key column take part in no pair (copairs drops them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from ..errors import InputError
from ..logs import get_logger, progress

log = get_logger(__name__)

DEFAULT_CHUNK = 512
#: Similarities closer than this count as ties when ranked against a null.
RANK_TOL = 1e-6


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero: similarity 0 to all)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return X / norms


def _as_list(columns: str | Iterable[str] | None) -> list[str]:
    if columns is None:
        return []
    if isinstance(columns, str):
        return [columns]
    return list(columns)


def _column_codes(meta: pd.DataFrame, columns: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Integer codes per key column and a mask of rows with no missing key value."""
    codes: dict[str, np.ndarray] = {}
    complete = np.ones(len(meta), dtype=bool)
    for col in columns:
        if col not in meta.columns:
            raise InputError("metadata", f"column {col!r} not found (have {list(meta.columns)})")
        values, _ = pd.factorize(meta[col], use_na_sentinel=True)
        codes[col] = values.astype(np.int64)
        complete &= values >= 0
    return codes, complete


def _pair_mask(codes: dict[str, np.ndarray], q: np.ndarray, sameby: Sequence[str],
               diffby: Sequence[str], n: int) -> np.ndarray:
    """Boolean (len(q) x n) mask of rows pairing with the query rows ``q`` under one rule."""
    mask = np.ones((len(q), n), dtype=bool)
    for col in sameby:
        mask &= codes[col][q, None] == codes[col][None, :]
    for col in diffby:
        mask &= codes[col][q, None] != codes[col][None, :]
    return mask


def average_precision(X: np.ndarray, meta: pd.DataFrame, *, pos_sameby: str | Sequence[str],
                      pos_diffby: str | Sequence[str] = (), neg_sameby: str | Sequence[str] = (),
                      neg_diffby: str | Sequence[str] = (), query_mask: np.ndarray | None = None,
                      candidate_mask: np.ndarray | None = None, chunk_size: int = DEFAULT_CHUNK,
                      show_progress: bool = True) -> pd.DataFrame:
    """Average precision of every query row, by cosine similarity, with copairs' pair rules.

    Parameters
    ----------
    X
        (n, d) profiles (any float dtype; computed in float32).
    meta
        n rows of metadata holding the key columns.
    pos_sameby, pos_diffby, neg_sameby, neg_diffby
        Column names defining positive and negative pairs (see module docstring). At least one
        of ``pos_sameby``/``pos_diffby`` and one of ``neg_sameby``/``neg_diffby`` must be given.
    query_mask, candidate_mask
        Rows that are queried, and rows that may appear in rank lists (default: all).
    chunk_size
        Query rows per similarity block (memory ~ ``chunk_size * n * 9`` bytes).

    Returns
    -------
    DataFrame, one row per query (index = row position in ``X``), with columns
    ``average_precision`` (NaN without positive pairs), ``n_pos_pairs``, ``n_total_pairs`` and
    the key columns of ``meta``.
    """
    pos_sameby, pos_diffby = _as_list(pos_sameby), _as_list(pos_diffby)
    neg_sameby, neg_diffby = _as_list(neg_sameby), _as_list(neg_diffby)
    if not (pos_sameby or pos_diffby) or not (neg_sameby or neg_diffby):
        raise ValueError("need at least one positive and one negative pair rule")
    X = np.asarray(X)
    n = X.shape[0]
    if len(meta) != n:
        raise InputError("metadata", f"{len(meta)} rows for {n} profiles")
    keys = list(dict.fromkeys(pos_sameby + pos_diffby + neg_sameby + neg_diffby))
    codes, complete = _column_codes(meta, keys)
    queries = complete.copy() if query_mask is None else complete & np.asarray(query_mask, bool)
    candidates = complete.copy() if candidate_mask is None else complete & np.asarray(candidate_mask, bool)
    Xn = normalize_rows(X)
    query_rows = np.flatnonzero(queries)
    ap = np.full(len(query_rows), np.nan)
    n_pos = np.zeros(len(query_rows), dtype=np.int64)
    n_total = np.zeros(len(query_rows), dtype=np.int64)
    starts = range(0, len(query_rows), max(1, int(chunk_size)))
    for start in (progress(starts, desc="average precision") if show_progress else starts):
        q = query_rows[start:start + chunk_size]
        sims = Xn[q] @ Xn.T
        pos = _pair_mask(codes, q, pos_sameby, pos_diffby, n)
        neg = _pair_mask(codes, q, neg_sameby, neg_diffby, n)
        pos &= candidates[None, :]
        neg &= candidates[None, :] & ~pos
        local = np.arange(len(q))
        pos[local, q] = False
        neg[local, q] = False
        for r in range(len(q)):
            row_pos = np.sort(sims[r, pos[r]])[::-1]
            row_neg = sims[r, neg[r]]
            m, k = row_pos.size, row_neg.size
            n_pos[start + r], n_total[start + r] = m, m + k
            if m == 0:
                continue
            # Only negatives above the weakest positive can push a positive down the list.
            row_neg = np.sort(row_neg[row_neg > row_pos[-1]])
            neg_above = row_neg.size - np.searchsorted(row_neg, row_pos, side="right")
            hits = np.arange(1, m + 1)
            ap[start + r] = float(np.mean(hits / (hits + neg_above)))
    return _ap_table(meta, query_rows, keys, ap, n_pos, n_total)


def grouped_average_precision(X: np.ndarray, meta: pd.DataFrame, *, group: str, block: str,
                              reference: np.ndarray, pos_diffby: str | Sequence[str] = (),
                              query_mask: np.ndarray | None = None,
                              chunk_size: int = DEFAULT_CHUNK) -> pd.DataFrame:
    """Average precision of every query against its replicates and the reference (control)
    wells of its own block, by cosine similarity: copairs' grouped approach, bounded in time and
    memory by the size of a group and of a block instead of by all pairs of wells.

    For a query row ``i`` (non-reference, in ``query_mask``): *positives* are the non-reference
    rows of the same ``group`` that differ from ``i`` in every ``pos_diffby`` column; *negatives*
    are the ``reference`` rows of the same ``block`` as ``i``. In copairs' terms, on the rows of
    one group plus the reference rows: ``pos_sameby=[group]``, ``pos_diffby``,
    ``neg_sameby=[block]``, ``neg_diffby=[group]``; :func:`average_precision` on those rows gives
    the same values (tested), as does copairs. Ties put positives first; rows with a missing key
    take part in no pair. Cost: one ``queries x block references`` product per block (in chunks of
    ``chunk_size`` queries) and one ``queries x group`` product per group and block.

    Returns one row per query (index = row position) with the key columns of ``meta``,
    ``average_precision`` (NaN without positives), ``n_pos_pairs`` and ``n_total_pairs``.
    """
    import torch

    pos_diffby = _as_list(pos_diffby)
    X = np.asarray(X)
    n = X.shape[0]
    if len(meta) != n:
        raise InputError("metadata", f"{len(meta)} rows for {n} profiles")
    keys = list(dict.fromkeys([group, block, *pos_diffby]))
    codes, complete = _column_codes(meta, keys)
    reference = np.asarray(reference, bool) & complete
    members = complete & ~reference
    queries = members.copy() if query_mask is None else members & np.asarray(query_mask, bool)
    query_rows = np.flatnonzero(queries)
    Xn = torch.from_numpy(normalize_rows(X))
    g_codes, b_codes = codes[group], codes[block]
    by_group = pd.Series(np.flatnonzero(members)).groupby(g_codes[members]).apply(np.asarray)
    slot = np.full(n, -1, dtype=np.int64)               # row -> position among the queries
    slot[query_rows] = np.arange(len(query_rows))
    ap = np.full(len(query_rows), np.nan)
    n_pos = np.zeros(len(query_rows), dtype=np.int64)
    n_total = np.zeros(len(query_rows), dtype=np.int64)
    for b in np.unique(b_codes[query_rows]):
        q_all = query_rows[b_codes[query_rows] == b]
        q_all = q_all[np.argsort(g_codes[q_all], kind="stable")]       # chunks hold whole groups
        refs = np.flatnonzero(reference & (b_codes == b))
        R = Xn[refs]
        for start in range(0, len(q_all), max(1, int(chunk_size))):
            q = q_all[start:start + chunk_size]
            neg = torch.sort(Xn[q] @ R.T, dim=1).values                # ascending, (len(q), K)
            k = neg.shape[1]
            for g in np.unique(g_codes[q]):
                local = np.flatnonzero(g_codes[q] == g)
                qi = q[local]
                cand = by_group[g]
                sims = Xn[qi] @ Xn[cand].T                               # (len(qi), len(cand))
                ok = cand[None, :] != qi[:, None]
                for col in pos_diffby:
                    ok &= codes[col][cand][None, :] != codes[col][qi][:, None]
                ok_t = torch.from_numpy(ok)
                pos = torch.where(ok_t, sims, torch.tensor(-np.inf, dtype=sims.dtype))
                pos = torch.sort(pos, dim=1, descending=True).values
                m = ok.sum(1)
                at = slot[qi]
                n_pos[at] = m
                n_total[at] = m + k
                if k:
                    above = k - torch.searchsorted(neg[local].contiguous(), pos.contiguous(),
                                                   right=True)
                else:
                    above = torch.zeros_like(pos, dtype=torch.long)
                hits = torch.arange(1, pos.shape[1] + 1, dtype=torch.float64)[None, :]
                valid = torch.arange(pos.shape[1])[None, :] < torch.from_numpy(m)[:, None]
                prec = torch.where(valid, hits / (hits + above.to(torch.float64)), 0.0)
                ap[at] = np.where(m > 0, prec.sum(1).numpy() / np.maximum(m, 1), np.nan)
    return _ap_table(meta, query_rows, keys, ap, n_pos, n_total)


def _ap_from_ranks(ranks: np.ndarray) -> np.ndarray:
    """AP per row of sorted 0-based positive ranks (rows x m)."""
    hits = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)
    return np.mean(hits / (ranks + 1.0), axis=1)


def null_average_precision(n_pos: int, n_total: int, null_size: int,
                           rng: np.random.Generator) -> np.ndarray:
    """``null_size`` AP values of rank lists where ``n_pos`` of ``n_total`` items, placed at
    random, are positive (the permutation null of one query). float32."""
    if n_pos <= 0 or n_total <= 0:
        return np.full(null_size, np.nan, dtype=np.float32)
    if n_pos >= n_total:
        return np.ones(null_size, dtype=np.float32)
    # Rejection sampling of whole rows is exact (a duplicate-free draw is a uniform subset) and
    # cheap while duplicates are rare; otherwise rank random keys, in bounded blocks.
    accept = np.prod(1.0 - np.arange(n_pos) / n_total)
    out = np.empty(null_size, dtype=np.float32)
    if accept > 0.25:
        todo = np.arange(null_size)
        while todo.size:
            draws = np.sort(rng.integers(0, n_total, size=(todo.size, n_pos)), axis=1)
            ok = np.all(np.diff(draws, axis=1) > 0, axis=1) if n_pos > 1 else np.ones(todo.size, bool)
            out[todo[ok]] = _ap_from_ranks(draws[ok])
            todo = todo[~ok]
        return out
    block = max(1, (1 << 22) // n_total)
    for start in range(0, null_size, block):
        rows = min(block, null_size - start)
        keys = rng.random((rows, n_total), dtype=np.float32)
        ranks = np.sort(np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos], axis=1)
        out[start:start + rows] = _ap_from_ranks(ranks)
    return out


def mean_average_precision(ap: pd.DataFrame, sameby: str | Sequence[str], *, null_size: int = 1000,
                           alpha: float = 0.05, seed: int = 0,
                           independent_queries: bool = False) -> pd.DataFrame:
    """mAP per group of queries, a permutation p-value and the Benjamini-Hochberg q-value.

    One pool of ``null_size`` null APs is drawn per distinct (``n_pos_pairs``,
    ``n_total_pairs``) configuration; a group's null mAP is the mean over its queries of their
    configuration's pool. As in copairs, queries that share a configuration share draws, which
    keeps the null wide: queries of one perturbation rank each other, so they are not
    independent. ``independent_queries=True`` reshuffles each query's pool instead (narrower
    null, smaller p-values). p = (1 + #{null mAP >= observed}) / (1 + null_size) (copairs
    counts only ``>``; the two differ only on ties).

    Returns columns: the ``sameby`` columns, ``mean_average_precision``, ``n_queries``,
    ``p_value``, ``corrected_p_value``, ``below_corrected_p`` (corrected p < ``alpha``).
    """
    sameby = _as_list(sameby)
    valid = ap[ap["n_pos_pairs"].to_numpy() > 0].dropna(subset=["average_precision"])
    columns = [*sameby, "mean_average_precision", "n_queries", "p_value", "corrected_p_value",
               "below_corrected_p"]
    if valid.empty:
        return pd.DataFrame(columns=columns)
    rng = np.random.default_rng(seed)
    configs = valid[["n_pos_pairs", "n_total_pairs"]].to_numpy(np.int64)
    unique, inverse = np.unique(configs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    pools = np.empty((len(unique), null_size), dtype=np.float32)
    for i, (m, total) in enumerate(unique):
        pools[i] = null_average_precision(int(m), int(total), null_size, rng)
    rows = []
    scores = valid["average_precision"].to_numpy(np.float64)
    groups = valid.groupby(sameby, observed=True, sort=True).indices
    for key, idx in groups.items():
        observed = float(scores[idx].mean())
        draws = pools[inverse[idx]]
        if independent_queries:
            draws = rng.permuted(draws, axis=1)
        null = draws.mean(axis=0)
        p_value = (1.0 + np.sum(null >= observed - 1e-12)) / (1.0 + null_size)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, observed, len(idx), p_value))
    out = pd.DataFrame(rows, columns=columns[:-2])
    out["corrected_p_value"] = false_discovery_control(out["p_value"].to_numpy(), method="bh")
    out["below_corrected_p"] = out["corrected_p_value"] < alpha
    return out


@dataclass(frozen=True)
class RelationshipRanks:
    """Cosine similarity of each related pair and its percentile rank in the null of all pairs.

    ``rank_left``/``rank_right``: fraction of null similarities below / at most the pair's
    similarity (EFAAR's searchsorted left/right convention), with a tolerance of ``RANK_TOL`` so
    that a pair meets its own copy in the null as a tie whatever the rounding."""

    pairs: pd.DataFrame
    similarity: np.ndarray
    rank_left: np.ndarray
    rank_right: np.ndarray
    null_size: int


def relationship_ranks(profiles: np.ndarray, names: Sequence[str], related: pd.DataFrame, *,
                       max_null_entities: int = 4000, seed: int = 0) -> RelationshipRanks:
    """Rank the cosine similarity of known related pairs against all pairs of profiles.

    ``related`` has columns ``perturbation_a``, ``perturbation_b``; pairs with a member not in
    ``names`` (or a self pair) are dropped, unordered duplicates kept once. The null is the
    cosine similarity of every distinct pair of profiles; with more than ``max_null_entities``
    profiles, of the pairs among a seeded random subset of that size (memory stays bounded).
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError("profile names must be unique")
    index = {name: i for i, name in enumerate(names)}
    a = related["perturbation_a"].astype(str).to_numpy()
    b = related["perturbation_b"].astype(str).to_numpy()
    keep = np.array([x in index and y in index and x != y for x, y in zip(a, b)], dtype=bool)
    ia = np.array([index[x] for x in a[keep]], dtype=np.int64)
    ib = np.array([index[y] for y in b[keep]], dtype=np.int64)
    lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
    if lo.size:
        uniq = np.unique(np.stack([lo, hi], axis=1), axis=0)
        lo, hi = uniq[:, 0], uniq[:, 1]
    P = normalize_rows(profiles)
    similarity = np.einsum("ij,ij->i", P[lo], P[hi]).astype(np.float64)
    subset = np.arange(len(names))
    if len(names) > max_null_entities:
        subset = np.sort(np.random.default_rng(seed).choice(len(names), max_null_entities, replace=False))
    Ps = P[subset]
    null_parts = []
    for start in range(0, len(subset), DEFAULT_CHUNK):
        block = Ps[start:start + DEFAULT_CHUNK] @ Ps.T
        upper = np.arange(block.shape[0])[:, None] + start < np.arange(block.shape[1])[None, :]
        null_parts.append(block[upper])
    null = np.sort(np.concatenate(null_parts)) if null_parts else np.zeros(0, dtype=np.float32)
    if null.size == 0:
        left = right = np.full(similarity.shape, np.nan)
    else:
        left = np.searchsorted(null, similarity - RANK_TOL, side="left") / null.size
        right = np.searchsorted(null, similarity + RANK_TOL, side="right") / null.size
    pairs = pd.DataFrame({"perturbation_a": [names[i] for i in lo],
                          "perturbation_b": [names[i] for i in hi]})
    return RelationshipRanks(pairs=pairs, similarity=similarity, rank_left=left, rank_right=right,
                             null_size=int(null.size))


def recall_at_percentile(rank_left: np.ndarray, rank_right: np.ndarray, percentile: float,
                         *, tails: str = "both") -> float:
    """Share of related pairs whose similarity falls in the top ``percentile`` of the null
    (``tails="top"``), or in the top or the bottom ``percentile`` (``tails="both"``, EFAAR)."""
    if not 0 < percentile < 0.5:
        raise ValueError(f"percentile must be in (0, 0.5), got {percentile}")
    if len(rank_left) == 0:
        return float("nan")
    top = np.asarray(rank_left) >= 1.0 - percentile
    if tails == "top":
        return float(np.mean(top))
    if tails != "both":
        raise ValueError(f"tails must be 'both' or 'top', got {tails!r}")
    bottom = np.asarray(rank_right) <= percentile
    return float(np.mean(top | bottom))


def nearest_neighbor_labels(X: np.ndarray, labels: Sequence, *, exclude_same: Sequence[Sequence] = (),
                            query_mask: np.ndarray | None = None,
                            candidate_mask: np.ndarray | None = None,
                            chunk_size: int = DEFAULT_CHUNK) -> pd.DataFrame:
    """1-nearest neighbour by cosine similarity with exclusions (NSC / NSCB style).

    For each query row, the most similar candidate row other than itself that differs from it in
    every array of ``exclude_same`` (e.g. ``[compound]`` for "not same compound",
    ``[compound, batch]`` for "not same compound or batch"). Returns per query: ``neighbor``
    (row position, -1 if none), ``label``, ``predicted``, ``correct``.
    """
    X = np.asarray(X)
    n = X.shape[0]
    labels = np.asarray(labels, dtype=object)
    excl = [pd.factorize(np.asarray(col, dtype=object))[0] for col in exclude_same]
    queries = np.flatnonzero(np.ones(n, bool) if query_mask is None else np.asarray(query_mask, bool))
    candidates = np.ones(n, bool) if candidate_mask is None else np.asarray(candidate_mask, bool)
    Xn = normalize_rows(X)
    neighbor = np.full(len(queries), -1, dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        q = queries[start:start + chunk_size]
        sims = Xn[q] @ Xn.T
        allowed = np.repeat(candidates[None, :], len(q), axis=0)
        allowed[np.arange(len(q)), q] = False
        for codes in excl:
            allowed &= codes[q, None] != codes[None, :]
        sims[~allowed] = -np.inf
        best = np.argmax(sims, axis=1)
        has = allowed.any(axis=1)
        neighbor[start:start + len(q)] = np.where(has, best, -1)
    predicted = np.array([labels[j] if j >= 0 else None for j in neighbor], dtype=object)
    out = pd.DataFrame({"neighbor": neighbor, "label": labels[queries], "predicted": predicted},
                       index=queries)
    out["correct"] = (out["neighbor"] >= 0) & (out["label"] == out["predicted"])
    return out


def _ap_table(meta: pd.DataFrame, query_rows: np.ndarray, keys: list[str], ap: np.ndarray,
              n_pos: np.ndarray, n_total: np.ndarray) -> pd.DataFrame:
    """One row per query: its ``keys`` columns, ``average_precision``, ``n_pos_pairs`` and
    ``n_total_pairs`` (the table both average-precision functions return)."""
    out = meta.iloc[query_rows][keys].copy()
    out.index = query_rows
    out["average_precision"] = ap
    out["n_pos_pairs"] = n_pos
    out["n_total_pairs"] = n_total
    return out
