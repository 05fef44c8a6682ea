"""Id mapping files of the MMRec layout: ``u_id_mapping.csv`` / ``i_id_mapping.csv`` (TSV with a
header, ``<raw id> <dense id>``), read back as raw ids in dense-id order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latticerec.errors import DataError

U_MAPPING = "u_id_mapping.csv"
I_MAPPING = "i_id_mapping.csv"

def read_mapping(path: Path) -> np.ndarray:
    """Raw ids in dense-id order from an ``*_id_mapping.csv`` (TSV with a header)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the id mapping ({exc})") from None
    raw: dict[int, str] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}, line {n}: expected '<raw id><TAB><id>', got {line[:80]!r}")
        try:
            idx = int(parts[1])
        except ValueError:
            raise DataError(f"{path}, line {n}: id {parts[1]!r} is not an integer") from None
        if idx in raw:
            raise DataError(f"{path}, line {n}: id {idx} appears twice")
        raw[idx] = parts[0]
    if sorted(raw) != list(range(len(raw))):
        raise DataError(f"{path}: ids must be 0..{len(raw) - 1}, each once")
    return np.asarray([raw[i] for i in range(len(raw))], dtype=object)
