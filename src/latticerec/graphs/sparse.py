"""Sparse-matrix helpers on torch CSR tensors, the one sparse type of the training path.

``to_torch_csr`` converts a dataset's scipy matrix once, at the data boundary; every graph is then
built and multiplied in torch.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch


def to_torch_csr(mat: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy sparse matrix as a float32 ``torch.sparse_csr_tensor`` (CSR spmm is the fastest path)."""
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr.astype(np.int64)),
            torch.from_numpy(mat.indices.astype(np.int64)),
            torch.from_numpy(mat.data),
            size=mat.shape,
            device=device,
        )


def csr_from_parts(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                   shape: tuple[int, int]) -> torch.Tensor:
    """Build a torch CSR tensor without the beta-state warning (values may require grad)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape)


INT32_LIMIT = 2**31 - 1


def compact_indices(adj: torch.Tensor | None) -> torch.Tensor | None:
    """``adj`` with 32-bit row pointers and column indices when its sizes allow (else unchanged).

    For the products only: torch's CPU CSR x dense product runs 2-2.5x faster on int32 indices than
    on int64 (measured on Baby's 26,495 x 26,495 LightGCN adjacency, 239k non-zeros, 64 columns: 7.5
    vs 18 ms on one thread; ``benchmarks/profile_epoch.py``). Arithmetic on the indices of a compact
    matrix must cast to int64 first (``row * n + col`` overflows int32 at 46,341 rows)."""
    if adj is None or adj.layout != torch.sparse_csr or adj.crow_indices().dtype == torch.int32:
        return adj
    if max(*adj.shape, adj.values().numel()) >= INT32_LIMIT:
        return adj
    return csr_from_parts(adj.crow_indices().int(), adj.col_indices().int(), adj.values(), tuple(adj.shape))


def binary_pattern(adj: torch.Tensor) -> torch.Tensor:
    """The CSR matrix ``adj`` with every stored entry set to 1 (its sparsity pattern)."""
    return csr_from_parts(adj.crow_indices(), adj.col_indices(), torch.ones_like(adj.values()),
                          tuple(adj.shape))


def row_indices(crow: torch.Tensor) -> torch.Tensor:
    """The row of every stored entry of a CSR matrix with row pointers ``crow`` (COO rows)."""
    n = crow.numel() - 1
    return torch.repeat_interleave(torch.arange(n, device=crow.device), crow.diff())


class _ConstantSpmm(torch.autograd.Function):
    """``A @ X`` for a constant sparse ``A`` whose transpose is given: the backward pass is
    ``Aᵀ @ grad`` without transposing a CSR matrix at every call (``Aᵀ = A`` when symmetric)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.adj_t @ grad


def constant_spmm(adj: torch.Tensor, x: torch.Tensor, adj_t: torch.Tensor | None = None) -> torch.Tensor:
    """Product of a constant sparse matrix with a dense matrix, ``adj @ x``, differentiable in ``x``.
    ``adj_t`` is ``adjᵀ`` precomputed once (``None``: ``adj`` is symmetric)."""
    if x.requires_grad:
        return _ConstantSpmm.apply(adj, adj if adj_t is None else adj_t, x)
    return adj @ x


