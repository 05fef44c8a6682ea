"""Build an Amazon 2014 category (McAuley et al.) in the MMRec layout, as LATTICE and MICRO did.

Inputs (each streamed; gzip or plain, detected from the first bytes):

* ``reviews_<Cat>_5.json.gz``: JSON lines with ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``.
* ``meta_<Cat>.json.gz``: one Python dict literal per line, parsed with :func:`ast.literal_eval`
  (never ``eval``); only lines of items that survive the core filter are parsed.
* ``image_features_<Cat>.b``: records of a 10-byte ASIN followed by 4096 little-endian float32.

Steps: drop duplicate (user, item) reviews, iterative k-core filter, ids in sorted reviewerID / ASIN
order, seeded per-user split (:func:`latticerec.data.synthetic.split_per_user`), item text = title +
brand + categories + description encoded by a sentence-transformers model, visual features from the
binary file with the mean vector for items that have none. Malformed lines are counted and reported
with their line numbers; only more than ``max_bad`` of them is fatal.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import re
from collections.abc import Iterator
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

ASIN_BYTES = 10
IMAGE_DIM = 4096
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


class _Counting(io.RawIOBase):
    """A read-only wrapper that advances a progress bar by the bytes read from the file on disk."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.raw.readinto(buf)
        self.bar.update(n or 0)
        return n


def iter_lines(path: Path, desc: str, progress: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, raw line)`` of a gzip or plain text file, with a progress bar in bytes
    of the file on disk."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as raw, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                       desc=desc, disable=not progress, leave=False) as bar:
        counted = io.BufferedReader(_Counting(raw, bar), buffer_size=1 << 20)
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=counted) if gz else counted
        try:
            yield from enumerate(stream, start=1)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None


def read_reviews(path: Path, max_bad: float = 0.01, progress: bool = True):
    """Stream the reviews file; returns (user codes, item codes, user raw, item raw, rating,
    timestamp, BadLines)."""
    bad = BadLines(Path(path), limit=max_bad)
    umap: dict[str, int] = {}
    imap: dict[str, int] = {}
    us, its, rs, ts = [], [], [], []
    for lineno, line in iter_lines(path, f"reviews {Path(path).name}", progress):
        if not line.strip():
            continue
        bad.total += 1
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.add(lineno, f"invalid JSON ({getattr(exc, 'msg', exc)})")
            continue
        if not isinstance(obj, dict):
            bad.add(lineno, "not a JSON object")
            continue
        u, i = obj.get("reviewerID"), obj.get("asin")
        if not isinstance(u, str) or not isinstance(i, str) or not u or not i:
            bad.add(lineno, "missing reviewerID or asin")
            continue
        try:
            r = float(obj.get("overall", 0.0) or 0.0)
            t = int(obj.get("unixReviewTime", 0) or 0)
        except (TypeError, ValueError):
            bad.add(lineno, "overall/unixReviewTime is not a number")
            continue
        us.append(umap.setdefault(u, len(umap)))
        its.append(imap.setdefault(i, len(imap)))
        rs.append(r)
        ts.append(t)
    if not us:
        raise DataError(f"{path}: no valid reviews ({bad.count} malformed lines)")
    return (np.asarray(us, np.int64), np.asarray(its, np.int64), np.asarray(list(umap), dtype=object),
            np.asarray(list(imap), dtype=object), np.asarray(rs, np.float64), np.asarray(ts, np.int64),
            bad)


def item_text(meta: dict) -> str:
    """Title + brand + categories + description, as one string."""
    parts: list[str] = []
    for key in ("title", "brand"):
        v = meta.get(key)
        if isinstance(v, str) and v.strip():
            parts.append(v.strip())
    cats = meta.get("categories") or []
    seen: list[str] = []
    for path in cats if isinstance(cats, list) else []:
        for c in path if isinstance(path, list) else [path]:
            if isinstance(c, str) and c.strip() and c.strip() not in seen:
                seen.append(c.strip())
    if seen:
        parts.append(", ".join(seen))
    desc = meta.get("description")
    if isinstance(desc, list):
        desc = " ".join(d for d in desc if isinstance(d, str))
    if isinstance(desc, str) and desc.strip():
        parts.append(desc.strip())
    return ". ".join(parts)


