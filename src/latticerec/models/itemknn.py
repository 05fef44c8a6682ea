"""ItemKNN, item-based collaborative filtering (Sarwar et al., WWW 2001; the top-N form of Deshpande
& Karypis, TOIS 2004, the ItemKNN baseline of the MICRO paper's Table 3).

With ``R`` the binary users x items training matrix and ``r_i`` its column of item ``i``:

* Sarwar et al. section 3.1.1, cosine similarity of two items as vectors of users:
  ``sim(i, j) = r_iᵀ r_j / (‖r_i‖ ‖r_j‖) = C_ij / sqrt(n_i n_j)`` with ``C = RᵀR`` the co-occurrence
  counts and ``n_i`` the number of users of ``i``; ``sim(i, i)`` is not used;
* Deshpande & Karypis (the item-based top-N model): only the ``k`` most similar items of every
  item are kept, ``M_ij = sim(i, j)`` if ``j`` is among the ``k`` nearest neighbours of ``i`` (and
  the similarity is positive), else 0: a sparse ``I x I`` matrix with at most ``k`` entries per row;
* the score of user ``u`` for item ``i`` sums the similarities of ``i`` to the user's items,
  ``ŷ_ui = Σ_(j ∈ N_u) M_ij``, i.e. the score matrix is ``R Mᵀ`` (Sarwar et al.'s weighted sum,
  section 3.2.1, without its division by ``Σ_j |sim(i, j)|``: for ranking the top-N form sums).

No training (``trainable = False``). The model is not factorised (``factorised = False``): the
scores are ``score_users(users) = R[users] Mᵀ``, computed per batch of users as a sparse-dense
product; ``propagate()`` refuses. ``M`` is built in blocks of item rows (``C[block] = R[:, block]ᵀ
R``, dense ``block x I``, never ``I x I``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latticerec.graphs.cooccurrence import _binary, _rows
from latticerec.graphs.sparse import csr_from_parts, transpose_csr
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.losses import bpr_loss

BLOCK_FLOATS = 2**24  # one block of similarities holds about this many floats


@dataclass(frozen=True)
class ItemKNNConfig:
    """``knn_k``: the number of neighbours kept per item (``k`` of Deshpande & Karypis)."""

    knn_k: int = 50

    def __post_init__(self):
        if self.knn_k < 1:
            raise ValueError("knn_k must be >= 1")


def item_cosine_knn(train: torch.Tensor, k: int, block_rows: int | None = None) -> torch.Tensor:
    """``M``: each item's ``k`` most cosine-similar other items (similarity > 0) with their
    similarities, an ``I x I`` CSR matrix; ``train`` is the users x items CSR training matrix."""
    r = _binary(train)
    rt = transpose_csr(r)  # items x users
    n = r.shape[1]
    norm = rt.crow_indices().diff().float().sqrt()  # ‖r_i‖ = sqrt(n_i)
    inv = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-12), torch.zeros_like(norm))
    step = block_rows or max(1, min(n, BLOCK_FLOATS // max(n, 1)))
    k = min(k, max(n - 1, 1))
    rows, cols, vals = [], [], []
    for start in range(0, n, step):
        stop = min(start + step, n)
        sim = (_rows(rt, start, stop) @ r).to_dense()  # C[block], block x I
        sim *= inv[start:stop, None] * inv[None, :]
        local = torch.arange(stop - start, device=sim.device)
        sim[local, local + start] = 0.0  # sim(i, i) is no neighbour
        top = torch.topk(sim, k, dim=1)
        keep = top.values > 0
        rows.append((local + start).unsqueeze(1).expand(-1, k)[keep])
        cols.append(top.indices[keep])
        vals.append(top.values[keep])
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    order = torch.argsort(rows * n + cols)
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return csr_from_parts(crow, cols[order], vals[order], (n, n))


class ItemKNN(Recommender):
    """Item-based CF: ``ŷ_ui = Σ_(j ∈ N_u) M_ij`` over the top-``k`` cosine neighbours ``M``."""

    RANK_LOSSES = ("bpr",)  # its own loss, not bpr_terms

    Config = ItemKNNConfig
    SEARCH_SPACE = {"knn_k": ("int", 10, 400)}
    trainable = False
    factorised = False

    def __init__(self, train: torch.Tensor, neighbours: torch.Tensor):
        super().__init__()
        self.n_users, self.n_items = train.shape
        # R as COO: a batch of its rows is one index_select (CSR has none)
        self.register_buffer("train_matrix", _binary(train).to_sparse_coo().coalesce(), persistent=False)
        self.register_buffer("neighbours", neighbours, persistent=False)  # M, items x items

    @classmethod
    def from_inputs(cls, cfg: ItemKNNConfig, inputs: ModelInputs) -> ItemKNN:
        return cls(inputs.train, item_cosine_knn(inputs.train, cfg.knn_k))

    def propagate(self):
        raise NotImplementedError("ItemKNN has no user and item representations (its scores R Mᵀ are "
                                  "not a dot product of d-dimensional vectors): use score_users()")

    def ego_embeddings(self):
        return self.propagate()

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """``R[users] Mᵀ``: ``(len(users) x I)``, computed as ``(M R[users]ᵀ)ᵀ`` (sparse x dense)."""
        users = users.to(self.neighbours.device).long()
        return (self.neighbours @ self.train_matrix.index_select(0, users).to_dense().T).T

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The BPR loss of the scores, for monitoring only (nothing to differentiate)."""
        scores = self.score_users(users)
        rows = torch.arange(len(users), device=scores.device)
        bpr = bpr_loss(scores[rows, pos], scores[rows, neg])
        return {"bpr": bpr, "reg": bpr.new_zeros(())}
