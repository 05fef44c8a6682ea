"""The exported model folder (SERVE_SPEC.md): write it, load it and check every byte of it.

A model folder holds ``manifest.json``, ``arrays.safetensors``, ``ids.json``, ``README.md`` and,
once items were added through the service, ``added_items.safetensors`` + ``added_items.json``.
Only numpy, json and safetensors are used here: loading a model never imports torch and never
unpickles anything. Every check names the file and the field that failed it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save as st_save

from latticerec import __version__
from latticerec.errors import LatticeRecError
from latticerec.io import atomic_write_bytes, atomic_write_json

FORMAT = "latticerec-model"
FORMAT_VERSION = 1
MANIFEST, ARRAYS, IDS, CARD = "manifest.json", "arrays.safetensors", "ids.json", "README.md"
ADDED_ARRAYS, ADDED_JSON = "added_items.safetensors", "added_items.json"
DTYPES = ("float32", "int64", "int32")
FOLD_PREFIX = "fold."
MAX_SCORE = 1e30  # bound on ||u|| ||x|| and ||x||^2 (float32 overflows past 3.4e38)


class ArtifactError(LatticeRecError, ValueError):
    """A model folder is missing a file, or a file does not match the manifest."""


@dataclass
class ModelArtifact:
    """An exported model in memory (``path`` is None for one never written)."""

    manifest: dict
    user_repr: np.ndarray  # (U, d) float32
    item_repr: np.ndarray  # (I, d) float32
    train_indptr: np.ndarray  # (U + 1,) int64
    train_indices: np.ndarray  # (nnz,) int32
    user_ids: list[str]
    item_ids: list[str]
    titles: list[str] | None = None
    fold: dict[str, np.ndarray] = field(default_factory=dict)  # fold-in arrays, prefix stripped
    added_repr: np.ndarray | None = None  # (A, d) float32: items added through POST /items
    added_ids: list[str] = field(default_factory=list)
    added_neighbours: list = field(default_factory=list)
    path: Path | None = None

    @property
    def model(self) -> str:
        return str(self.manifest.get("model", "?"))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"user_repr": self.user_repr, "item_repr": self.item_repr,
                "train_indptr": self.train_indptr, "train_indices": self.train_indices,
                **{FOLD_PREFIX + k: v for k, v in self.fold.items()}}


def array_specs(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}


def make_manifest(model: str, config: dict, dataset: dict, metrics: dict, arrays: dict[str, np.ndarray],
                  fold_in: dict, created: str) -> dict:
    """The manifest of SERVE_SPEC.md (``created`` in ISO 8601 UTC)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "latticerec_version": __version__,
            "model": model, "config": config, "dataset": dataset, "metrics": metrics,
            "created": created, "arrays": array_specs(arrays), "fold_in": fold_in}


