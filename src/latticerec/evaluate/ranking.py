"""Full-ranking evaluation: every item scored for every evaluated user, in user batches.

Training items (and any other ``exclude`` matrices) are masked out; metrics are averaged over the
users that have at least one relevant item in the target split.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from latticerec.errors import DataError
from latticerec.evaluate.metrics import (
    hit_rate_at_k,
    ndcg_at_k,
    ndcg_legacy_at_k,
    precision_at_k,
    recall_at_k,
)


def _batch_coords(mat: sp.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row-in-batch, column) coordinates of the nonzeros of ``mat[users]``."""
    sub = mat[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    return rows, sub.indices


def _hits(target: sp.csr_matrix, batch: np.ndarray, top_items: torch.Tensor) -> torch.Tensor:
    """``hits[b, j]``: whether ``top_items[b, j]`` is in row ``batch[b]`` of ``target``; a sorted-key
    lookup (``O(B K log nnz)``), never a dense ``B x n_items`` mask."""
    r, c = _batch_coords(target, batch)
    n = target.shape[1]
    keys = torch.as_tensor(r.astype(np.int64) * n + c.astype(np.int64), device=top_items.device)
    if keys.numel() == 0:
        return torch.zeros_like(top_items, dtype=torch.bool)
    keys = keys.sort().values  # a row's columns need not be sorted in a scipy CSR
    rows = torch.arange(top_items.shape[0], device=top_items.device, dtype=torch.int64).unsqueeze(1)
    query = rows * n + top_items.long()
    pos = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return keys[pos] == query


SCORE_BUDGET = 64 * 2**20  # floats in one block of user x item scores (256 MB)


def score_rows(batch_size: int, n_items: int) -> int:
    """Users scored at once: ``batch_size``, fewer when ``batch_size x n_items`` scores would pass
    :data:`SCORE_BUDGET` (4,096 users x 1M items would be 16 GB; the block size does not change the
    metrics)."""
    return max(1, min(batch_size, SCORE_BUDGET // max(n_items, 1)))


def rank_top_k(user_repr: torch.Tensor, item_repr: torch.Tensor, users: np.ndarray, k: int,
               exclude: list[sp.csr_matrix] | tuple = (), batch_size: int = 1024,
               candidates: np.ndarray | None = None, score_fn=None):
    """Yield ``(batch_users, top_items, top_scores)`` for ``users`` in batches of ``batch_size``
    users (at most; :func:`score_rows`).

    Scores are ``user_repr[u] · item_repr[i]``, or ``score_fn(batch) -> (B x I)`` when given (a
    non-factorised model's ``score_users``; ``item_repr`` then only gives the item count and device,
    an ``I x 0`` tensor will do); items in any ``exclude`` matrix row are masked; when
    ``candidates`` (item indices) is given only those items are ranked.
    """
    device = item_repr.device
    allowed = None
    if candidates is not None:
        allowed = torch.full((item_repr.shape[0],), float("-inf"), device=device)
        allowed[torch.as_tensor(candidates, device=device)] = 0.0
    k = min(k, item_repr.shape[0])
    step = score_rows(batch_size, item_repr.shape[0])
    # one score block reused for every batch: a fresh block per batch cost more than the product
    # itself on CPU (first touch of its pages; docs/speed.md, session 22)
    block = None
    for start in range(0, len(users), step):
        batch = users[start: start + step]
        batch_t = torch.as_tensor(batch, device=device)
        if score_fn is None:
            if block is None:
                block = item_repr.new_empty((min(step, len(users)), item_repr.shape[0]))
            with torch.no_grad():
                scores = torch.matmul(user_repr[batch_t], item_repr.T, out=block[:len(batch)])
        else:
            scores = score_fn(batch_t).float()
        if allowed is not None:
            scores += allowed
        for mat in exclude:
            r, c = _batch_coords(mat, batch)
            scores[torch.as_tensor(r, device=device), torch.as_tensor(c, device=device)] = float("-inf")
        top_scores, top_items = torch.topk(scores, k, dim=1)
        yield batch, top_items, top_scores


def evaluated_users(target: sp.csr_matrix) -> np.ndarray:
    """The users a split evaluates: those with at least one item in ``target`` (ascending)."""
    users = np.flatnonzero(np.diff(sp.csr_matrix(target).indptr) > 0)
    if users.size == 0:
        raise DataError("no user has an item in the evaluation split")
    return users


def _per_user_batches(user_repr: torch.Tensor, item_repr: torch.Tensor, target: sp.csr_matrix,
                      exclude, topk, ndcg: str, batch_size: int, progress, candidates, block,
                      score_fn=None):
    """``users`` (those with >= 1 item in ``target``, only ``users[block]`` with a ``block``), then
    per batch ``(batch, {metric: values})``."""
    target = sp.csr_matrix(target)
    n_rel_all = np.diff(target.indptr)
    users = evaluated_users(target)
    if block is not None:
        users = users[block]
    yield users
    batches = rank_top_k(user_repr, item_repr, users, max(topk), exclude, batch_size, candidates, score_fn)
    if progress is not None:
        batches = progress(batches, total=(len(users) + batch_size - 1) // batch_size)
    device = item_repr.device
    for batch, top_items, _ in batches:
        hits = _hits(target, batch, top_items)
        n_rel = torch.as_tensor(n_rel_all[batch], device=device)
        values = {}
        for k in topk:
            values[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
            values[f"precision@{k}"] = precision_at_k(hits, k)
            values[f"ndcg@{k}"] = ndcg_legacy_at_k(hits, k) if ndcg == "legacy" else ndcg_at_k(hits, n_rel, k)
            values[f"hit@{k}"] = hit_rate_at_k(hits, k)
        yield batch, values


def evaluate_ranking(user_repr: torch.Tensor, item_repr: torch.Tensor, target: sp.csr_matrix,
                     exclude: list[sp.csr_matrix] | tuple = (), topk=(10, 20, 50),
                     ndcg: str = "standard", batch_size: int = 1024, progress=None,
                     candidates: np.ndarray | None = None, per_user: bool = False, score_fn=None,
                     block: slice | None = None):
    """Mean Recall/Precision/NDCG/HitRate@K over users with >= 1 item in ``target``.

    ``ndcg="legacy"`` uses the LATTICE/MICRO code's NDCG (ideal DCG from retrieved hits).
    With ``per_user`` returns ``(means, arrays)``: ``arrays["users"]`` the evaluated user indices and
    ``arrays[metric]`` each one's value (float64, aligned), e.g. for paired significance tests.
    ``score_fn`` replaces the dot product (see :func:`rank_top_k`).
    With ``block`` only the users ``evaluated_users(target)[block]`` are ranked (one rank's part of
    a distributed evaluation); the means are then over that block (0 for an empty one).
    """
    stream = _per_user_batches(user_repr, item_repr, target, exclude, topk, ndcg, batch_size,
                               progress, candidates, block, score_fn)
    users = next(stream)
    sums = {f"{m}@{k}": 0.0 for k in topk for m in ("recall", "precision", "ndcg", "hit")}
    parts: dict[str, list[np.ndarray]] = {key: [] for key in sums}
    for _, values in stream:
        for key, v in values.items():
            sums[key] += v.sum().item()
            if per_user:
                parts[key].append(v.detach().double().cpu().numpy())
    means = {key: value / max(len(users), 1) for key, value in sums.items()}
    if not per_user:
        return means
    return means, {"users": users.astype(np.int64),
                   **{k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}}
