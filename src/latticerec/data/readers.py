"""Readers for the on-disk dataset layouts, chosen automatically from a folder's contents.

* MMRec layout: ``<name>.inter`` TSV with a header naming ``userID itemID [rating timestamp] x_label``
  (``x_label`` 0/1/2 = train/valid/test), plus ``<modality>_feat.npy`` (row i = item id i).
* LATTICE layout: ``5-core/{train,val,test}.json`` (``{"user": [items]}``) plus ``<modality>_feat.npy``.
* Either layout may carry ``cold_items.json`` (a cold-start split, :mod:`latticerec.datasets.coldstart`):
  its cold items become the evaluation candidates of the valid and test splits.
* ``synthetic``: the built-in generated dataset (see :mod:`latticerec.data.synthetic`).

Every problem is reported as a :class:`~latticerec.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from latticerec.data.cold import read_cold_items
from latticerec.data.dataset import (
    Dataset,
    check_features,
    interactions_to_csr,
    validate_splits,
)
from latticerec.data.jsonfile import read_json
from latticerec.errors import DataError

USER_COLUMNS = ("userID", "user_id", "user")
ITEM_COLUMNS = ("itemID", "item_id", "item")
LABEL_COLUMNS = ("x_label", "label", "split")
MAX_ID = 2**31  # ids are row indices of int32 sparse matrices and embedding tables
SPARSE_ID_FACTOR = 10  # the largest id may be at most this many times the number of distinct ids,
SPARSE_ID_SLACK = 1_000_000  # or below this, whichever is larger
LATTICE_SPLIT_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


def load_dataset(spec: str | Path, **synthetic_options) -> Dataset:
    """Load ``spec``: the word ``synthetic`` or a dataset folder in a known layout."""
    if str(spec) == "synthetic":
        from latticerec.data.synthetic import make_synthetic

        return make_synthetic(**synthetic_options)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"dataset {str(spec)!r} not found: give a folder or 'synthetic'")
    if path.is_file() and path.suffix == ".inter":
        path = path.parent
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset folder (MMRec or LATTICE layout)")
    if (path / "5-core").is_dir():
        return read_lattice(path)
    if list(path.glob("*.inter")):
        return read_mmrec(path)
    raise DataError(
        f"{path}: unknown dataset layout: expected '<name>.inter' (MMRec layout) or "
        "'5-core/{train,val,test}.json' (LATTICE layout)"
    )


def _find_column(header: list[str], names: tuple[str, ...], path: Path, what: str) -> int:
    bare = [h.split(":")[0] for h in header]
    for name in names:
        if name in bare:
            return bare.index(name)
    raise DataError(
        f"{path}, line 1: header {header} has no {what} column (expected one of {', '.join(names)})"
    )


def _too_large(path: Path, lineno, column: str, value) -> DataError:
    return DataError(f"{path}, line {lineno}: {column} {value} is too large (ids must be < 2**31)")


def _bad_label(path: Path, lineno, label) -> DataError:
    return DataError(f"{path}, line {lineno}: x_label {label} must be 0 (train), 1 (valid) or 2 (test)")


def _parse_int(token: str, path: Path, lineno: int, column: str) -> int:
    """A plain decimal id: digits only (``1e1``, ``1_9``, ``2.0`` and ``+3`` are refused)."""
    body = token[1:] if token.startswith("-") else token
    if not (body.isascii() and body.isdigit()):
        raise DataError(f"{path}, line {lineno}: {column} {token!r} is not an integer id "
                        "(decimal digits only)")
    value = int(token)
    if value < 0:
        raise DataError(f"{path}, line {lineno}: {column} {value} is negative")
    if value >= MAX_ID:
        raise _too_large(path, lineno, column, value)
    return value


def check_dense_ids(ids: np.ndarray, where: np.ndarray, path: Path, what: str, unit: str = "line"
                    ) -> None:
    """Ids are row indices (one embedding row per index up to the largest id): refuse ids so far
    beyond the number of distinct ids that the tables would take memory out of all proportion.
    The distinct ids are counted only when it can matter, with a ``largest id + 1`` byte mask (at
    most ``SPARSE_ID_FACTOR`` bytes per id), not by sorting them."""
    if ids.size == 0:
        return
    top = int(ids.max())
    if top + 1 <= SPARSE_ID_SLACK:
        return
    if top + 1 <= SPARSE_ID_FACTOR * ids.size:
        seen = np.zeros(top + 1, dtype=bool)
        seen[ids] = True
        n_distinct = int(np.count_nonzero(seen))
    else:  # more rows than SPARSE_ID_FACTOR per id: refused whatever the count (the message names it)
        n_distinct = int(np.unique(ids).size)
    if top + 1 > max(SPARSE_ID_FACTOR * n_distinct, SPARSE_ID_SLACK):
        k = int(np.argmax(ids))
        raise DataError(
            f"{path}, {unit} {where[k]}: {what} id {top} is far beyond the {n_distinct} distinct "
            f"{what} ids: ids are row indices 0..N-1 and each index up to the largest gets a row; "
            f"renumber the {what}s (e.g. with 'latticerec data import-recbole')"
        )


INTER_BLOCK = 8 * 2**20  # bytes of the .inter body parsed at a time by the vectorised reader
_ID_DIGITS = 10  # 2**31 has 10 digits


def _inter_header(path: Path, first_line: str) -> tuple[list[str], int, int, int]:
    if not first_line.strip():
        raise DataError(f"{path}, line 1: missing header (expected 'userID<TAB>itemID<TAB>x_label')")
    header = first_line.strip().split("\t")
    return (header, _find_column(header, USER_COLUMNS, path, "user"),
            _find_column(header, ITEM_COLUMNS, path, "item"),
            _find_column(header, LABEL_COLUMNS, path, "split label"))


def _digit_fields(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """The decimal values of the fields ``buf[starts[j]:ends[j]]``, one digit column at a time
    (as many columns as the longest field); ``None`` when a field is empty, longer than an id can
    be, or holds anything but the digits 0-9."""
    length = ends - starts
    if not length.size:
        return np.zeros(0, np.int64)
    width = int(length.max())
    if length.min() < 1 or width > _ID_DIGITS:
        return None
    values = np.zeros(length.size, np.int64)
    for j in range(width):  # Horner's rule over right-aligned digits: v = 10 v + d
        pos = ends - width + j
        inside = pos >= starts
        digit = buf[np.maximum(pos, 0)].astype(np.int64) - 48
        if ((digit < 0) | (digit > 9))[inside].any():
            return None
        values = np.where(inside, values * 10 + digit, values)
    return values


def _read_inter_fast(data: bytes, columns: tuple[int, int, int], width: int,
                     body_start: int) -> tuple[np.ndarray, ...] | None:
    """The body of an ``.inter`` file parsed with numpy, a block of lines at a time: users, items,
    labels and line numbers, or ``None`` when the body is anything but plain ASCII lines of
    ``width`` tab-separated fields with decimal ids in the three columns (blank lines, spaces,
    signs, ...): :func:`read_inter_file` then reads it line by line and names the line at fault."""
    parts: list[list[np.ndarray]] = [[], [], []]
    end, pos = len(data), body_start
    while pos < end:
        stop = min(end, pos + INTER_BLOCK)
        if stop < end:
            cut = data.rfind(b"\n", pos, stop)
            stop = cut + 1 if cut >= pos else data.find(b"\n", stop) + 1 or end
        block = np.frombuffer(data, dtype=np.uint8, count=stop - pos, offset=pos)
        if block[-1] != 10:
            block = np.append(block, np.uint8(10))
        if block.max() >= 128:
            return None
        seps = np.flatnonzero((block == 9) | (block == 10))
        n_lines = seps.size // width
        pattern = np.full(width, 9, dtype=np.uint8)
        pattern[-1] = 10
        if seps.size != n_lines * width or not np.array_equal(block[seps].reshape(n_lines, width),
                                                               np.broadcast_to(pattern, (n_lines, width))):
            return None
        field_end = seps.reshape(n_lines, width)
        field_start = np.concatenate(([0], seps[:-1] + 1)).reshape(n_lines, width)
        for out, c in zip(parts, columns, strict=True):
            values = _digit_fields(block, field_start[:, c], field_end[:, c])
            if values is None:
                return None
            out.append(values)
        pos = stop
    users, items, labels = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts)
    return users, items, labels, np.arange(2, 2 + users.size, dtype=np.int64)


def _check_inter_values(path: Path, users, items, labels, linenos) -> None:
    """The checks :func:`_parse_int` and the label rule make line by line, over whole arrays."""
    for values, column in ((users, "user id"), (items, "item id")):
        big = np.flatnonzero(values >= MAX_ID)
        if big.size:
            raise _too_large(path, linenos[big[0]], column, values[big[0]])
    bad = np.flatnonzero(labels > 2)
    if bad.size:
        raise _bad_label(path, linenos[bad[0]], labels[bad[0]])


def read_inter_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse an MMRec ``.inter`` TSV; returns (users, items, labels, line numbers).

    A plain file (ASCII, ``\\n`` line ends, every line complete) is parsed with numpy in blocks of
    :data:`INTER_BLOCK` bytes (10M lines in a few seconds, memory ~ the file plus the arrays); any
    other (CRLF, blank lines, stray spaces, bad ids, non-ASCII) is read line by line, whose errors
    name the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    header_end = data.find(b"\n", start)
    if header_end > 0 and b"\r" not in data and data[start:header_end].isascii():
        header, cu, ci, cl = _inter_header(path, data[start:header_end].decode("ascii"))
        fast = _read_inter_fast(data, (cu, ci, cl), len(header), header_end + 1)
        if fast is not None and fast[0].size:
            _check_inter_values(path, *fast)
            return fast
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    del data
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header, cu, ci, cl = _inter_header(path, lines[0] if lines else "")
    width = len(header)
    users, items, labels, linenos = [], [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != width:
            raise DataError(
                f"{path}, line {lineno}: expected {width} tab-separated fields ({' '.join(header)}), "
                f"got {len(parts)}: {line[:80]!r}"
            )
        u = _parse_int(parts[cu].strip(), path, lineno, "user id")
        i = _parse_int(parts[ci].strip(), path, lineno, "item id")
        lab = _parse_int(parts[cl].strip(), path, lineno, "x_label")
        if lab > 2:
            raise _bad_label(path, lineno, lab)
        users.append(u)
        items.append(i)
        labels.append(lab)
        linenos.append(lineno)
    if not users:
        raise DataError(f"{path}: no interactions after the header")
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(labels, dtype=np.int64), np.asarray(linenos, dtype=np.int64))


def _check_duplicates(users, items, labels, linenos, n_items: int, path: Path) -> None:
    keys = users * n_items + items
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        first, second = order[dup[0]], order[dup[0] + 1]
        raise DataError(
            f"{path}: {dup.size} duplicate (user, item) pairs, e.g. user {users[first]} item "
            f"{items[first]} on lines {linenos[first]} and {linenos[second]}"
        )


def check_npy_size(fp, size: int, where) -> None:
    """Compare the data an ``.npy`` header declares (shape x item size) with the ``size`` bytes the
    file (or archive member) ``fp`` really holds, before numpy allocates the declared array: a
    header claiming 10**16 elements would otherwise end in a MemoryError, and trailing bytes (two
    arrays saved into one file) would be dropped unseen. Returns quietly when the header itself is
    unreadable or the dtype holds objects: ``np.load`` then names the fault."""
    try:
        version = np.lib.format.read_magic(fp)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fp)
        offset = fp.tell()
    except (ValueError, EOFError, OSError, TypeError):
        return
    if dtype.hasobject:
        return
    need = math.prod(shape) * dtype.itemsize
    have = size - offset
    if have != need:
        raise DataError(
            f"{where}: the .npy header declares shape {shape} of {dtype} ({need} bytes of data) but "
            f"{have} bytes follow it ({'truncated' if have < need else 'data after the array'}: "
            "write the file again with one np.save)"
        )


def read_features(folder: Path, n_items: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    """Load every ``<modality>_feat.npy`` in ``folder``; returns the features and their row count."""
    raw = {}
    for f in sorted(folder.glob("*_feat.npy")):
        try:
            with open(f, "rb") as fh:
                check_npy_size(fh, os.fstat(fh.fileno()).st_size, f)
            arr = np.load(f, allow_pickle=False)
        except DataError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            if "pickled" in str(exc):  # np.load takes any file without the .npy magic for a pickle
                exc = "no .npy header (the file does not start with the bytes \\x93NUMPY)"
            raise DataError(f"{f}: cannot read as a .npy array ({exc})") from None
        if not isinstance(arr, np.ndarray):  # np.load opens a .npz archive whatever its name
            arr.close()
            raise DataError(f"{f}: is a .npz archive, expected a .npy array (np.save of one "
                            "items x dims matrix)")
        raw[f.name[: -len("_feat.npy")]] = (f, arr)
    rows = {a.shape[0] if a.ndim else -1 for _, a in raw.values()}
    if n_items is None and raw:
        if len(rows) > 1:
            detail = ", ".join(f"{f.name}: {a.shape[0] if a.ndim else 'a scalar'}" for f, a in raw.values())
            raise DataError(f"{folder}: feature files disagree on the number of items ({detail})")
        n_items = rows.pop()
    feats = {}
    for name, (f, arr) in raw.items():
        feats.update(check_features({name: arr}, n_items, str(f)))
    return feats, n_items


def _check_range(ids: np.ndarray, linenos: np.ndarray, bound: int, path: Path, what: str, why: str):
    bad = np.flatnonzero(ids >= bound)
    if bad.size:
        k = bad[0]
        raise DataError(
            f"{path}, line {linenos[k]}: {what} id {ids[k]} out of range: {why} "
            f"({bad.size} such lines)"
        )


def read_mmrec(folder: str | Path) -> Dataset:
    """Read the MMRec layout (``<name>.inter`` + ``*_feat.npy``)."""
    folder = Path(folder)
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{folder}: expected exactly one .inter file, found {[p.name for p in inters]}")
    path = inters[0]
    users, items, labels, linenos = read_inter_file(path)
    features, n_items = read_features(folder, None)
    check_dense_ids(users, linenos, path, "user")
    if n_items is None:
        check_dense_ids(items, linenos, path, "item")
        n_items = int(items.max()) + 1
    else:
        _check_range(items, linenos, n_items, path, "item",
                     f"the feature files have {n_items} rows (one per item id)")
    n_users = int(users.max()) + 1
    _check_duplicates(users, items, labels, linenos, n_items, path)
    splits = [interactions_to_csr(users[labels == k], items[labels == k], n_users, n_items)
              for k in range(3)]
    validate_splits(*splits, where=str(path))
    graphs = read_item_graphs(folder, n_items)
    cold, rank = read_cold_items(folder, n_items)
    return Dataset(name=path.stem, train=splits[0], valid=splits[1], test=splits[2],
                   features=features, item_graphs=graphs, source=str(folder),
                   cold_items=cold, rank_cold=rank == "cold")


def _read_split_json(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``{"user": [items]}``; returns (users, items, pseudo line numbers = entry index + 1)."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: missing split file")
    obj = read_json(path, duplicate="user key {key!r} appears twice (one list per user)")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object mapping user id to a list of item ids")
    users, items, where = [], [], []
    keys: dict[int, str] = {}
    for n, (key, value) in enumerate(obj.items(), start=1):
        body = key[1:] if key.startswith("-") else key
        if not (body.isascii() and body.isdigit()):
            raise DataError(f"{path}: entry {n}: user key {key[:40]!r} is not an integer id "
                            "(decimal digits only)")
        if len(body.lstrip("0")) > _ID_DIGITS:  # int() of 4300+ digits would raise ValueError
            raise DataError(f"{path}: entry {n}: user key of {len(key)} digits is too large (ids "
                            "must be < 2**31)")
        u = int(key)
        if not 0 <= u < MAX_ID:
            raise DataError(f"{path}: entry {n}: user id {u} is negative or too large")
        if u in keys:  # '7' and '07': the same user twice, its lists would be merged unseen
            raise DataError(f"{path}: entry {n}: user key {key!r} is user {u} again (key "
                            f"{keys[u]!r}; one list per user)")
        keys[u] = key
        if not isinstance(value, list) or not all(
            type(v) is int and 0 <= v < MAX_ID for v in value
        ):
            raise DataError(f"{path}: entry {n} (user {key}): expected a list of non-negative item ids")
        users.extend([u] * len(value))
        items.extend(value)
        where.extend([n] * len(value))
    return np.asarray(users, np.int64), np.asarray(items, np.int64), np.asarray(where, np.int64)


def read_lattice(folder: str | Path) -> Dataset:
    """Read the LATTICE layout (``5-core/{train,val,test}.json`` + ``*_feat.npy``)."""
    folder = Path(folder)
    parts = {s: _read_split_json(folder / "5-core" / f) for s, f in LATTICE_SPLIT_FILES.items()}
    features, n_items = read_features(folder, None)
    for s, (u, i, entry) in parts.items():
        path = folder / "5-core" / LATTICE_SPLIT_FILES[s]
        check_dense_ids(u, entry, path, "user", unit="entry")
        if n_items is None:
            check_dense_ids(i, entry, path, "item", unit="entry")
    max_item = max(int(p[1].max()) if p[1].size else -1 for p in parts.values())
    if n_items is None:
        n_items = max_item + 1
    n_users = max(int(p[0].max()) if p[0].size else -1 for p in parts.values()) + 1
    splits = []
    for s, (u, i, entry) in parts.items():
        path = folder / "5-core" / LATTICE_SPLIT_FILES[s]
        bad = np.flatnonzero(i >= n_items)
        if bad.size:
            raise DataError(
                f"{path}: entry {entry[bad[0]]} (user {u[bad[0]]}): item id {i[bad[0]]} out of range: "
                f"the feature files have {n_items} rows"
            )
        keys = u * n_items + i
        if np.unique(keys).size != keys.size:
            _, first, counts = np.unique(keys, return_index=True, return_counts=True)
            k = first[np.flatnonzero(counts > 1)[0]]
            raise DataError(f"{path}: entry {entry[k]} (user {u[k]}): item {i[k]} listed twice")
        splits.append(interactions_to_csr(u, i, n_users, n_items))
    validate_splits(*splits, where=str(folder / "5-core"))
    graphs = read_item_graphs(folder, n_items)
    cold, rank = read_cold_items(folder, n_items)
    return Dataset(name=folder.name, train=splits[0], valid=splits[1], test=splits[2],
                   features=features, item_graphs=graphs, source=str(folder),
                   cold_items=cold, rank_cold=rank == "cold")


def read_item_graphs(folder: Path, n_items: int) -> dict[str, np.ndarray]:
    """Precomputed item-item graphs: ``item_knn*.npz`` holding ``(E, 2)`` (item, neighbour) arrays."""
    graphs: dict[str, np.ndarray] = {}
    source: dict[str, Path] = {}
    for f in sorted(folder.glob("item_knn*.npz")):
        try:
            z = np.load(f, allow_pickle=False)
            if isinstance(z, np.lib.npyio.NpzFile):
                with z:
                    for info in z.zip.infolist():
                        if info.filename.endswith(".npy"):
                            with z.zip.open(info) as member:
                                check_npy_size(member, info.file_size,
                                               f"{f}: graph {info.filename[:-4]!r}")
                    arrays = {name: np.asarray(z[name]) for name in z.files}
        except DataError:
            raise
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method;
        # zlib.error: a corrupt deflate stream
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
                zlib.error) as exc:
            raise DataError(f"{f}: cannot read as a .npz archive of item pairs ({exc})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{f}: is a .npy array, expected a .npz archive of (E, 2) item-pair "
                            "arrays (np.savez)")
        for name, pairs in arrays.items():
            where = f"{f}: graph {name!r}"
            if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
                raise DataError(f"{where}: expected an (E, 2) integer array of item pairs")
            if pairs.size and (pairs.min() < 0 or pairs.max() >= n_items):
                raise DataError(f"{where}: item ids must lie in [0, {n_items})")
            if name in graphs:  # item_knn5.npz and item_knn10.npz both with 'image': which one?
                raise DataError(f"{where}: a graph of this name is also in {source[name]} (one "
                                "graph per name: rename one array or remove one file)")
            graphs[name] = pairs.astype(np.int64)
            source[name] = f
    return graphs
