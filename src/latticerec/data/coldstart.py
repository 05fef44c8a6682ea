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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from latticerec.data.dataset import SPLITS, Dataset, interactions_to_csr
from latticerec.data.prepare import I_MAPPING, U_MAPPING, read_mapping, write_mmrec
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


# --------------------------------------------------------------------------- inductive cold start --
INDUCTIVE_FILE = "inductive.json"
COLD_DIR = "cold"


@dataclass(frozen=True)
class ColdItems:
    """The cold side of an inductive split (``FOLDER/cold/``): cold item ``c`` (a row) has features
    ``features[m][c]`` and raw id ``ids[c]``; ``valid`` / ``test`` are (training users x cold items)
    binary matrices of the cold interactions; ``roles[c]`` is 1 (valid item) or 2 (test item)."""

    features: dict[str, np.ndarray]
    ids: list[str]
    roles: np.ndarray
    valid: sp.csr_matrix
    test: sp.csr_matrix

    def rows(self, split: str) -> np.ndarray:
        """The cold items (rows) of ``split`` ("valid" or "test")."""
        return np.flatnonzero(self.roles == {"valid": 1, "test": 2}[split])


def _raw_ids(dataset: Dataset, mapping: str, index: np.ndarray) -> np.ndarray:
    """Raw ids of the source's indices ``index``: from its id mapping file when it has one, else the
    dataset's ids, else the indices themselves."""
    src = Path(dataset.source) / mapping if dataset.source else None
    if src is not None and src.is_file():
        return read_mapping(src)[index]
    ids = dataset.user_ids if mapping == U_MAPPING else dataset.item_ids
    return (np.asarray(ids, dtype=object)[index] if ids is not None else index).astype(str)


def warm_holdout(users: np.ndarray, rng: np.random.Generator, share: float,
                 min_interactions: int = 3) -> np.ndarray:
    """Labels (0 train, 1 valid, 2 test) of the warm interactions of an inductive split: a random
    ``share`` of the users with at least ``min_interactions`` warm interactions each give one random
    interaction to valid, another such share one to test (users disjoint); all else is training."""
    if not 0 < share < 0.5:
        raise DataError(f"--holdout must lie in (0, 0.5), got {share}")
    counts = np.bincount(users)
    eligible = rng.permutation(np.flatnonzero(counts >= min_interactions))
    n = int(round(share * len(eligible)))
    if n < 1:
        raise DataError(f"only {len(eligible)} users have {min_interactions}+ warm interactions: too few "
                        f"for a hold-out share of {share}")
    order = np.lexsort((rng.random(users.size), users))  # each user's interactions, shuffled
    first = order[np.r_[0, np.flatnonzero(np.diff(users[order])) + 1]]  # one per user
    pick = np.full(counts.size, -1)
    pick[users[first]] = first
    labels = np.zeros(users.size, dtype=np.int64)
    labels[pick[eligible[:n]]] = 1
    labels[pick[eligible[n:2 * n]]] = 2
    return labels


