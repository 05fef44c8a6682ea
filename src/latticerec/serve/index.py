"""Top-k search over the item representations: exact (matrix-vector product + ``argpartition``) or a
faiss HNSW graph (inner product), each with excluded items.

Exact: ``s = X q`` over every item, excluded items set to ``-inf``, the best ``k`` found by
``argpartition`` in O(I) and sorted in O(k log k).

HNSW: a faiss ``IndexHNSWFlat`` with the inner-product metric over the items known at start-up. It is
asked for ``k + |excluded|`` candidates (so that ``k`` remain after dropping the excluded ones) with
``efSearch = max(ef_search, 2 (k + |excluded|))``; items added while serving are few and are scored
exactly, then the two lists are merged. faiss is imported only when an HNSW index is asked for.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest finite ``scores``, best first (ties by index)."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, scores.dtype)
    top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
    top = top[np.isfinite(scores[top])]
    top = top[np.lexsort((top, -scores[top]))]
    return top, scores[top]


class ExactIndex:
    """Exact inner-product top-k over the first ``n`` rows of a representation buffer."""

    kind = "exact"

    def search(self, reprs: np.ndarray, query: np.ndarray, k: int,
               exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = reprs @ query
        if exclude.size:
            scores[exclude] = -np.inf
        return top_k(scores, k)

    def describe(self) -> dict:
        return {"kind": self.kind}


class HNSWIndex(ExactIndex):
    """faiss HNSW (inner product) over the first ``n_base`` items; later rows are scored exactly."""

    kind = "hnsw"

    def __init__(self, base: np.ndarray, m: int = 32, ef_construction: int = 80, ef_search: int = 128):
        import faiss

        self.n_base, self.m = base.shape[0], m
        self.ef_search = ef_search
        self.index = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(np.ascontiguousarray(base, dtype=np.float32))
        self._params = faiss.SearchParametersHNSW
        self.recall: dict | None = None

    def search(self, reprs: np.ndarray, query: np.ndarray, k: int,
               exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        want = min(k + exclude.size, self.n_base)
        params = self._params(efSearch=max(self.ef_search, 2 * want))
        dist, idx = self.index.search(query[None, :].astype(np.float32, copy=False), want, params=params)
        keep = idx[0] >= 0
        if exclude.size:
            keep &= ~np.isin(idx[0], exclude)
        items, scores = idx[0][keep].astype(np.int64), dist[0][keep]
        if reprs.shape[0] > self.n_base:  # items added while serving: exact
            tail_items, tail_scores = super().search(reprs[self.n_base:], query, k,
                                                     exclude[exclude >= self.n_base] - self.n_base)
            items = np.concatenate([items, tail_items + self.n_base])
            scores = np.concatenate([scores, tail_scores])
        order = np.lexsort((items, -scores))[:k]
        return items[order], scores[order]

    def describe(self) -> dict:
        return {"kind": self.kind, "M": self.m, "ef_search": self.ef_search,
                **(self.recall or {})}


def exact_top_k(reprs: np.ndarray, queries: np.ndarray, excludes: list[np.ndarray], k: int,
                chunk: int = 16) -> list[np.ndarray]:
    """Exact top-``k`` items of each query row, a chunk of queries per matrix product."""
    out = []
    for start in range(0, len(queries), chunk):
        scores = queries[start: start + chunk] @ reprs.T
        for row, ex in zip(scores, excludes[start: start + chunk], strict=True):
            if ex.size:
                row[ex] = -np.inf
            out.append(top_k(row, k)[0])
    return out


def recall_against_exact(index: HNSWIndex, reprs: np.ndarray, queries: np.ndarray,
                         excludes: list[np.ndarray], k: int, truth: list[np.ndarray] | None = None) -> float:
    """Mean ``|top_k(index) ∩ top_k(exact)| / |top_k(exact)|`` over the query rows (``truth``: the
    exact lists when already known)."""
    truth = exact_top_k(reprs, queries, excludes, k) if truth is None else truth
    hits = [np.isin(index.search(reprs, q, k, ex)[0], t).sum() / t.size
            for q, ex, t in zip(queries, excludes, truth, strict=True) if t.size]
    return float(np.mean(hits)) if hits else 1.0
