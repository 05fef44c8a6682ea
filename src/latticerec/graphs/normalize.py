"""Degree normalisations of sparse graphs, each kind written once.

* symmetric ``Â = D^-1/2 A D^-1/2``, ``Â_ij = A_ij / sqrt(d_i d_j)`` with ``d_i = Σ_j A_ij`` (the
  row sum): LightGCN eq. 7 and NGCF eq. 8 on the user-item graph, eq. 3 of LATTICE/MICRO on the
  kNN item graphs, the precomputed item graphs;
* row ``D^-1 A``, ``A_ij / d_i``: MICRO eq. 16 (a user's mean over their items).

A node of degree 0 keeps a zero row (no division by zero, no NaN). Only stored values are scaled;
no diagonal matrix is built. Values may carry gradients (the learned graphs of eq. 4).
"""

from __future__ import annotations

import torch

from latticerec.graphs.sparse import csr_from_parts, row_indices


def inverse_sqrt_degree(degree: torch.Tensor) -> torch.Tensor:
    """``d^-1/2``, and 0 where ``d = 0``."""
    return torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))


def symmetric_values(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                     degree: torch.Tensor) -> torch.Tensor:
    """The stored values of ``D^-1/2 A D^-1/2``: ``v_ij d_i^-1/2 d_j^-1/2`` for entries at
    ``(rows, cols)`` (any broadcastable index layout: CSR's flat one or kNN's ``(N, k)`` rows)."""
    inv_sqrt = inverse_sqrt_degree(degree)
    return values * inv_sqrt[rows] * inv_sqrt[cols]


def row_sums(adj: torch.Tensor) -> torch.Tensor:
    """``d_i = Σ_j A_ij`` of a square or rectangular CSR matrix."""
    crow = adj.crow_indices()
    return adj.values().new_zeros(adj.shape[0]).index_add_(0, row_indices(crow), adj.values())


def symmetric_normalize_csr(adj: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of a square CSR matrix (degrees are row sums), same structure."""
    crow, col = adj.crow_indices(), adj.col_indices()
    values = symmetric_values(adj.values(), row_indices(crow), col, row_sums(adj))
    return csr_from_parts(crow, col, values, tuple(adj.shape))


def row_normalize_csr(adj: torch.Tensor) -> torch.Tensor:
    """``D^-1 A`` of a CSR matrix: each row divided by its sum (empty rows stay empty)."""
    crow = adj.crow_indices()
    deg = row_sums(adj)
    inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-12), torch.zeros_like(deg))
    return csr_from_parts(crow, adj.col_indices(), adj.values() * inv[row_indices(crow)], tuple(adj.shape))
