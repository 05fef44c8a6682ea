"""The user-item interaction graph used by the graph CF backbones."""

from __future__ import annotations

import torch

from latticerec.graphs.normalize import symmetric_normalize_csr
from latticerec.graphs.sparse import csr_from_parts, transpose_csr


def normalized_bipartite_adjacency(train: torch.Tensor) -> torch.Tensor:
    """Symmetrically normalised user-item adjacency (LightGCN eq. 7; NGCF eq. 8).

    ``A = [[0, R], [Rᵀ, 0]]`` of size ``(U + I) x (U + I)`` from the users x items CSR matrix ``R``,
    and ``Â = D^-1/2 A D^-1/2`` with ``D`` the degree matrix; isolated nodes keep degree 0 and a zero
    row. Built as CSR directly: user rows are ``R``'s rows shifted by ``U`` columns, item rows are
    ``Rᵀ``'s rows (columns sorted in both).
    """
    n_users, n_items = train.shape
    r = train.to_sparse_csr() if train.layout != torch.sparse_csr else train
    rt = transpose_csr(r)
    nnz = r.values().numel()
    crow = torch.cat([r.crow_indices(), rt.crow_indices()[1:] + nnz])
    col = torch.cat([r.col_indices() + n_users, rt.col_indices()])
    values = torch.cat([r.values(), rt.values()]).float()
    n = n_users + n_items
    return symmetric_normalize_csr(csr_from_parts(crow, col, values, (n, n)))
