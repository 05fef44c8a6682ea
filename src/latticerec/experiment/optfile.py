"""Option files: the options of one model, as ``latticerec train --config FILE`` reads them and
``latticerec tune`` writes its best trial.

A file is JSON (``.json``) or TOML (``.toml``) with two keys::

    model = "lattice"              # optional; must match --model when given, else it is the model
    [options]                      # --set keys, typed values
    lr = 0.0005
    knn_k = 10
    modalities = ["image", "audio"]

Any other top-level key, and any option the model does not have, is an error naming the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from latticerec.errors import ConfigError
from latticerec.io import atomic_write_json

FILE_KEYS = ("model", "options")


def model_of_options_file(path: str | Path) -> str:
    """The ``model`` that ``path`` names (``latticerec train --config FILE`` without ``--model``);
    a :class:`ConfigError` naming the file when it names none or one the registry lacks."""
    from latticerec.models.registry import MODELS

    path = Path(path)
    model = _read(path).get("model")
    if model is None:
        raise ConfigError(f"--config {path}: the file names no model; give --model")
    if not isinstance(model, str) or model not in MODELS:
        valid = ", ".join(sorted(MODELS))
        raise ConfigError(f"{path}: model {model!r} is not in the registry; valid: {valid}")
    return model


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice is an error (TOML's rule), not the last."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key(s) {', '.join(map(repr, twice))} given twice")
    return dict(pairs)


def _read(path: Path) -> dict[str, Any]:
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text, object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, TOMLDecodeError
        raise ConfigError(f"--config {path}: unreadable as {kind} (read by its suffix: .toml is TOML, "
                          f"anything else JSON) ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object with 'model' and 'options'")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FILE_KEYS)}")
    return data


def read_options_file(path: str | Path, model: str, backbone: str | None = None) -> dict[str, Any]:
    """The ``options`` of ``path`` for ``model``, checked against the model's configs (an unknown
    key or a bad value is a :class:`ConfigError` that names the file). ``backbone``: the backbone
    the run wraps when it is chosen outside the file (``train --backbone``): the file's options are
    checked against that backbone's, not the default's."""
    from latticerec.models.registry import BACKBONES
    from latticerec.train.build import resolve_config

    path = Path(path)
    data = _read(path)
    if "model" in data and data["model"] != model:
        raise ConfigError(f"{path}: written for model {data['model']!r}, not --model {model!r}")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: 'options' must be a table of option = value")
    checked = {**options, "backbone": backbone} if backbone in BACKBONES else options
    try:
        resolve_config(model, checked)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dict(options)


def write_options_file(path: str | Path, model: str, options: dict[str, Any]) -> Path:
    """Write ``{"model": model, "options": options}`` as JSON, atomically."""
    path = Path(path)
    atomic_write_json(path, {"model": model, "options": options})
    return path
