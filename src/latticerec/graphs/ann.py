"""How the neighbours of a kNN item graph are found (eq. 2's top-k), with faiss for the indexes.

:class:`KnnSearch` names a backend and the parameters that shape its result; :func:`faiss_search`
runs one of the faiss backends on L2-normalised rows, where the inner product is the cosine of
eq. 1 (``S_ij = ê_iᵀ ê_j`` with ``ê = e / ‖e‖``):

* ``faiss-flat``  ``IndexFlatIP``: every pair, exact (faiss's blocked BLAS and heaps);
* ``faiss-hnsw``  ``IndexHNSWFlat(d, M)``: a hierarchical navigable small-world graph, built with
  ``efConstruction`` candidates and searched with ``efSearch`` (recall grows with both);
* ``faiss-ivf``   ``IndexIVFFlat``: ``nlist`` k-means cells (10 k-means iterations on a seeded sample of at
  most ``64 · nlist`` rows); a query scans the ``nprobe`` cells nearest to it.

Every row is a query against all rows (the graph's own items). faiss runs on the CPU with as many
OpenMP threads as torch uses (``torch.get_num_threads()``); it is imported only when asked for.
HNSW's graph depends on the order threads insert points, so with several threads its result may
differ from run to run (the exact and faiss-flat backends, and IVF, are deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf", "auto")
AUTO_ANN = "faiss-hnsw"  # what ``auto`` uses above ``auto_items`` (docs/knn.md: the benchmark)
AUTO_ITEMS = 50_000
QUERY_BLOCK = 16_384  # queries per faiss call (a progress step)
IVF_TRAIN_PER_LIST = 64  # k-means training rows per cell
IVF_MIN_PER_LIST = 39  # faiss warns below 39 training points per centroid
IVF_NITER = 10  # k-means iterations (faiss's default is 25; cells need not be optimal)


@dataclass(frozen=True)
class KnnSearch:
    """A neighbour-search backend with its parameters (option names are ``knn_<field>``).

    ``backend``: one of :data:`BACKENDS`; ``auto`` is ``exact`` up to ``auto_items`` items and
    :data:`AUTO_ANN` above. HNSW: ``hnsw_m`` links per node (at least 2), ``hnsw_efc`` (efConstruction),
    ``hnsw_ef`` (efSearch, at least ``k`` is used). IVF: ``ivf_nlist`` cells (0: ``4 √N``, at most
    ``N / 39``), ``ivf_nprobe`` cells scanned per query.
    """

    backend: str = "exact"
    auto_items: int = AUTO_ITEMS
    hnsw_m: int = 32
    hnsw_efc: int = 80
    hnsw_ef: int = 64
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    relu: bool = True

    def __post_init__(self):
        if not isinstance(self.relu, bool):
            raise ValueError(f"knn_relu must be true or false, got {self.relu!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"knn_backend {self.backend!r} is not available; "
                             f"available: {', '.join(BACKENDS)}")
        for name in ("auto_items", "hnsw_m", "hnsw_efc", "hnsw_ef", "ivf_nlist", "ivf_nprobe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"knn_{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # faiss's bindings refuse numpy integers
        for name in ("auto_items", "hnsw_efc", "hnsw_ef", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"knn_{name} must be >= 1, got {getattr(self, name)}")
        if self.hnsw_m < 2:  # faiss's HNSW divides by log(M): M = 1 crashes the process
            raise ValueError(f"knn_hnsw_m must be >= 2, got {self.hnsw_m}")
        if self.ivf_nlist < 0:
            raise ValueError(f"knn_ivf_nlist must be >= 0 (0: 4 sqrt(N)), got {self.ivf_nlist}")

    def resolve(self, n: int) -> str:
        """The concrete backend for ``n`` items (``auto`` decided by size)."""
        if self.backend != "auto":
            return self.backend
        return "exact" if n <= self.auto_items else AUTO_ANN

    def nlist(self, n: int) -> int:
        """IVF cells for ``n`` items: ``ivf_nlist`` or ``round(4 √n)``, within ``[1, n / 39]``."""
        want = self.ivf_nlist or round(4 * math.sqrt(n))
        return max(1, min(want, n // IVF_MIN_PER_LIST))

    def signature(self, n: int) -> str:
        """The resolved backend and every parameter its result depends on (for cache keys)."""
        if not self.relu:
            return self._signature(n) + "+negatives"
        return self._signature(n)

    def _signature(self, n: int) -> str:
        method = self.resolve(n)
        if method == "faiss-hnsw":
            return f"{method}(m={self.hnsw_m},efc={self.hnsw_efc},ef={self.hnsw_ef})"
        if method == "faiss-ivf":
            train = f"{IVF_TRAIN_PER_LIST}x{IVF_NITER}"
            return f"{method}(nlist={self.nlist(n)},nprobe={self.ivf_nprobe},train={train})"
        return method


def as_search(backend: str | KnnSearch) -> KnnSearch:
    """A :class:`KnnSearch` from a backend name or an existing one."""
    return backend if isinstance(backend, KnnSearch) else KnnSearch(backend)


def _index(x: np.ndarray, method: str, search: KnnSearch, k: int):
    import faiss

    n, d = x.shape
    if method == "faiss-flat":
        index = faiss.IndexFlatIP(d)
    elif method == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(d, search.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = search.hnsw_efc
        index.hnsw.efSearch = max(search.hnsw_ef, k)
    elif method == "faiss-ivf":
        nlist = search.nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter = 0, IVF_NITER
        # faiss only warns below this many training rows per cell (a small catalogue, or each
        # epoch's re-learned graph of one) on stderr; the clustering is the same without it
        index.cp.min_points_per_centroid = 1
        rows = np.random.default_rng(0).choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)
        index.train(x[np.sort(rows)])
        index.nprobe = min(search.ivf_nprobe, nlist)
    else:
        raise ValueError(f"{method!r} is not a faiss backend")
    index.add(x)
    return index


def faiss_search(x: np.ndarray, k: int, method: str, search: KnnSearch, progress: bool = False) -> np.ndarray:
    """``(N, k)`` int64 neighbour ids of every row of ``x`` (L2-normalised, ``N x d``) among all
    rows, most similar first, by the faiss backend ``method``; ``-1`` where the index found fewer
    than ``k`` results."""
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = _index(x, method, search, k)
    out = np.empty((x.shape[0], k), dtype=np.int64)
    starts = range(0, x.shape[0], QUERY_BLOCK)
    if progress:
        starts = tqdm(starts, desc=f"kNN graph ({x.shape[0]} items, k={k}, {method})", unit="block",
                      leave=False, disable=None)
    for s in starts:
        out[s:s + QUERY_BLOCK] = index.search(x[s:s + QUERY_BLOCK], k)[1]
    return out
