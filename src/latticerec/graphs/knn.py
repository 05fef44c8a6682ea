"""Item-item kNN graphs from content features (LATTICE / MICRO section 3.1, MM-GEF eq. 1-2).

Equation numbers refer to the MICRO paper (TKDE), whose section 3.1 is LATTICE's graph learner:

* eq. 1  ``S_ij = e_iᵀ e_j / (‖e_i‖ ‖e_j‖)``: cosine similarity, negative entries suppressed to 0;
* eq. 2  ``Ŝ_ij = S_ij`` if ``S_ij`` is among the top-k of row ``i``, else 0 (a directed graph);
* eq. 3  ``S̃ = D^-1/2 Ŝ D^-1/2`` with ``D_ii = Σ_j Ŝ_ij``;
* eq. 5  ``A = λ S̃ + (1 - λ) Ã``: the skip connection between the initial and the learned graph.

Similarities are computed in row chunks: an ``N x N`` matrix is never held, only ``chunk x N``.
Graphs are torch sparse CSR tensors with exactly ``k`` stored entries per row (before
normalisation; entries whose similarity was suppressed to 0 stay stored with value 0 so the shape
of the graph is fixed). Ties are broken towards the lower column index, so the graph is a
deterministic function of the features.

How the neighbours of eq. 2 are *found* is a :class:`KnnSearch` (option ``knn_backend``):

* ``exact``       every pair, ``chunk x N`` similarities at a time (``O(N² d)``);
* ``faiss-flat``  faiss's exact brute-force inner-product search (the same lists up to ties);
* ``faiss-hnsw``  a faiss HNSW graph (``IndexHNSWFlat``, inner product), approximate;
* ``faiss-ivf``   a faiss inverted file (``IndexIVFFlat``, k-means cells, inner product), approximate;
* ``auto``        ``exact`` up to ``auto_items`` items, ``faiss-hnsw`` above (docs/knn.md).

Whatever the backend, the graph has the same contract: ``k`` neighbours per row, columns ascending,
the item itself included (as eq. 1 gives it similarity 1), and values computed *exactly* for the
selected pairs by :func:`knn_values` (eq. 1, differentiable), so an ANN only chooses which pairs
are stored and gradients reach the features exactly as with ``exact``. Rows an index could not
fill with ``k`` results are searched exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latticerec.graphs.ann import BACKENDS, KnnSearch, as_search, faiss_search
from latticerec.graphs.normalize import symmetric_normalize_csr, symmetric_values
from latticerec.graphs.sparse import GradCSR, compact_indices, csr_from_parts, spmm

__all__ = ["BACKENDS", "KnnSearch", "dense_rows_to_csr", "knn_graph", "knn_indices", "knn_rows", "knn_values",
           "pairs_graph", "skip_connection", "symmetric_normalize", "weighted_spmm"]


# Similarities held at once by the exact search when the caller gives no chunk size. On a CPU a
# block that stays in cache between the product that writes it and the top-k that reads it is the
# fastest (2M floats = 8 MB: 312 rows at 6,710 items): 1.3-1.6x less CPU time than 64M-float blocks
# at 6,710 and 20,000 items, 64-d and 128-d, same neighbours (benchmarks/bench_exact_chunks.py);
# a GPU wants large blocks. No block holds more than MAX_CHUNK_FLOATS (256 MB) whatever the device.
CHUNK_FLOATS = {"cpu": 2 * 2**20, "cuda": 64 * 2**20}
MAX_CHUNK_FLOATS = 64 * 2**20
# F.normalize's eps: a row of a smaller norm is divided by it, not by its norm (not unit length)
NORM_EPS = 1e-12


def _chunk_rows(n: int, chunk_size: int | None, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: the caller's choice, else as many as keep ``chunk x N`` near the device's
    :data:`CHUNK_FLOATS`, at least 64 rows where that stays within :data:`MAX_CHUNK_FLOATS`, at most
    4,096. A row of ``x[rows] @ xᵀ`` came out bit-identical whatever the block's row count in every
    case measured (``benchmarks/bench_exact_chunks.py`` checks the neighbours; so do the tests), so
    the chunk size changes the time, not the neighbours."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        return chunk_size
    n = max(n, 1)
    budget = CHUNK_FLOATS.get(torch.device(device).type, CHUNK_FLOATS["cuda"])
    rows = max(budget // n, min(64, MAX_CHUNK_FLOATS // n))
    return max(1, min(n, rows, 4096))


def _topk_deterministic(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices ``(rows, k)`` of each row's k largest entries, ties to the lower index.

    ``topk`` alone leaves the choice among entries equal to the k-th value unspecified; only rows
    with such a tie (the (k+1)-th largest equals the k-th) take the slower exact path.
    """
    m = min(k + 1, sim.shape[1])
    top = torch.topk(sim, m, dim=1, sorted=True)
    kth = top.values[:, k - 1:k]
    # a tie at the boundary exists exactly when the (k+1)-th largest equals the k-th
    ambiguous = (top.values[:, k] == kth[:, 0]).nonzero().squeeze(1) if m > k else kth[:0, 0].long()
    out = top.indices[:, :k]
    if ambiguous.numel():
        rows, kth_a = sim[ambiguous], kth[ambiguous]
        above = rows > kth_a
        need = k - above.sum(dim=1, keepdim=True)  # how many entries equal to the k-th value to keep
        tie = rows == kth_a
        keep = above | (tie & (tie.cumsum(dim=1) <= need))
        out = out.clone()
        out[ambiguous] = keep.nonzero()[:, 1].view(-1, k)
    return out.sort(dim=1).values  # a canonical order: columns ascending


