"""The collaborative item-item graph of MM-GEF (Wu et al., section 3.3, eq. 3-4).

* eq. 3  ``C_ij = Σ_u r_ui r_uj``: the number of training users who interacted with both ``i`` and
  ``j``, i.e. ``C = RᵀR`` for the binary users x items matrix ``R``;
* eq. 4  ``E^c_ij = C_ij / C_max``: counts scaled by the largest count into ``(0, 1]``.

Diagonal: eq. 3 counts users shared by a *pair* of items. ``(RᵀR)_ii`` is item ``i``'s own
popularity, at least as large as every other entry of its row, so it would set ``C_max`` to the most
popular item's degree and shrink every pair count; the diagonal is dropped before anything else
(``C_ii = 0``, no stored self loops) and ``C_max`` is the largest count of two distinct items.

Top-k: ``RᵀR`` fills up quickly (TikTok's 59,541 training pairs give 7.9 M item pairs, 17.6 % of
all; a catalogue with heavy users approaches ``N²``). ``topk=k`` keeps the ``k`` largest counts of
every row (ties to the lower column index, so the graph is deterministic; the result is directed,
like the kNN graph of eq. 2). The default ``topk=0`` keeps every pair, as eq. 3-4 define the graph.
``C_max`` is unaffected by top-k (a row's largest count is always kept).

Computed with scipy in row blocks (``R[:, block]ᵀ R``), so with top-k the peak memory is one block of
``C``, never the whole matrix, and never an ``N x N`` dense array.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from latticerec.graphs.sparse import to_scipy_csr, to_torch_csr

NORMALIZATIONS = ("max", "symmetric")


def _as_scipy(train) -> sp.csr_matrix:
    if isinstance(train, torch.Tensor):
        train = to_scipy_csr(train)
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0  # eq. 3 counts users, whatever the stored interaction values
    return r


def _drop_diagonal(block: sp.csr_matrix, row_offset: int) -> sp.csr_matrix:
    """``block`` (rows ``row_offset…``) without its entries on the global diagonal, zeros removed."""
    coo = block.tocoo()
    keep = (coo.row + row_offset != coo.col) & (coo.data != 0)
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=block.shape)


def topk_per_row(mat: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The ``k`` largest stored entries of every row (ties to the lower column index), columns sorted."""
    mat = sp.csr_matrix(mat)
    mat.sort_indices()
    counts = np.diff(mat.indptr)
    if k <= 0 or counts.max(initial=0) <= k:
        return mat
    rows = np.repeat(np.arange(mat.shape[0]), counts)
    order = np.lexsort((mat.indices, -mat.data, rows))  # by row, then value descending, then column
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - mat.indptr[rows[order]]
    keep = rank < k
    out = sp.csr_matrix((mat.data[keep], (rows[keep], mat.indices[keep])), shape=mat.shape)
    out.sort_indices()
    return out


def cooccurrence_counts(train, topk: int = 0, block_rows: int = 4096) -> sp.csr_matrix:
    """``C = RᵀR`` of eq. 3 with the diagonal dropped, optionally the top-``topk`` of each row, as a
    scipy CSR ``items x items`` float32 matrix of counts. ``train`` is the users x items training
    matrix (scipy or torch sparse); any stored value counts as one interaction."""
    if topk < 0:
        raise ValueError("topk must be >= 0 (0 keeps every pair)")
    r = _as_scipy(train)
    rt = r.T.tocsr()  # items x users
    n = r.shape[1]
    blocks = []
    for start in range(0, n, block_rows):
        block = _drop_diagonal((rt[start:start + block_rows] @ r).tocsr(), start)
        blocks.append(topk_per_row(block, topk) if topk else block)
    out = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((n, n), dtype=np.float32)
    out.sort_indices()
    return out.astype(np.float32)


def normalize_counts(counts: sp.csr_matrix, how: str = "max") -> sp.csr_matrix:
    """Edge weights from counts: ``"max"`` is eq. 4, ``C_ij / C_max``; ``"symmetric"`` is
    ``D^-1/2 C D^-1/2`` with ``D_ii = Σ_j C_ij`` (the normalisation of the kNN graphs, offered so both
    graphs of eq. 5 can be put on one scale; not in the paper)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalisation {how!r}: expected one of {', '.join(NORMALIZATIONS)}")
    out = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    if out.nnz == 0:
        return out
    if how == "max":
        out.data /= out.data.max()
        return out
    deg = np.asarray(out.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    out.data *= inv[rows] * inv[out.indices]
    return out


def cooccurrence_graph(train, topk: int = 0, normalize: str = "max",
                       device: torch.device | str | None = None) -> torch.Tensor:
    """``E^c`` of eq. 3-4 as a torch sparse CSR ``items x items`` tensor (on ``train``'s device when
    ``train`` is a torch tensor and no ``device`` is given)."""
    if device is None:
        device = train.device if isinstance(train, torch.Tensor) else "cpu"
    return to_torch_csr(normalize_counts(cooccurrence_counts(train, topk), normalize), device=device)
