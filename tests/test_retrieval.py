"""Retrieval metrics: AP against copairs and a brute-force reference, nulls, FDR, recall, NN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, ortho_group

from phenoica.errors import InputError
from phenoica.metrics import retrieval as rt


def screen(n: int = 150, n_perts: int = 8, n_batches: int = 3, d: int = 12, signal: float = 0.7,
           seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"pert": rng.choice([f"p{i}" for i in range(n_perts)], n),
                         "batch": rng.choice([f"b{i}" for i in range(n_batches)], n)})
    centers = rng.normal(size=(n_perts, d))
    shifts = rng.normal(size=(n_batches, d))
    X = (signal * centers[meta["pert"].str[1:].astype(int)] + 0.5 * shifts[meta["batch"].str[1:].astype(int)]
         + rng.normal(size=(n, d)))
    return X.astype(np.float32), meta


def brute_force_ap(X, meta, query_mask, candidate_mask):
    """Direct definition: sort the partners of each query by cosine similarity and average the
    precision at each positive (positives first among ties)."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    out = []
    for i in np.flatnonzero(query_mask):
        sims, rel = [], []
        for j in np.flatnonzero(candidate_mask):
            if j == i:
                continue
            same_pert = meta["pert"].iloc[i] == meta["pert"].iloc[j]
            diff_batch = meta["batch"].iloc[i] != meta["batch"].iloc[j]
            if same_pert and diff_batch:
                sims.append(Xn[i] @ Xn[j])
                rel.append(1)
            elif not same_pert:
                sims.append(Xn[i] @ Xn[j])
                rel.append(0)
        order = np.lexsort([-np.asarray(rel), -np.asarray(sims)])
        ranked = np.asarray(rel)[order]
        hits = np.cumsum(ranked)
        precision = hits / np.arange(1, len(ranked) + 1)
        out.append(np.sum(precision * ranked) / ranked.sum() if ranked.sum() else np.nan)
    return np.asarray(out)


def test_average_precision_matches_copairs_exactly():
    copairs_map = pytest.importorskip("copairs.map")
    X, meta = screen()
    for rules in (dict(pos_sameby=["pert"], pos_diffby=["batch"], neg_sameby=[], neg_diffby=["pert"]),
                  dict(pos_sameby=["pert"], pos_diffby=[], neg_sameby=["batch"], neg_diffby=["pert"])):
        ref = copairs_map.average_precision(meta, X, progress_bar=False, **rules)
        ours = rt.average_precision(X, meta, show_progress=False, chunk_size=17, **rules)
        np.testing.assert_allclose(ours["average_precision"].to_numpy(),
                                   ref["average_precision"].to_numpy(), atol=1e-6, equal_nan=True)
        assert np.array_equal(ours["n_pos_pairs"].to_numpy(), ref["n_pos_pairs"].to_numpy())
        assert np.array_equal(ours["n_total_pairs"].to_numpy(), ref["n_total_pairs"].to_numpy())


def test_query_and_candidate_masks_match_the_definition():
    X, meta = screen(n=60, seed=1)
    rng = np.random.default_rng(2)
    queries = rng.random(60) < 0.5
    candidates = rng.random(60) < 0.8
    ours = rt.average_precision(X, meta, pos_sameby="pert", pos_diffby="batch", neg_diffby="pert",
                                query_mask=queries, candidate_mask=candidates, chunk_size=7,
                                show_progress=False)
    assert list(ours.index) == list(np.flatnonzero(queries))
    np.testing.assert_allclose(ours["average_precision"].to_numpy(),
                               brute_force_ap(X, meta, queries, candidates), atol=1e-6, equal_nan=True)


def test_ap_is_rotation_invariant_and_chunk_independent():
    X, meta = screen(seed=3)
    R = ortho_group.rvs(X.shape[1], random_state=0)
    kwargs = dict(pos_sameby="pert", pos_diffby="batch", neg_diffby="pert", show_progress=False)
    a = rt.average_precision(X, meta, chunk_size=1000, **kwargs)
    b = rt.average_precision(X @ R, meta, chunk_size=5, **kwargs)
    np.testing.assert_allclose(a["average_precision"], b["average_precision"], atol=1e-5)


def test_perfect_and_missing_retrieval():
    meta = pd.DataFrame({"pert": ["a", "a", "b", "b", None], "batch": ["x", "y", "x", "y", "x"]})
    X = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]], dtype=np.float32)
    ap = rt.average_precision(X, meta, pos_sameby="pert", pos_diffby="batch", neg_diffby="pert",
                              show_progress=False)
    assert list(ap.index) == [0, 1, 2, 3]  # the row with a missing key takes no part
    assert np.allclose(ap["average_precision"], 1.0)
    assert list(ap["n_pos_pairs"]) == [1, 1, 1, 1] and list(ap["n_total_pairs"]) == [3, 3, 3, 3]
    with pytest.raises(InputError, match="plate"):
        rt.average_precision(X, meta, pos_sameby="plate", neg_diffby="pert")


