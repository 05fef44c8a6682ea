"""Import RecBole atomic files (``<name>.inter``, optionally ``<name>.item``) into the MMRec layout.

RecBole's ``.inter`` is a TSV whose header names each column with its type, e.g.
``user_id:token  item_id:token  rating:float  timestamp:float``. The file is streamed in blocks of
lines (2 MiB); a well-formed block is split into columns without a per-line Python loop and each row
keeps only two integer codes (and the rating/timestamp as float64), so memory grows with the number
of interactions and distinct ids, not with the text; a block with a malformed line is re-read line
by line to report each problem with its line number. Duplicate (user, item) pairs
keep their first row. Ids are renumbered 0..n-1 in sorted raw-id order (numeric when all ids are
integers), then split per user with a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latticerec.data.synthetic import split_per_user
from latticerec.datasets.prepare import (
    BadLines,
    dedupe_pairs,
    dense_ids,
    k_core,
    write_mmrec,
)
from latticerec.datasets.staging import staged_folder
from latticerec.errors import DataError
from latticerec.io import atomic_write_json

USER_FIELDS = ("user_id", "userID", "user", "reviewerID")
ITEM_FIELDS = ("item_id", "itemID", "item", "asin")
BLOCK_BYTES = 2 << 20


@dataclass
class Interactions:
    """Parsed interactions: codes index ``user_raw``/``item_raw``; rating/timestamp may be None."""

    users: np.ndarray
    items: np.ndarray
    user_raw: np.ndarray
    item_raw: np.ndarray
    rating: np.ndarray | None
    timestamp: np.ndarray | None
    bad: BadLines


def parse_header(line: str, path: Path) -> list[tuple[str, str]]:
    """``[(name, type)]`` from a RecBole header line (``name:type`` TAB-separated; type optional)."""
    fields = line.rstrip("\r\n").lstrip("\ufeff").split("\t")
    out = []
    for f in fields:
        name, _, typ = f.partition(":")
        if not name.strip():
            raise DataError(f"{path}, line 1: empty column name in header {line.strip()[:120]!r}")
        out.append((name.strip(), typ.strip() or "token"))
    return out


def find_field(names: list[str], wanted: tuple[str, ...], path: Path, what: str,
               given: str | None = None) -> int:
    if given is not None:
        if given not in names:
            raise DataError(f"{path}, line 1: no column {given!r} (columns: {', '.join(names)})")
        return names.index(given)
    for w in wanted:
        if w in names:
            return names.index(w)
    raise DataError(f"{path}, line 1: no {what} column (expected one of {', '.join(wanted)}; "
                    f"columns: {', '.join(names)})")


def read_recbole_inter(path: str | Path, max_bad: float = 0.01, progress: bool = True,
                       user_field: str | None = None, item_field: str | None = None) -> Interactions:
    """Stream a RecBole ``.inter`` file. Malformed rows are counted with their line numbers and
    skipped; more than ``max_bad`` of them (share, or count when >= 1) is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such interactions file")
    bad = BadLines(path, limit=max_bad)
    umap: dict[str, int] = {}
    imap: dict[str, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    size = path.stat().st_size
    with open(path, encoding="utf-8-sig", newline="") as fh, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}",
                 disable=not progress, leave=False) as bar:
        header = fh.readline()
        if not header.strip():
            raise DataError(f"{path}, line 1: missing header (e.g. 'user_id:token<TAB>item_id:token')")
        cols = parse_header(header, path)
        names = [c[0] for c in cols]
        layout = _Layout(width=len(names),
                         user=find_field(names, USER_FIELDS, path, "user", user_field),
                         item=find_field(names, ITEM_FIELDS, path, "item", item_field),
                         rating=names.index("rating") if "rating" in names else -1,
                         timestamp=names.index("timestamp") if "timestamp" in names else -1)
        lineno = 1
        while True:
            try:
                block = fh.readlines(BLOCK_BYTES)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text after line {lineno} ({exc})") from None
            if not block:
                break
            fields = _fast_block(block, layout)
            if fields is None:  # something odd in this block: line by line, reporting each problem
                fields = _slow_block(block, layout, lineno, bad)
            else:
                bad.total += len(fields[0])
            u, i, r, t = fields
            parts.append((_codes(u, umap), _codes(i, imap), r, t))
            lineno += len(block)
            bar.update(sum(map(len, block)))
    if not parts or not sum(len(p[0]) for p in parts):
        raise DataError(f"{path}: no interactions after the header")
    users, items, rating, stamp = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return Interactions(
        users=users, items=items,
        user_raw=np.asarray(list(umap), dtype=object), item_raw=np.asarray(list(imap), dtype=object),
        rating=rating if layout.rating >= 0 else None,
        timestamp=stamp if layout.timestamp >= 0 else None, bad=bad)


@dataclass(frozen=True)
class _Layout:
    width: int
    user: int
    item: int
    rating: int
    timestamp: int


def _codes(tokens: list[str], mapping: dict[str, int]) -> np.ndarray:
    """Integer codes of ``tokens`` (new tokens get the next free code), via the block's unique tokens."""
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(np.asarray(tokens), return_inverse=True)
    code = np.fromiter((mapping.setdefault(tok, len(mapping)) for tok in uniq.tolist()),
                       dtype=np.int64, count=len(uniq))
    return code[inverse.ravel()]


