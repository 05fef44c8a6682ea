"""Load a saved run (its config, dataset and best weights) and recommend from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latticerec.data.dataset import Dataset
from latticerec.data.readers import load_dataset
from latticerec.errors import LatticeRecError
from latticerec.evaluate.ranking import rank_top_k
from latticerec.models.base import Recommender
from latticerec.train.build import RunConfig, build_model, config_from_dict
from latticerec.train.trainer import BEST

RUN_CONFIG = "config.json"
METRICS = "metrics.json"


@dataclass
class LoadedRun:
    run: RunConfig
    dataset: Dataset
    model: Recommender
    meta: dict


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             cache_dir: str | Path | None = None) -> LoadedRun:
    """Rebuild a trained run's model (initial kNN graphs from the disk cache) with its best weights."""
    from latticerec.graphs.cache import KnnGraphCache

    run_dir = Path(run_dir)
    cfg_path = run_dir / RUN_CONFIG
    if not cfg_path.exists():
        raise LatticeRecError(f"{run_dir}: not a run folder (no {RUN_CONFIG}); train one with "
                              "'latticerec train --out DIR'")
    meta = json.loads(cfg_path.read_text())
    run = config_from_dict(meta["config"])
    dataset = load_dataset(meta["data"])
    model = build_model(run, dataset, device, KnnGraphCache(cache_dir))
    if not (run_dir / BEST).exists():
        raise LatticeRecError(f"{run_dir}: no trained weights ({BEST}); the run never evaluated")
    state = torch.load(run_dir / BEST, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(run=run, dataset=dataset, model=model, meta=meta)


def recommend(model: Recommender, dataset: Dataset, user: int, k: int = 20,
              exclude_seen: bool = True) -> list[tuple[int, float]]:
    """Top-``k`` (item index, score) for one user index, training items excluded."""
    users, items = model.full_representations()
    exclude = [dataset.train] if exclude_seen else []
    (_, top, scores), = rank_top_k(users, items, np.array([user]), k, exclude)
    return [(int(i), float(s)) for i, s in zip(top[0].tolist(), scores[0].tolist(), strict=True)
            if np.isfinite(s)]
