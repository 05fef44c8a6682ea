"""The user-item interaction graph used by the graph CF backbones."""

from __future__ import annotations

import torch

from latticerec.graphs.normalize import row_normalize_csr, symmetric_normalize_csr
from latticerec.graphs.sparse import csr_from_parts, row_indices, transpose_csr


def bipartite_adjacency(train: torch.Tensor) -> torch.Tensor:
    """``A = [[0, R], [Rᵀ, 0]]`` of size ``(U + I) x (U + I)`` from the users x items CSR matrix ``R``.

    Built as CSR directly: user rows are ``R``'s rows shifted by ``U`` columns, item rows are
    ``Rᵀ``'s rows (columns sorted in both)."""
    n_users, n_items = train.shape
    r = train.to_sparse_csr() if train.layout != torch.sparse_csr else train
    rt = transpose_csr(r)
    nnz = r.values().numel()
    crow = torch.cat([r.crow_indices(), rt.crow_indices()[1:] + nnz])
    col = torch.cat([r.col_indices() + n_users, rt.col_indices()])
    values = torch.cat([r.values(), rt.values()]).float()
    n = n_users + n_items
    return csr_from_parts(crow, col, values, (n, n))


def normalized_bipartite_adjacency(train: torch.Tensor) -> torch.Tensor:
    """Symmetrically normalised user-item adjacency (LightGCN eq. 7; NGCF eq. 8):
    ``Â = D^-1/2 A D^-1/2`` of :func:`bipartite_adjacency` with ``D`` the degree matrix; isolated
    nodes keep degree 0 and a zero row."""
    return symmetric_normalize_csr(bipartite_adjacency(train))


def released_bipartite_adjacency(train: torch.Tensor) -> torch.Tensor:
    """The user-item adjacency of the released LATTICE/MICRO code (``Data.create_adj_mat``):
    ``Â = D^-1 (A + I)``, row-normalised with self-loops, ``D = diag((A + I) 1)``.

    ``A = [[0, R], [Rᵀ, 0]]`` as in :func:`bipartite_adjacency`; every node gets a unit
    self-loop, so no row is empty and each row of ``Â`` sums to 1. ``Â`` is not symmetric: a
    product with it needs its transpose in the backward pass (``constant_spmm(adj, x, adjᵀ)``).
    """
    n_users, n_items = train.shape
    n = n_users + n_items
    r = train.to_sparse_csr() if train.layout != torch.sparse_csr else train
    rt, loops = transpose_csr(r), torch.arange(n, device=r.device)
    rows = torch.cat([row_indices(r.crow_indices()), row_indices(rt.crow_indices()) + n_users, loops])
    cols = torch.cat([r.col_indices() + n_users, rt.col_indices(), loops])
    values = torch.cat([r.values().float(), rt.values().float(), torch.ones(n, device=r.device)])
    order = torch.argsort(rows * n + cols)  # CSR order: row-major, columns ascending (no duplicates)
    crow = torch.zeros(n + 1, dtype=torch.long, device=r.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return row_normalize_csr(csr_from_parts(crow, cols[order], values[order], (n, n)))
