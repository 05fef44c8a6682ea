"""``stats``: sizes and the MICRO pilot studies, checked against brute-force N x N answers on small
data, then run on the real TikTok set."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_dataset

from latticerec.cli import main
from latticerec.datasets.stats import (
    mean_cosine_all_pairs,
    mean_cosine_co_interacted,
    normalise,
    share_users_within_topk,
    top_neighbours,
)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype(np.float32)
    x[4] = 0.0  # a zero row: its cosine with anything is 0
    inter = sp.random(25, 37, density=0.12, random_state=1, format="csr")
    inter.data[:] = 1.0
    return normalise(x), inter


def test_all_pairs_closed_form_matches_brute_force(small):
    xn, _ = small
    sims = xn @ xn.T
    n = len(xn)
    brute = (sims.sum() - np.trace(sims)) / (n * (n - 1))
    assert mean_cosine_all_pairs(xn) == pytest.approx(brute, rel=1e-5)


def test_co_interacted_pairs_match_brute_force(small):
    xn, inter = small
    dense = inter.toarray() > 0
    pairs = {(i, j) for row in dense for i, j in combinations(np.flatnonzero(row), 2)}
    brute = np.mean([xn[i] @ xn[j] for i, j in pairs])
    mean, count = mean_cosine_co_interacted(xn, inter, block=5)  # several blocks
    assert count == len(pairs)
    assert mean == pytest.approx(brute, rel=1e-5)


def test_top_neighbours_and_user_share_match_brute_force(small):
    xn, inter = small
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    neigh = top_neighbours(xn, 6, block=8)
    for i in range(len(xn)):
        assert set(neigh[i]) == set(np.argsort(-sims[i], kind="stable")[:6]) or \
            np.allclose(np.sort(sims[i, neigh[i]]), np.sort(sims[i])[-6:])
        assert i not in neigh[i]
    dense = inter.toarray() > 0
    for k in (2, 6):
        near = np.zeros(sims.shape, dtype=bool)
        for i in range(len(xn)):
            near[i, neigh[i, :k]] = True
        near |= near.T
        eligible = dense.sum(1) >= 2
        hit = [any(near[a, b] for a, b in combinations(np.flatnonzero(row), 2)) for row in dense]
        expected = np.mean(np.asarray(hit)[eligible])
        assert share_users_within_topk(neigh, inter, ks=(k,))[k] == pytest.approx(expected)


def test_stats_on_tiktok(capsys):
    path = shared_dataset("tiktok")
    assert main(["data", "stats", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"]) == (9308, 6710, 68722)
    assert out["density"] == pytest.approx(68722 / (9308 * 6710))
    for m in ("image", "audio"):
        r = out["modalities"][m]
        assert -1 <= r["mean_cos_all_pairs"] <= 1
        # co-interacted items are more alike than random pairs, and more users bought nearest
        # neighbours than with the features shuffled across items (the papers' motivation)
        assert r["mean_cos_co_interacted"] > r["mean_cos_all_pairs"]
        shares = r["share_users_within_topk"]
        assert list(shares.values()) == sorted(shares.values())
        assert shares["20"] > r["share_users_within_topk_shuffled"]["20"]
    assert main(["data", "stats", str(path), "--no-pilot"]) == 0
    assert "0.001100" in capsys.readouterr().out
