"""A disk cache for the initial kNN graphs, keyed by a hash of (features, k, neighbour search).

Building the initial graph of a large catalogue costs seconds to minutes (``N²d`` flops); it depends
only on the raw features, ``k`` and how neighbours are found (the resolved ``knn_backend`` and the
parameters its result depends on, :meth:`KnnSearch.signature`; ``exact`` keeps the key it always
had), so it is computed once and reused by every later run. Files are
written atomically, so an interrupted run never leaves a half-written graph behind.

A cache folder may be shared or tampered with, so an entry is trusted only after checks: its stored
key equals the requested one, the arrays' headers give the expected shapes before any is read,
``neighbours`` is an ``(N, k)`` integer array with ``0 <= j < N`` strictly ascending in each row,
``values`` an ``(N, k)`` array finite as float32 and equal (to a tolerance) to the similarities of
those pairs recomputed from the features (``O(N k d)``). A corrupt, truncated or mismatched entry is rebuilt
(and overwritten) with a warning. Temporary files of killed writes older than an hour are removed.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from latticerec.errors import ConfigError
from latticerec.graphs.ann import as_search
from latticerec.graphs.knn import KnnSearch, dense_rows_to_csr, knn_rows, knn_values, symmetric_normalize
from latticerec.io import atomic_write_bytes, check_writable, remove_stale_temps

CACHE_VERSION = "knn-v2"  # bump when the graph construction changes (v2: every item keeps itself)
STALE_TEMP_SECONDS = 3600.0  # a temporary file this old belongs to a killed write


def default_cache_dir() -> Path:
    """``$LATTICEREC_CACHE`` if set, else ``~/.cache/latticerec``."""
    env = os.environ.get("LATTICEREC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "latticerec"


def graph_key(features: torch.Tensor, k: int, backend: str | KnnSearch = "exact") -> str:
    """A hex digest of the features' bytes, shape and dtype, ``k``, the construction version and
    the neighbour search (for an approximate backend: its resolved name and parameters)."""
    arr = np.ascontiguousarray(features.detach().cpu().numpy())
    method = as_search(backend).signature(arr.shape[0])
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}|{arr.shape}|{arr.dtype}|k={k}|".encode())
    if method != "exact":
        h.update(f"search={method}|".encode())
    h.update(memoryview(arr).cast("B"))  # the bytes in place (tobytes() would copy 2 GB at 1M x 512)
    return h.hexdigest()[:40]


class CacheEntryError(ValueError):
    """A cache entry failed a check (the message says which)."""


KEY_CHARS = 64  # a stored key is a short hex digest; a longer one is refused before it is read
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_headers(path: Path, n: int, k: int) -> None:
    """Check the ``.npy`` headers of the three arrays (shape, dtype) *before* any array is read: a
    header claiming a huge shape would otherwise make ``np.load`` allocate it."""
    with zipfile.ZipFile(path) as zf:
        for name in ("key", "neighbours", "values"):
            with zf.open(f"{name}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                if version not in _HEADER_READERS:
                    raise CacheEntryError(f"{name}: unsupported .npy format version {version}")
                shape, _, dtype = _HEADER_READERS[version](fh)
            if name == "key":
                if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * KEY_CHARS:
                    raise CacheEntryError(f"key: a {dtype} array of shape {shape}, expected a short string")
            elif shape != (n, k):
                raise CacheEntryError(f"{name}: shape {shape}, expected ({n}, {k})")


def read_entry(path: Path, key: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbours int64, values float32)`` of a cache entry, or :class:`CacheEntryError`."""
    if not path.is_file():  # a folder, a FIFO (whose read would block) or a device
        raise CacheEntryError("not a regular file")
    try:
        _check_headers(path, n, k)
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CacheEntryError("not a .npz archive")
        with z:
            arrays = {name: np.asarray(z[name]) for name in ("key", "neighbours", "values")}
    except KeyError as exc:
        raise CacheEntryError(f"missing array {exc}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CacheEntryError):
            raise
        raise CacheEntryError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if arrays["key"].shape != () or str(arrays["key"]) != key:
        raise CacheEntryError("its stored key differs from the file name's features and k")
    nbr, val = arrays["neighbours"], arrays["values"]
    if nbr.shape != (n, k) or val.shape != (n, k):
        raise CacheEntryError(f"shapes {nbr.shape} and {val.shape}, expected ({n}, {k})")
    if not np.issubdtype(nbr.dtype, np.integer) or not np.issubdtype(val.dtype, np.floating):
        raise CacheEntryError(f"dtypes {nbr.dtype} and {val.dtype}, expected integer and float")
    if nbr.size and (nbr.min() < 0 or nbr.max() >= n):
        raise CacheEntryError(f"neighbour indices outside [0, {n})")
    if k > 1 and not (np.diff(nbr, axis=1) > 0).all():
        raise CacheEntryError("a row's neighbours are repeated or not ascending")
    with np.errstate(over="ignore"):
        val = val.astype(np.float32)  # checked after the cast: a finite float64 may overflow float32
    if not np.isfinite(val).all():
        raise CacheEntryError("non-finite values")
    return nbr.astype(np.int64), val


def check_values(features: torch.Tensor, nbr: np.ndarray, val: np.ndarray, relu: bool = True) -> None:
    """:class:`CacheEntryError` unless ``val`` are the eq. 1-3 values of the pairs ``nbr`` of
    ``features`` (recomputed in ``O(N k d)``, far below the search's ``O(N² d)``; a tolerance allows
    for an entry built on another device)."""
    with torch.no_grad():
        nbr_t = torch.from_numpy(nbr).to(features.device)
        want = symmetric_normalize(nbr_t, knn_values(features, nbr_t, relu=relu)).cpu().numpy()
    if not np.allclose(val, want, rtol=1e-4, atol=1e-5):
        raise CacheEntryError("its values are not the similarities of its neighbours")


class KnnGraphCache:
    """``cache(features, k, backend=...)`` returns the normalised kNN graph of eq. 1-3 (a CSR tensor
    on the features' device) with neighbours found by ``backend`` (a name or a
    :class:`~latticerec.graphs.ann.KnnSearch`), from ``folder`` when it was built before."""

    def __init__(self, folder: str | Path | None = None, chunk_size: int | None = None):
        if folder is not None and not str(folder).strip():
            raise ConfigError("--cache-dir: an empty path (give a folder, or leave the option out for "
                              "$LATTICEREC_CACHE or ~/.cache/latticerec)")
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0

    @property
    def graphs_dir(self) -> Path:
        return self.folder / "graphs"

    def check_writable(self) -> None:
        """Prove the cache folder writable (an ``OutputError`` naming it otherwise) and remove the
        stale temporary files of killed writes."""
        check_writable(self.graphs_dir, "kNN graph cache folder")
        remove_stale_temps(self.graphs_dir, older_than=STALE_TEMP_SECONDS)

    def path_for(self, features: torch.Tensor, k: int, backend: str | KnnSearch = "exact") -> Path:
        return self.graphs_dir / f"knn-{graph_key(features, k, backend)}.npz"

    def __call__(self, features: torch.Tensor, k: int, backend: str | KnnSearch = "exact") -> torch.Tensor:
        key = graph_key(features, k, backend)
        path = self.graphs_dir / f"knn-{key}.npz"
        dev = features.device
        if path.exists():
            try:
                nbr, val = read_entry(path, key, features.shape[0], k)
                check_values(features, nbr, val, as_search(backend).relu)
            except CacheEntryError as exc:
                warnings.warn(f"{path}: corrupt kNN graph cache entry ({exc}); rebuilding it",
                              stacklevel=2)
            else:
                self.hits += 1
                return dense_rows_to_csr(torch.from_numpy(nbr).to(dev), torch.from_numpy(val).to(dev))
        self.misses += 1
        with torch.no_grad():
            nbr, val = knn_rows(features, k, self.chunk_size, progress=True, backend=backend)
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), neighbours=nbr.cpu().numpy().astype(np.int32),
                 values=val.cpu().numpy())
        remove_stale_temps(self.graphs_dir, older_than=STALE_TEMP_SECONDS)
        atomic_write_bytes(path, buf.getvalue())
        return dense_rows_to_csr(nbr, val)
