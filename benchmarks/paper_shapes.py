"""Shared by the speed benchmarks: a real dataset's interactions with seeded random features of the
LATTICE/MICRO papers' shapes (image 4096-d, text 1024-d), and the trainer's optimiser (plain Adam in
a source tree from before ``train.trainer.adam`` existed, for before/after runs)."""

from __future__ import annotations

import dataclasses

SHAPES = {"image": 4096, "text": 1024}


def with_paper_features(path):
    """The dataset at ``path`` with random float32 features of :data:`SHAPES` (seed 0), no item graphs."""
    import numpy as np

    from latticerec.data.readers import load_dataset

    ds = load_dataset(path)
    rng = np.random.default_rng(0)
    feats = {m: rng.standard_normal((ds.n_items, d), dtype=np.float32) for m, d in SHAPES.items()}
    return dataclasses.replace(ds, features=feats, item_graphs={})


def prepared(path, threads: int | None = None, real: bool = False):
    """:func:`with_paper_features` of ``path`` (``real``: the dataset as it is, its own features)
    with ``threads`` torch threads (None: torch's choice); None, after saying so, when the dataset
    is absent."""
    from pathlib import Path

    import torch

    from latticerec.data.readers import load_dataset

    if not Path(path).exists():
        print(f"skip: {path} is absent")
        return None
    if threads:
        torch.set_num_threads(threads)
    return load_dataset(path) if real else with_paper_features(path)


def optimiser(params, lr: float):
    """``train.trainer.adam`` where the tree has it, else ``torch.optim.Adam``."""
    import torch

    try:
        from latticerec.train.trainer import adam
    except ImportError:
        return torch.optim.Adam(params, lr=lr)
    return adam(params, lr)


def describe_features(ds) -> str:
    """``"image 4096-d, text 1024-d"``: a dataset's modalities and widths, for a benchmark's output."""
    return ", ".join(f"{m} {f.shape[1]}-d" for m, f in ds.features.items()) or "no features"
