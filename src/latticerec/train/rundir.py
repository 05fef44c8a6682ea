"""The run folder: the one place that names a run's files and writes them atomically.

A run folder holds

* ``config.json``   what was trained: ``{"model", "data", "config", "dataset_hash"}``;
* ``metrics.json``  the result: best epoch, valid and test metrics, history;
* ``checkpoint.pt`` the last evaluation's full training state (weights, best weights, optimiser,
  loop state, the dataset's content hash and the training config);
* ``best.pt``       the best-validation weights ``{"model": state_dict, "epoch": N, ...}``;
* ``per_user.npz``  per-user test metrics of the best weights (for paired significance tests);
* ``.lock``         held while a process trains into the folder (``"PID HOST"``);
* ``export/``       the default place of ``latticerec export``.

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: a run folder from someone else
never executes code (a crafted pickle is refused with a clear error). Every write is atomic
(:mod:`latticerec.io`), so a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import io
import json
import os
import socket
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latticerec.errors import LatticeRecError, RunError
from latticerec.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    output_error,
    remove_stale_temps,
)

_HELD: dict[str, int] = {}  # run folders this process has locked -> nesting depth
STOPPING_KEYS = ("epochs", "patience")  # a resumed run may change these: they only say when to stop


def check_weights(weights: Any, reference: dict[str, torch.Tensor], where: str) -> None:
    """``weights`` (a state dict read from a file) must hold exactly the keys of ``reference`` (the
    model's own ``state_dict()``), each a dense tensor of the same shape and dtype, and every
    floating-point value finite: ``load_state_dict`` would silently cast another dtype and load NaN
    or infinite weights, whose metrics would then be meaningless. A :class:`RunError` naming
    ``where`` (the file, and which weights in it) otherwise."""
    if not isinstance(weights, dict):
        raise RunError(f"{where}: expected a state dict, got {type(weights).__name__}")
    missing, unexpected = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
    if missing or unexpected:
        raise RunError(f"{where}: the weights do not fit this model (another model or model config?): "
                       + "; ".join(f"{what} {', '.join(map(str, keys[:5]))}" for what, keys in
                                   (("missing", missing), ("unexpected", unexpected)) if keys))
    for key, ref in reference.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.layout != ref.layout:
            kind = f"a {value.layout} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise RunError(f"{where}: {key!r} is {kind}, not a {ref.layout} tensor like this model's")
        if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.dtype:
            raise RunError(f"{where}: {key!r} is {value.dtype} of shape {tuple(value.shape)}, this "
                           f"model's is {ref.dtype} of shape {tuple(ref.shape)} (another model or "
                           "model config?)")
        if value.is_floating_point() and value.layout == torch.strided \
                and not bool(torch.isfinite(value).all()):
            raise RunError(f"{where}: {key!r} holds NaN or infinite values")


def run_identity(config: dict) -> dict:
    """What a run's weights belong to: its ``RunConfig.to_dict()`` (``config.json``'s ``"config"``)
    read back as a config (options renamed since and defaults filled in) and without the stopping
    rule. ``checkpoint.pt`` and ``best.pt`` carry it; a file of another model config is refused
    even where its weights have the same shapes (``n_layers``, ``reg``, ...). A
    :class:`~latticerec.errors.ConfigError` for a malformed config."""
    from latticerec.train.build import config_from_dict

    out = config_from_dict(config).to_dict()
    out["train"] = {k: v for k, v in out["train"].items() if k not in STOPPING_KEYS}
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunDir:
    """A run folder at ``path`` (which need not exist yet)."""

    CONFIG = "config.json"
    METRICS = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    BEST = "best.pt"
    PER_USER = "per_user.npz"
    LOCK = ".lock"
    EXPORT = "export"
    CURVES = "curves.png"
    RUN_FILES = (CONFIG, METRICS, CHECKPOINT, BEST, PER_USER, CURVES)
    TRAINING_FILES = (METRICS, CHECKPOINT, BEST, PER_USER, CURVES)  # ``fit``'s and the CLI's after it

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # -- existence ------------------------------------------------------------------------------
    def has_config(self) -> bool:
        return self.file(self.CONFIG).exists()

    def has_checkpoint(self) -> bool:
        return self.file(self.CHECKPOINT).exists()

    def has_best(self) -> bool:
        return self.file(self.BEST).exists()

    def existing(self, names: tuple[str, ...] = RUN_FILES) -> list[str]:
        return [n for n in names if self.file(n).exists()]

    def check_writable(self) -> None:
        """Create the folder and prove it writable (an :class:`OutputError` naming it otherwise)."""
        check_writable(self.path, "run folder")

    def prepare(self, resume: bool, overwrite: bool, names: tuple[str, ...] = RUN_FILES,
                remove: bool = True) -> None:
        """Refuse to start a new run over an existing one (``names`` present) unless ``overwrite``,
        which deletes them (not with ``remove=False``: a check first, the deletion once the new run's
        data and model are known to be good); ``resume`` keeps them. Call it while holding
        :meth:`lock`."""
        if resume and overwrite:
            raise RunError("--resume continues the run in the folder, --overwrite replaces it: "
                           "give one of them")
        present = self.existing(names)
        if resume or not present:
            return
        if not overwrite:
            raise RunError(f"{self.path} already holds a run ({', '.join(present)}): give --resume "
                           "to continue it, --overwrite to replace it, or another --out folder")
        if not remove:
            return
        for name in present:
            try:
                self.file(name).unlink()
            except OSError as exc:
                raise output_error(self.file(name), exc, doing="cannot remove") from None

    # -- lock -----------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold ``.lock`` (created with ``O_CREAT | O_EXCL``, holding ``"PID HOST"``) for the block.

        A second process gets a :class:`RunError`; a lock whose process is dead (same host) is
        stale and taken over with a warning. Re-entrant within one process. Once held, the temporary
        files of killed writes in the folder are removed (nobody else writes there)."""
        key = str(self.path.resolve())
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        self.check_writable()
        self._acquire()
        _HELD[key] = 1
        try:
            remove_stale_temps(self.path)
            yield self
        finally:
            del _HELD[key]
            self._release()

    def _owner(self) -> str:
        return f"{os.getpid()} {socket.gethostname()}"

    def _create_lock(self) -> bool:
        path = self.file(self.LOCK)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise output_error(path, exc) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(self._owner() + "\n")
        return True

    def _acquire(self) -> None:
        path = self.file(self.LOCK)
        if self._create_lock():
            return
        try:
            pid_text, _, host = path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = None, ""
        if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
            warnings.warn(f"{path}: stale lock of process {pid}, which is no longer running; "
                          "taking it over", stacklevel=4)
            path.unlink(missing_ok=True)
            if self._create_lock():
                return
        owner = f"process {pid} on {host}" if pid is not None else "an unknown process"
        raise RunError(f"{self.path} is locked by {owner} ({path}): another training is writing "
                       "into this folder. Wait for it, or delete the lock file if no such process "
                       "is running")

    def _release(self) -> None:
        path = self.file(self.LOCK)
        try:
            if path.read_text().strip() == self._owner():
                path.unlink()
        except OSError:
            pass

    # -- JSON files -----------------------------------------------------------------------------
    def _read_json(self, name: str) -> dict:
        path = self.file(name)
        if not path.exists():
            raise LatticeRecError(f"{self.path}: not a run folder (no {name}); train one with "
                                  "'latticerec train --out DIR'")
        try:
            out = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatticeRecError(f"{path}: unreadable ({exc})") from None
        except RecursionError:
            raise LatticeRecError(f"{path}: unreadable (JSON nested too deeply)") from None
        if not isinstance(out, dict):
            raise LatticeRecError(f"{path}: expected a JSON object")
        return out

    def read_config(self) -> dict:
        """``{"model": str, "data": str, "config": RunConfig.to_dict(), "dataset_hash": str}``."""
        meta = self._read_json(self.CONFIG)
        for key, kind in (("model", str), ("data", str), ("config", dict)):
            if not isinstance(meta.get(key), kind):
                raise LatticeRecError(f"{self.file(self.CONFIG)}: missing or malformed {key!r}")
        return meta

    def write_config(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.file(self.CONFIG), meta)

    def copy_finished_from(self, source: RunDir, meta: dict[str, Any]) -> None:
        """Make this (empty) folder a copy of the finished run ``source``, under the config ``meta``
        (the planned run's own, equal in meaning to ``source``'s). Each file is written atomically;
        the config comes first and the metrics last, so a copy cut half-way reads as a *cut* run
        (resumed or retrained), never as a finished one."""
        self.write_config(meta)
        for name in (self.CHECKPOINT, self.BEST, self.PER_USER):
            if source.file(name).exists():
                atomic_write_bytes(self.file(name), source.file(name).read_bytes())
        metrics = source.read_metrics()
        self.write_metrics({**metrics, "config": meta["config"], "reused_from": str(source.path)})

    def read_metrics(self) -> dict:
        return self._read_json(self.METRICS)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.file(self.METRICS), metrics)

    # -- weights --------------------------------------------------------------------------------
    def _load_pt(self, name: str, device: torch.device | str) -> dict:
        path = self.file(name)
        if not path.exists():
            raise RunError(f"{path}: missing")
        try:
            out = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, zip errors
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RunError(f"{path}: not a latticerec weights file, or it asks to run code on load "
                           f"(refused: {type(exc).__name__}: {first})") from None
        if not isinstance(out, dict) or not isinstance(out.get("model"), dict):
            raise RunError(f"{path}: expected a dict with a 'model' state")
        return out

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(self.file(self.CHECKPOINT), payload)

    def load_checkpoint(self, device: torch.device | str = "cpu") -> dict:
        if not self.has_checkpoint():
            raise RunError(f"--resume: no checkpoint at {self.file(self.CHECKPOINT)} (the run never "
                           "reached its first evaluation; start it again with --overwrite)")
        return self._load_pt(self.CHECKPOINT, device)

    def save_best(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(self.file(self.BEST), payload)

    def load_best(self, device: torch.device | str = "cpu") -> dict:
        """``{"model": state_dict, "epoch": N, ...}`` of the best-validation weights."""
        if not self.has_best():
            raise RunError(f"{self.path}: no trained weights ({self.BEST}); the run never evaluated")
        return self._load_pt(self.BEST, device)

    # -- per-user metrics -----------------------------------------------------------------------
    def write_per_user(self, users: np.ndarray, metrics: dict[str, np.ndarray], epoch: int) -> None:
        """Per-user test metrics: ``users`` (int64 user indices) and one float64 array per metric
        (``recall@20``, ``ndcg@20``, ...), aligned with ``users``; ``epoch`` of the weights."""
        buf = io.BytesIO()
        np.savez(buf, users=np.asarray(users, np.int64), epoch=np.int64(epoch),
                 **{k: np.asarray(v, np.float64) for k, v in metrics.items()})
        atomic_write_bytes(self.file(self.PER_USER), buf.getvalue())

    def read_per_user(self) -> dict[str, np.ndarray]:
        """The arrays of :meth:`write_per_user` (``users``, ``epoch`` and each metric), validated:
        one value per user, finite and in [0, 1], user indices unique and non-negative."""
        path = self.file(self.PER_USER)
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a .npy array, not a .npz archive")
            with z:
                out = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise RunError(f"{path}: unreadable per-user metrics ({exc})") from None
        users = out.get("users")
        if users is None or users.ndim != 1 or users.dtype != np.int64 or (users < 0).any() \
                or np.unique(users).size != users.size or "epoch" not in out:
            raise RunError(f"{path}: expected unique non-negative int64 'users' and an 'epoch'")
        for key, arr in out.items():
            if key in ("users", "epoch"):
                continue
            if arr.shape != users.shape or arr.dtype != np.float64 or not np.isfinite(arr).all() \
                    or (arr < 0).any() or (arr > 1).any():
                raise RunError(f"{path}: {key!r} must hold one finite value in [0, 1] per user")
        return out

    @property
    def export_dir(self) -> Path:
        return self.file(self.EXPORT)


@dataclass
class TrainedRun:
    meta: dict  # config.json
    run: Any  # latticerec.train.build.RunConfig
    dataset: Any  # latticerec.data.dataset.Dataset
    model: torch.nn.Module  # with the best weights, in eval mode
    run_dir: RunDir
    best_epoch: int | None  # the epoch of the best weights (0 for a model with nothing to train)


def read_run_config(run_dir: RunDir, meta: dict):
    """The ``RunConfig`` of ``config.json`` (``meta``, as :meth:`RunDir.read_config` read it); a
    :class:`RunError` naming the file when it is malformed or holds an invalid option."""
    from latticerec.train.build import config_from_dict

    try:
        return config_from_dict(meta["config"])
    except LatticeRecError as exc:
        raise RunError(f"{run_dir.file(run_dir.CONFIG)}: {exc}") from None


def same_identity(saved: Any, config: dict) -> bool:
    """Whether a weights file's ``run_config`` (:func:`run_identity` when written) is the run
    ``config``'s; a malformed one is not."""
    try:
        return run_identity(saved) == run_identity(config)
    except LatticeRecError:
        return False


def load_trained(run_dir: RunDir, device: torch.device | str = "cpu", graph_cache=None,
                 data: str | None = None) -> TrainedRun:
    """Rebuild a trained run's model from its config and data with its best weights
    (``weights_only=True``); refuses data whose content hash differs from the one trained on.
    ``data`` reads the dataset from another path than the one recorded (a moved folder); the same
    content-hash check applies, so it must be the same data."""
    from latticerec.data.readers import load_dataset
    from latticerec.train.build import build_model

    meta = run_dir.read_config()
    run = read_run_config(run_dir, meta)
    path = data if data is not None else meta["data"]
    if data is None and path != "synthetic" and not Path(path).exists():
        raise RunError(f"{path}: the dataset that {run_dir.file(run_dir.CONFIG)} records is not there "
                       "(moved or deleted); give its new path with --data")
    dataset = load_dataset(path)
    saved_hash = meta.get("dataset_hash")
    best = run_dir.load_best(device)
    where = run_dir.file(run_dir.BEST)
    # config.json's hash, or where it has none (hand-edited, an older writer) best.pt's, catches changed data
    source, known = ((run_dir.file(run_dir.CONFIG), saved_hash) if saved_hash is not None
                     else (where, best.get("dataset_hash")))
    if known is not None and known != dataset.content_hash():
        raise RunError(f"{path}: the data changed since the run in {run_dir.path} was "
                       f"trained (content hash differs from {source.name}'s); its results would "
                       "not be comparable")
    if saved_hash is not None and "dataset_hash" in best and best["dataset_hash"] != saved_hash:
        raise RunError(f"{where}: trained on other data than the run of {run_dir.file(run_dir.CONFIG)} "
                       "(dataset content hash differs): the files come from different runs")
    if "run_config" in best and not same_identity(best["run_config"], meta["config"]):
        raise RunError(f"{where}: the weights of another model config than that of "
                       f"{run_dir.file(run_dir.CONFIG)}: the files come from different runs")
    model = build_model(run, dataset, device, graph_cache)
    check_weights(best["model"], model.state_dict(), str(where))
    try:
        model.load_state_dict(best["model"])
    except RuntimeError as exc:
        raise RunError(f"{where}: the weights do not fit the model of "
                       f"{run_dir.file(run_dir.CONFIG)}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return TrainedRun(meta=meta, run=run, dataset=dataset, model=model, run_dir=run_dir,
                      best_epoch=best.get("epoch"))


def as_run_dir(out_dir: str | Path | RunDir | None) -> RunDir | None:
    return out_dir if isinstance(out_dir, RunDir) or out_dir is None else RunDir(out_dir)

