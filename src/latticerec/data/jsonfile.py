"""Strict reading of the JSON files of a dataset folder (split files, ``cold_items.json``,
``inductive.json``): every failure, whatever :mod:`json` raises, is a
:class:`~latticerec.errors.DataError` naming the file (and the line where there is one)."""

from __future__ import annotations

import json
from pathlib import Path

from latticerec.errors import DataError


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: Path, duplicate: str = "key {key!r} appears twice in one object") -> object:
    """The JSON value in ``path`` (UTF-8, a byte order mark allowed). An object with a key twice is
    an error (``duplicate`` is its message, ``{key}`` the key), not the last value silently kept;
    so are an unreadable file (a folder, a symlink loop), invalid JSON, nesting deeper than the
    parser's recursion limit and integers longer than Python converts (4300 digits)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except _DuplicateKey as exc:
        raise DataError(f"{path}: " + duplicate.format(key=exc.args[0])) from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (arrays or objects nested too deeply)") from None
    except ValueError as exc:  # an integer literal of more than sys.get_int_max_str_digits() digits
        raise DataError(f"{path}: invalid JSON ({exc})") from None
