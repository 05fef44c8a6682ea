"""The training loop: BPR mini-batches, periodic validation, early stopping, checkpoints, resume.

:func:`fit` reads as its steps: set seeds, (maybe) ``restore`` a checkpoint, then repeat
``train_epoch`` (sample batches, step Adam) and, every ``eval_every`` epochs,
``evaluate_and_checkpoint`` (valid metrics; keep the best state by valid Recall@20; stop after
``patience`` evaluations without improvement), and ``finish``: the test metrics of the best-valid
state, overall and per user. The test split is never looked at before that.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from latticerec.config import TrainConfig, to_dict
from latticerec.data.dataset import Dataset
from latticerec.errors import RunError, TrainingError
from latticerec.evaluate.ranking import evaluate_ranking, evaluated_users
from latticerec.models.base import Recommender
from latticerec.train.distributed import Dist, share
from latticerec.train.rundir import (
    STOPPING_KEYS,
    RunDir,
    as_run_dir,
    check_weights,
    read_run_config,
    run_identity,
    same_identity,
)
from latticerec.train.sampling import BPRSampler, UserUniformSampler
from latticerec.train.schedule import learning_rate, set_learning_rate


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


def resumable_config(cfg: TrainConfig) -> dict:
    """The training config without its stopping rule: what must match for a resume."""
    return {k: v for k, v in to_dict(cfg).items() if k not in STOPPING_KEYS}


def adam(params: list, lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where this torch supports it (CPU since torch 2.4, and
    CUDA): the same update as the default per-parameter loop, 13x faster on Baby's ~2M parameters
    on one CPU thread (1.8 vs 23 ms a step; ``benchmarks/profile_epoch.py``)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # an older torch or an unsupported device
        return torch.optim.Adam(params, lr=lr)


def sampled_users(target: sp.csr_matrix, n: int, seed: int) -> sp.csr_matrix:
    """``target`` with only the rows of ``n`` of its evaluated users (a uniform sample without
    replacement, drawn from ``seed``, so every call picks the same users); all of them when ``n``
    is 0 or at least their number."""
    users = evaluated_users(target)
    if n <= 0 or n >= users.size:
        return target
    keep = np.zeros(target.shape[0])
    keep[np.random.default_rng(seed).choice(users, size=n, replace=False)] = 1.0
    return sp.csr_matrix(sp.diags(keep) @ sp.csr_matrix(target))


def evaluate_split(model: Recommender, dataset: Dataset, split: str, cfg: TrainConfig,
                   progress: bool = False, rank_all: bool = False, per_user: bool = False,
                   dist: Dist | None = None):
    """Full-ranking metrics on ``split``; training items are masked (and, for the test split, nothing
    else: validation items count as ordinary unobserved items, as in the LATTICE/MICRO protocol).

    On a cold-start split (``dataset.cold_items``) only the split's cold items are ranked, unless
    ``rank_all`` (or the dataset's ``rank_cold`` is False). With ``per_user`` returns
    ``(means, per-user arrays)`` (see :func:`~latticerec.evaluate.ranking.evaluate_ranking`).
    With ``dist`` each rank ranks its block of the users and rank 0 gathers them: every rank gets
    the means, only rank 0 the per-user arrays (None elsewhere)."""
    if model.factorised:
        users, items = model.full_representations()
    else:  # ItemKNN: scores from ``score_users``; zero-width tensors carry the sizes and the device
        device = next(itertools.chain(model.parameters(), model.buffers())).device
        users, items = (torch.empty(n, 0, device=device) for n in (dataset.n_users, dataset.n_items))
    bar = (lambda it, total: tqdm(it, total=total, desc=f"eval {split}", leave=False)) if progress \
        else None
    target = sampled_users(dataset.split(split), cfg.eval_users, cfg.seed)
    options = dict(exclude=[dataset.train], topk=cfg.topk, ndcg=cfg.ndcg, batch_size=cfg.eval_batch_size,
                   progress=bar, candidates=None if rank_all else dataset.candidates(split),
                   score_fn=None if model.factorised else model.score_users)
    if dist is None:
        return evaluate_ranking(users, items, target, per_user=per_user, **options)
    n_users = evaluated_users(target).size
    _, block = evaluate_ranking(users, items, target, per_user=True,
                                block=share(n_users, dist.rank, dist.world), **options)
    means, arrays = dist.gather_user_metrics(n_users, block)
    return (means, arrays) if per_user else means


class _Loop:
    """One training run's moving parts; :func:`fit` calls its steps in order."""

    def __init__(self, model: Recommender, dataset: Dataset, cfg: TrainConfig, run_dir: RunDir | None,
                 extra: dict | None, progress: bool, dist: Dist | None = None):
        self.model, self.dataset, self.cfg, self.run_dir = model, dataset, cfg, run_dir
        self.dist = dist  # None: one process; else this rank (only rank 0 has a run_dir)
        self.extra = dict(extra or {})
        if run_dir is not None:  # what a resume must find unchanged
            self.extra.update(dataset_hash=dataset.content_hash(), train_config=resumable_config(cfg))
            if run_dir.has_config():  # the model (and its config) the weights belong to
                meta = run_dir.read_config()
                read_run_config(run_dir, meta)  # a malformed config.json: an error naming it
                self.extra["run_config"] = run_identity(meta["config"])
        self.progress = progress
        self.device = next(itertools.chain(model.parameters(), model.buffers())).device
        self.state = TrainState()
        self.trainable = any(p.requires_grad for p in model.parameters())
        self.best_weights = copy.deepcopy(model.state_dict())
        if self.trainable:
            self.params = list(model.parameters())
            self.optimizer = adam(self.params, cfg.lr)
            sampler_cls = UserUniformSampler if cfg.sampler == "user" else BPRSampler
            self.sampler = sampler_cls(dataset.train, seed=cfg.seed)
        for module in model.modules():  # a wrapping model's backbone too
            if isinstance(module, Recommender):
                module.reg_on = cfg.reg_on
                module.rank_loss, module.rank_tau = cfg.rank_loss, float(cfg.rank_tau)

    def running(self) -> bool:
        return self.trainable and self.state.epoch < self.cfg.epochs and not self.state.stopped_early

    # -- restore ---------------------------------------------------------------------------------
    def restore(self, log) -> None:
        """Continue from ``checkpoint.pt``, after checking that it belongs to this data and config
        and that ``best.pt`` is the checkpoint's best epoch."""
        rd = self.run_dir
        if rd is None:
            raise RunError("--resume needs a run folder (out_dir)")
        if not self.trainable:
            return  # nothing to continue: evaluated as built
        ckpt = rd.load_checkpoint(self.device)
        where = rd.file(rd.CHECKPOINT)
        if "dataset_hash" not in ckpt or "best_model" not in ckpt:
            raise RunError(f"--resume: {where} was written by an older latticerec (no dataset hash "
                           "or best weights), so the resume cannot be checked; start again with "
                           "--overwrite")
        if ckpt["dataset_hash"] != self.extra["dataset_hash"]:
            raise RunError(f"--resume: {where} was trained on other data (dataset content hash "
                           f"{str(ckpt['dataset_hash'])[:12]}..., now "
                           f"{self.extra['dataset_hash'][:12]}...); resume with the original data")
        saved_config = ckpt.get("train_config")
        if isinstance(saved_config, dict):  # options added since the checkpoint: their defaults
            saved_config = {**resumable_config(TrainConfig()), **saved_config}
        if saved_config != self.extra["train_config"]:
            raise RunError(f"--resume: {where} was trained with another training config "
                           f"({ckpt.get('train_config')}); only epochs and patience may change")
        if "run_config" in ckpt and "run_config" in self.extra \
                and not same_identity(ckpt["run_config"], self.extra["run_config"]):
            raise RunError(f"--resume: {where} was trained with another model or model config than "
                           f"the run of {rd.file(rd.CONFIG)}; start again with --overwrite")
        current = self.model.state_dict()
        for key, what in (("model", "weights"), ("best_model", "best weights")):
            check_weights(ckpt.get(key), current, f"--resume: {where}: its {what}")
        state = _checked_state(ckpt.get("state"), f"--resume: {where}")
        self._check_optimizer(ckpt.get("optimizer"), f"--resume: {where}")
        try:
            self._load_weights(ckpt["model"], where)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            best_weights = ckpt["best_model"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunError(f"--resume: {where} is not a complete latticerec checkpoint "
                           f"({type(exc).__name__}: {exc})") from None
        self.state, self.best_weights = state, best_weights
        self._check_best(rd.load_best(self.device) if rd.has_best() else {}, log)
        # the stopping rule is re-read: a run stopped by ``patience`` (or ``epochs``) continues when
        # resumed with a larger one, exactly as if it had been trained with it from the start
        state.stopped_early = state.bad_evals >= self.cfg.patience
        log(f"resumed from {where} after epoch {state.epoch}")

    def restore_everywhere(self, log) -> None:
        """:meth:`restore` on rank 0, from its run folder; the other ranks receive its state."""
        dist = self.dist
        dist.together(lambda: self.restore(log) if dist.is_main else None)
        if not self.trainable:
            return
        payload = dist.broadcast_state({"model": self.model.state_dict(), "best_model": self.best_weights,
                                        "optimizer": self.optimizer.state_dict(),
                                        "state": asdict(self.state)} if dist.is_main else None)
        if not dist.is_main:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.best_weights, self.state = payload["best_model"], TrainState(**payload["state"])

    def _check_optimizer(self, saved, where: str) -> None:
        """Adam's saved state must be of these parameters (one entry per parameter index, each
        moment of its parameter's shape) and finite; ``load_state_dict`` checks neither."""
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
                or not isinstance(saved.get("param_groups"), list):
            raise RunError(f"{where}: no optimizer state (expected 'state' and 'param_groups')")
        for index, entry in saved["state"].items():
            if isinstance(index, bool) or not isinstance(index, int) \
                    or not 0 <= index < len(self.params) or not isinstance(entry, dict):
                raise RunError(f"{where}: optimizer state of parameter {index!r}, which this model "
                               f"does not have ({len(self.params)} parameters)")
            for name, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if name != "step" and value.shape != self.params[index].shape:
                    raise RunError(f"{where}: optimizer {name!r} of parameter {index} has shape "
                                   f"{tuple(value.shape)}, the parameter {tuple(self.params[index].shape)}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise RunError(f"{where}: optimizer {name!r} of parameter {index} holds NaN or "
                                   "infinite values")

    def _check_best(self, best: dict, log) -> None:
        """``best.pt`` must be the checkpoint's best epoch. The checkpoint is written first, so a
        process killed between the two writes leaves an older ``best.pt`` of the same data: it is
        rewritten from the checkpoint's copy. Anything else means files of different runs."""
        rd, epoch = self.run_dir, best.get("epoch")
        same_data = best.get("dataset_hash") == self.extra["dataset_hash"]
        if best and "run_config" in best and "run_config" in self.extra \
                and not same_identity(best["run_config"], self.extra["run_config"]):
            raise RunError(f"--resume: {rd.file(rd.BEST)} holds the weights of another model config "
                           f"than {rd.file(rd.CONFIG)}: the files come from different runs; start "
                           "again with --overwrite")
        if epoch == self.state.best_epoch and same_data:
            weights = best.get("model")
            if isinstance(weights, dict) and weights.keys() == self.best_weights.keys() and all(
                    isinstance(weights[k], torch.Tensor) and weights[k].shape == v.shape
                    and weights[k].dtype == v.dtype and torch.equal(weights[k], v)
                    for k, v in self.best_weights.items()):
                return
            raise RunError(f"--resume: {rd.file(rd.BEST)} holds epoch {epoch}, the checkpoint's best, "
                           "but not the checkpoint's best weights (the file was altered); start "
                           "again with --overwrite")
        if same_data and isinstance(epoch, int) and epoch < self.state.best_epoch or not best:
            log(f"{rd.file(rd.BEST)}: behind the checkpoint (epoch {epoch}, checkpoint's best "
                f"{self.state.best_epoch}; an interrupted write): rewritten from the checkpoint")
            self._save_best()
            return
        raise RunError(f"--resume: {rd.file(rd.BEST)} holds epoch {epoch} of "
                       f"{'this' if same_data else 'other'} data but the checkpoint's best epoch is "
                       f"{self.state.best_epoch}: the files come from different runs; start again "
                       "with --overwrite")

    def _load_weights(self, weights: dict, where: Path) -> None:
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            raise RunError(f"{where}: the weights do not fit this model (another model config?): "
                           f"{str(exc).splitlines()[0]}") from None

    # -- train_epoch -----------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """One pass of BPR mini-batches; returns the epoch's history record."""
        epoch, cfg, model, dev = self.state.epoch, self.cfg, self.model, self.device
        start = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        model.train()
        # the lr is a function of the epoch alone: a resumed run needs no scheduler state
        set_learning_rate(self.optimizer, learning_rate(cfg.lr, epoch, cfg.lr_schedule))
        model.on_epoch_start(epoch)
        set_to_none = cfg.zero_grad == "none"
        totals: dict[str, float] = {}
        n_batches = 0
        for batch in self.sampler.epoch(epoch, cfg.batch_size):
            weight = 1.0  # this rank's share of the global batch (distributed.py)
            if self.dist is not None:
                batch, weight = self.dist.local_batch(*batch)
            users, pos, neg = (torch.as_tensor(a, device=dev) for a in batch)
            try:
                terms = model.loss(users, pos, neg)
            except TrainingError as exc:  # a model that finds itself diverged (a learned graph)
                raise TrainingError(f"epoch {epoch}: {exc}") from None
            loss = sum(terms.values())
            if self.dist is None:
                _check_finite(epoch, loss, terms)
            self.optimizer.zero_grad(set_to_none=set_to_none)
            (loss if weight == 1.0 else loss * weight).backward()
            if self.dist is None:
                values = {k: float(v.detach()) for k, v in terms.items()}
            else:  # the global batch's gradients and terms, the same on every rank
                values = self.dist.reduce_gradients(self.params, {k: v * weight for k, v in terms.items()})
                _check_finite(epoch, torch.tensor(sum(values.values())), values)
            self.optimizer.step()
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
            n_batches += 1
        seconds = time.perf_counter() - start
        self.state.train_seconds += seconds
        self.state.epoch = epoch + 1
        return {"epoch": epoch + 1, "seconds": round(seconds, 3),
                **{f"loss_{k}": v / n_batches for k, v in totals.items()}}

    def due_for_evaluation(self) -> bool:
        every = self.cfg.eval_every
        return self.state.epoch % every == self.cfg.eval_phase % every or self.state.epoch == self.cfg.epochs

    # -- evaluate_and_checkpoint -----------------------------------------------------------------
    def evaluate_and_checkpoint(self, record: dict) -> dict:
        """Valid metrics; on improvement keep the weights (``best.pt``), else count towards
        ``patience``; then write ``checkpoint.pt`` (which carries the best weights too, so a resume
        never mixes epochs)."""
        state = self.state
        t_eval = time.perf_counter()
        if self.cfg.rebuild_on_eval:
            self.model.before_evaluation()
        valid = evaluate_split(self.model, self.dataset, "valid", self.cfg, dist=self.dist)
        record.update(eval_seconds=round(time.perf_counter() - t_eval, 3),
                      **{"valid_recall@20": valid["recall@20"], "valid_ndcg@20": valid["ndcg@20"]})
        improved = valid["recall@20"] > state.best_recall
        if improved:
            state.best_recall, state.best_epoch, state.best_valid = (
                valid["recall@20"], state.epoch, valid)
            state.bad_evals = 0
            self.best_weights = copy.deepcopy(self.model.state_dict())
        else:
            state.bad_evals += 1
            state.stopped_early = state.bad_evals >= self.cfg.patience
        state.history.append(record)
        if self.run_dir is not None:
            self.run_dir.save_checkpoint({"model": self.model.state_dict(),
                                          "best_model": self.best_weights,
                                          "optimizer": self.optimizer.state_dict(),
                                          "state": asdict(state), **self.extra})
            if improved:
                self._save_best()
        return valid

    def _save_best(self) -> None:
        self.run_dir.save_best({"model": self.best_weights, "epoch": max(self.state.best_epoch, 0),
                                **self.extra})

    # -- finish ----------------------------------------------------------------------------------
    def finish(self, test: bool = True) -> dict:
        """Test metrics of the best-valid weights (and, in a run folder, per user); with
        ``test=False`` (tuning) the test split is not read and ``"test"`` is empty."""
        state = self.state
        if not self.trainable:  # nothing to train (``cb``): evaluated as built
            self.model.eval()
            state.best_epoch, state.best_valid = 0, evaluate_split(self.model, self.dataset, "valid",
                                                                  self.cfg, dist=self.dist)
            if self.run_dir is not None:
                self._save_best()
        self.model.load_state_dict(self.best_weights)
        if self.cfg.rebuild_on_eval:
            self.model.before_evaluation()
        test, per_user = evaluate_split(self.model, self.dataset, "test", self.cfg, progress=self.progress,
                                        per_user=True, dist=self.dist) if test else ({}, None)
        if self.run_dir is not None and per_user is not None:
            users = per_user.pop("users")
            self.run_dir.write_per_user(users, per_user, state.best_epoch)
        evaluated = {"eval_users": self.cfg.eval_users} if self.cfg.eval_users else {}
        return {
            **evaluated,
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            "train_seconds": round(state.train_seconds, 2),
            "valid": state.best_valid,
            "test": test,
            "history": state.history,
        }


def fit(model: Recommender, dataset: Dataset, cfg: TrainConfig, out_dir: Path | RunDir | None = None,
        resume: bool = False, extra: dict | None = None, log=print, progress: bool = True, *,
        overwrite: bool = False, on_evaluate=None, test: bool = True, dist: Dist | None = None) -> dict:
    """Train ``model`` on ``dataset.train``; returns a result dict (valid and test metrics at the best
    valid epoch). With ``out_dir`` (a path or :class:`RunDir`, locked for the whole call) a checkpoint
    is written at every evaluation, the best weights at every improvement and the per-user test
    metrics at the end; ``resume=True`` continues from its checkpoint. A folder that already holds a
    trained run is refused unless ``resume`` or ``overwrite``. ``on_evaluate(epoch, valid_metrics)`` is
    called after each validation (a tuner reports to its pruner there); ``test=False``: see ``finish``.

    ``dist`` (:func:`latticerec.train.distributed.init`): this process is one rank of a distributed
    run; every rank calls ``fit`` alike, and only rank 0 reads or writes ``out_dir``."""
    run_dir = as_run_dir(out_dir) if dist is None or dist.is_main else None
    progress = progress and (dist is None or dist.is_main)
    with ExitStack() as held:
        def take_folder() -> None:  # locked for the whole call
            if run_dir is not None:
                held.enter_context(run_dir.lock())
                run_dir.prepare(resume, overwrite, names=RunDir.TRAINING_FILES)

        take_folder() if dist is None else dist.together(take_folder)
        return _fit(model, dataset, cfg, run_dir, resume, extra, log, progress, dist, on_evaluate, test)


def _check_finite(epoch: int, loss: torch.Tensor, terms: dict) -> None:
    if not torch.isfinite(loss):
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
        raise TrainingError(f"epoch {epoch}: the loss became {loss.item()} ({values}); lower lr or raise reg")


def _checked_state(raw, where: str) -> TrainState:
    """The loop state saved in a checkpoint, each field of its type and range (a hand-edited or
    corrupt one would otherwise end in a traceback, or silently change the stopping rule)."""
    if not isinstance(raw, dict):
        raise RunError(f"{where}: no loop state (expected a 'state' dict)")
    unknown = sorted(map(str, set(raw) - {f.name for f in dataclasses.fields(TrainState)}))
    if unknown:
        raise RunError(f"{where}: unknown loop state field(s) {', '.join(unknown)}")
    state = TrainState(**raw)

    def count(v, low=0):
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= 10**9

    checks = {
        "epoch": count(state.epoch),
        "best_epoch": count(state.best_epoch, -1)
        and (not count(state.epoch) or state.best_epoch <= state.epoch),
        "best_recall": isinstance(state.best_recall, int | float) and not isinstance(state.best_recall, bool)
        and (state.best_recall == -math.inf or 0 <= state.best_recall <= 1),
        "best_valid": isinstance(state.best_valid, dict),
        "bad_evals": count(state.bad_evals),
        "stopped_early": isinstance(state.stopped_early, bool),
        "train_seconds": isinstance(state.train_seconds, int | float)
        and not isinstance(state.train_seconds, bool) and math.isfinite(state.train_seconds)
        and state.train_seconds >= 0,
        "history": isinstance(state.history, list) and all(isinstance(h, dict) for h in state.history),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        fields = ", ".join(f"{n}={getattr(state, n)!r:.60}" for n in bad)
        raise RunError(f"{where}: malformed loop state: {fields}")
    return state


def _fit(model, dataset, cfg, run_dir, resume, extra, log, progress, dist=None, on_evaluate=None,
         test=True) -> dict:
    seed_everything(cfg.seed)
    loop = _Loop(model, dataset, cfg, run_dir, extra, progress, dist)
    if resume:
        loop.restore(log) if dist is None else loop.restore_everywhere(log)
    first = True
    bar = tqdm(total=cfg.epochs, initial=loop.state.epoch, desc="epochs", dynamic_ncols=True,
               disable=not (progress and loop.trainable))
    while loop.running():
        record = loop.train_epoch()
        if dist is not None and first:  # same parameters, same re-learned graphs: checked once
            dist.check_replicated(model)
        first = False
        if loop.due_for_evaluation():
            valid = loop.evaluate_and_checkpoint(record)
            bar.set_postfix(loss=f"{sum(v for k, v in record.items() if k.startswith('loss_')):.4f}",
                            r20=f"{valid['recall@20']:.4f}", best=f"{loop.state.best_recall:.4f}")
            if on_evaluate is not None:
                on_evaluate(loop.state.epoch, valid)
        else:
            loop.state.history.append(record)
        bar.update(1)
    bar.close()
    return loop.finish(test)
