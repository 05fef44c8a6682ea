"""Metrics against values computed by hand."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from latticerec.evaluate import (
    evaluate_ranking,
    hit_rate_at_k,
    ndcg_at_k,
    ndcg_legacy_at_k,
    precision_at_k,
    recall_at_k,
)

# user 0: 3 relevant items, hits at ranks 1 and 3 of the top 4
# user 1: 1 relevant item, hit at rank 2
# user 2: 2 relevant items, none retrieved
HITS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
NREL = torch.tensor([3, 1, 2])


def test_recall_precision_hit_by_hand():
    assert recall_at_k(HITS, NREL, 4).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert recall_at_k(HITS, NREL, 2).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert precision_at_k(HITS, 4).tolist() == pytest.approx([0.5, 0.25, 0.0])
    assert hit_rate_at_k(HITS, 1).tolist() == [1.0, 0.0, 0.0]
    assert hit_rate_at_k(HITS, 2).tolist() == [1.0, 1.0, 0.0]


def test_ndcg_standard_by_hand():
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG over min(3,4)=3: 1 + 1/log2(3) + 1/2
    idcg0 = 1 + 1 / math.log2(3) + 0.5
    # user 1: DCG = 1/log2(3); IDCG = 1
    expected = [1.5 / idcg0, 1 / math.log2(3), 0.0]
    assert ndcg_at_k(HITS, NREL, 4).tolist() == pytest.approx(expected)
    # cut at K=2: user 0 DCG = 1, IDCG over min(3,2)=2 = 1 + 1/log2(3)
    assert ndcg_at_k(HITS, NREL, 2)[0].item() == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ndcg_legacy_by_hand():
    # user 0: 2 hits retrieved -> IDCG = 1 + 1/log2(3), DCG = 1.5
    expected = [1.5 / (1 + 1 / math.log2(3)), 1 / math.log2(3), 0.0]
    assert ndcg_legacy_at_k(HITS, 4).tolist() == pytest.approx(expected)
    # legacy >= standard always; equal for single-relevant users
    std = ndcg_at_k(HITS, NREL, 4)
    leg = ndcg_legacy_at_k(HITS, 4)
    assert (leg >= std - 1e-12).all()
    assert leg[1] == pytest.approx(std[1].item())


def test_evaluate_ranking_masks_train_and_ranks_fully():
    # 2 users, 4 items, scores = dot products; user 0 prefers items in order 3,2,1,0
    users = torch.tensor([[1.0], [1.0]])
    items = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    train = sp.csr_matrix(np.array([[0, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    res = evaluate_ranking(users, items, test, exclude=[train], topk=(1, 2))
    # user 0: ranking without item 3 -> 2, 1, 0: test item 1 at rank 2
    # user 1: ranking without item 0 -> 3, 2, 1: test item 3 at rank 1
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["recall@2"] == pytest.approx(1.0)
    assert res["precision@2"] == pytest.approx(0.5)
    assert res["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    # without masking, user 0's top-1 is its train item 3 -> no hit for user 0 at 1
    res_nomask = evaluate_ranking(users, items, test, topk=(1, 2))
    assert res_nomask["hit@1"] == pytest.approx(0.5)


def test_evaluate_ranking_batches_agree_and_skip_users_without_targets():
    rng = np.random.default_rng(0)
    users, items = torch.randn(50, 8), torch.randn(40, 8)
    train = sp.random(50, 40, density=0.1, format="csr", random_state=1)
    train.data[:] = 1
    target = sp.random(50, 40, density=0.05, format="csr", random_state=2)
    target.data[:] = 1
    target = target - target.multiply(train)
    target.eliminate_zeros()
    a = evaluate_ranking(users, items, target, exclude=[train], batch_size=7)
    b = evaluate_ranking(users, items, target, exclude=[train], batch_size=1000)
    assert a == pytest.approx(b)
    assert rng is not None
    empty = sp.csr_matrix((50, 40))
    with pytest.raises(ValueError, match="no user"):
        evaluate_ranking(users, items, empty)


def test_the_score_block_shrinks_with_the_catalogue_and_the_metrics_do_not_change(monkeypatch):
    from latticerec.evaluate import ranking

    assert ranking.score_rows(4096, 6_710) == 4096  # TikTok: unchanged
    assert ranking.score_rows(4096, 1_000_000) == 67  # 1M items: 67 x 1M scores, not 4,096 x 1M
    users, items = torch.randn(30, 8), torch.randn(40, 8)
    train = sp.random(30, 40, density=0.1, format="csr", random_state=1)
    target = sp.random(30, 40, density=0.1, format="csr", random_state=2)
    train.data[:], target.data[:] = 1, 1
    target = (target - target.multiply(train)).tocsr()
    target.eliminate_zeros()
    full = evaluate_ranking(users, items, target, exclude=[train], batch_size=1000)
    sizes = []
    real = ranking.score_rows
    monkeypatch.setattr(ranking, "SCORE_BUDGET", 40 * 3)  # three users' scores at a time
    monkeypatch.setattr(ranking, "score_rows", lambda b, n: sizes.append(real(b, n)) or real(b, n))
    assert evaluate_ranking(users, items, target, exclude=[train], batch_size=1000) == pytest.approx(full)
    assert sizes == [3]


def test_ndcg_legacy_every_cutoff_by_hand():
    """The released code scores every K from the hit list of the top max(Ks): its ideal DCG@K sorts
    all hits of that list to the top before cutting at K (issue 15: wrong for K < max(topk))."""
    # top-5 lists: user 0 hits at ranks 2 and 5, user 1 at ranks 1 and 4, user 2 at rank 3 only
    hits = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 1, 0], [0, 0, 1, 0, 0]])
    d = [1 / math.log2(r + 1) for r in range(1, 6)]  # discount of 1-based rank r
    two = d[0] + d[1]  # ideal DCG of two hits sorted to the top
    expected = {
        1: [0.0, 1.0, 0.0],
        2: [d[1] / two, d[0] / two, 0.0],
        3: [d[1] / two, d[0] / two, d[2] / d[0]],
        4: [d[1] / two, (d[0] + d[3]) / two, d[2] / d[0]],
        5: [(d[1] + d[4]) / two, (d[0] + d[3]) / two, d[2] / d[0]],
    }
    for k, want in expected.items():
        assert ndcg_legacy_at_k(hits, k).tolist() == pytest.approx(want), f"K={k}"


def test_evaluate_ranking_legacy_ndcg_below_max_cutoff():
    # one user, 4 items scored 3 > 2 > 1 > 0 (item 3 first); relevant: items 2 and 0 (ranks 2 and 4)
    users, items = torch.tensor([[1.0]]), torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    target = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))
    res = evaluate_ranking(users, items, target, topk=(2, 20), ndcg="legacy")
    d2, d4 = 1 / math.log2(3), 1 / math.log2(5)
    assert res["ndcg@2"] == pytest.approx(d2 / (1 + d2))  # both hits of the top 20 count in IDCG@2
    assert res["ndcg@20"] == pytest.approx((d2 + d4) / (1 + d2))


def test_hits_by_sorted_keys_equal_the_dense_membership_mask():
    from latticerec.evaluate.ranking import _hits

    rng = np.random.default_rng(0)
    target = sp.random(50, 40, density=0.1, random_state=rng, format="csr")
    target.data[:] = 1
    batch = rng.choice(50, size=17, replace=False)
    top = torch.as_tensor(np.stack([rng.choice(40, size=10, replace=False) for _ in batch]))
    dense = torch.as_tensor(target[batch].toarray() > 0)
    assert torch.equal(_hits(target, batch, top), dense.gather(1, top))
    empty = sp.csr_matrix((50, 40))
    assert not _hits(empty, batch, top).any()


def test_eval_users_ranks_a_seeded_sample_of_the_split_users():
    from latticerec.train.trainer import sampled_users

    rng = np.random.default_rng(0)
    target = sp.random(200, 30, density=0.05, random_state=rng, format="csr")
    target.data[:] = 1
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    assert sampled_users(target, 0, 1) is target and sampled_users(target, users.size, 1) is target
    a, b = sampled_users(target, 40, 7), sampled_users(target, 40, 7)
    kept = np.flatnonzero(np.diff(a.indptr) > 0)
    assert kept.size == 40 and set(kept) <= set(users)
    assert np.array_equal(kept, np.flatnonzero(np.diff(b.indptr) > 0))  # same seed, same users
    assert (a[kept] != target[kept]).nnz == 0  # their rows unchanged
    other = np.flatnonzero(np.diff(sampled_users(target, 40, 8).indptr) > 0)
    assert not np.array_equal(kept, other)


def test_fit_with_eval_users_reports_the_sample(blocks):
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.trainer import fit

    run = resolve_config("mf", {"embed_dim": "8", "epochs": "2", "eval_users": "10"})
    result = fit(build_model(run, blocks), blocks, run.train, progress=False, out_dir=None)
    assert result["eval_users"] == 10
    full = resolve_config("mf", {"embed_dim": "8", "epochs": "2"})
    assert "eval_users" not in fit(build_model(full, blocks), blocks, full.train, progress=False)


def test_rank_top_k_reuses_one_score_block_and_equals_a_brute_force_ranking():
    """The score block is reused across batches (one allocation per call): every batch's lists,
    kept after later batches overwrote the block, equal a brute-force ranking with the training
    items masked and only the candidates ranked; representations that require grad are fine."""
    from latticerec.evaluate.ranking import rank_top_k

    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(23, 6, generator=g, requires_grad=True), torch.randn(30, 6, generator=g)
    train = sp.random(23, 30, density=0.2, format="csr", random_state=3)
    candidates = np.arange(0, 30, 2)
    out = list(rank_top_k(users, items, np.arange(23), 5, exclude=[train], batch_size=7,
                          candidates=candidates))
    assert [len(b) for b, _, _ in out] == [7, 7, 7, 2]
    scores = (users @ items.T).detach().numpy()
    scores[train.nonzero()] = -np.inf
    scores[:, np.setdiff1d(np.arange(30), candidates)] = -np.inf
    for batch, top_items, top_scores in out:
        expect = np.argsort(-scores[batch], axis=1, kind="stable")[:, :5]
        assert np.array_equal(top_items.numpy(), expect)
        assert np.allclose(top_scores.numpy(), np.take_along_axis(scores[batch], expect, axis=1))
