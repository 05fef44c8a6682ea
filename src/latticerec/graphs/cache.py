"""A disk cache for the initial kNN graphs, keyed by a hash of (features, k).

Building the initial graph of a large catalogue costs seconds to minutes (``N²d`` flops); it depends
only on the raw features and ``k``, so it is computed once and reused by every later run. Files are
written atomically, so an interrupted run never leaves a half-written graph behind.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from latticerec.graphs.knn import dense_rows_to_csr, knn_indices, knn_values, symmetric_normalize
from latticerec.io import atomic_write_bytes

CACHE_VERSION = "knn-v1"  # bump when the graph construction changes


def default_cache_dir() -> Path:
    """``$LATTICEREC_CACHE`` if set, else ``~/.cache/latticerec``."""
    env = os.environ.get("LATTICEREC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "latticerec"


def graph_key(features: torch.Tensor, k: int) -> str:
    """A hex digest of the features' bytes, shape and dtype, ``k`` and the construction version."""
    arr = np.ascontiguousarray(features.detach().cpu().numpy())
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}|{arr.shape}|{arr.dtype}|k={k}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:40]


class KnnGraphCache:
    """``cache(features, k)`` returns the normalised kNN graph of eq. 1-3 (a CSR tensor on the
    features' device), from ``folder`` when it was built before."""

    def __init__(self, folder: str | Path | None = None, chunk_size: int | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0

    def path_for(self, features: torch.Tensor, k: int) -> Path:
        return self.folder / "graphs" / f"knn-{graph_key(features, k)}.npz"

    def __call__(self, features: torch.Tensor, k: int) -> torch.Tensor:
        path = self.path_for(features, k)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    nbr, val = z["neighbours"], z["values"]
                if nbr.shape == (features.shape[0], k) and val.shape == nbr.shape:
                    self.hits += 1
                    dev = features.device
                    return dense_rows_to_csr(torch.from_numpy(nbr).long().to(dev),
                                             torch.from_numpy(val).float().to(dev))
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache entry: rebuild and overwrite it
        self.misses += 1
        with torch.no_grad():
            nbr = knn_indices(features, k, self.chunk_size, progress=True)
            val = symmetric_normalize(nbr, knn_values(features, nbr))
        buf = io.BytesIO()
        np.savez(buf, neighbours=nbr.cpu().numpy().astype(np.int32), values=val.cpu().numpy())
        atomic_write_bytes(path, buf.getvalue())
        return dense_rows_to_csr(nbr, val)
