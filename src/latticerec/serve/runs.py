"""Load a saved run (its config, dataset and best weights) to evaluate or export it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from latticerec.data.dataset import Dataset
from latticerec.data.readers import load_dataset
from latticerec.models.base import Recommender
from latticerec.train.build import RunConfig, build_model, config_from_dict
from latticerec.train.rundir import RunDir

RUN_CONFIG = RunDir.CONFIG
METRICS = RunDir.METRICS


@dataclass
class LoadedRun:
    run: RunConfig
    dataset: Dataset
    model: Recommender
    meta: dict
    run_dir: RunDir
    best: dict  # the best-weights file's fields other than the weights (e.g. "epoch")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             cache_dir: str | Path | None = None) -> LoadedRun:
    """Rebuild a trained run's model (initial kNN graphs from the disk cache) with its best weights
    (read with ``weights_only=True``: a run folder never executes code)."""
    from latticerec.graphs.cache import KnnGraphCache

    rd = RunDir(run_dir)
    meta = rd.read_config()
    run = config_from_dict(meta["config"])
    dataset = load_dataset(meta["data"])
    model = build_model(run, dataset, device, KnnGraphCache(cache_dir))
    state = rd.load_best(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(run=run, dataset=dataset, model=model, meta=meta, run_dir=rd,
                     best={k: v for k, v in state.items() if k != "model"})