def inductive_cold_start_split(dataset: Dataset, out: str | Path, *, seed: int = 0,
                               fraction: float = 0.2, holdout: float = 0.2,
                               name: str | None = None) -> dict:
    """The inductive cold-start split: the same cold items as :func:`cold_start_split` with the same
    seed, but the training folder ``out`` holds nothing of them (warm items only, re-indexed, and the
    users with a warm interaction); the cold items' features and interactions lie in ``out/cold/``.

    ``out`` is a plain MMRec dataset: its valid and test splits are a small hold-out of warm
    interactions (:func:`warm_holdout`) for early stopping. ``out/cold/`` holds ``<modality>_feat.npy``
    (one row per cold item: the validation items, then the test items), ``cold.inter`` (``userID``
    = the training folder's user index, ``itemID`` = the cold row, ``x_label`` 1 valid / 2 test) and
    ``i_id_mapping.csv`` (raw ids); ``out/inductive.json`` maps every index back to the source."""
    pooled = (dataset.train + dataset.valid + dataset.test).tocoo()
    users, items = pooled.row.astype(np.int64), pooled.col.astype(np.int64)
    labels, valid_items, test_items = cold_start_labels(
        users, items, dataset.n_items, np.random.default_rng(seed), fraction)
    cold = np.concatenate([valid_items, test_items])
    warm = np.setdiff1d(np.arange(dataset.n_items), cold)
    is_warm = labels == 0
    kept_users = np.unique(users[is_warm])
    user_index = np.full(dataset.n_users, -1)
    user_index[kept_users] = np.arange(kept_users.size)
    item_index = np.full(dataset.n_items, -1)
    item_index[warm] = np.arange(warm.size)
    item_index[cold] = np.arange(cold.size)  # cold rows, in the cold folder
    wu, wi = user_index[users[is_warm]], item_index[items[is_warm]]
    warm_labels = warm_holdout(wu, np.random.default_rng([seed, 1]), holdout)
    out = Path(out)
    name = name or f"{dataset.name}-inductive"
    write_mmrec(out, name, wu, wi, warm_labels, features={m: f[warm] for m, f in dataset.features.items()},
                user_raw=_raw_ids(dataset, U_MAPPING, kept_users),
                item_raw=_raw_ids(dataset, I_MAPPING, warm), raw_names=("user_id", "item_id"))
    on_cold = ~is_warm & (user_index[users] >= 0)
    write_mmrec(out / COLD_DIR, "cold", user_index[users[on_cold]], item_index[items[on_cold]],
                labels[on_cold], features={m: f[cold] for m, f in dataset.features.items()},
                item_raw=_raw_ids(dataset, I_MAPPING, cold), raw_names=("user_id", "item_id"))
    summary = {"source": dataset.source or dataset.name, "seed": seed, "fraction": fraction,
               "holdout": holdout, "n_users": int(kept_users.size), "n_items": int(warm.size),
               "cold_valid": int(valid_items.size), "cold_test": int(test_items.size),
               "source_users": kept_users.tolist(), "source_items": warm.tolist(),
               "source_cold": cold.tolist(),
               "dropped_users": int(dataset.n_users - kept_users.size),
               "dropped_cold_interactions": int((~is_warm).sum() - on_cold.sum()),
               "item_graphs_dropped": sorted(dataset.item_graphs)}
    atomic_write_json(out / INDUCTIVE_FILE, summary)
    return {"out": str(out), "users": summary["n_users"], "warm_items": summary["n_items"],
            "cold_valid_items": len(valid_items), "cold_test_items": len(test_items),
            **{f"{s}_interactions": int((warm_labels == k).sum()) for k, s in enumerate(SPLITS)},
            "cold_valid_interactions": int((labels[on_cold] == 1).sum()),
            "cold_test_interactions": int((labels[on_cold] == 2).sum()),
            "dropped_users": summary["dropped_users"]}


def read_inductive_cold(folder: str | Path, n_users: int) -> ColdItems:
    """The cold side of an inductive split in ``folder`` (``folder/cold/``), checked: ids in range,
    no duplicate pair, labels 1/2, each cold item in one split only, finite features of one row per
    cold item. ``n_users``: the training folder's number of users."""
    from latticerec.data.readers import _check_duplicates, read_features, read_inter_file

    cold_dir = Path(folder) / COLD_DIR
    path = cold_dir / "cold.inter"
    if not path.is_file():
        raise DataError(f"{folder}: not an inductive cold-start split (no {COLD_DIR}/cold.inter); "
                        "write one with 'latticerec data cold-start ... --inductive'")
    ids = read_mapping(cold_dir / I_MAPPING).astype(str).tolist()
    users, items, labels, linenos = read_inter_file(path)
    features, n_rows = read_features(cold_dir, len(ids))
    if not features:
        raise DataError(f"{cold_dir}: no <modality>_feat.npy of the cold items")
    for what, arr, bound in (("user", users, n_users), ("item", items, len(ids))):
        bad = np.flatnonzero(arr >= bound)
        if bad.size:
            raise DataError(f"{path}, line {linenos[bad[0]]}: {what} id {arr[bad[0]]} out of range "
                            f"(< {bound})")
    if (labels == 0).any():
        raise DataError(f"{path}, line {linenos[np.argmax(labels == 0)]}: cold interactions are "
                        "valid (1) or test (2), not training (0)")
    _check_duplicates(users, items, labels, linenos, len(ids), path)
    meta = Path(folder) / INDUCTIVE_FILE
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        n_valid, n_test = int(info["cold_valid"]), int(info["cold_test"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta}: unreadable or without 'cold_valid'/'cold_test' ({exc})") from None
    if n_valid < 0 or n_test < 0 or n_valid + n_test != len(ids):
        raise DataError(f"{meta}: cold_valid + cold_test = {n_valid + n_test}, but {cold_dir} holds "
                        f"{len(ids)} cold items")
    roles = np.repeat(np.array([1, 2]), [n_valid, n_test])  # validation items first, then test items
    wrong = np.flatnonzero(roles[items] != labels)
    if wrong.size:
        raise DataError(f"{path}, line {linenos[wrong[0]]}: cold item {items[wrong[0]]} is a "
                        f"{'valid' if roles[items[wrong[0]]] == 1 else 'test'} item (rows 0..{n_valid - 1} "
                        "are validation items, the rest test items)")
    mats = {k: interactions_to_csr(users[labels == k], items[labels == k], n_users, len(ids))
            for k in (1, 2)}
    return ColdItems(features=features, ids=ids, roles=roles, valid=mats[1], test=mats[2])
