"""The training loop: BPR mini-batches, periodic validation, early stopping, checkpoints, resume.

Read top to bottom: set seeds, (maybe) restore a checkpoint, then for each epoch sample batches,
step Adam, evaluate on the validation split every ``eval_every`` epochs, keep the best state by valid
Recall@20, stop after ``patience`` evaluations without improvement, and finally report the test
metrics of the best-valid state. The test split is never looked at before that.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latticerec.config import TrainConfig
from latticerec.data.dataset import Dataset
from latticerec.evaluate.ranking import evaluate_ranking
from latticerec.io import atomic_torch_save
from latticerec.models.base import Recommender
from latticerec.train.sampling import BPRSampler

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class TrainState:
    """Everything besides weights that a resumed run needs to continue identically."""

    epoch: int = 0  # epochs completed
    best_epoch: int = -1
    best_recall: float = -math.inf
    best_valid: dict = field(default_factory=dict)
    bad_evals: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_split(model: Recommender, dataset: Dataset, split: str, cfg: TrainConfig,
                   progress: bool = False, rank_all: bool = False) -> dict[str, float]:
    """Full-ranking metrics on ``split``; training items are masked (and, for the test split, nothing
    else: validation items count as ordinary unobserved items, as in the LATTICE/MICRO protocol).

    On a cold-start split (``dataset.cold_items``) only the split's cold items are ranked, unless
    ``rank_all`` (or the dataset's ``rank_cold`` is False)."""
    users, items = model.full_representations()
    bar = (lambda it, total: tqdm(it, total=total, desc=f"eval {split}", leave=False)) if progress \
        else None
    return evaluate_ranking(users, items, dataset.split(split), exclude=[dataset.train],
                            topk=cfg.topk, ndcg=cfg.ndcg, batch_size=cfg.eval_batch_size,
                            progress=bar, candidates=None if rank_all else dataset.candidates(split))


def _save(out_dir: Path | None, name: str, payload: dict) -> None:
    if out_dir is not None:
        atomic_torch_save(out_dir / name, payload)


def _evaluate_untrained(model: Recommender, dataset: Dataset, cfg: TrainConfig, out_dir: Path | None,
                        extra: dict | None, progress: bool) -> dict:
    """A model with nothing to train (``cb``): evaluated as built; ``best.pt`` holds its state so
    ``evaluate`` and ``recommend`` work on the run folder."""
    model.eval()
    valid = evaluate_split(model, dataset, "valid", cfg)
    _save(out_dir, BEST, {"model": model.state_dict(), "epoch": 0, **(extra or {})})
    test = evaluate_split(model, dataset, "test", cfg, progress=progress)
    return {"best_epoch": 0, "epochs_run": 0, "stopped_early": False, "train_seconds": 0.0,
            "valid": valid, "test": test, "history": []}


def fit(model: Recommender, dataset: Dataset, cfg: TrainConfig, out_dir: Path | None = None,
        resume: bool = False, extra: dict | None = None, log=print,
        progress: bool = True) -> dict:
    """Train ``model`` on ``dataset.train``; returns a result dict (valid and test metrics at the best
    valid epoch). With ``out_dir`` a checkpoint is written at every evaluation and the best weights at
    every improvement; ``resume=True`` continues from ``out_dir/checkpoint.pt``."""
    out_dir = Path(out_dir) if out_dir is not None else None
    seed_everything(cfg.seed)
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    if not any(p.requires_grad for p in model.parameters()):
        return _evaluate_untrained(model, dataset, cfg, out_dir, extra, progress)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = BPRSampler(dataset.train, seed=cfg.seed)
    state = TrainState()
    best_weights = copy.deepcopy(model.state_dict())

    if resume:
        if out_dir is None or not (out_dir / CHECKPOINT).exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out_dir}/{CHECKPOINT}")
        ckpt = torch.load(out_dir / CHECKPOINT, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        # the stopping rule is re-read: a run stopped by ``patience`` (or ``epochs``) continues when
        # resumed with a larger one, exactly as if it had been trained with it from the start
        state.stopped_early = state.bad_evals >= cfg.patience
        best_weights = torch.load(out_dir / BEST, map_location=device, weights_only=False)["model"]
        log(f"resumed from {out_dir / CHECKPOINT} after epoch {state.epoch}")

    bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="epochs", disable=not progress,
               dynamic_ncols=True)
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch
        start = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        model.train()
        model.on_epoch_start(epoch)
        totals: dict[str, float] = {}
        n_batches = 0
        for users, pos, neg in sampler.epoch(epoch, cfg.batch_size):
            terms = model.loss(torch.as_tensor(users, device=device),
                               torch.as_tensor(pos, device=device),
                               torch.as_tensor(neg, device=device))
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}: the loss became {loss.item()} "
                    f"({ {k: float(v) for k, v in terms.items()} }); lower lr or raise reg"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            n_batches += 1
        state.train_seconds += time.perf_counter() - start
        state.epoch = epoch + 1
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 3),
                  **{f"loss_{k}": v / n_batches for k, v in totals.items()}}
        last = state.epoch == cfg.epochs
        if state.epoch % cfg.eval_every == 0 or last:
            t_eval = time.perf_counter()
            valid = evaluate_split(model, dataset, "valid", cfg)
            record["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
            record["valid_recall@20"] = valid["recall@20"]
            record["valid_ndcg@20"] = valid["ndcg@20"]
            if valid["recall@20"] > state.best_recall:
                state.best_recall, state.best_epoch, state.best_valid = (
                    valid["recall@20"], state.epoch, valid)
                state.bad_evals = 0
                best_weights = copy.deepcopy(model.state_dict())
                _save(out_dir, BEST, {"model": best_weights, "epoch": state.epoch, **(extra or {})})
            else:
                state.bad_evals += 1
                state.stopped_early = state.bad_evals >= cfg.patience
            state.history.append(record)
            _save(out_dir, CHECKPOINT, {"model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(),
                                        "state": state.__dict__, **(extra or {})})
            bar.set_postfix(loss=f"{sum(totals.values()) / n_batches:.4f}",
                            r20=f"{valid['recall@20']:.4f}", best=f"{state.best_recall:.4f}")
        else:
            state.history.append(record)
        bar.update(1)
    bar.close()

    model.load_state_dict(best_weights)
    test = evaluate_split(model, dataset, "test", cfg, progress=progress)
    return {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "valid": state.best_valid,
        "test": test,
        "history": state.history,
    }
