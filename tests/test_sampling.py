import numpy as np
import pytest
import scipy.sparse as sp

from latticerec.errors import DataError
from latticerec.train.sampling import BPRSampler, UserUniformSampler, sample_negatives


def _train(seed=0, n_users=200, n_items=50, density=0.3):
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    m.data[:] = 1
    return m


def test_negatives_never_in_training_items():
    train = _train()
    sampler = BPRSampler(train, seed=3)
    dense = train.toarray()
    seen = 0
    for users, pos, neg in sampler.epoch(0, 128):
        assert dense[users, pos].all()
        assert not dense[users, neg].any()
        seen += len(users)
    assert seen == train.nnz


def test_epoch_covers_each_interaction_once_and_is_deterministic():
    train = _train(1)
    s = BPRSampler(train, seed=5)
    a = [np.concatenate(x) for x in zip(*s.epoch(2, 100), strict=True)]
    b = [np.concatenate(x) for x in zip(*BPRSampler(train, seed=5).epoch(2, 100), strict=True)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    pairs = set(zip(a[0].tolist(), a[1].tolist(), strict=True))
    assert len(pairs) == train.nnz
    c = [np.concatenate(x) for x in zip(*s.epoch(3, 100), strict=True)]
    assert not np.array_equal(a[0], c[0])


def test_dense_user_and_impossible_user():
    # user 0 has every item but one: the sampler must find it
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=np.float32))
    keys = np.sort(np.array([0, 1, 2, 4]))
    neg = sample_negatives(np.array([0] * 100), keys, 4, np.random.default_rng(0))
    assert (neg == 3).all()
    full = np.sort(np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(np.array([0]), full, 4, np.random.default_rng(0))
    assert train.nnz == 4


def _skewed():
    """User 0 has 40 of 50 items, users 1-9 one item each, user 10 none (never drawn)."""
    m = np.zeros((11, 50), dtype=np.float32)
    m[0, :40] = 1
    m[np.arange(1, 10), np.arange(1, 10) * 5] = 1
    return sp.csr_matrix(m)


def test_user_uniform_batches_shape_validity_and_count():
    train = _train(2)
    dense = train.toarray()
    s = UserUniformSampler(train, seed=1)
    batches = list(s.epoch(0, 64))
    assert len(batches) == s.n_batches(64) == train.nnz // 64 + 1  # the released count
    active = set(np.flatnonzero(dense.sum(1) > 0).tolist())
    for users, pos, neg in batches:
        assert len(users) == len(pos) == len(neg) == 64
        assert len(set(users.tolist())) == 64  # distinct users within a batch
        assert set(users.tolist()) <= active
        assert dense[users, pos].all()
        assert not dense[users, neg].any()


def test_user_uniform_is_deterministic_per_seed_and_epoch():
    train = _train(3)
    a = [np.concatenate(x) for x in zip(*UserUniformSampler(train, seed=4).epoch(1, 50), strict=True)]
    b = [np.concatenate(x) for x in zip(*UserUniformSampler(train, seed=4).epoch(1, 50), strict=True)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    other_epoch = np.concatenate([u for u, _, _ in UserUniformSampler(train, seed=4).epoch(2, 50)])
    other_seed = np.concatenate([u for u, _, _ in UserUniformSampler(train, seed=5).epoch(1, 50)])
    assert not np.array_equal(a[0], other_epoch)
    assert not np.array_equal(a[0], other_seed)


def test_user_uniform_draws_users_positives_and_negatives_uniformly():
    train = _skewed()
    s = UserUniformSampler(train, seed=0)
    users, pos, neg = (np.concatenate(x) for x in zip(*(
        t for e in range(300) for t in s.epoch(e, 5)), strict=True))
    # users: uniform over the 10 users with items (the interaction-uniform sampler gives user 0 80%)
    share = np.bincount(users, minlength=11) / users.size
    assert share[10] == 0
    assert np.abs(share[:10] - 0.1).max() < 0.01
    # user 0's positives: uniform over its 40 items; its negatives: uniform over the other 10
    p0 = np.bincount(pos[users == 0], minlength=50)
    assert p0[40:].sum() == 0 and p0[:40].min() > 0.7 * p0[:40].mean()
    n0 = np.bincount(neg[users == 0], minlength=50)
    assert n0[:40].sum() == 0 and n0[40:].min() > 0.8 * n0[40:].mean()
    # the interaction-uniform sampler is measurably different on the same data
    bpr_users = np.concatenate([u for e in range(20) for u, _, _ in BPRSampler(train, 0).epoch(e, 5)])
    assert (bpr_users == 0).mean() > 0.75


def test_user_uniform_draws_with_replacement_beyond_the_active_users():
    train = _skewed()  # 10 users with items, batch of 25 > 10: the released code samples with replacement
    users, pos, neg = next(UserUniformSampler(train, seed=0).epoch(0, 25))
    assert len(users) == 25 and set(users.tolist()) <= set(range(10))
    assert train.toarray()[users, pos].all()
    with pytest.raises(ValueError, match="no interactions"):
        UserUniformSampler(sp.csr_matrix((3, 4)))


def test_nearly_full_user_gets_its_one_negative_and_a_full_user_is_named():
    # user 0 has 1999 of 2000 items: 100 uniform redraws rarely hit the free one, yet it exists
    n = 2000
    keys = np.sort(np.delete(np.arange(n), 1234))
    neg = sample_negatives(np.zeros(20, np.int64), keys, n, np.random.default_rng(0))
    assert (neg == 1234).all()
    # user 1 has every item (12 training pairs): a DataError naming the user, not "12 users"
    keys = np.sort(np.concatenate([[0, 5], n + np.arange(n)]))
    with pytest.raises(DataError, match=r"user 1 has a training interaction with every item \(all 2000\)"):
        sample_negatives(np.array([0] + [1] * 12), keys, n, np.random.default_rng(0))
