"""Building blocks shared by the dataset builders: malformed-line bookkeeping, k-core filtering, ids in
sorted raw-id order, and writing the MMRec layout atomically.

The MMRec layout written here is what :func:`latticerec.data.readers.read_mmrec` reads:
``<name>.inter`` (TSV ``userID itemID [rating timestamp] x_label``), ``<modality>_feat.npy`` (row i =
item id i), and the id mappings ``u_id_mapping.csv`` / ``i_id_mapping.csv`` (TSV ``<raw> <id>``, the
format of MMRec's released mappings).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latticerec.data.mapping import I_MAPPING, U_MAPPING, read_mapping  # noqa: F401 (re-exported)
from latticerec.errors import DataError
from latticerec.io import _atomic, atomic_write_bytes


@dataclass
class BadLines:
    """Counts malformed input lines of one file and keeps the first few with their reasons.

    ``limit`` is the largest tolerated share of malformed lines (a fraction of the lines read, or an
    absolute count when >= 1); :meth:`check` raises a :class:`DataError` past it.
    """

    path: Path
    limit: float = 0.01
    keep: int = 20
    count: int = 0
    total: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def add(self, lineno: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append((lineno, reason))

    def describe(self) -> str:
        where = "; ".join(f"line {n}: {r}" for n, r in self.examples[:5])
        more = f" (and {self.count - 5} more)" if self.count > 5 else ""
        return f"{self.path}: {self.count} of {self.total} lines malformed: {where}{more}"

    def check(self, log=None) -> None:
        """Report malformed lines (to ``log``); raise if they exceed the limit."""
        if not self.count:
            return
        allowed = self.limit if self.limit >= 1 else self.limit * max(self.total, 1)
        if self.count > allowed:
            raise DataError(
                f"{self.describe()}; more than the tolerated "
                f"{self.limit:g}{'' if self.limit >= 1 else ' share'} of malformed lines "
                "(raise --max-bad to skip them)"
            )
        (log or _stderr)(f"warning: skipped {self.describe()}")

    def to_dict(self) -> dict:
        return {"file": str(self.path), "lines": self.total, "malformed": self.count,
                "examples": [{"line": n, "reason": r} for n, r in self.examples]}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def sort_key_ids(raw: np.ndarray) -> np.ndarray:
    """Order of raw ids: numeric when every id is an integer literal, else lexicographic (ASINs)."""
    raw = np.asarray(raw).astype(str)
    try:
        as_int = raw.astype(np.int64)
    except ValueError:
        return np.argsort(raw, kind="stable")
    if np.array_equal(as_int.astype(str), raw):  # no leading zeros / signs lost: a faithful order
        return np.argsort(as_int, kind="stable")
    return np.argsort(raw, kind="stable")


def dense_ids(codes: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the used codes ``codes`` (indices into ``raw``) as 0..n-1 in sorted raw-id order.

    Returns (new index per entry, raw id per new index).
    """
    used = np.unique(codes)
    order = sort_key_ids(raw[used])
    sorted_codes = used[order]
    remap = np.full(len(raw), -1, dtype=np.int64)
    remap[sorted_codes] = np.arange(len(sorted_codes))
    return remap[codes], np.asarray(raw)[sorted_codes]


def dedupe_pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (user, item) pair, in input order."""
    n_items = int(items.max()) + 1 if len(items) else 1
    keys = users.astype(np.int64) * n_items + items
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of interactions kept by the iterative k-core filter (every kept user and item has
    at least ``k`` kept interactions). ``k <= 1`` keeps everything. Vectorised with bincount."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or not len(users):
        return keep
    n_u, n_i = int(users.max()) + 1, int(items.max()) + 1
    while True:
        du = np.bincount(users[keep], minlength=n_u)
        di = np.bincount(items[keep], minlength=n_i)
        new = keep & (du[users] >= k) & (di[items] >= k)
        if new.sum() == keep.sum():
            return new
        keep = new


def _column(values: np.ndarray) -> list:
    """A column as Python numbers for formatting; floats that are all integral print as ints."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    return values.tolist()


def iter_inter_lines(users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                     extra: dict[str, np.ndarray] | None = None, chunk: int = 100_000):
    """The ``.inter`` TSV (``userID itemID [extra...] x_label``) as encoded blocks of ``chunk`` rows,
    so a large file is never held in memory as text."""
    extra = extra or {}
    yield ("\t".join(["userID", "itemID", *extra, "x_label"]) + "\n").encode()
    for start in range(0, len(users), chunk):
        stop = start + chunk
        cols = [_column(users[start:stop]), _column(items[start:stop]),
                *(_column(v[start:stop]) for v in extra.values()), _column(labels[start:stop])]
        yield ("\n".join("\t".join(map(str, row)) for row in zip(*cols, strict=True)) + "\n").encode()


def format_inter(users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                 extra: dict[str, np.ndarray] | None = None) -> bytes:
    """The whole ``.inter`` text (see :func:`iter_inter_lines`)."""
    return b"".join(iter_inter_lines(users, items, labels, extra))


def atomic_write_chunks(path: Path, chunks) -> None:
    """Write an iterable of byte blocks atomically (temporary file, fsync, rename)."""
    _atomic(Path(path), lambda fh: fh.writelines(chunks))


def write_mapping(path: Path, raw_ids: Iterable, header: str, new_header: str) -> None:
    """``<header> <new_header>`` TSV of raw id -> dense id, in dense id order."""
    lines = [f"{header}\t{new_header}"]
    lines += [f"{r}\t{i}" for i, r in enumerate(raw_ids)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a ``.npy`` atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_mmrec(out: Path, name: str, users: np.ndarray, items: np.ndarray, labels: np.ndarray, *,
                features: dict[str, np.ndarray] | None = None, user_raw: np.ndarray | None = None,
                item_raw: np.ndarray | None = None, raw_names: tuple[str, str] = ("user_id", "asin"),
                extra: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write a dataset in the MMRec layout into ``out`` (every file atomically); returns the paths.

    Rows of ``.inter`` are sorted by (user, label, item) so the file is easy to read by eye.
    """
    out = Path(out)
    order = np.lexsort((items, labels, users))
    written = [out / f"{name}.inter"]
    atomic_write_chunks(written[0], iter_inter_lines(
        users[order], items[order], labels[order],
        {k: np.asarray(v)[order] for k, v in (extra or {}).items()}))
    for modality, feat in (features or {}).items():
        path = out / f"{modality}_feat.npy"
        save_npy(path, np.asarray(feat, dtype=np.float32))
        written.append(path)
    if user_raw is not None:
        write_mapping(out / U_MAPPING, user_raw, raw_names[0], "userID")
        written.append(out / U_MAPPING)
    if item_raw is not None:
        write_mapping(out / I_MAPPING, item_raw, raw_names[1], "itemID")
        written.append(out / I_MAPPING)
    return written
