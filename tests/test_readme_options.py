"""Every option the README documents is a real option (and the option tables list real keys only)."""

import re
from pathlib import Path

from latticerec.config import TrainConfig, field_types
from latticerec.models.registry import BACKBONES, MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def _real_options() -> set[str]:
    names = set(field_types(TrainConfig))
    for cls in (*MODELS.values(), *BACKBONES.values()):
        names |= set(field_types(cls.Config))
    return names


def _table_keys(text: str) -> list[str]:
    """Backticked names in the first column of every ``| key | default | meaning |`` table."""
    keys, in_table = [], False
    for line in text.splitlines():
        if line.startswith("| key |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if in_table and not line.startswith("|---"):
            keys += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return keys


def test_every_option_table_key_is_a_real_option():
    keys = _table_keys(README.read_text())
    assert len(keys) > 15  # the tables were found
    unknown = sorted(set(keys) - _real_options())
    assert not unknown, f"README documents options that do not exist: {unknown}"


def test_every_set_key_value_in_the_prose_is_a_real_option():
    # `key=value` written in backticks anywhere in the README (e.g. `fusion=false`)
    pairs = re.findall(r"`([a-z_]+)=(?!=)[^`\s]*`", README.read_text())
    assert pairs
    unknown = sorted(set(pairs) - _real_options())
    assert not unknown, f"README uses options that do not exist: {unknown}"


def test_the_check_catches_an_invented_option():
    assert "cl_items" not in _real_options()
    assert _table_keys("| key | default | meaning |\n|---|---|---|\n| `cl_items` | x | y |\n") == ["cl_items"]
