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

Computed in torch on the CSR training matrix, in row blocks (``R[:, block]ᵀ R``), so with top-k the
peak memory is one block of ``C``, never the whole matrix, and never an ``N x N`` dense array.
"""

from __future__ import annotations

import torch

from latticerec.graphs.normalize import symmetric_normalize_csr
from latticerec.graphs.sparse import csr_from_parts, transpose_csr

NORMALIZATIONS = ("max", "symmetric")


def _binary(train: torch.Tensor) -> torch.Tensor:
    """``R`` with every stored value 1: eq. 3 counts users, whatever the stored interaction values."""
    r = train.to_sparse_csr() if train.layout != torch.sparse_csr else train
    return csr_from_parts(r.crow_indices(), r.col_indices(), torch.ones_like(r.values(), dtype=torch.float32),
                          tuple(r.shape))


def _rows(mat: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a CSR matrix, as a CSR matrix."""
    crow = mat.crow_indices()[start:stop + 1]
    lo, hi = int(crow[0]), int(crow[-1])
    return csr_from_parts(crow - lo, mat.col_indices()[lo:hi], mat.values()[lo:hi],
                          (crow.numel() - 1, mat.shape[1]))


def _topk_mask(rows: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """Which entries are among the ``k`` largest counts of their row, ties to the lower column;
    ``rows`` ascending and columns ascending within a row (COO order)."""
    per_row = torch.bincount(rows)
    if per_row.numel() == 0 or int(per_row.max()) <= k:
        return torch.ones_like(rows, dtype=torch.bool)
    c = counts.long()  # counts are whole numbers: one integer key sorts by (row, count descending)
    top = int(c.max())
    order = torch.sort(rows * (top + 1) + (top - c), stable=True).indices  # stable: column ascending
    first = per_row.cumsum(0) - per_row  # position of each row's first entry
    rank = torch.arange(rows.numel(), device=rows.device) - first[rows[order]]
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep[order[rank < k]] = True
    return keep


def cooccurrence_counts(train: torch.Tensor, topk: int = 0, block_rows: int | None = None) -> torch.Tensor:
    """``C = RᵀR`` of eq. 3 with the diagonal dropped, optionally the top-``topk`` of each row, as a
    CSR ``items x items`` float32 matrix of counts (columns sorted). ``train`` is the users x items
    training matrix (a torch CSR tensor); any stored value counts as one interaction.

    Each block of ``block_rows`` rows (default: about 2^25 counts per block) is one sparse product
    made dense (``block x N``, never ``N x N``), whose nonzeros come out in (row, column) order."""
    if topk < 0:
        raise ValueError("topk must be >= 0 (0 keeps every pair)")
    r = _binary(train)
    rt = transpose_csr(r)  # items x users
    n = r.shape[1]
    step = block_rows or max(1, min(4096, 2**25 // max(n, 1)))
    parts = []
    for start in range(0, n, step):
        block = (_rows(rt, start, min(start + step, n)) @ r).to_dense()
        local = torch.arange(block.shape[0], device=block.device)
        block[local, local + start] = 0  # C_ii is no pair count
        rows, cols = block.nonzero(as_tuple=True)
        vals = block[rows, cols]
        rows = rows + start
        if topk:
            keep = _topk_mask(rows, vals, topk)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        parts.append((rows, cols, vals))
    rows, cols, vals = (torch.cat(p) for p in zip(*parts, strict=True)) if parts else (
        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return csr_from_parts(crow, cols, vals, (n, n))


def normalize_counts(counts: torch.Tensor, how: str = "max") -> torch.Tensor:
    """Edge weights from counts: ``"max"`` is eq. 4, ``C_ij / C_max``; ``"symmetric"`` is
    ``D^-1/2 C D^-1/2`` with ``D_ii = Σ_j C_ij`` (the normalisation of the kNN graphs, offered so both
    graphs of eq. 5 can be put on one scale; not in the paper)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalisation {how!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if counts.values().numel() == 0:
        return counts
    if how == "max":
        return csr_from_parts(counts.crow_indices(), counts.col_indices(),
                              counts.values() / counts.values().max(), tuple(counts.shape))
    return symmetric_normalize_csr(counts)


def cooccurrence_graph(train: torch.Tensor, topk: int = 0, normalize: str = "max") -> torch.Tensor:
    """``E^c`` of eq. 3-4 as a torch sparse CSR ``items x items`` tensor on ``train``'s device."""
    return normalize_counts(cooccurrence_counts(train, topk), normalize)
