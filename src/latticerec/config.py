"""Typed, frozen configuration dataclasses and strict ``key=value`` overrides.

Unknown keys are errors that list the valid ones; values are parsed to the field's declared type
(``int``, ``float``, ``bool``, ``str``, ``tuple[...]``, ``X | None``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from latticerec.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
        else:
            parts = list(text)
        return tuple(_parse_value(p, elem, key) for p in parts)
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if text not in allowed:
            raise ConfigError(f"{key}: {text!r} is not one of {', '.join(map(str, allowed))}")
        return text
    if not isinstance(text, str):
        if tp is float and isinstance(text, int | float) and not isinstance(text, bool):
            return float(text)
        if isinstance(text, tp):
            return text
        raise ConfigError(f"{key}: expected {tp.__name__}, got {text!r}")
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        return tp(text)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {text!r}") from None


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
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``, with a clear error for malformed pairs."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
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
    """Optimisation, early stopping and evaluation settings (the papers' protocol by default)."""

    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 1000
    eval_every: int = 1
    patience: int = 20  # MMRec's stopping_step; 10 stopped TikTok runs on an early plateau
    topk: tuple[int, ...] = (10, 20, 50)
    ndcg: str = "standard"
    eval_batch_size: int = 4096
    seed: int = 2024

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        for name in ("batch_size", "epochs", "eval_every", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.topk or min(self.topk) < 1:
            raise ValueError("topk must list positive cut-offs")
        if 20 not in self.topk:
            raise ValueError("topk must include 20 (early stopping uses valid Recall@20)")
        if self.ndcg not in ("standard", "legacy"):
            raise ValueError("ndcg must be 'standard' or 'legacy'")
