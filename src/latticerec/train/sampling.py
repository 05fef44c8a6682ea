"""Vectorised BPR sampling, two ways of drawing an epoch's ``(user, positive, negative)`` triples.

* :class:`BPRSampler` (the ``latticerec`` protocol): interaction-uniform. One pass over the training
  interactions per epoch in a random order; every ``(u, i)`` pair is a positive exactly once.
* :class:`UserUniformSampler` (the ``released`` protocol: the LATTICE/MICRO code's
  ``Data.sample``): user-uniform. Each batch draws ``B`` distinct users uniformly among the users
  with training items, then for each one positive uniformly among their training items; an epoch
  has ``⌊|R| / B⌋ + 1`` such batches. Light users are drawn as often as heavy ones, so each of a
  light user's interactions is a positive far more often than one of a heavy user's.

Both draw the negative uniformly among the items the user has no training interaction with
(:func:`sample_negatives`), and both make epoch ``e`` a deterministic function of ``(seed, e)``, so
a resumed run draws exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from latticerec.errors import DataError


def sample_negatives(users: np.ndarray, train_keys: np.ndarray, n_items: int,
                     rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """One uniform negative item per user, never in the user's training items.

    ``train_keys`` is the sorted array ``user * n_items + item`` of training pairs. Collisions are
    redrawn together; after ``max_rounds`` the few left (users with almost every item) draw among
    their free items exactly. A user who has interacted with every item is a :class:`DataError`.
    """
    neg = rng.integers(0, n_items, size=len(users))
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * n_items + neg[todo]
        pos = np.searchsorted(train_keys, keys)
        pos[pos == len(train_keys)] = 0
        clash = train_keys[pos] == keys
        todo = todo[clash]
        if todo.size == 0:
            return neg
        neg[todo] = rng.integers(0, n_items, size=todo.size)
    for user in np.unique(users[todo]):
        lo, hi = np.searchsorted(train_keys, [user * n_items, (user + 1) * n_items])
        free = np.setdiff1d(np.arange(n_items), train_keys[lo:hi] - user * n_items, assume_unique=True)
        if free.size == 0:
            raise DataError(
                f"user {user} has a training interaction with every item (all {n_items}): "
                "no negative item is left to sample for BPR (move some of them to valid/test or "
                "drop the user)"
            )
        rows = todo[users[todo] == user]
        neg[rows] = rng.choice(free, size=rows.size)
    return neg


class BPRSampler:
    """Interaction-uniform triples: each epoch is a random permutation of the training pairs,
    cut into batches of ``batch_size`` (the last one shorter), ``⌈|R| / B⌉`` batches."""

    def __init__(self, train: sp.csr_matrix, seed: int = 0):
        train = sp.csr_matrix(train)
        self.n_items = train.shape[1]
        self.users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr)).astype(np.int64)
        self.items = train.indices.astype(np.int64)
        self.keys = np.sort(self.users * self.n_items + self.items)
        self.seed = seed
        if len(self.users) == 0:
            raise ValueError("the training split has no interactions")

    def n_batches(self, batch_size: int) -> int:
        return (len(self.users) + batch_size - 1) // batch_size

    def epoch(self, epoch: int, batch_size: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = sample_negatives(users, self.keys, self.n_items, rng)
        for start in range(0, len(order), batch_size):
            sl = slice(start, start + batch_size)
            yield users[sl], pos[sl], neg[sl]


class UserUniformSampler:
    """User-uniform triples, the released LATTICE/MICRO sampler (see the module docstring).

    Per batch: ``B`` users drawn uniformly *without* replacement among the users with at least one
    training item (with replacement when ``B`` exceeds their number, as the released code does);
    for each, one positive uniformly among their training items and one negative uniformly among
    the items they did not interact with. ``⌊|R| / B⌋ + 1`` batches of exactly ``B`` triples per
    epoch, so one epoch draws about as many triples as :class:`BPRSampler`'s.
    """

    def __init__(self, train: sp.csr_matrix, seed: int = 0):
        train = sp.csr_matrix(train)
        train.sort_indices()
        self.n_items = train.shape[1]
        self.indptr = train.indptr.astype(np.int64)
        self.indices = train.indices.astype(np.int64)
        self.degree = np.diff(self.indptr)
        self.active = np.flatnonzero(self.degree > 0).astype(np.int64)
        if self.active.size == 0:
            raise ValueError("the training split has no interactions")
        rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), self.degree)
        self.keys = np.sort(rows * self.n_items + self.indices)
        self.seed = seed

    def n_batches(self, batch_size: int) -> int:
        return len(self.indices) // batch_size + 1

    def epoch(self, epoch: int, batch_size: int):
        rng = np.random.default_rng([self.seed, epoch])
        n_batches = self.n_batches(batch_size)
        replace = batch_size > self.active.size
        picks = [rng.choice(self.active.size, size=batch_size, replace=replace) for _ in range(n_batches)]
        users = self.active[np.concatenate(picks)]
        offset = np.floor(rng.random(users.size) * self.degree[users]).astype(np.int64)
        pos = self.indices[self.indptr[users] + np.minimum(offset, self.degree[users] - 1)]
        neg = sample_negatives(users, self.keys, self.n_items, rng)
        for start in range(0, users.size, batch_size):
            sl = slice(start, start + batch_size)
            yield users[sl], pos[sl], neg[sl]