class _LayerMean(torch.autograd.Function):
    """``(Σ_{l=0..L} A^l X) / (L + 1)`` for a constant sparse ``A`` (LightGCN eq. 7-8) by Horner's
    rule, ``X + A(X + A(X + …))``, one sparse ``addmm`` per layer with the ``1/(L+1)`` scale folded
    into the last one. The backward pass is the same sum with ``Aᵀ``,
    ``∂X = (Σ_l (Aᵀ)^l G) / (L + 1)``, also one ``addmm`` per layer: no per-layer gradient is
    zero-filled and accumulated, as autograd through the ``L`` products would do."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        ctx.adj_t, ctx.n_layers = adj_t, n_layers
        return _horner(adj, x, n_layers)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, _horner(ctx.adj_t, grad.contiguous(), ctx.n_layers), None


def _horner(adj: torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    scale = 1.0 / (n_layers + 1)
    if n_layers == 0:
        return x * scale
    total = x
    for layer in range(n_layers):
        last = layer == n_layers - 1
        total = torch.addmm(x, adj, total, beta=scale if last else 1.0, alpha=scale if last else 1.0)
    return total


def layer_mean(adj: torch.Tensor, x: torch.Tensor, n_layers: int,
               adj_t: torch.Tensor | None = None) -> torch.Tensor:
    """``(Σ_{l=0..L} A^l X) / (L + 1)`` for a constant sparse ``A`` (``adj_t`` its transpose; ``None``:
    ``A`` symmetric), differentiable in ``X`` (:class:`_LayerMean`)."""
    if x.requires_grad:
        return _LayerMean.apply(adj, adj if adj_t is None else adj_t, x, n_layers)
    return _horner(adj, x, n_layers)


def transpose_csr(adj: torch.Tensor) -> torch.Tensor:
    """``adjᵀ`` of a sparse CSR tensor, as CSR (columns sorted within each row)."""
    return adj.t().to_sparse_csr()


class ConstantCSR(NamedTuple):
    """A constant sparse CSR matrix with its transpose computed once: ``G @ X`` is differentiable in
    ``X`` and its backward pass is ``Gᵀ @ grad``. Torch's own backward for a CSR product transposes
    the matrix at every call, which made it 2-3x slower than the forward pass on item kNN graphs."""

    csr: torch.Tensor
    csr_t: torch.Tensor

    @classmethod
    def of(cls, adj: torch.Tensor) -> ConstantCSR:
        return cls(adj, transpose_csr(adj))

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return spmm(self, x)

    def to_dense(self) -> torch.Tensor:
        return self.csr.to_dense()


VALUES_GRAD_BUDGET = 16 * 2**20  # floats of gathered rows per chunk in _ValuesSpmm's backward pass


class _ValuesSpmm(torch.autograd.Function):
    """``A @ X`` for a CSR ``A`` whose values require grad, with sparse gradients:
    ``∂L/∂A_ij = <∂L/∂Y_i, X_j>`` only on the stored entries and ``∂L/∂X = Aᵀ ∂L/∂Y``; torch's own
    backward for CSR values goes through a dense ``N x N`` gradient."""

    @staticmethod
    def forward(ctx, crow, col, values, x, n_rows):
        a = csr_from_parts(crow, col, values.detach(), (n_rows, x.shape[0]))
        # int64 entry coordinates: index_select / index_add_ take them ~2x faster than int32
        ctx.save_for_backward(row_indices(crow).long(), col.long(), values, x)
        return a @ x

    @staticmethod
    def backward(ctx, grad):
        rows, col, values, x = ctx.saved_tensors
        want_values, want_x = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        g_values = torch.empty_like(values) if want_values else None
        g_x = torch.zeros_like(x) if want_x else None
        # entries in chunks of VALUES_GRAD_BUDGET floats: the gathered rows of all 10M entries of a
        # 1M-item k = 10 graph would be 2.6 GB per gather at width 64
        step = max(1, VALUES_GRAD_BUDGET // max(grad.shape[1], 1))
        for s in range(0, rows.numel(), step):
            r, c = rows[s:s + step], col[s:s + step]
            grad_rows = grad.index_select(0, r)  # ∂L/∂Y_i of each stored entry
            if want_values:
                g_values[s:s + step] = (grad_rows * x.index_select(0, c)).sum(-1)
            if want_x:
                g_x.index_add_(0, c, grad_rows.mul_(values[s:s + step].detach().unsqueeze(1)))
        return None, None, g_values, g_x, None


class GradCSR(NamedTuple):
    """A CSR matrix whose stored values carry gradients: ``csr`` holds the structure (and detached
    values), ``values`` the differentiable values in CSR order. ``G @ X`` is differentiable in both
    ``values`` and ``X`` with sparse gradients (torch's CSR backward goes through an ``N x N`` dense
    gradient, which is what this avoids)."""

    csr: torch.Tensor
    values: torch.Tensor

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return spmm(self, x)

    def to_dense(self) -> torch.Tensor:
        return self.csr.to_dense()


def spmm(adj: torch.Tensor | GradCSR | ConstantCSR, x: torch.Tensor) -> torch.Tensor:
    """``adj @ x`` for a sparse CSR tensor, a :class:`ConstantCSR` (fast backward in ``x``) or a
    :class:`GradCSR` (gradients reach its values)."""
    if isinstance(adj, ConstantCSR):
        return constant_spmm(adj.csr, x, adj.csr_t)
    if isinstance(adj, GradCSR):
        csr = adj.csr
        return _ValuesSpmm.apply(csr.crow_indices(), csr.col_indices(), adj.values, x, csr.shape[0])
    return adj @ x
