"""The papers' cold-start split: a share of items (20%) chosen at random lose all their training
interactions; half of them (with all their interactions) form the validation set, the other half the
test set. Every interaction of the other (warm) items is training data.

The split is written in the MMRec layout plus ``cold_items.json``
(``{"valid": [item ids], "test": [item ids], "rank": "cold" | "all", ...}``), which the reader
loads into :attr:`Dataset.candidates`: evaluation then ranks, for each user, only the cold items of
that split (``rank: all`` ranks every item instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from latticerec.data.dataset import SPLITS, Dataset
from latticerec.data.prepare import I_MAPPING, U_MAPPING, write_mmrec
from latticerec.errors import DataError
from latticerec.io import atomic_write_bytes, atomic_write_json

COLD_FILE = "cold_items.json"


def cold_start_labels(users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator,
                      fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (0 train, 1 valid, 2 test) of every interaction, and the valid / test cold items.

    Cold items are drawn among items with at least one interaction: ``round(fraction * n)`` of them,
    the first half (rounded down) for validation, the rest for test.
    """
    if not 0 < fraction < 1:
        raise DataError(f"cold-start fraction must lie in (0, 1), got {fraction}")
    present = np.flatnonzero(np.bincount(items, minlength=n_items) > 0)
    n_cold = int(round(fraction * len(present)))
    if n_cold < 2:
        raise DataError(f"only {len(present)} items have interactions: too few for a cold-start split "
                        f"with fraction {fraction}")
    cold = rng.permutation(present)[:n_cold]
    valid_items = np.sort(cold[: n_cold // 2])
    test_items = np.sort(cold[n_cold // 2:])
    role = np.zeros(n_items, dtype=np.int64)
    role[valid_items] = 1
    role[test_items] = 2
    return role[items], valid_items, test_items


def cold_start_split(dataset: Dataset, out: str | Path, *, seed: int = 0, fraction: float = 0.2,
                     rank: str = "cold", name: str | None = None) -> dict:
    """Write the cold-start split of ``dataset`` (all its interactions pooled) into ``out``, with its
    features, the id mappings of its source folder, and ``cold_items.json``. Returns a summary."""
    if rank not in ("cold", "all"):
        raise DataError(f"rank must be 'cold' or 'all', got {rank!r}")
    pooled = (dataset.train + dataset.valid + dataset.test).tocoo()
    users, items = pooled.row.astype(np.int64), pooled.col.astype(np.int64)
    labels, valid_items, test_items = cold_start_labels(
        users, items, dataset.n_items, np.random.default_rng(seed), fraction)
    out = Path(out)
    name = name or f"{dataset.name}-cold"
    write_mmrec(out, name, users, items, labels, features=dataset.features)
    if dataset.source:
        for mapping in (U_MAPPING, I_MAPPING):
            src = Path(dataset.source) / mapping
            if src.is_file() and src.resolve() != (out / mapping).resolve():
                atomic_write_bytes(out / mapping, src.read_bytes())
    for f in sorted(Path(dataset.source).glob("item_knn*.npz")) if dataset.source else []:
        if f.resolve() != (out / f.name).resolve():
            atomic_write_bytes(out / f.name, f.read_bytes())
    summary = {"source": dataset.source or dataset.name, "seed": seed, "fraction": fraction,
               "rank": rank, "n_items": dataset.n_items,
               "valid": valid_items.tolist(), "test": test_items.tolist()}
    atomic_write_json(out / COLD_FILE, summary)
    counts = {s: int((labels == k).sum()) for k, s in enumerate(SPLITS)}
    return {"out": str(out), "cold_valid_items": len(valid_items), "cold_test_items": len(test_items),
            **{f"{s}_interactions": c for s, c in counts.items()}}


def read_cold_items(folder: Path, n_items: int) -> tuple[dict[str, np.ndarray], str]:
    """Evaluation candidates per split from ``cold_items.json`` ({} when absent), and the rank mode."""
    path = Path(folder) / COLD_FILE
    if not path.is_file():
        return {}, "all"
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected an object with 'valid' and 'test' item id lists")
    rank = obj.get("rank", "cold")
    if rank not in ("cold", "all"):
        raise DataError(f"{path}: 'rank' must be 'cold' or 'all', got {rank!r}")
    out = {}
    for split in ("valid", "test"):
        ids = obj.get(split)
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            raise DataError(f"{path}: {split!r} must be a non-empty list of integer item ids")
        arr = np.asarray(ids, dtype=np.int64)
        if arr.min() < 0 or arr.max() >= n_items:
            raise DataError(f"{path}: {split!r} item ids must lie in [0, {n_items})")
        if np.unique(arr).size != arr.size:
            raise DataError(f"{path}: {split!r} lists an item twice")
        out[split] = arr
    if np.intersect1d(out["valid"], out["test"]).size:
        raise DataError(f"{path}: an item is cold in both 'valid' and 'test'")
    return out, rank