def write_model_dir(art: ModelArtifact, out_dir: str | Path, card: str, overwrite: bool = False) -> Path:
    """Write ``art`` as a model folder. The folder is assembled beside ``out_dir`` and renamed into
    place, so a reader sees either no model or a whole one; an existing ``out_dir`` is refused
    unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: already exists; choose another --out or pass --overwrite")
    for name, arr in art.arrays().items():
        if str(arr.dtype) not in DTYPES:
            raise ArtifactError(f"array {name!r}: dtype {arr.dtype} is not one of {', '.join(DTYPES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (the umask's mode, like the files inside), not mkdtemp's 0700: a model folder is
    # served by whoever may read it, often another account than the one that exported it
    tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in art.arrays().items()}
        atomic_write_bytes(tmp / ARRAYS, st_save(arrays))
        atomic_write_json(tmp / IDS, {"users": art.user_ids, "items": art.item_ids, "titles": art.titles})
        atomic_write_bytes(tmp / CARD, card.encode())
        atomic_write_json(tmp / MANIFEST, art.manifest)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    art.path = out
    return out


# -- loading -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> object:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (is {path.parent} a folder written by 'latticerec export'?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # also a 5000-digit number, [[[[... too deep
        raise ArtifactError(f"{path}: unreadable JSON ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return st_load_file(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, SafetensorError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


def _check_manifest(man: object, where: Path) -> dict:
    if not isinstance(man, dict):
        raise ArtifactError(f"{where}: expected a JSON object")
    if man.get("format") != FORMAT:
        raise ArtifactError(f"{where}: field 'format' is {man.get('format')!r}, expected {FORMAT!r}")
    if man.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{where}: field 'format_version' is {man.get('format_version')!r}; this "
                            f"latticerec ({__version__}) reads version {FORMAT_VERSION}: re-export the run")
    for key, kind in (("arrays", dict), ("fold_in", dict), ("dataset", dict), ("model", str)):
        if not isinstance(man.get(key), kind):
            raise ArtifactError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    for name, spec in man["arrays"].items():
        if not (isinstance(spec, dict) and isinstance(spec.get("shape"), list)
                and all(type(s) is int and s >= 0 for s in spec["shape"]) and spec.get("dtype") in DTYPES):
            raise ArtifactError(f"{where}: field 'arrays.{name}' needs a shape (list of sizes) and a dtype "
                                f"in {', '.join(DTYPES)}")
    return man


def check_arrays(arrays: dict[str, np.ndarray], specs: dict, where: Path) -> None:
    """Every array of the manifest present with its shape and dtype, nothing else, all finite."""
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise ArtifactError(f"{where}: array {missing[0]!r} listed in {MANIFEST} is missing")
    extra = sorted(set(arrays) - set(specs))
    if extra:
        raise ArtifactError(f"{where}: array {extra[0]!r} is not listed in {MANIFEST}")
    for name, spec in specs.items():
        arr = arrays[name]
        if str(arr.dtype) != spec["dtype"]:
            raise ArtifactError(f"{where}: array {name!r} has dtype {arr.dtype}, the manifest says "
                                f"{spec['dtype']}")
        if list(arr.shape) != spec["shape"]:
            raise ArtifactError(f"{where}: array {name!r} has shape {list(arr.shape)}, the manifest says "
                                f"{spec['shape']}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{where}: array {name!r} contains NaN or inf")


def _check_core(arrays: dict[str, np.ndarray], man: dict, where: Path) -> None:
    for name, dtype, ndim in (("user_repr", "float32", 2), ("item_repr", "float32", 2),
                              ("train_indptr", "int64", 1), ("train_indices", "int32", 1)):
        if name not in arrays:
            raise ArtifactError(f"{where}: required array {name!r} is missing")
        if str(arrays[name].dtype) != dtype or arrays[name].ndim != ndim:
            raise ArtifactError(f"{where}: array {name!r} must be a {ndim}-D {dtype} array")
    users, items = arrays["user_repr"], arrays["item_repr"]
    if users.shape[1] != items.shape[1]:
        raise ArtifactError(f"{where}: user_repr is {users.shape[1]}-d but item_repr is {items.shape[1]}-d")
    ds = man["dataset"]
    if (ds.get("n_users"), ds.get("n_items")) != (users.shape[0], items.shape[0]):
        raise ArtifactError(f"{where}: {users.shape[0]} users x {items.shape[0]} items, but the manifest's "
                            f"dataset has {ds.get('n_users')!r} x {ds.get('n_items')!r}")
    _check_scores_fit(users, items, where)
    indptr, indices = arrays["train_indptr"], arrays["train_indices"]
    if indptr.shape[0] != users.shape[0] + 1 or indptr[0] != 0 or indptr[-1] != indices.shape[0] \
            or (np.diff(indptr) < 0).any():
        raise ArtifactError(f"{where}: train_indptr is not a CSR row pointer over {users.shape[0]} users "
                            f"and {indices.shape[0]} interactions")
    if indices.size and (indices.min() < 0 or indices.max() >= items.shape[0]):
        raise ArtifactError(f"{where}: train_indices holds item indices outside [0, {items.shape[0]})")


def _max_norm(arr: np.ndarray) -> float:
    """The largest row norm (float32 squares, then the largest or overflowing rows in float64)."""
    if not arr.size:
        return 0.0
    with np.errstate(over="ignore"):
        sq = np.einsum("ij,ij->i", arr, arr)
    top = arr[(sq == sq.max()) | ~np.isfinite(sq)].astype(np.float64)
    return float(np.sqrt((top ** 2).sum(1).max()))


def _check_scores_fit(users: np.ndarray, items: np.ndarray, where: Path, name: str = "item_repr") -> None:
    """Finite is not enough: a score u . x (and a cosine's ||x||^2) must stay well inside float32, or
    an item scores inf and is dropped, or every cosine is 0 (MAX_SCORE bounds ||u|| ||x||)."""
    nu, ni = _max_norm(users), _max_norm(items)
    if max(nu, ni) * ni > MAX_SCORE:
        raise ArtifactError(f"{where}: array {name!r} (rows of norm up to {ni:.3g}) and 'user_repr' (up to "
                            f"{nu:.3g}) are too large: their scores would overflow float32")


def _check_ids(ids: object, n_users: int, n_items: int, where: Path) -> tuple[list, list, list | None]:
    if not isinstance(ids, dict):
        raise ArtifactError(f"{where}: expected a JSON object with users, items, titles")
    out = []
    for key, n in (("users", n_users), ("items", n_items)):
        vals = ids.get(key)
        if not isinstance(vals, list) or len(vals) != n or not all(isinstance(v, str) for v in vals):
            raise ArtifactError(f"{where}: field {key!r} must list {n} id strings (one per array row)")
        if len(set(vals)) != n:
            raise ArtifactError(f"{where}: field {key!r} lists an id twice")
        out.append(vals)
    titles = ids.get("titles")
    if titles is not None and (not isinstance(titles, list) or len(titles) != n_items
                               or not all(isinstance(t, str) for t in titles)):
        raise ArtifactError(f"{where}: field 'titles' must be null or list {n_items} strings")
    return out[0], out[1], titles


def _load_added(path: Path, users: np.ndarray, item_ids: list[str], n_items: int):
    dim = users.shape[1]
    meta_path, arr_path = path / ADDED_JSON, path / ADDED_ARRAYS
    if not meta_path.exists() and not arr_path.exists():
        return np.zeros((0, dim), np.float32), [], []
    meta = _read_json(meta_path)
    arrays = _read_safetensors(arr_path)
    rep = arrays.get("item_repr")
    if not isinstance(meta, dict) or not isinstance(meta.get("items"), list) \
            or not all(isinstance(i, str) for i in meta["items"]):
        raise ArtifactError(f"{meta_path}: field 'items' must list id strings")
    ids = meta["items"]
    if rep is None or rep.dtype != np.float32 or rep.ndim != 2 or rep.shape[1] != dim \
            or rep.shape[0] not in (len(ids), len(ids) + 1) or set(arrays) != {"item_repr"}:
        raise ArtifactError(f"{arr_path}: expected one float32 array 'item_repr' of shape "
                            f"[{len(ids)}, {dim}]")
    rep = rep[: len(ids)]  # one more row: a POST that crashed between the two writes (never answered)
    if not np.isfinite(rep).all():
        raise ArtifactError(f"{arr_path}: array 'item_repr' contains NaN or inf")
    _check_scores_fit(users, rep, arr_path)
    if len(set(ids)) != len(ids) or set(ids) & set(item_ids):
        raise ArtifactError(f"{meta_path}: field 'items' repeats an id or reuses a trained item's id")
    nbrs = meta.get("neighbours")
    if not isinstance(nbrs, list) or len(nbrs) != len(ids) or not all(
            isinstance(row, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                          and isinstance(p[1], int | float) for p in row) for row in nbrs):
        raise ArtifactError(f"{meta_path}: field 'neighbours' must hold one [[item, weight], ...] list "
                            "per added item")
    return rep, ids, nbrs


def load_model_dir(path: str | Path) -> ModelArtifact:
    """Load and check a model folder; :class:`ArtifactError` naming the file and field otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such model folder (write one with 'latticerec export')")
    man = _check_manifest(_read_json(path / MANIFEST), path / MANIFEST)
    arrays = _read_safetensors(path / ARRAYS)
    check_arrays(arrays, man["arrays"], path / ARRAYS)
    _check_core(arrays, man, path / ARRAYS)
    n_users, n_items = arrays["user_repr"].shape[0], arrays["item_repr"].shape[0]
    users, items, titles = _check_ids(_read_json(path / IDS), n_users, n_items, path / IDS)
    added, added_ids, nbrs = _load_added(path, arrays["user_repr"], items, n_items)
    fold = {k[len(FOLD_PREFIX):]: v for k, v in arrays.items() if k.startswith(FOLD_PREFIX)}
    return ModelArtifact(manifest=man, user_repr=arrays["user_repr"], item_repr=arrays["item_repr"],
                         train_indptr=arrays["train_indptr"], train_indices=arrays["train_indices"],
                         user_ids=users, item_ids=items, titles=titles, fold=fold, added_repr=added,
                         added_ids=added_ids, added_neighbours=nbrs, path=path)


def save_added(path: Path, reprs: np.ndarray, ids: list[str], neighbours: list) -> None:
    """Rewrite the added items (representations first, then the list that names them: a reader
    that finds the two disagreeing after a crash gets a clear error, never a wrong item)."""
    atomic_write_bytes(path / ADDED_ARRAYS, st_save({"item_repr": np.ascontiguousarray(reprs, np.float32)}))
    atomic_write_json(path / ADDED_JSON, {"items": ids, "neighbours": neighbours})