def _exact_rows(x: torch.Tensor, rows: torch.Tensor, k: int, chunk_size: int | None,
                progress: bool = False) -> torch.Tensor:
    """Exact top-k columns ``(len(rows), k)`` of the normalised ``x`` for the given rows, comparing
    ``chunk x N`` similarities at a time."""
    n = x.shape[0]
    step = _chunk_rows(n, chunk_size, x.device)
    out = torch.empty(rows.numel(), k, dtype=torch.long, device=x.device)
    starts = range(0, rows.numel(), step)
    if progress:
        starts = tqdm(starts, desc=f"kNN graph ({n} items, k={k})", unit="chunk", leave=False,
                      disable=None)
    for start in starts:
        out[start:start + step] = _topk_deterministic(x[rows[start:start + step]] @ x.T, k)
    return _own_included(x, rows, out)


def _own_included(x: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Exact rows (columns ascending) with the item itself in every non-zero row (eq. 1: ``S_ii = 1``,
    the largest similarity): a row lacks itself only when more than ``k`` rows are identical to it
    (all at similarity 1, ties to the lower index), and then gets itself in place of its largest id,
    as an ANN row that misses itself does (:func:`_complete`). Columns ascending."""
    nonzero = torch.linalg.vector_norm(x, dim=1)[rows] > 0  # no N x d temporary
    lacks = ~(ids == rows.unsqueeze(1)).any(dim=1) & nonzero
    if not bool(lacks.any()):
        return ids
    ids = ids.clone()
    ids[lacks, -1] = rows[lacks]
    return ids.sort(dim=1).values


def _complete(x: torch.Tensor, ids: torch.Tensor, k: int, chunk_size: int | None) -> torch.Tensor:
    """An index's ``(N, k)`` result (most similar first, ``-1`` for missing) held to the exact
    contract: rows with a missing or repeated entry and rows of zeros are searched exactly, and a
    non-zero row that lacks itself gets itself in place of its least similar neighbour (eq. 1:
    ``S_ii = 1``). Columns ascending."""
    n = x.shape[0]
    repeated = (ids.sort(dim=1).values.diff(dim=1) == 0).any(dim=1)
    zero = torch.linalg.vector_norm(x, dim=1) == 0  # no N x d temporary (x.abs() would be one)
    redo = ((ids < 0).any(dim=1) | repeated | zero).nonzero().squeeze(1)
    if redo.numel():
        ids[redo] = _exact_rows(x, redo, k, chunk_size)
    own = torch.arange(n, device=ids.device)
    lacks = ~(ids == own.unsqueeze(1)).any(dim=1)
    lacks[redo] = False
    ids[lacks, k - 1] = own[lacks]
    return ids.sort(dim=1).values


class NonFiniteFeatures(ValueError):
    """The features of a kNN graph hold NaN or infinite values, or values so large that a row's
    norm overflows float32 (their rows' neighbours would be arbitrary, their values 0 or NaN); a
    caller that knows why (a diverged projection) catches it to say so."""


def _check_features(features: torch.Tensor) -> None:
    """A 2-D matrix with at least one column whose rows have a finite float32 norm (the norm eq. 1
    divides by) of at least :data:`NORM_EPS` or are rows of zeros, else a ``ValueError`` /
    :class:`NonFiniteFeatures` naming the first bad row. One ``O(N d)`` reduction, no ``N x d``
    temporary for float32 features."""
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError("features must be a 2-D (items x dims) matrix with at least one column, got "
                         f"shape {tuple(features.shape)}")
    norms = torch.linalg.vector_norm(features.detach().float(), dim=1)
    n = features.shape[0]
    small = (norms < NORM_EPS).nonzero().flatten()  # rows of zeros (allowed) or tiny non-zero rows
    small = small[(features.detach()[small] != 0).any(dim=1)]
    if small.numel():
        first = int(small[0])
        raise ValueError(f"features are too small in {small.numel()} of {n} rows (first: row {first}, norm "
                         f"{float(norms[first]):.3g} < {NORM_EPS:g}): eq. 1's normalisation would not make "
                         "them unit length (their graph would not be a cosine one); rescale them")
    bad = (~torch.isfinite(norms)).nonzero().flatten()
    if not bad.numel():
        return
    nonfinite = bad[~torch.isfinite(features.detach()[bad]).all(dim=1)]
    if nonfinite.numel():
        raise NonFiniteFeatures(f"features hold NaN or infinite values in {nonfinite.numel()} of {n} rows "
                                f"(first: row {int(nonfinite[0])}); a kNN graph of them would be meaningless")
    raise NonFiniteFeatures(f"features are too large in {bad.numel()} of {n} rows (first: row {int(bad[0])}, "
                            f"largest |value| {float(features.detach()[bad[0]].abs().max()):.3g}): their "
                            "float32 norm overflows; rescale them")


@torch.no_grad()
def knn_indices(features: torch.Tensor, k: int, chunk_size: int | None = None,
                progress: bool = False, backend: str | KnnSearch = "exact") -> torch.Tensor:
    """Neighbour indices ``(N, k)`` of the top-k cosine similarities of each row (eq. 1-2), found by
    ``backend`` (a name of :data:`BACKENDS` or a :class:`KnnSearch`); columns ascending.

    The item itself is a candidate (its similarity is 1), as in the LATTICE code. Rows of zeros have
    similarity 0 to everything and get the k lowest indices.
    """
    search = as_search(backend)
    _check_features(features)
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"knn k must be an integer, got {k!r}")
    k = int(k)  # faiss's bindings refuse numpy integers
    if not 1 <= k <= n:
        raise ValueError(f"knn k={k} must lie in [1, number of items = {n}]")
    x = F.normalize(features.detach().float(), dim=1)
    method = search.resolve(n)
    if method == "exact":
        return _exact_rows(x, torch.arange(n, device=x.device), k, chunk_size, progress)
    ids = faiss_search(x.cpu().numpy(), k, method, search, progress)
    return _complete(x, torch.from_numpy(ids).to(x.device), k, chunk_size)


def _pair_dots(x: torch.Tensor, nbr: torch.Tensor, step: int) -> torch.Tensor:
    """``(N, k)`` dot products ``x_iᵀ x_{nbr[i, j]}``, ``step`` rows at a time."""
    parts = [(x[s:s + step].unsqueeze(1) * x[nbr[s:s + step]]).sum(-1) for s in range(0, x.shape[0], step)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class _PairDots(torch.autograd.Function):
    """``out[i, j] = x_iᵀ x_{nbr[i, j]}`` for an ``(N, k)`` neighbour list, in row chunks of ``step``,
    keeping only ``x`` for the backward pass: ``∂x_i += Σ_j g_ij x_{nbr_ij}`` and
    ``∂x_{nbr_ij} += g_ij x_i``, recomputed chunk by chunk. Autograd through the gathered rows would
    keep all of them, ``N x k x d`` floats (2.6 GB for a 1M-item learned graph of width 64)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, nbr: torch.Tensor, step: int) -> torch.Tensor:
        ctx.save_for_backward(x, nbr)
        ctx.step = step
        return _pair_dots(x, nbr, step)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, nbr = ctx.saved_tensors
        g_x = torch.zeros_like(x)
        for s in range(0, x.shape[0], ctx.step):
            g, idx = grad[s:s + ctx.step].unsqueeze(-1), nbr[s:s + ctx.step]
            g_x[s:s + ctx.step] += (g * x[idx]).sum(1)
            g_x.index_add_(0, idx.reshape(-1), (g * x[s:s + ctx.step].unsqueeze(1)).reshape(-1, x.shape[1]))
        return g_x, None, None


def knn_values(features: torch.Tensor, neighbours: torch.Tensor, budget: int = 16 * 2**20,
               relu: bool = True) -> torch.Tensor:
    """Suppressed cosine similarities ``max(S_ij, 0)`` for the pairs ``(i, neighbours[i, :])`` (eq. 1);
    with ``relu=False`` the raw cosines, negatives kept (the released code's top-k values).

    Differentiable in ``features``: this is how gradients reach the projections of the learned graph.
    Costs ``O(N k d)``, not ``O(N² d)``, computed in row chunks of at most ``budget`` floats.
    """
    x = F.normalize(features.float(), dim=1)
    n, k = neighbours.shape
    step = max(1, budget // max(k * x.shape[1], 1))
    sims = _PairDots.apply(x, neighbours, step) if x.requires_grad else _pair_dots(x, neighbours, step)
    return torch.relu(sims) if relu else sims


def symmetric_normalize(neighbours: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Values of ``D^-1/2 Ŝ D^-1/2`` (eq. 3) for an ``(N, k)`` graph, by scaling values:
    ``v_ij / sqrt(d_i d_j)`` with ``d_i = Σ_j Ŝ_ij`` (the row sum) and ``0`` where a degree is 0."""
    rows = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    return symmetric_values(values, rows, neighbours, values.sum(dim=1))


def dense_rows_to_csr(neighbours: torch.Tensor, values: torch.Tensor) -> torch.Tensor | GradCSR:
    """An ``(N, k)`` neighbour list with values as an ``N x N`` sparse CSR tensor.

    When the values carry gradients the result is a :class:`GradCSR` (the same CSR plus the
    differentiable values), whose product with a dense matrix is differentiable in them.
    Columns are sorted within each row (as CSR requires).
    """
    n, k = neighbours.shape
    cols, order = neighbours.sort(dim=1)
    vals = values.gather(1, order).reshape(-1)
    crow = torch.arange(0, n * k + 1, k, device=neighbours.device)
    csr = compact_indices(csr_from_parts(crow, cols.reshape(-1), vals.detach(), (n, n)))
    return GradCSR(csr, vals) if vals.requires_grad else csr


def knn_rows(features: torch.Tensor, k: int, chunk_size: int | None = None, normalize: bool = True,
             progress: bool = False, backend: str | KnnSearch = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1-3 as an ``(N, k)`` neighbour list and its values: the top-k cosine neighbours of every
    row (eq. 1-2), their suppressed similarities, symmetric normalised (eq. 3) unless ``normalize``
    is false. ``backend`` (a name or a :class:`KnnSearch`) only chooses the neighbours: ``exact``
    compares every pair in row chunks, the faiss backends search an index (module docstring); the
    values are the exact, differentiable similarities of the chosen pairs either way."""
    search = as_search(backend)
    neighbours = knn_indices(features, k, chunk_size, progress, search)
    values = knn_values(features, neighbours, relu=search.relu)
    return neighbours, symmetric_normalize(neighbours, values) if normalize else values


def knn_graph(features: torch.Tensor, k: int = 10, chunk_size: int | None = None,
              normalize: bool = True, backend: str | KnnSearch = "exact") -> torch.Tensor:
    """The normalised kNN graph ``S̃`` of eq. 1-3 as an ``N x N`` sparse CSR tensor
    (:func:`knn_rows` in CSR form); the entry point of every kNN item graph.

    ``features`` may require grad (the learned graph of eq. 4 is ``knn_graph(W e + b)``): the
    neighbour selection is discrete, the values carry gradients to the features.
    """
    return dense_rows_to_csr(*knn_rows(features, k, chunk_size, normalize, backend=backend))


def pairs_graph(pairs: torch.Tensor, n_items: int) -> torch.Tensor:
    """A precomputed item graph ``(E, 2)`` of (item, neighbour) pairs as a CSR tensor with unit
    weights, duplicates merged, normalised as eq. 3 (the "graph modality")."""
    pairs = pairs.long()
    n = n_items
    key = torch.unique(pairs[:, 0] * n + pairs[:, 1])  # sorted: row-major, columns ascending
    rows, cols = key // n, key % n
    crow = torch.zeros(n + 1, dtype=torch.long, device=pairs.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return symmetric_normalize_csr(csr_from_parts(crow, cols, torch.ones(rows.numel(), device=pairs.device),
                                                  (n, n)))


def skip_connection(initial: torch.Tensor, learned: torch.Tensor, lam: float) -> list[
        tuple[float, torch.Tensor]]:
    """Eq. 5, ``A = λ S̃ + (1 - λ) Ã``, kept as weighted terms so the two supports need no merging:
    ``A @ X = Σ_j w_j (G_j @ X)``. Terms with weight 0 are dropped."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    return [(w, g) for w, g in ((lam, initial), (1.0 - lam, learned)) if w != 0.0]


def weighted_spmm(terms: list[tuple[float | torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """``(Σ_j w_j G_j) @ X`` computed as ``Σ_j w_j (G_j @ X)``: sparse graphs with different
    supports are combined without materialising their sum. Differentiable in the weights, in ``X``
    and in any graph values that carry gradients."""
    out = None
    for w, g in terms:
        y = spmm(g, x) * w
        out = y if out is None else out + y
    if out is None:
        raise ValueError("weighted_spmm needs at least one graph term")
    return out
