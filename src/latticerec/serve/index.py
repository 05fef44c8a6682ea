"""Top-k search over the item representations: exact (matrix-vector product + ``argpartition``) or a
faiss HNSW graph (inner product), each with excluded items.

Exact: ``s = X q`` over every item, excluded items set to ``-inf``, the best ``k`` found by
``argpartition`` in O(I) and sorted in O(k log k).

HNSW: a faiss ``IndexHNSWFlat`` with the inner-product metric over the items known at start-up. It is
asked for ``k + |excluded|`` candidates (so that ``k`` remain after dropping the excluded ones) with
``efSearch = max(ef_search, 2 (k + |excluded|))``; items added while serving are few and are scored
exactly, then the two lists are merged. faiss is imported only when an HNSW index is asked for.

Building the graph is the slow part of a start (minutes at a million items), so the built index is
kept beside the model (``hnsw-M{M}-efc{efC}.faiss`` and a ``.json`` record of its parameters, the
SHA-256 of the item representations it indexes and the SHA-256 of the index file). A later start
with the same parameters and items reads it back after checking both digests and the index's type,
size, dimension and metric; anything else (another model, changed items, a truncated or altered
file) is rebuilt with a warning. The digests guard against corruption and stale files, not against
someone who may write the model folder (they could replace the model itself).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from latticerec.errors import OutputError
from latticerec.io import atomic_write_bytes, atomic_write_json

INDEX_FORMAT = 1


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

    def __init__(self, base: np.ndarray, m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                 cache_dir: str | Path | None = None):
        import faiss

        self.n_base, self.m, self.ef_construction = base.shape[0], m, ef_construction
        self.ef_search = ef_search
        base = np.ascontiguousarray(base, dtype=np.float32)
        self.cache = None if cache_dir is None else Path(cache_dir) / f"hnsw-M{m}-efc{ef_construction}.faiss"
        digest = hashlib.sha256(base.data).hexdigest() if self.cache is not None else None
        self.index = self._load(faiss, base, digest) if self.cache is not None else None
        self.loaded = self.index is not None
        if self.index is None:
            self.index = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
            self.index.add(base)
            if self.cache is not None:
                self._save(faiss, digest)
        self._params = faiss.SearchParametersHNSW
        self.recall: dict | None = None

    def _record(self, digest: str) -> dict:
        return {"format": INDEX_FORMAT, "kind": "IndexHNSWFlat", "metric": "inner_product", "M": self.m,
                "ef_construction": self.ef_construction, "items": self.n_base, "items_sha256": digest}

    def _load(self, faiss, base: np.ndarray, digest: str):
        """The cached index when its record, file digest and contents match ``base``; else None."""
        record_path = self.cache.with_suffix(".json")
        if not self.cache.exists() and not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text())
            if not isinstance(record, dict):
                raise ValueError("the record is not a JSON object")
            file_sha = record.pop("index_sha256", None)
            if record != self._record(digest):
                raise ValueError("it indexes other items or parameters")
            data = self.cache.read_bytes()
            if hashlib.sha256(data).hexdigest() != file_sha:
                raise ValueError("the file's SHA-256 differs from its record (truncated or altered)")
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            if not isinstance(index, faiss.IndexHNSWFlat) or index.ntotal != base.shape[0] \
                    or index.d != base.shape[1] or index.metric_type != faiss.METRIC_INNER_PRODUCT \
                    or index.hnsw.nb_neighbors(0) != 2 * self.m:
                raise ValueError("the index read back has another type, size, dimension or metric")
        except (OSError, ValueError, RuntimeError, TypeError, json.JSONDecodeError) as exc:
            warnings.warn(f"{self.cache}: cached HNSW index not used ({exc}); rebuilding it", stacklevel=3)
            return None
        return index

    def _save(self, faiss, digest: str) -> None:
        data = faiss.serialize_index(self.index).tobytes()
        try:
            atomic_write_bytes(self.cache, data)
            atomic_write_json(self.cache.with_suffix(".json"),
                              {**self._record(digest), "index_sha256": hashlib.sha256(data).hexdigest()})
        except OutputError as exc:
            warnings.warn(f"the HNSW index is not kept for the next start: {exc}", stacklevel=3)

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
        return {"kind": self.kind, "M": self.m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "loaded": self.loaded, **(self.recall or {})}


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
