"""The in-memory dataset: interaction splits as sparse CSR matrices plus item features by modality."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from latticerec.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Dataset:
    """Users x items interactions (train/valid/test CSR, binary) and item features.

    ``features`` maps a modality name (``image``, ``text``, ``audio``, any name) to a float32 array of
    shape ``(n_items, d_m)``. ``item_graphs`` maps a name to a precomputed item-item graph given as an
    ``(E, 2)`` int array of (item, neighbour) pairs. ``user_ids``/``item_ids`` hold the raw id of each
    internal index (as strings), so results can be reported in the ids of the source files.
    ``cold_items`` maps ``valid``/``test`` to the cold items of a cold-start split (see
    :mod:`latticerec.datasets.coldstart`); with ``rank_cold`` evaluation ranks only those items.
    """

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    item_graphs: dict[str, np.ndarray] = field(default_factory=dict)
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    source: str = ""
    cold_items: dict[str, np.ndarray] = field(default_factory=dict)
    rank_cold: bool = True

    def candidates(self, split: str) -> np.ndarray | None:
        """Items ranked when evaluating ``split``: its cold items in a cold-start split (unless
        ``rank_cold`` is False), else None (every item)."""
        return self.cold_items.get(split) if self.rank_cold else None

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def raw_user_id(self, index: int) -> str:
        return str(index) if self.user_ids is None else str(self.user_ids[index])

    def raw_item_id(self, index: int) -> str:
        return str(index) if self.item_ids is None else str(self.item_ids[index])

    def user_index(self, raw: str | int) -> int:
        """Internal index of a user given its raw id (as in the source files)."""
        if self.user_ids is None:
            try:
                idx = int(raw)
            except ValueError:
                raise DataError(f"user {raw!r} is not an integer id") from None
        else:
            hits = np.flatnonzero(self.user_ids.astype(str) == str(raw))
            if hits.size == 0:
                raise DataError(f"user {raw!r} is not in dataset {self.name!r}")
            idx = int(hits[0])
        if not 0 <= idx < self.n_users:
            raise DataError(f"user {raw!r} out of range: dataset {self.name!r} has {self.n_users} users")
        return idx

    def content_hash(self) -> str:
        """SHA-256 (hex) of what a model learns from: the three interaction matrices, the features,
        the precomputed item graphs and the cold items, each with its name, shape and dtype. Names,
        paths and raw ids do not count; the same data under another folder has the same hash."""
        h = hashlib.sha256(b"latticerec-dataset-v1")

        def add(label: str, arr: np.ndarray, dtype) -> None:
            arr = np.ascontiguousarray(arr, dtype=dtype)
            h.update(f"|{label}|{arr.shape}|{arr.dtype.str}|".encode())
            if arr.size:  # a view with a zero in its shape cannot be cast to bytes (and holds none)
                h.update(memoryview(arr).cast("B"))

        for name in SPLITS:
            mat = sp.csr_matrix(self.split(name))
            mat.sort_indices()
            add(f"{name}.shape", np.asarray(mat.shape), np.int64)
            add(f"{name}.indptr", mat.indptr, np.int64)
            add(f"{name}.indices", mat.indices, np.int64)
            add(f"{name}.data", mat.data, np.float32)
        for label, group, dtype in (("feature", self.features, np.float32),
                                    ("graph", self.item_graphs, np.int64),
                                    ("cold", self.cold_items, np.int64)):
            for key in sorted(group):
                add(f"{label}:{key}", group[key], dtype)
        h.update(f"|rank_cold={self.rank_cold}".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        n_inter = sum(int(self.split(s).nnz) for s in SPLITS)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            **{f"{s}_interactions": int(self.split(s).nnz) for s in SPLITS},
            "density": n_inter / max(1, self.n_users * self.n_items),
            "features": {m: list(f.shape) for m, f in self.features.items()},
            "item_graphs": {g: int(p.shape[0]) for g, p in self.item_graphs.items()},
            **({"cold_items": {s: int(len(v)) for s, v in self.cold_items.items()},
                "rank": "cold" if self.rank_cold else "all"} if self.cold_items else {}),
        }


def interactions_to_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR matrix from (user, item) index arrays (caller has removed duplicates)."""
    data = np.ones(len(users), dtype=np.float32)
    mat = sp.csr_matrix((data, (users, items)), shape=(n_users, n_items), dtype=np.float32)
    mat.sum_duplicates()
    mat.data[:] = 1.0
    mat.sort_indices()
    return mat


def _nonfinite_rows(feat: np.ndarray, block: int = 2**16) -> np.ndarray:
    """Row indices of ``feat`` holding NaN or inf, checked ``block`` rows at a time (the mask of a
    whole 1M x 512 matrix would be another 512 MB)."""
    bad = [s + np.flatnonzero(~np.isfinite(feat[s:s + block]).all(axis=1))
           for s in range(0, feat.shape[0], block)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def check_features(features: dict[str, np.ndarray], n_items: int, where: str) -> dict[str, np.ndarray]:
    """Validate feature matrices: 2-D, one row per item, finite; returns them as float32 (the same
    array when it is float32 already: callers must not modify it in place)."""
    out = {}
    for name, feat in features.items():
        src = f"{where}: modality {name!r}"
        feat = np.asarray(feat)
        if feat.ndim != 2:
            raise DataError(f"{src}: features must be a 2-D array (items x dims), got shape {feat.shape}")
        if feat.shape[0] != n_items:
            raise DataError(
                f"{src}: has {feat.shape[0]} feature rows but the dataset has {n_items} items "
                "(row i must hold the features of item id i)"
            )
        if feat.dtype.kind not in "iuf":  # complex would lose its imaginary part, timedelta its unit
            raise DataError(f"{src}: features must be numeric (a float or int dtype), got dtype {feat.dtype}")
        if feat.shape[1] == 0:
            raise DataError(f"{src}: features have 0 columns (shape {feat.shape}): at least one "
                            "dimension per item is needed")
        feat = feat.astype(np.float32, copy=False)  # no second copy of float32 features
        rows = _nonfinite_rows(feat)
        if rows.size:
            raise DataError(
                f"{src}: {len(rows)} feature rows contain NaN or inf (first item ids: "
                f"{', '.join(map(str, rows[:5]))})"
            )
        out[name] = feat
    return out


def validate_splits(train: sp.csr_matrix, valid: sp.csr_matrix, test: sp.csr_matrix, where: str) -> None:
    """Empty splits are errors; train users without interactions are warned about and counted;
    a (user, item) pair present in two splits is an error (it would leak the answer)."""
    for name, mat in (("train", train), ("valid", valid), ("test", test)):
        if mat.nnz == 0:
            raise DataError(f"{where}: the {name} split is empty")
    for a_name, a, b_name, b in (("train", train, "valid", valid), ("train", train, "test", test),
                                 ("valid", valid, "test", test)):
        both = a.multiply(b)
        if both.nnz:
            u, i = both.nonzero()
            raise DataError(
                f"{where}: {both.nnz} (user, item) pairs are in both {a_name} and {b_name}, "
                f"e.g. user {u[0]} item {i[0]}"
            )
    no_train = int((np.diff(train.indptr) == 0).sum())
    if no_train:
        warnings.warn(
            f"{where}: {no_train} of {train.shape[0]} users have no training interactions "
            "(they are still evaluated, with embeddings that are never trained)",
            stacklevel=3,
        )