def test_null_average_precision_has_the_exact_mean():
    rng = np.random.default_rng(0)
    # one positive among N: AP = 1/rank with rank uniform -> mean H_N / N
    n_total = 50
    null = rt.null_average_precision(1, n_total, 20000, rng)
    assert abs(null.mean() - np.sum(1 / np.arange(1, n_total + 1)) / n_total) < 0.01
    # both samplers (rejection for few positives, key ranking for many) against brute force
    for m, total in ((3, 40), (30, 40)):
        fast = rt.null_average_precision(m, total, 4000, rng)
        brute = [np.mean(np.arange(1, m + 1) / (np.sort(rng.permutation(total)[:m]) + 1)) for _ in range(4000)]
        assert abs(fast.mean() - np.mean(brute)) < 0.01
        assert abs(fast.std() - np.std(brute)) < 0.01
    assert np.all(rt.null_average_precision(5, 5, 10, rng) == 1.0)


def test_map_p_values_agree_with_copairs_and_fdr_is_bh():
    copairs_map = pytest.importorskip("copairs.map")
    X, meta = screen(signal=0.3, seed=4)
    rules = dict(pos_sameby=["pert"], pos_diffby=["batch"], neg_sameby=[], neg_diffby=["pert"])
    ap = rt.average_precision(X, meta, show_progress=False, **rules)
    ours = rt.mean_average_precision(ap, "pert", null_size=4000, seed=0)
    ref = copairs_map.mean_average_precision(copairs_map.average_precision(meta, X, progress_bar=False, **rules),
                                             sameby=["pert"], null_size=4000, threshold=0.05, seed=0,
                                             progress_bar=False)
    merged = ours.merge(ref, on="pert", suffixes=("", "_copairs"))
    np.testing.assert_allclose(merged["mean_average_precision"], merged["mean_average_precision_copairs"],
                               atol=1e-6)
    # Monte Carlo error of p with 4000 draws is < 0.01 around p ~ 0.05
    assert np.max(np.abs(merged["p_value"] - merged["p_value_copairs"])) < 0.03
    np.testing.assert_allclose(ours["corrected_p_value"], false_discovery_control(ours["p_value"]))
    assert (ours["below_corrected_p"] == (ours["corrected_p_value"] < 0.05)).all()


def test_p_values_are_small_for_signal_and_not_for_noise():
    X, meta = screen(signal=3.0, seed=5)
    ap = rt.average_precision(X, meta, pos_sameby="pert", pos_diffby="batch", neg_diffby="pert",
                              show_progress=False)
    strong = rt.mean_average_precision(ap, "pert", null_size=500, seed=0)
    assert strong["below_corrected_p"].all()
    rng = np.random.default_rng(6)
    noise = rt.mean_average_precision(
        rt.average_precision(rng.normal(size=X.shape), meta, pos_sameby="pert", pos_diffby="batch",
                             neg_diffby="pert", show_progress=False), "pert", null_size=500, seed=0)
    assert not noise["below_corrected_p"].any()
    assert noise["p_value"].min() > 0.01


def test_relationship_recall_finds_related_pairs_and_chance_for_random_ones():
    rng = np.random.default_rng(0)
    n = 200
    P = rng.normal(size=(n, 16))
    names = [f"g{i}" for i in range(n)]
    # 20 related pairs: near-copies (top tail) and 10 opposite pairs (bottom tail)
    related = []
    for i in range(0, 40, 2):
        P[i + 1] = P[i] + 0.1 * rng.normal(size=16)
        related.append((names[i], names[i + 1]))
    for i in range(40, 60, 2):
        P[i + 1] = -P[i] + 0.1 * rng.normal(size=16)
        related.append((names[i], names[i + 1]))
    table = pd.DataFrame(related, columns=["perturbation_a", "perturbation_b"])
    table = pd.concat([table, table.rename(columns={"perturbation_a": "perturbation_b",
                                                    "perturbation_b": "perturbation_a"}),
                       pd.DataFrame({"perturbation_a": ["g0", "zz"], "perturbation_b": ["g0", "g1"]})])
    ranks = rt.relationship_ranks(P, names, table)
    assert len(ranks.pairs) == 30  # reversed duplicates, a self pair and an unknown name dropped
    assert ranks.null_size == n * (n - 1) // 2
    assert rt.recall_at_percentile(ranks.rank_left, ranks.rank_right, 0.05) == 1.0
    assert rt.recall_at_percentile(ranks.rank_left, ranks.rank_right, 0.05, tails="top") == pytest.approx(20 / 30)
    random_pairs = pd.DataFrame({"perturbation_a": [names[i] for i in rng.integers(60, n, 400)],
                                 "perturbation_b": [names[i] for i in rng.integers(60, n, 400)]})
    chance = rt.relationship_ranks(P, names, random_pairs)
    assert abs(rt.recall_at_percentile(chance.rank_left, chance.rank_right, 0.1) - 0.2) < 0.07
    # a subsampled null keeps the answer close
    sub = rt.relationship_ranks(P, names, table, max_null_entities=100, seed=1)
    assert sub.null_size == 100 * 99 // 2
    assert rt.recall_at_percentile(sub.rank_left, sub.rank_right, 0.05) == 1.0