def read_meta(path: Path, wanted: set[str], max_bad: float = 0.01,
              progress: bool = True) -> tuple[dict[str, str], BadLines]:
    """Texts of the ``wanted`` ASINs from the metadata file (dict literals, ``ast.literal_eval``)."""
    bad = BadLines(Path(path), limit=max_bad)
    texts: dict[str, str] = {}
    for lineno, line in iter_lines(path, f"meta {Path(path).name}", progress):
        if not line.strip():
            continue
        bad.total += 1
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(lineno, "not UTF-8")
            continue
        m = _ASIN_RE.search(s)
        if m is not None and m.group(1) not in wanted:
            continue  # not needed: skip the (costly) parse
        try:
            obj = ast.literal_eval(s.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
            bad.add(lineno, f"not a Python dict literal ({type(exc).__name__})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("asin"), str):
            bad.add(lineno, "no 'asin' key")
            continue
        if obj["asin"] in wanted and obj["asin"] not in texts:
            texts[obj["asin"]] = item_text(obj)
    return texts, bad


def read_image_features(path: Path, wanted: dict[str, int], dim: int = IMAGE_DIM,
                        progress: bool = True, block: int = 512) -> tuple[np.ndarray, np.ndarray, dict]:
    """Visual features of the ``wanted`` ASINs (ASIN -> row) from the binary file, streamed in blocks
    of records. Returns (features, found mask, report); rows not found are zero."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rec = np.dtype([("asin", f"S{ASIN_BYTES}"), ("feat", "<f4", (dim,))])
    size = path.stat().st_size
    feats = np.zeros((len(wanted), dim), dtype=np.float32)
    found = np.zeros(len(wanted), dtype=bool)
    n_records = non_finite = 0
    bad_examples: list[str] = []
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True,
                                      desc=f"images {path.name}", disable=not progress,
                                      leave=False) as bar:
        while True:
            buf = fh.read(rec.itemsize * block)
            if not buf:
                break
            bar.update(len(buf))
            whole = len(buf) // rec.itemsize
            if whole * rec.itemsize != len(buf):
                bad_examples.append(f"record {n_records + whole + 1}: truncated at the end of the file "
                                    f"({len(buf) - whole * rec.itemsize} of {rec.itemsize} bytes)")
            recs = np.frombuffer(buf, dtype=rec, count=whole)
            for k, a in enumerate(recs["asin"]):
                row = wanted.get(a.decode("ascii", "replace").strip("\x00 "))
                if row is None or found[row]:
                    continue
                f = recs["feat"][k]
                if not np.isfinite(f).all():
                    non_finite += 1
                    if len(bad_examples) < 20:
                        bad_examples.append(f"record {n_records + k + 1}: NaN or inf values")
                    continue
                feats[row] = f
                found[row] = True
            n_records += whole
    if size and size % rec.itemsize and size < rec.itemsize:
        raise DataError(f"{path}: smaller than one record ({rec.itemsize} bytes: a {ASIN_BYTES}-byte "
                        f"ASIN and {dim} float32); is --image-dim right?")
    report = {"file": str(path), "records": n_records, "matched": int(found.sum()),
              "missing": int((~found).sum()), "skipped": bad_examples}
    return feats, found, report


def build_amazon(reviews: str | Path, out: str | Path, *, meta: str | Path | None = None,
                 images: str | Path | None = None, name: str | None = None, core: int = 5,
                 seed: int = 0, text_model: str | None = "all-MiniLM-L6-v2", image_dim: int = IMAGE_DIM,
                 max_bad: float = 0.01, batch_size: int = 64, progress: bool = True, log=print) -> dict:
    """Build the dataset into ``out`` (see module docstring); returns the build report, also written
    to ``out/build_report.json``. ``text_model=None`` skips text features."""
    reviews, out = Path(reviews), Path(out)
    with staged_folder(out, [reviews, meta, images]) as tmp:
        if name is None:
            m = re.match(r"reviews_(.+?)(_\d+)?\.json", reviews.name)
            name = m.group(1).lower() if m else reviews.name.split(".")[0]
        ucode, icode, uraw, iraw, rating, stamp, bad = read_reviews(reviews, max_bad, progress)
        bad.check(log)
        idx = dedupe_pairs(ucode, icode)
        n_dupes = len(ucode) - len(idx)
        idx = idx[k_core(ucode[idx], icode[idx], core)]
        if not len(idx):
            raise DataError(f"{reviews}: no interactions left after the {core}-core filter")
        users, user_raw = dense_ids(ucode[idx], uraw)
        items, item_raw = dense_ids(icode[idx], iraw)
        n_items = len(item_raw)
        labels = split_per_user(users, items, np.random.default_rng(seed))
        report: dict = {"name": name, "core": core, "seed": seed, "reviews": bad.to_dict(),
                        "duplicates_dropped": n_dupes, "users": len(user_raw), "items": n_items,
                        "interactions": len(idx), "train": int((labels == 0).sum()),
                        "valid": int((labels == 1).sum()), "test": int((labels == 2).sum()),
                        "users_dropped_by_core": int(len(uraw) - len(user_raw)),
                        "items_dropped_by_core": int(len(np.unique(icode)) - n_items)}
        features: dict[str, np.ndarray] = {}
        row_of = {str(a): k for k, a in enumerate(item_raw)}
        if images is not None:
            feats, found, img_report = read_image_features(Path(images), row_of, image_dim, progress)
            if not found.any():
                raise DataError(f"{images}: none of the {n_items} items has a visual feature record "
                                "(wrong category file?)")
            feats[~found] = feats[found].mean(0)
            features["image"] = feats
            report["images"] = img_report
            if img_report["missing"]:
                log(f"{img_report['missing']} of {n_items} items have no image features: "
                    "they get the mean vector")
        if meta is not None:
            texts, meta_bad = read_meta(Path(meta), set(row_of), max_bad, progress)
            meta_bad.check(log)
            report["meta"] = {**meta_bad.to_dict(), "items_with_text": len(texts),
                              "items_without_text": n_items - len(texts)}
            if text_model is not None:
                from latticerec.datasets.encode import encode_texts

                has = np.asarray([str(a) in texts and bool(texts[str(a)]) for a in item_raw])
                if not has.any():
                    raise DataError(f"{meta}: no metadata text for any of the {n_items} items")
                enc = encode_texts([texts[str(a)] for a in item_raw[has]], text_model, batch_size, progress)
                text_feat = np.empty((n_items, enc.shape[1]), dtype=np.float32)
                text_feat[has] = enc
                text_feat[~has] = enc.mean(0)
                features["text"] = text_feat
                report["text_model"] = text_model
                if (~has).any():
                    log(f"{int((~has).sum())} of {n_items} items have no text: they get the mean vector")
        write_mmrec(tmp, name, users, items, labels, features=features, user_raw=user_raw,
                    item_raw=item_raw, raw_names=("reviewerID", "asin"),
                    extra={"rating": rating[idx], "timestamp": stamp[idx]})
        atomic_write_json(tmp / "build_report.json", report)
        return report
