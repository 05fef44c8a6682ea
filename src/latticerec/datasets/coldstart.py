"""The papers' cold-start split: a share of items (20%) chosen at random lose all their training
interactions; half of them (with all their interactions) form the validation set, the other half the
test set. Every interaction of the other (warm) items is training data.

The split is written in the MMRec layout plus ``cold_items.json``
(``{"valid": [item ids], "test": [item ids], "rank": "cold" | "all", ...}``), which the reader
loads into :attr:`Dataset.candidates`: evaluation then ranks, for each user, only the cold items of
that split (``rank: all`` ranks every item instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latticerec.data.cold import COLD_DIR, COLD_FILE, INDUCTIVE_FILE
from latticerec.data.dataset import SPLITS, Dataset
from latticerec.data.mapping import I_MAPPING, U_MAPPING, read_mapping
from latticerec.datasets.prepare import write_mmrec
from latticerec.datasets.staging import staged_folder
from latticerec.errors import DataError
from latticerec.io import atomic_write_bytes, atomic_write_json


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
    with staged_folder(out, [dataset.source]) as tmp:
        pooled = (dataset.train + dataset.valid + dataset.test).tocoo()
        users, items = pooled.row.astype(np.int64), pooled.col.astype(np.int64)
        labels, valid_items, test_items = cold_start_labels(
            users, items, dataset.n_items, np.random.default_rng(seed), fraction)
        out = Path(out)
        name = name or f"{dataset.name}-cold"
        summary = {"source": dataset.source or dataset.name, "seed": seed, "fraction": fraction,
                   "rank": rank, "n_items": dataset.n_items,
                   "valid": valid_items.tolist(), "test": test_items.tolist()}
        write_mmrec(tmp, name, users, items, labels, features=dataset.features)
        if dataset.source:
            for mapping in (U_MAPPING, I_MAPPING):
                src = Path(dataset.source) / mapping
                if src.is_file():
                    atomic_write_bytes(tmp / mapping, src.read_bytes())
        for f in sorted(Path(dataset.source).glob("item_knn*.npz")) if dataset.source else []:
            atomic_write_bytes(tmp / f.name, f.read_bytes())
        atomic_write_json(tmp / COLD_FILE, summary)
        counts = {s: int((labels == k).sum()) for k, s in enumerate(SPLITS)}
        return {"out": str(out), "cold_valid_items": len(valid_items), "cold_test_items": len(test_items),
                **{f"{s}_interactions": c for s, c in counts.items()}}




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
    with staged_folder(out, [dataset.source]) as tmp:
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
        on_cold = ~is_warm & (user_index[users] >= 0)
        summary = {"source": dataset.source or dataset.name, "seed": seed, "fraction": fraction,
                   "holdout": holdout, "n_users": int(kept_users.size), "n_items": int(warm.size),
                   "cold_valid": int(valid_items.size), "cold_test": int(test_items.size),
                   "source_users": kept_users.tolist(), "source_items": warm.tolist(),
                   "source_cold": cold.tolist(),
                   "dropped_users": int(dataset.n_users - kept_users.size),
                   "dropped_cold_interactions": int((~is_warm).sum() - on_cold.sum()),
                   "item_graphs_dropped": sorted(dataset.item_graphs)}
        write_mmrec(tmp, name, wu, wi, warm_labels,
                    features={m: f[warm] for m, f in dataset.features.items()},
                    user_raw=_raw_ids(dataset, U_MAPPING, kept_users),
                    item_raw=_raw_ids(dataset, I_MAPPING, warm), raw_names=("user_id", "item_id"))
        write_mmrec(tmp / COLD_DIR, "cold", user_index[users[on_cold]], item_index[items[on_cold]],
                    labels[on_cold], features={m: f[cold] for m, f in dataset.features.items()},
                    item_raw=_raw_ids(dataset, I_MAPPING, cold), raw_names=("user_id", "item_id"))
        atomic_write_json(tmp / INDUCTIVE_FILE, summary)
        return {"out": str(out), "users": summary["n_users"], "warm_items": summary["n_items"],
                "cold_valid_items": len(valid_items), "cold_test_items": len(test_items),
                **{f"{s}_interactions": int((warm_labels == k).sum()) for k, s in enumerate(SPLITS)},
                "cold_valid_interactions": int((labels[on_cold] == 1).sum()),
                "cold_test_interactions": int((labels[on_cold] == 2).sum()),
                "dropped_users": summary["dropped_users"]}