def test_nearest_neighbor_with_exclusions():
    X = np.array([[1, 0], [1, 0.05], [0.8, 0.3], [0, 1], [0.1, 1]], dtype=np.float32)
    labels = ["A", "A", "A", "B", "B"]
    compound = ["c1", "c1", "c2", "c3", "c4"]
    batch = ["w1", "w1", "w1", "w2", "w1"]
    plain = rt.nearest_neighbor_labels(X, labels)
    assert list(plain["neighbor"]) == [1, 0, 1, 4, 3]
    nsc = rt.nearest_neighbor_labels(X, labels, exclude_same=[compound])
    assert list(nsc["neighbor"]) == [2, 2, 1, 4, 3]
    nscb = rt.nearest_neighbor_labels(X, labels, exclude_same=[compound, batch], chunk_size=2)
    assert list(nscb["neighbor"]) == [3, 3, 3, 4, 3]
    assert list(nscb["correct"]) == [False, False, False, True, True]
    lonely = rt.nearest_neighbor_labels(X[:2], labels[:2], exclude_same=[compound[:2]])
    assert list(lonely["neighbor"]) == [-1, -1] and not lonely["correct"].any()


def controls_screen(n: int = 300, seed: int = 0):
    X, meta = screen(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    control = rng.random(n) < 0.3
    meta.loc[control, "pert"] = "ctrl"
    meta["moa"] = meta["pert"].map(lambda p: "ctrl" if p == "ctrl" else f"m{int(p[1:]) % 3}")
    return X, meta, control, rng.random(n) < 0.6


@pytest.mark.parametrize(("group", "pos_diffby"), [("pert", ["batch"]), ("moa", ["batch", "pert"])])
def test_grouped_average_precision_equals_all_pairs_on_each_group_with_its_controls(group, pos_diffby):
    """The screen-scale retrieval (replicates vs the controls of the query's batch) is the
    all-pairs AP with copairs' rules run on the wells of one group plus all controls."""
    X, meta, control, queries = controls_screen()
    ours = rt.grouped_average_precision(X, meta, group=group, block="batch", reference=control,
                                        pos_diffby=pos_diffby, query_mask=queries, chunk_size=11)
    parts = []
    for value in sorted(set(meta.loc[~control, group])):
        rows = np.flatnonzero((meta[group] == value).to_numpy() | control)
        part = rt.average_precision(X[rows], meta.iloc[rows].reset_index(drop=True),
                                    pos_sameby=[group], pos_diffby=pos_diffby, neg_sameby=["batch"],
                                    neg_diffby=[group], query_mask=(queries & ~control)[rows],
                                    show_progress=False)
        part.index = rows[part.index]
        parts.append(part)
    ref = pd.concat(parts).sort_index()
    ours = ours.sort_index()
    assert list(ours.index) == list(ref.index) and len(ours) > 50
    np.testing.assert_allclose(ours["average_precision"], ref["average_precision"], atol=1e-6,
                               equal_nan=True)
    assert (ours["n_pos_pairs"] == ref["n_pos_pairs"]).all()
    assert (ours["n_total_pairs"] == ref["n_total_pairs"]).all()


def test_grouped_average_precision_matches_copairs():
    copairs_map = pytest.importorskip("copairs.map")
    X, meta, control, _ = controls_screen(seed=1)
    ours = rt.grouped_average_precision(X, meta, group="pert", block="batch", reference=control,
                                        pos_diffby=["batch"])
    for value in ("p0", "p5"):
        rows = np.flatnonzero((meta["pert"] == value).to_numpy() | control)
        ref = copairs_map.average_precision(meta.iloc[rows].reset_index(drop=True), X[rows],
                                            pos_sameby=["pert"], pos_diffby=["batch"],
                                            neg_sameby=["batch"], neg_diffby=["pert"],
                                            progress_bar=False)
        ref.index = rows
        queried = [i for i in rows if not control[i]]
        np.testing.assert_allclose(ours.loc[queried, "average_precision"].to_numpy(),
                                   ref.loc[queried, "average_precision"].to_numpy(), atol=1e-6,
                                   equal_nan=True)
