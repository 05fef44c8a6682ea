"""Import RecBole atomic files (``<name>.inter``, optionally ``<name>.item``) into the MMRec layout.

RecBole's ``.inter`` is a TSV whose header names each column with its type, e.g.
``user_id:token  item_id:token  rating:float  timestamp:float``. The file is streamed in blocks of
lines; each row keeps only two int32 codes (and the rating/timestamp as float64), so memory grows with
the number of interactions and distinct ids, never with the text size. Duplicate (user, item) pairs
keep their first row. Ids are renumbered 0..n-1 in sorted raw-id order (numeric when all ids are
integers), then split per user with a seed.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latticerec.data.prepare import BadLines, dedupe_pairs, dense_ids, k_core, write_mmrec
from latticerec.data.synthetic import split_per_user
from latticerec.errors import DataError
from latticerec.io import atomic_write_json

USER_FIELDS = ("user_id", "userID", "user", "reviewerID")
ITEM_FIELDS = ("item_id", "itemID", "item", "asin")
BLOCK_BYTES = 8 << 20


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
    ucodes, icodes = array("i"), array("i")
    ratings, stamps = array("d"), array("d")
    size = path.stat().st_size
    with open(path, encoding="utf-8-sig", newline="") as fh, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}",
                 disable=not progress, leave=False) as bar:
        header = fh.readline()
        if not header.strip():
            raise DataError(f"{path}, line 1: missing header (e.g. 'user_id:token<TAB>item_id:token')")
        cols = parse_header(header, path)
        names = [c[0] for c in cols]
        cu = find_field(names, USER_FIELDS, path, "user", user_field)
        ci = find_field(names, ITEM_FIELDS, path, "item", item_field)
        cr = names.index("rating") if "rating" in names else -1
        ct = names.index("timestamp") if "timestamp" in names else -1
        width = len(names)
        lineno = 1
        while True:
            try:
                block = fh.readlines(BLOCK_BYTES)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text after line {lineno} ({exc})") from None
            if not block:
                break
            for line in block:
                lineno += 1
                line = line.rstrip("\r\n")
                if not line:
                    continue
                bad.total += 1
                parts = line.split("\t")
                if len(parts) != width:
                    bad.add(lineno, f"expected {width} tab-separated fields, got {len(parts)}")
                    continue
                u, i = parts[cu], parts[ci]
                if not u or not i:
                    bad.add(lineno, "empty user or item id")
                    continue
                try:
                    r = float(parts[cr]) if cr >= 0 else 0.0
                    t = float(parts[ct]) if ct >= 0 else 0.0
                except ValueError:
                    bad.add(lineno, f"rating/timestamp is not a number: {line[:60]!r}")
                    continue
                uc = umap.get(u)
                if uc is None:
                    uc = umap[u] = len(umap)
                ic = imap.get(i)
                if ic is None:
                    ic = imap[i] = len(imap)
                ucodes.append(uc)
                icodes.append(ic)
                ratings.append(r)
                stamps.append(t)
            bar.update(sum(len(s) for s in block))
    if not ucodes:
        raise DataError(f"{path}: no interactions after the header")
    return Interactions(
        users=np.frombuffer(ucodes, dtype=np.int32).astype(np.int64),
        items=np.frombuffer(icodes, dtype=np.int32).astype(np.int64),
        user_raw=np.asarray(list(umap), dtype=object), item_raw=np.asarray(list(imap), dtype=object),
        rating=np.frombuffer(ratings, dtype=np.float64) if cr >= 0 else None,
        timestamp=np.frombuffer(stamps, dtype=np.float64) if ct >= 0 else None, bad=bad)


def import_recbole(source: str | Path, out: str | Path, *, name: str | None = None, seed: int = 0,
                   core: int = 0, min_rating: float | None = None, max_bad: float = 0.01,
                   progress: bool = True, log=print) -> dict:
    """RecBole atomic files -> MMRec layout in ``out``; returns a report (also written as
    ``import_report.json``). ``source`` is a ``.inter`` file or a folder holding one. The ``.item``
    file, when beside it, is copied unchanged so ``encode-text`` can be run on it."""
    source = Path(source)
    if source.is_dir():
        inters = sorted(source.glob("*.inter"))
        if len(inters) != 1:
            raise DataError(f"{source}: expected exactly one .inter file, found {[p.name for p in inters]}")
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
    write_mmrec(out, name, users, items, labels, user_raw=user_raw, item_raw=item_raw,
                raw_names=("user_id", "item_id"), extra=extra)
    item_file = source.with_suffix(".item")
    if item_file.is_file():
        from latticerec.io import atomic_write_bytes

        atomic_write_bytes(out / f"{name}.item", item_file.read_bytes())
    report = {
        "source": str(source), "out": str(out), "seed": seed, "core": core, "min_rating": min_rating,
        "rows_read": n_read, "duplicates_dropped": n_dupes, "malformed": data.bad.to_dict(),
        "users": len(user_raw), "items": len(item_raw), "interactions": len(idx),
        "train": int((labels == 0).sum()), "valid": int((labels == 1).sum()),
        "test": int((labels == 2).sum()),
    }
    atomic_write_json(out / "import_report.json", report)
    return report
