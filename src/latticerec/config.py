"""Typed, frozen configuration dataclasses and strict ``key=value`` overrides.

Unknown keys are errors that list the valid ones; values are parsed to the field's declared type
(``int``, ``float``, ``bool``, ``str``, ``tuple[...]``, ``X | None``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from latticerec.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
MAX_INT = 2**63 - 1  # every integer option fits an int64


def _scalar(text: Any, tp: Any, key: str) -> Any:
    """``text`` (a string from ``--set`` or a JSON value) as an ``int``, ``float``, ``bool`` or ``str``.

    Integers are plain decimal digits (not ``1e1``, ``1_9`` or ``2.0``), within int64; floats are
    decimal or scientific numbers and must be finite (``nan``, ``inf`` are refused for every field)."""
    name = getattr(tp, "__name__", str(tp))
    if tp is bool:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
    elif tp is int:
        if isinstance(text, int) and not isinstance(text, bool):
            value = text
        elif isinstance(text, str) and _INT.fullmatch(text.strip()):
            value = int(text)
        else:
            value = None
        if value is not None:
            if abs(value) > MAX_INT:
                raise ConfigError(f"{key}: {text!r} is out of range (|{key}| <= 2**63 - 1)")
            return value
    elif tp is float:
        if isinstance(text, int | float) and not isinstance(text, bool):
            value = float(text)
        elif isinstance(text, str) and text.strip().lower().lstrip("+-") in {"nan", "inf", "infinity"}:
            value = float(text)
        elif isinstance(text, str) and _FLOAT.fullmatch(text.strip()):
            value = float(text)
        else:
            value = None
        if value is not None:
            if not math.isfinite(value):
                raise ConfigError(f"{key}: {text!r} is not a finite number")
            return value
    elif isinstance(text, tp):
        return text
    raise ConfigError(f"{key}: expected {name}, got {text!r}")


def parse_bool(text: Any, key: str) -> bool:
    """``text`` (``true``/``false`` and the other spellings ``--set`` takes, or a bool) as a bool;
    a :class:`ConfigError` naming ``key`` otherwise."""
    return _scalar(text, bool, key)


def _parse_value(text: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text is None or (isinstance(text, str) and text.lower() in {"none", "null", ""}):
            return None
        return _parse_value(text, args[0], key)
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(text, str):
            parts = [p.strip() for p in text.split(",") if p.strip()]
        elif isinstance(text, list | tuple):
            parts = list(text)
        else:
            raise ConfigError(f"{key}: expected a comma-separated list, got {text!r}")
        return tuple(_parse_value(p, elem, key) for p in parts)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if text not in allowed:
            raise ConfigError(f"{key}: {text!r} is not one of {', '.join(map(str, allowed))}")
        return text
    return _scalar(text, tp, key)


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def make_config(cls, values: dict[str, Any] | None = None, where: str = "config"):
    """Instantiate the frozen dataclass ``cls`` from ``values``, rejecting unknown keys."""
    values = dict(values or {})
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types_))}"
        )
    parsed = {k: _parse_value(v, types_[k], k) for k, v in values.items()}
    try:
        cfg = cls(**parsed)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``, with a clear error for malformed pairs
    and for a key given twice."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        if key.strip() in out:  # the last one would win silently
            raise ConfigError(f"--set {key.strip()}: given twice ({key.strip()}={out[key.strip()]} "
                              f"and {pair.strip()}); give each option once")
        out[key.strip()] = value.strip()
    return out


def split_overrides(values: dict[str, Any], *classes) -> list[dict[str, Any]]:
    """Route each key to the one config class that declares it; unknown keys list every valid key."""
    routed: list[dict[str, Any]] = [{} for _ in classes]
    names = [set(field_types(c)) for c in classes]
    for key, value in values.items():
        owners = [k for k, n in enumerate(names) if key in n]
        if not owners:
            valid = sorted(set().union(*names))
            raise ConfigError(f"unknown option {key!r}; valid options: {', '.join(valid)}")
        for k in owners:
            routed[k][key] = value
    return routed


def to_dict(cfg) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping and evaluation settings (latticerec's protocol by default).

    ``protocol=released`` is a preset of these (and some model) options that follows the released
    LATTICE/MICRO training loop (``train.build.RELEASED_PRESET``); the fields it sets:
    ``sampler`` (``interaction``: each training pair once per epoch; ``user``: the released code's
    user-uniform ``train.sampling.UserUniformSampler``), ``lr_schedule`` (``constant`` or
    ``released``: ``lr · 0.96^(e/50)`` at 0-based epoch ``e``, ``train.schedule``), ``zero_grad``
    (``none``: gradients reset to ``None``, so Adam skips a parameter without gradient in a batch;
    ``zeros``: reset to zero, so Adam still moves it with its momentum, as under torch 1.5) and
    ``reg_on`` (``ego``: L2 on the batch's layer-0 ID embeddings; ``final``: on the final batch
    representations that enter the BPR scores, as the released code). ``rank_loss``: the ranking
    term, ``bpr`` (the papers') or ``softmax`` (in-batch sampled softmax at temperature
    ``rank_tau``, ``models.losses.sampled_softmax_loss``; models with a loss of their own take bpr
    only). ``rebuild_on_eval``: the
    learned item graphs are rebuilt from the current projections (without gradient) before every
    validation and test evaluation, as the released code's ``Trainer.test``. ``eval_phase``: validate
    after the epochs ``e`` (1-based count of finished epochs) with ``e % eval_every == eval_phase %
    eval_every``, and after the last one (0: after ``eval_every``, ``2 eval_every``, ...; the
    released LATTICE validates after epochs 1, 6, 11, ..., i.e. ``eval_every=5 eval_phase=1``).
    ``eval_users``: 0 ranks every user of a split (full ranking); ``N`` ranks a sample of ``N`` of
    them, drawn once per split from ``seed`` (the same users at every validation), for catalogues
    where a full evaluation costs more than an epoch; the run's result states it."""

    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 1000
    eval_every: int = 1
    eval_phase: int = 0
    patience: int = 20  # MMRec's stopping_step; 10 stopped TikTok runs on an early plateau
    topk: tuple[int, ...] = (10, 20, 50)
    ndcg: str = "standard"
    eval_batch_size: int = 4096
    eval_users: int = 0
    seed: int = 2024
    sampler: str = "interaction"
    lr_schedule: str = "constant"
    zero_grad: str = "none"
    reg_on: str = "ego"
    rank_loss: str = "bpr"
    rank_tau: float = 1.0
    protocol: str = "latticerec"
    rebuild_on_eval: bool = False

    # (name, allowed values) of the string options
    CHOICES = (("ndcg", ("standard", "legacy")), ("sampler", ("interaction", "user")),
               ("lr_schedule", ("constant", "released")), ("zero_grad", ("none", "zeros")),
               ("reg_on", ("ego", "final")), ("rank_loss", ("bpr", "softmax")),
               ("protocol", ("latticerec", "released")))
    # (name, smallest, largest): sizes bounded so a typo cannot ask for terabytes of memory
    INT_RANGES = (("batch_size", 1, 2**24), ("epochs", 1, 10**7), ("eval_every", 1, 10**7),
                  ("eval_phase", 0, 10**7),
                  ("patience", 1, 10**7), ("eval_batch_size", 1, 2**24), ("eval_users", 0, 2**31 - 1),
                  ("seed", 0, 2**32 - 1))

    def __post_init__(self):
        if not (isinstance(self.lr, int | float) and not isinstance(self.lr, bool)
                and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.rank_tau, int | float) and not isinstance(self.rank_tau, bool)
                and math.isfinite(self.rank_tau) and 0.01 <= self.rank_tau <= 100):
            raise ValueError(f"rank_tau must be a number in [0.01, 100], got {self.rank_tau!r}")
        for name, low, high in self.INT_RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not (isinstance(self.topk, tuple)
                and all(isinstance(k, int) and not isinstance(k, bool) for k in self.topk)):
            raise ValueError(f"topk must be a tuple of integers, got {self.topk!r}")
        if not self.topk or min(self.topk) < 1 or max(self.topk) > 10**6:
            raise ValueError("topk must list positive cut-offs (at most 1000000)")
        if len(set(self.topk)) != len(self.topk):  # each cut-off's metrics once, one column each
            raise ValueError(f"topk lists a cut-off twice: {','.join(map(str, self.topk))}")
        if 20 not in self.topk:
            raise ValueError("topk must include 20 (early stopping uses valid Recall@20)")
        for name, allowed in self.CHOICES:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.rebuild_on_eval, bool):
            raise ValueError(f"rebuild_on_eval must be true or false, got {self.rebuild_on_eval!r}")