def _numbers(values: list[str]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) if values else np.zeros(0)


def _fast_block(block: list[str], lay: _Layout):
    """Columns of a block whose every line is well formed, parsed without a per-line Python loop;
    None when any line is not (empty line, wrong field count, empty id, non-numeric value)."""
    text = "".join(block)
    if "\r" in text:
        text = text.replace("\r", "")
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    if not rows or "" in rows or set(map(str.count, rows, ["\t"] * len(rows))) != {lay.width - 1}:
        return None
    flat = "\t".join(rows).split("\t")
    users, items = flat[lay.user::lay.width], flat[lay.item::lay.width]
    if "" in users or "" in items:
        return None
    try:
        r = _numbers(flat[lay.rating::lay.width]) if lay.rating >= 0 else np.zeros(len(users))
        t = _numbers(flat[lay.timestamp::lay.width]) if lay.timestamp >= 0 else np.zeros(len(users))
    except ValueError:
        return None
    if not (np.isfinite(r).all() and np.isfinite(t).all()):  # 'nan', 'inf': float() takes them
        return None
    return users, items, r, t


def _slow_block(block: list[str], lay: _Layout, lineno: int, bad: BadLines):
    """Parse a block line by line, recording malformed lines in ``bad`` and skipping them."""
    users, items, rs, ts = [], [], [], []
    for line in block:
        lineno += 1
        line = line.rstrip("\r\n")
        if not line:
            continue
        bad.total += 1
        parts = line.split("\t")
        if len(parts) != lay.width:
            bad.add(lineno, f"expected {lay.width} tab-separated fields, got {len(parts)}")
            continue
        u, i = parts[lay.user], parts[lay.item]
        if not u or not i:
            bad.add(lineno, "empty user or item id")
            continue
        try:
            r = float(parts[lay.rating]) if lay.rating >= 0 else 0.0
            t = float(parts[lay.timestamp]) if lay.timestamp >= 0 else 0.0
        except ValueError:
            bad.add(lineno, f"rating/timestamp is not a number: {line[:60]!r}")
            continue
        if not (math.isfinite(r) and math.isfinite(t)):  # a NaN rating or an inf time would be kept
            bad.add(lineno, f"rating/timestamp is not a finite number: {line[:60]!r}")
            continue
        users.append(u)
        items.append(i)
        rs.append(r)
        ts.append(t)
    return users, items, np.asarray(rs, dtype=np.float64), np.asarray(ts, dtype=np.float64)


def import_recbole(source: str | Path, out: str | Path, *, name: str | None = None, seed: int = 0,
                   core: int = 0, min_rating: float | None = None, max_bad: float = 0.01,
                   progress: bool = True, log=print) -> dict:
    """RecBole atomic files -> MMRec layout in ``out``; returns a report (also written as
    ``import_report.json``). ``source`` is a ``.inter`` file or a folder holding one. The ``.item``
    file, when beside it, is copied unchanged so ``encode-text`` can be run on it."""
    source = Path(source)
    with staged_folder(out, [source]) as tmp:
        if source.is_dir():
            inters = sorted(source.glob("*.inter"))
            if len(inters) != 1:
                raise DataError(f"{source}: expected exactly one .inter file, "
                                f"found {[p.name for p in inters]}")
            source = inters[0]
        name = name or source.stem
        out = Path(out)
        data = read_recbole_inter(source, max_bad=max_bad, progress=progress)
        data.bad.check(log)
        n_read = len(data.users)
        keep = np.ones(n_read, dtype=bool)
        if min_rating is not None:
            if data.rating is None:
                raise DataError(f"{source}: --min-rating given but the file has no rating column")
            keep &= data.rating >= min_rating
        idx = np.flatnonzero(keep)
        idx = idx[dedupe_pairs(data.users[idx], data.items[idx])]
        n_dupes = int(keep.sum()) - len(idx)
        idx = idx[k_core(data.users[idx], data.items[idx], core)]
        if not len(idx):
            raise DataError(f"{source}: no interactions left after filtering (core={core}, "
                            f"min_rating={min_rating})")
        users, user_raw = dense_ids(data.users[idx], data.user_raw)
        items, item_raw = dense_ids(data.items[idx], data.item_raw)
        labels = split_per_user(users, items, np.random.default_rng(seed))
        extra = {}
        if data.rating is not None:
            extra["rating"] = data.rating[idx]
        if data.timestamp is not None:
            extra["timestamp"] = data.timestamp[idx]
        report = {
            "source": str(source), "out": str(out), "seed": seed, "core": core, "min_rating": min_rating,
            "rows_read": n_read, "duplicates_dropped": n_dupes, "malformed": data.bad.to_dict(),
            "users": len(user_raw), "items": len(item_raw), "interactions": len(idx),
            "train": int((labels == 0).sum()), "valid": int((labels == 1).sum()),
            "test": int((labels == 2).sum()),
        }
        write_mmrec(tmp, name, users, items, labels, user_raw=user_raw, item_raw=item_raw,
                    raw_names=("user_id", "item_id"), extra=extra)
        item_file = source.with_suffix(".item")
        if item_file.is_file():
            from latticerec.io import atomic_write_bytes

            atomic_write_bytes(tmp / f"{name}.item", item_file.read_bytes())
        atomic_write_json(tmp / "import_report.json", report)
        return report
