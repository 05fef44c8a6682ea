"""Top-K ranking metrics as plain functions over a hit matrix.

``hits`` is a ``(users, K)`` 0/1 tensor: ``hits[u, r] = 1`` when the item ranked ``r`` (0-based) for
user ``u`` is relevant. ``n_relevant`` holds each user's number of relevant items. Each function
returns one value per user; callers average them.
"""

from __future__ import annotations

import torch


def _discounts(k: int, device) -> torch.Tensor:
    # 1 / log2(rank + 1) for 1-based ranks 1..k
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def recall_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@K = |relevant ∩ top-K| / |relevant| (MICRO section 4.1.3)."""
    return hits[:, :k].sum(1, dtype=torch.float64) / n_relevant.clamp(min=1).to(torch.float64)


def precision_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """Precision@K = |relevant ∩ top-K| / K."""
    return hits[:, :k].sum(1, dtype=torch.float64) / k


def hit_rate_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """HitRate@K = 1 if any relevant item is in the top-K, else 0."""
    return (hits[:, :k].sum(1) > 0).to(torch.float64)


def ndcg_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Standard NDCG@K with binary relevance.

    ``DCG@K = Σ_{r=1..K} rel_r / log2(r + 1)``; the ideal DCG places ``min(|relevant|, K)`` relevant
    items at the top: ``IDCG@K = Σ_{r=1..min(|rel|, K)} 1 / log2(r + 1)``.
    """
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].to(torch.float64) * disc[: hits[:, :k].shape[1]]).sum(1)
    ideal_n = n_relevant.clamp(max=k).long()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=hits.device), disc.cumsum(0)])
    idcg = cum[ideal_n]
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))


def ndcg_legacy_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@K as computed in the LATTICE and MICRO code (inherited from NGCF's ``metrics.py``).

    ``hits`` is the hit list of the whole retrieved list, i.e. up to the largest cut-off ``K_max``
    evaluated (``max(topk)``); the released code scores every ``K`` from that one list. Its ideal DCG
    sorts the *retrieved* hits of the whole list to the top and cuts at ``K``: with ``h`` hits among
    the first ``K_max``, ``IDCG@K = Σ_{r=1..min(h, K)} 1 / log2(r + 1)``, while
    ``DCG@K = Σ_{r=1..K} rel_r / log2(r + 1)`` as usual. Relevant items that were not retrieved are
    ignored, so for ``K = K_max`` it is never lower than the standard NDCG and both agree when every
    user has a single relevant item. For ``K < K_max`` hits ranked between ``K`` and ``K_max`` still
    raise the ideal: the value depends on ``K_max`` (the released code uses ``topk = (10, 20)``).
    """
    disc = _discounts(k, hits.device)
    top = hits[:, :k].to(torch.float64)
    dcg = (top * disc[: top.shape[1]]).sum(1)
    n_hits = hits.sum(1).clamp(max=k).long()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=hits.device), disc.cumsum(0)])
    idcg = cum[n_hits]
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
