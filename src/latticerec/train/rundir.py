"""The run folder: the one place that names a run's files and writes them atomically.

A run folder holds

* ``config.json``   what was trained: ``{"model", "data", "config", ...}``;
* ``metrics.json``  the result: best epoch, valid and test metrics, history;
* ``checkpoint.pt`` the last evaluation's full training state (weights, optimiser, loop state);
* ``best.pt``       the best-validation weights ``{"model": state_dict, "epoch": N}``;
* ``per_user.npz``  per-user test metrics of the best weights (for paired significance tests);
* ``.lock``         held while a process trains into the folder;
* ``export/``       the default place of ``latticerec export``.

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: a run folder from someone else
never executes code (a crafted pickle is refused with a clear error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from latticerec.errors import LatticeRecError
from latticerec.io import atomic_torch_save, atomic_write_json


class RunDir:
    """A run folder at ``path`` (which need not exist yet)."""

    CONFIG = "config.json"
    METRICS = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    BEST = "best.pt"
    PER_USER = "per_user.npz"
    LOCK = ".lock"
    EXPORT = "export"

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
        if not isinstance(out, dict):
            raise LatticeRecError(f"{path}: expected a JSON object")
        return out

    def read_config(self) -> dict:
        return self._read_json(self.CONFIG)

    def write_config(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.file(self.CONFIG), meta)

    def read_metrics(self) -> dict:
        return self._read_json(self.METRICS)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.file(self.METRICS), metrics)

    # -- weights --------------------------------------------------------------------------------
    def _load_pt(self, name: str, device: torch.device | str) -> dict:
        path = self.file(name)
        if not path.exists():
            raise LatticeRecError(f"{path}: missing")
        try:
            out = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, zip errors
            raise LatticeRecError(
                f"{path}: not a latticerec weights file, or it asks to run code on load "
                f"(refused: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        if not isinstance(out, dict) or "model" not in out:
            raise LatticeRecError(f"{path}: expected a dict with a 'model' state")
        return out

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(self.file(self.CHECKPOINT), payload)

    def load_checkpoint(self, device: torch.device | str = "cpu") -> dict:
        return self._load_pt(self.CHECKPOINT, device)

    def save_best(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(self.file(self.BEST), payload)

    def load_best(self, device: torch.device | str = "cpu") -> dict:
        """``{"model": state_dict, "epoch": N, ...}`` of the best-validation weights."""
        if not self.has_best():
            raise LatticeRecError(f"{self.path}: no trained weights ({self.BEST}); the run never "
                                  "evaluated")
        return self._load_pt(self.BEST, device)

    @property
    def export_dir(self) -> Path:
        return self.file(self.EXPORT)
