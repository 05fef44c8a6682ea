"""Reading cold-start splits: ``cold_items.json`` of a transductive split (evaluation candidates) and
the cold side ``cold/`` of an inductive one. The splits are written by
:mod:`latticerec.datasets.coldstart`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from latticerec.data.dataset import interactions_to_csr
from latticerec.data.jsonfile import read_json
from latticerec.data.mapping import I_MAPPING, read_mapping
from latticerec.errors import DataError

COLD_FILE = "cold_items.json"

def read_cold_items(folder: Path, n_items: int) -> tuple[dict[str, np.ndarray], str]:
    """Evaluation candidates per split from ``cold_items.json`` ({} when absent), and the rank mode."""
    path = Path(folder) / COLD_FILE
    if not path.exists() and not path.is_symlink():
        return {}, "all"
    obj = read_json(path)  # a folder or a symlink loop of this name is an error, not "no cold split"
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
        info = read_json(meta)
        n_valid, n_test = info["cold_valid"], info["cold_test"]
    except (KeyError, TypeError, DataError) as exc:
        raise DataError(f"{meta}: unreadable or without 'cold_valid'/'cold_test' ({exc})") from None
    if type(n_valid) is not int or type(n_test) is not int:  # 478.9 or "478" would be taken as 478
        raise DataError(f"{meta}: 'cold_valid' and 'cold_test' must be integer counts, got "
                        f"{n_valid!r} and {n_test!r}")
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
