"""Placing a new item among the trained ones from its content, without retraining (the interface of
SERVE_SPEC.md; numpy only at serving time, torch only inside :func:`fold_in_arrays`).

This version covers two kinds:

* ``"none"``: a model without content (MF, LightGCN, NGCF): a new item cannot be placed;
* ``"cb"``: the content-based model. A new item's representation is computed exactly as CB computes
  every item: the early fusion of its modalities (:mod:`latticerec.graphs.fusion`), L2-normalised,
  ``f̂ = fuse(e^1, ..., e^M) / ‖fuse(e^1, ..., e^M)‖``; its neighbours are the trained items of
  highest cosine ``f̂ · f̂_j``.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

N_NEIGHBOURS = 10


def check_features(features: dict, modalities: dict[str, int]) -> dict[str, np.ndarray]:
    """Each modality's vector as float64 ``(d_m,)``; ValueError naming the modality otherwise."""
    if not isinstance(features, dict):
        raise ValueError("features: expected an object mapping modality name to a vector")
    unknown = sorted(set(features) - set(modalities))
    if unknown:
        raise ValueError(f"modality {unknown[0]!r}: not a modality of this model "
                         f"(expected {', '.join(modalities)})")
    out = {}
    for name, dim in modalities.items():
        if name not in features:
            raise ValueError(f"modality {name!r}: missing (this model needs {dim} numbers for it)")
        try:
            vec = np.asarray(features[name], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"modality {name!r}: expected a list of numbers") from None
        if vec.ndim != 1 or vec.shape[0] != dim:
            raise ValueError(f"modality {name!r}: expected {dim} numbers, got shape {list(vec.shape)}")
        if not np.isfinite(vec).all():
            raise ValueError(f"modality {name!r}: contains NaN or inf")
        out[name] = vec
    return out


def _unit(vec: np.ndarray, name: str) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        raise ValueError(f"modality {name!r}: the vector is all zeros (it cannot be normalised)")
    return vec / norm


class CBFoldIn:
    """CB's item representation of new content: ``f̂ = fuse(e) / ‖fuse(e)‖`` (fusion as at training)."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        self.modalities = {str(m): int(d) for m, d in spec["modalities"].items()}
        self.fusion = str(spec["fusion"])
        self.n_neighbours = int(spec.get("n_neighbours", N_NEIGHBOURS))
        self.item_unit = arrays["item_unit"]
        self.proj = {m: arrays[f"proj.{m}"].astype(np.float64) for m in self.modalities
                     if f"proj.{m}" in arrays}

    def fuse(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """One row of :func:`latticerec.graphs.fusion.fuse_features`."""
        if self.fusion == "mean":
            return np.mean([feats[m] for m in self.modalities], axis=0)
        unit = [_unit(feats[m], m) for m in self.modalities]
        if self.fusion == "concat":
            return np.concatenate(unit) / len(unit) ** 0.5
        projected = [u if m not in self.proj else _unit(u @ self.proj[m], m)
                     for m, u in zip(self.modalities, unit, strict=True)]
        return np.mean(projected, axis=0)

    def place(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[int, float]]]:
        fused = self.fuse(check_features(features, self.modalities))
        norm = float(np.linalg.norm(fused))
        if norm == 0.0:
            raise ValueError(f"modality {next(iter(self.modalities))!r}: the fused features are all zeros")
        rep = (fused / norm).astype(np.float32)
        sims = self.item_unit @ rep
        k = min(self.n_neighbours, sims.shape[0])
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return rep, [(int(i), float(sims[i])) for i in top]


def _cb_arrays(model, dataset) -> tuple[dict, dict[str, np.ndarray]]:
    """Find the fusion rule and modality order whose output is the model's ``item_unit`` (the CB
    model keeps the fused features, not its config), then store what re-computes it."""
    import torch
    import torch.nn.functional as F

    from latticerec.graphs.fusion import FUSIONS, fuse_features, random_projection

    target = model.item_unit.detach().cpu().float()
    feats = {m: torch.as_tensor(f).float() for m, f in dataset.features.items()}
    for r in range(len(feats), 0, -1):
        for names in permutations(feats, r):
            for how in FUSIONS:
                try:
                    fused = F.normalize(fuse_features([feats[m] for m in names], how), p=2, dim=1)
                except ValueError:
                    continue
                if fused.shape == target.shape and torch.allclose(fused, target, atol=1e-5):
                    dims = {m: int(feats[m].shape[1]) for m in names}
                    arrays = {"item_unit": target.numpy().astype(np.float32)}
                    if how == "norm_mean" and len(names) > 1:
                        common = max(dims.values())
                        arrays.update({f"proj.{m}": random_projection(d, common).numpy()
                                       for m, d in dims.items() if d != common})
                    return ({"kind": "cb", "fusion": how, "modalities": dims,
                             "n_neighbours": N_NEIGHBOURS}, arrays)
    raise ValueError("cb: no fusion of the dataset's features reproduces the model's item features")


def fold_in_arrays(model, dataset) -> tuple[dict, dict[str, np.ndarray]]:
    """At export: the manifest's ``fold_in`` spec and the arrays that place a new item."""
    from latticerec.models.cb import ContentBased

    if isinstance(model, ContentBased):
        return _cb_arrays(model, dataset)
    return {"kind": "none"}, {}


def load_fold_in(spec: dict, arrays: dict[str, np.ndarray]) -> CBFoldIn | None:
    """The fold-in of an exported model; None for a model without content."""
    kind = spec.get("kind")
    if kind == "none":
        return None
    if kind == "cb":
        return CBFoldIn(spec, arrays)
    raise ValueError(f"fold_in kind {kind!r} is not known to this version of latticerec")
