"""Shared by the serving tests: a tiny dataset folder with raw ids and titles, trained and exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_block_dataset

from latticerec.cli import main
from latticerec.datasets.prepare import write_mmrec
from latticerec.io import atomic_write_bytes


def write_blocks_folder(folder: Path) -> Path:
    """The block dataset of conftest in the MMRec layout, with raw ids (``u<i>``, ``item-<i>``) in
    the id mappings and an item table ``blocks.item`` holding titles."""
    ds = make_block_dataset()
    users, items, labels = [], [], []
    for label, mat in enumerate((ds.train, ds.valid, ds.test)):
        u, i = mat.nonzero()
        users.append(u), items.append(i), labels.append(np.full(len(u), label))
    users, items, labels = (np.concatenate(a) for a in (users, items, labels))
    write_mmrec(folder, "blocks", users, items, labels, features=ds.features,
                user_raw=np.asarray([f"u{i}" for i in range(ds.n_users)], dtype=object),
                item_raw=np.asarray([f"item-{i}" for i in range(ds.n_items)], dtype=object))
    table = "item_id:token\ttitle:token_seq\n" + "".join(
        f"item-{i}\tTitle {i}\n" for i in range(ds.n_items))
    atomic_write_bytes(folder / "blocks.item", table.encode())
    return folder


def train_and_export(root: Path, model: str, data: Path, epochs: int = 2) -> Path:
    """Train ``model`` on ``data`` into ``root/<model>-run`` and export it to ``root/<model>``."""
    run, out = root / f"{model}-run", root / model
    args = ["train", "--model", model, "--data", str(data), "--out", str(run), "--quiet",
            "--cache-dir", str(root / "cache")]
    if model != "cb":
        args += ["--epochs", str(epochs), "--set", "embed_dim=16"]
    assert main(args) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    return out
