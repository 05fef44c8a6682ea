"""Inductive fold-in: place a new item among the trained ones from its content alone.

A new item has no interactions and no trained ID embedding; what the model knows of it is its
features. It is placed by the model's own mechanism, exactly as the model computes a warm item
(equation numbers of the MICRO paper, section 3, which restates LATTICE):

* eq. 1-3  its row in each initial content graph ``S̃_m``: cosine top-k of its raw feature against
           every trained item's (negatives suppressed to 0; the item itself is a candidate with its
           own similarity 1, ties to the lower index, the new item counting as the last), then
           ``w_ij = s_ij / sqrt(d_i d_j)`` with ``d_i`` its row sum and ``d_j`` the neighbour's
           row sum in the trained graph (:func:`latticerec.graphs.knn.symmetric_normalize`);
* eq. 4    its row in each learned graph ``Ã_m``: the same on ``ẽ = W_m f + b_m`` against the
           trained items' projections;
* eq. 5    ``A_m = λ S̃_m + (1 - λ) Ã_m``; LATTICE then sums ``A = Σ_m α_m A_m``;
* eq. 6    ``h^(l) = Σ_j A_ij H_j^(l-1) + A_ii h^(l-1)``, ``l = 1..L``: the convolution from its
           neighbours' layer ``l-1`` embeddings ``H^(l-1)`` (exported) plus its self-loop;
           ``h^(0) = 0`` (no ID embedding) or, with ``feats_input``, ``mean_m ẽ_m``;
* MICRO    the per-modality ``h^m`` are fused by eq. 7-8 (shared attention) and eq. 11-15
           (specific parts, second attention);
* the representation is ``c + h / ‖h‖`` (repeated per block for NGCF). ``c`` is the collaborative
  part, chosen at export (``cf_part``):

  - ``"neighbours"`` (the default): ``c = Σ_j w_j x̃_j / Σ_j w_j`` over the new item's graph
    neighbours ``j`` (the row shown by :meth:`FoldIn.place`: ``A`` for LATTICE, the mean of the
    ``A_m`` for MICRO, ``E^m`` for MM-GEF) with their final backbone representations ``x̃_j``: one
    more light convolution on the item graph, now of the backbone's output, standing in for the
    collaborative signal the new item has not collected yet (an item without neighbours gets the
    ``"isolated"`` part);
  - ``"isolated"``: exactly what the backbone gives an item without interactions and with a zero
    ID embedding (0 for MF and LightGCN; NGCF's layers of the biases alone), i.e. the model's own
    output for such an item, nothing added.

  Users were trained against ``x̃_i + h_i/‖h_i‖``; with ``"isolated"`` a new item meets them with the
  second term only, which carries less of the ranking (docs/inductive.md measures both).

Warm items are left as they are (a new item never changes a trained item's row), so the new item's
score for user ``u`` is ``user_repr[u] · place(...)[0]``.

MM-GEF places it by LATTICE's rows on its early-fused feature (``E^m``); a new item co-occurs with
nothing, so its ``E^c`` row is 0 and eq. 5's attention weighs its content view against a zero view.
CB places a new item by its normalised early-fused feature (its item representation).
Models without content (MF, LightGCN, NGCF) have kind ``"none"``.

Export side: :func:`fold_in_arrays` (imports torch inside). Placing side: :func:`load_fold_in` and
:class:`FoldIn`, numpy only: this module never imports torch at import time.

The learned graphs of a trained model were last rebuilt at the start of its best epoch, with that
epoch's ``W_m``; only the final ``W_m`` is saved, so a new item's learned rows (and the neighbours'
degrees ``d_j`` they are normalised with) use the final ``W_m`` on every item's features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("none", "cb", "lattice", "micro", "mmgef")
CF_PARTS = ("neighbours", "isolated")
EPS = 1e-12  # F.normalize's epsilon
MAX_NORM = 1e30  # larger feature vectors would overflow float32 in the projections


def _unit(x: np.ndarray) -> np.ndarray:
    """``x / max(‖x‖, ε)`` along the last axis (torch's F.normalize)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, EPS)).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# --------------------------------------------------------------------------------------- export --
def _isolated_item(backbone):
    """What the backbone outputs for an item with no interactions and a zero ID embedding."""
    import torch
    import torch.nn.functional as F

    from latticerec.models.backbones import MF, NGCF, LightGCN

    d = backbone.embed_dim
    if isinstance(backbone, (MF, LightGCN)):  # MF: the ID row; LightGCN: isolated node, layer mean
        return torch.zeros(d)
    if isinstance(backbone, NGCF):  # side messages are 0: each layer is the biases' LeakyReLU
        x, layers = torch.zeros(1, d), [torch.zeros(1, d)]
        zero = torch.zeros(1, d)
        for w_gc, w_bi in zip(backbone.w_gc, backbone.w_bi, strict=True):
            x = F.leaky_relu(w_gc(x), 0.2) + F.leaky_relu(w_bi(zero), 0.2)
            layers.append(F.normalize(x, p=2, dim=1))
        return torch.cat(layers, dim=1)[0]
    raise ValueError(f"fold-in does not know backbone {type(backbone).__name__}")


def _row_degrees(features, neighbours):
    """``d_i = Σ_j max(cos(f_i, f_j), 0)`` over each row's stored neighbours (eq. 1, 3)."""
    from latticerec.graphs.knn import knn_values

    return knn_values(features, neighbours).sum(1)


def _graph_arrays(structure, features: dict, learn: bool) -> dict:
    """Unit features and row degrees of the initial (``raw``) and learned (``proj``) graphs."""
    import torch
    import torch.nn.functional as F

    from latticerec.graphs.knn import knn_indices

    out = {}
    for m in structure.names:
        unit = F.normalize(torch.as_tensor(features[m]).float().cpu(), dim=1)
        csr = getattr(structure, f"initial_{m}").cpu()  # the model's S̃_m: its rows' neighbours
        rows = torch.repeat_interleave(torch.arange(csr.shape[0]), csr.crow_indices().diff())
        sims = torch.relu((unit[rows] * unit[csr.col_indices()]).sum(1))
        out[f"raw_unit.{m}"] = unit
        out[f"raw_degree.{m}"] = torch.zeros(csr.shape[0]).index_add_(0, rows, sims)
        if learn:
            proj = structure.projected(m).cpu()
            out[f"proj_unit.{m}"] = F.normalize(proj, dim=1)
            out[f"proj_degree.{m}"] = _row_degrees(proj, knn_indices(proj, structure.knn_k,
                                                                     backend=structure.search))
    return out


def _hidden(terms, x, n_layers: int) -> list:
    """``H^(0..L-1)``: the item embeddings each convolution layer reads (eq. 6)."""
    from latticerec.graphs.knn import weighted_spmm

    out = []
    for _ in range(n_layers):
        out.append(x)
        x = weighted_spmm(terms, x)
    return out


def _cf_part_arrays(model, spec: dict, arrays: dict, cf_part: str) -> None:
    """``spec["cf_part"]`` and, for ``"neighbours"``, the backbone's item representations ``x̃``."""
    spec["cf_part"] = cf_part
    if cf_part == "neighbours":
        arrays["item_cf"] = model.backbone.propagate()[1]


def _unplaceable(model) -> dict | None:
    """The fold-in spec ``kind: none`` of a model trained with a released-code graph option that
    the fold-in rows (eq. 1-3 per modality, negatives suppressed) do not reproduce; else None."""
    released = [name for name, used in (("lattice_graph=joint", getattr(model, "joint", False)),
                                        ("knn_relu=false", not model.structure.search.relu))
                if used]
    if not released:
        return None
    return {"kind": "none", "reason": f"the model was trained with {', '.join(released)} (the released "
                                      "code's graph), which the fold-in does not reproduce"}


def _structure_export(model, dataset, cf_part: str) -> tuple[dict, dict]:
    import torch

    from latticerec.models.micro import Micro
    from latticerec.models.structure import feature_input

    st = model.structure
    no_feats = [m for m in st.names if m not in dataset.features]
    if no_feats:
        return {"kind": "none", "reason": f"modalities {', '.join(no_feats)} are precomputed item "
                                          "graphs without features: a new item cannot be placed in them"}, {}
    if (refused := _unplaceable(model)) is not None:
        return refused, {}
    fused = isinstance(model, Micro) and model.fusion
    cf_feats, feats_input = bool(model.cf_feats), bool(model.feats_input)
    spec = {"kind": "micro" if fused else "lattice",
            "modalities": {m: int(dataset.features[m].shape[1]) for m in st.names},
            "k": int(st.knn_k), "lambda": float(st.lam), "learn": bool(st.learn and not cf_feats),
            "item_layers": int(model.item_layers), "cf_feats": cf_feats, "feats_input": feats_input,
            "embed_dim": int(model.backbone.embed_dim), "structure_weight": float(model.structure_weight)}
    arrays = {"isolated": _isolated_item(model.backbone)}
    _cf_part_arrays(model, spec, arrays, "isolated" if cf_feats else cf_part)
    if fused:
        spec["specific"] = bool(model.specific)
        arrays["att_w_weight"], arrays["att_w_bias"] = model.att_w.weight, model.att_w.bias
        arrays["att_q1"] = model.att_q1.weight[0]
        if model.specific:
            arrays["att_q2"] = model.att_q2.weight[0]
    else:
        arrays["alpha"] = model.modal_weights()
    for m in st.projections:
        arrays[f"proj_weight.{m}"] = st.projections[m].weight
        arrays[f"proj_bias.{m}"] = st.projections[m].bias
    if not cf_feats:
        arrays.update(_graph_arrays(st, dataset.features, spec["learn"]))
        graphs = st.graphs()
        x = feature_input(st) if feats_input else model.backbone.item_embedding.weight
        if fused:
            for m in st.names:
                for layer, h in enumerate(_hidden(graphs[m], x, model.item_layers)):
                    arrays[f"hidden.{m}.{layer}"] = h
        else:
            alpha = model.modal_weights()
            terms = [(a * w, g) for a, m in zip(alpha, st.names, strict=True) for w, g in graphs[m]]
            for layer, h in enumerate(_hidden(terms, x, model.item_layers)):
                arrays[f"hidden.{layer}"] = h
    return spec, {k: torch.as_tensor(v).detach().cpu().float().numpy() for k, v in arrays.items()}


def _fusion_rule(model, dataset, what: str):
    """The early fusion ``model`` was built with (the modalities and rule it records): the modality
    dims, the rule, the fixed projections ``norm_mean`` uses, and the fused features."""
    import torch

    from latticerec.graphs.fusion import fuse_features, random_projection

    names, how = model.fusion_modalities, model.feature_fusion
    missing = [m for m in names if m not in dataset.features]
    if not names or missing:
        raise ValueError(f"{what} fold-in: the model was fused from {list(names)}, the dataset lacks "
                         f"{missing or 'them'}")
    fused = fuse_features({m: torch.as_tensor(dataset.features[m]) for m in names}, how)
    dims = {m: int(dataset.features[m].shape[1]) for m in names}
    common = max(dims.values())
    arrays = {f"projection.{m}": random_projection(d, common)
              for m, d in dims.items() if how == "norm_mean" and len(names) > 1 and d != common}
    return dims, how, arrays, fused


def _cb_export(model, dataset) -> tuple[dict, dict]:
    dims, how, arrays, _ = _fusion_rule(model, dataset, "CB")
    return {"kind": "cb", "fusion": how, "modalities": dims}, {k: v.numpy() for k, v in arrays.items()}


def _mmgef_export(model, dataset, cf_part: str) -> tuple[dict, dict]:
    """MM-GEF: LATTICE's rows on the fused feature (``E^m``); a new item has no co-occurrence row
    (``E^c`` row 0), so eq. 5 attends over ``E^m X`` and a zero view."""
    import torch

    from latticerec.graphs.knn import weighted_spmm
    from latticerec.models.mmgef import FUSED

    if (refused := _unplaceable(model)) is not None:
        return refused, {}
    st = model.structure
    dims, how, arrays, fused = _fusion_rule(model, dataset, "MM-GEF")
    attention = model.attention is not None
    spec = {"kind": "mmgef", "modalities": dims, "fusion": how, "fused_dim": int(fused.shape[1]),
            "k": int(st.knn_k), "lambda": float(st.lam), "learn": bool(st.learn),
            "item_layers": int(model.item_layers), "cf_feats": False, "feats_input": False,
            "embed_dim": int(model.backbone.embed_dim), "use_cf": bool(model.use_cf),
            "attention": attention, "structure_weight": float(model.structure_weight)}
    arrays["isolated"] = _isolated_item(model.backbone)
    _cf_part_arrays(model, spec, arrays, cf_part)
    for m in st.projections:
        arrays[f"proj_weight.{m}"] = st.projections[m].weight
        arrays[f"proj_bias.{m}"] = st.projections[m].bias
    arrays.update(_graph_arrays(st, {FUSED: fused}, st.learn))
    if attention:
        att = model.attention
        arrays.update({"att_w_weight": att.proj.weight, "att_w_bias": att.proj.bias, "att_q1": att.query})
    terms, x = model.content_terms(), model.backbone.item_embedding.weight
    if not model.use_cf:
        hidden = _hidden(terms, x, model.item_layers)
    else:  # eq. 5-6: h^(1) = w_m E^m X + w_c E^c X, then h^(l) = w_m E^m h + w_c E^c h
        views = [weighted_spmm(terms, x), model._cf(x)]
        w = model.graph_weights(views)
        hidden, h = [x], w[:, :1] * views[0] + w[:, 1:] * views[1]
        for _ in range(model.item_layers - 1):
            hidden.append(h)
            h = w[:, :1] * weighted_spmm(terms, h) + w[:, 1:] * model._cf(h)
    for layer, h in enumerate(hidden):
        arrays[f"hidden.{layer}"] = h
    return spec, {k: torch.as_tensor(v).detach().cpu().float().numpy() for k, v in arrays.items()}


def _uses_content(model) -> bool:
    """Whether the model's config chooses modalities (its class reads content features)."""
    import dataclasses

    config = getattr(type(model), "Config", None)
    return dataclasses.is_dataclass(config) and \
        any(f.name == "modalities" for f in dataclasses.fields(config))


def fold_in_arrays(model, dataset, cf_part: str = "neighbours") -> tuple[dict, dict[str, np.ndarray]]:
    """At export: the manifest's ``"fold_in"`` spec and the arrays (names without the ``fold.``
    prefix) that place a new item. Models without content get ``{"kind": "none", "reason": ...}``.
    ``cf_part``: a new item's collaborative part, ``"neighbours"`` or ``"isolated"`` (module doc)."""
    if cf_part not in CF_PARTS:
        raise ValueError(f"cf_part: expected one of {', '.join(CF_PARTS)}, got {cf_part!r}")
    import torch

    from latticerec.models.cb import ContentBased
    from latticerec.models.lattice import Lattice
    from latticerec.models.micro import Micro
    from latticerec.models.mmgef import MMGEF

    if isinstance(model, ContentBased):
        return _cb_export(model, dataset)
    if not isinstance(model, (Lattice, Micro, MMGEF)):
        name = type(model).__name__
        reason = (f"{name} uses content features, but latticerec cannot place a new item in it (fold-in "
                  "exists for lattice, micro, mmgef and cb)" if _uses_content(model)
                  else f"{name} has no content features: a new item cannot be placed")
        return {"kind": "none", "reason": reason}, {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return (_mmgef_export if isinstance(model, MMGEF) else _structure_export)(model, dataset, cf_part)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------- placing side --
@dataclass
class Row:
    """A new item's row of an item graph: weights on trained items and on itself (the self-loop)."""

    index: np.ndarray  # trained item indices, unique
    weight: np.ndarray
    self_weight: float

    def scaled(self, w: float) -> Row:
        return Row(self.index, self.weight * w, self.self_weight * w)

    @staticmethod
    def total(rows: list[Row]) -> Row:
        """The sum of several rows (eq. 5's skip connection, LATTICE's Σ_m α_m A_m)."""
        idx = np.concatenate([r.index for r in rows])
        uniq, inv = np.unique(idx, return_inverse=True)
        weight = np.bincount(inv, weights=np.concatenate([r.weight for r in rows]), minlength=uniq.size)
        return Row(uniq, weight.astype(np.float32), float(sum(r.self_weight for r in rows)))

    def convolve(self, hidden: list[np.ndarray], h0: np.ndarray) -> np.ndarray:
        """Eq. 6 for the new row: ``h^(l) = Σ_j A_j H_j^(l-1) + A_self h^(l-1)``."""
        h = h0
        for layer in hidden:
            h = self.weight @ layer[self.index] + self.self_weight * h
        return h

    def neighbours(self) -> list[tuple[int, float]]:
        order = np.lexsort((self.index, -self.weight))
        return [(int(self.index[i]), float(self.weight[i])) for i in order if self.weight[i] > 0]


def knn_row(unit: np.ndarray, degree: np.ndarray, new: np.ndarray, k: int,
            exclude: int | None = None) -> Row:
    """Eq. 1-3 for one new row against the trained items' unit features ``unit`` (N x d) and row
    degrees ``degree``: top-k of ``max(cos, 0)`` with the new item itself a candidate (index N,
    last in ties), values ``s_ij / sqrt(d_i d_j)``. ``exclude``: a trained item that is not a
    candidate (a leave-one-out placement of a trained item)."""
    u = _unit(new.astype(np.float32))
    sims = np.append(unit @ u, np.float32(u @ u))
    if exclude is not None:
        sims[exclude] = -np.inf
    k = min(k, sims.size - (exclude is not None))
    part = np.argpartition(-sims, k - 1)[:k]
    kth = sims[part].min()
    above = np.flatnonzero(sims > kth)
    chosen = np.concatenate([above, np.flatnonzero(sims == kth)[: k - above.size]])
    values = np.maximum(sims[chosen], 0.0).astype(np.float64)
    d_new = values.sum()
    is_self = chosen == unit.shape[0]
    d_all = np.where(is_self, d_new, degree[np.minimum(chosen, unit.shape[0] - 1)])
    denom = np.sqrt(d_new * d_all)
    w = np.divide(values, denom, out=np.zeros_like(values), where=(denom > 0))
    return Row(chosen[~is_self], w[~is_self].astype(np.float32), float(w[is_self].sum()))


def _check_array(arrays: dict, name: str, shape: tuple) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"fold-in array {name!r} is missing")
    arr = np.asarray(arrays[name])
    if arr.dtype != np.float32:
        raise ValueError(f"fold-in array {name!r}: dtype {arr.dtype}, expected float32")
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape,
                                                                               strict=False)):
        raise ValueError(f"fold-in array {name!r}: shape {arr.shape}, expected "
                         f"{tuple('*' if s is None else s for s in shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"fold-in array {name!r} holds NaN or inf")
    return arr


class FoldIn:
    """Places a new item from its features (numpy only). ``modalities``: modality -> the feature
    length :meth:`place` needs."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        mods = spec.get("modalities")
        if not isinstance(mods, dict) or not mods or not all(
                isinstance(m, str) and type(d) is int and d > 0 for m, d in mods.items()):
            raise ValueError("fold-in spec: 'modalities' must map modality names to positive lengths")
        self.spec = spec
        self.modalities: dict[str, int] = dict(mods)

    def check_features(self, features: dict) -> dict[str, np.ndarray]:
        """Validated float32 vectors; ValueError naming the modality otherwise."""
        if not isinstance(features, dict):
            raise ValueError("features must be an object mapping modality -> vector")
        unknown = sorted(set(features) - set(self.modalities))
        if unknown:
            raise ValueError(f"modality {unknown[0]!r} is not one of the model's: "
                             f"{', '.join(self.modalities)}")
        out = {}
        for m, dim in self.modalities.items():
            if m not in features:
                raise ValueError(f"modality {m!r} is missing (the model needs {', '.join(self.modalities)})")
            try:
                vec = np.asarray(features[m])
            except (TypeError, ValueError):  # ragged nesting
                vec = None
            if vec is None or vec.dtype.kind not in "iuf" or (  # [true, 0.5, ...]: numpy reads 1.0
                    isinstance(features[m], list) and any(type(v) is bool for v in features[m])):
                raise ValueError(f"modality {m!r}: the feature vector must be a list of numbers")
            if vec.ndim != 1 or vec.shape[0] != dim:
                raise ValueError(f"modality {m!r}: expected a vector of length {dim}, got shape "
                                 f"{vec.shape}")
            with np.errstate(over="ignore"):
                vec = vec.astype(np.float32)
            if not np.isfinite(vec).all():
                raise ValueError(f"modality {m!r}: the feature vector holds NaN or inf (or a value "
                                 "beyond float32)")
            if np.linalg.norm(vec.astype(np.float64)) > MAX_NORM:
                raise ValueError(f"modality {m!r}: the feature vector's norm exceeds {MAX_NORM:g}")
            out[m] = vec
        return out

    def _check_exclude(self, exclude: int | None, n_items: int) -> None:
        if exclude is not None and not (isinstance(exclude, (int, np.integer)) and 0 <= exclude < n_items):
            raise ValueError(f"exclude must be a trained item index in [0, {n_items}), got {exclude!r}")

    def place(self, features: dict, exclude: int | None = None
              ) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """The new item's representation (comparable with ``item_repr`` rows) and its graph
        neighbours ``[(item index, weight)]`` best first. ``exclude``: leave trained item
        ``exclude`` out of the candidates (checks a placement against a trained item)."""
        feats = self.check_features(features)
        with np.errstate(all="ignore"):  # huge but finite features: overflow is checked below
            rep, neighbours = self._place(feats, exclude)
        if not np.isfinite(rep).all():
            raise ValueError("the feature values are too large: the placed item's representation "
                             "overflows float32")
        return rep, neighbours

    def _place(self, feats: dict[str, np.ndarray], exclude: int | None):  # pragma: no cover
        raise NotImplementedError


class Fusion:
    """Early fusion of a new item's modalities, as :func:`latticerec.graphs.fusion.fuse_features`
    (``norm_mean`` with its fixed random projections, ``mean`` or ``concat``)."""

    def __init__(self, how: str, modalities: dict[str, int], arrays: dict[str, np.ndarray]):
        if how not in ("norm_mean", "mean", "concat"):
            raise ValueError(f"fold-in spec: unknown fusion {how!r}")
        self.how, self.names = how, list(modalities)
        common = max(modalities.values())
        self.projection = {m: _check_array(arrays, f"projection.{m}", (d, common))
                           for m, d in modalities.items()
                           if how == "norm_mean" and len(modalities) > 1 and d != common}

    def __call__(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        vecs = [feats[m] for m in self.names]
        if self.how == "mean":
            return np.mean(vecs, axis=0) if len(vecs) > 1 else vecs[0]
        unit = [_unit(v) for v in vecs]
        if self.how == "concat":
            return np.concatenate(unit) / math.sqrt(len(unit))
        if len(unit) > 1:
            unit = [_unit(u @ self.projection[m]) if m in self.projection else u
                    for m, u in zip(self.names, unit, strict=True)]
        return np.mean(unit, axis=0)


class ContentFoldIn(FoldIn):
    """CB: the normalised early-fused feature; no graph."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        super().__init__(spec, arrays)
        self.fusion = Fusion(spec.get("fusion"), self.modalities, arrays)

    def _place(self, feats, exclude):
        return _unit(self.fusion(feats)), []


class StructureFoldIn(FoldIn):
    """LATTICE and MICRO (and their ``cf_feats`` / ``feats_input`` ablations)."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        super().__init__(spec, arrays)
        try:
            self.k, self.lam = int(spec["k"]), float(spec["lambda"])
            self.learn, self.layers = bool(spec["learn"]), int(spec["item_layers"])
            self.cf_feats, self.feats_input = bool(spec["cf_feats"]), bool(spec["feats_input"])
            d = int(spec["embed_dim"])
            # exports made before the option have the papers' 1
            self.weight = float(spec.get("structure_weight", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"fold-in spec: missing or invalid field ({exc})") from None
        if self.k < 1 or not 0 <= self.lam <= 1 or self.layers < 0 or d < 1:
            raise ValueError("fold-in spec: k, lambda, item_layers or embed_dim out of range")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError("fold-in spec: structure_weight must be a finite number > 0")
        self.fused = spec["kind"] == "micro"
        self.specific = bool(spec.get("specific", False))
        self.isolated = _check_array(arrays, "isolated", (None,))
        if self.isolated.shape[0] % d:
            raise ValueError(f"fold-in array 'isolated': length {self.isolated.shape[0]} is not a "
                             f"multiple of embed_dim {d}")
        self.cf_part = spec.get("cf_part", "isolated")  # exports before cf_part: the isolated part
        if self.cf_part not in CF_PARTS:
            raise ValueError(f"fold-in spec: cf_part must be one of {', '.join(CF_PARTS)}, "
                             f"got {self.cf_part!r}")
        self.item_cf = None
        self.graph_dims = self._graph_dims()
        self.proj = {}
        if self.learn or self.cf_feats or self.feats_input:
            self.proj = {m: (_check_array(arrays, f"proj_weight.{m}", (d, dim)),
                             _check_array(arrays, f"proj_bias.{m}", (d,)))
                         for m, dim in self.graph_dims.items()}
        self._load_head(arrays, d)
        if self.cf_feats:
            return
        mods = list(self.graph_dims)
        n = _check_array(arrays, f"raw_unit.{mods[0]}", (None, self.graph_dims[mods[0]])).shape[0]
        self.raw = {m: (_check_array(arrays, f"raw_unit.{m}", (n, dim)),
                        _check_array(arrays, f"raw_degree.{m}", (n,))) for m, dim in self.graph_dims.items()}
        self.learned = {m: (_check_array(arrays, f"proj_unit.{m}", (n, d)),
                            _check_array(arrays, f"proj_degree.{m}", (n,)))
                        for m in mods} if self.learn else {}
        self.item_cf = (_check_array(arrays, "item_cf", (n, self.isolated.shape[0]))
                        if self.cf_part == "neighbours" else None)
        if self.fused:
            self.hidden = {m: [_check_array(arrays, f"hidden.{m}.{layer}", (n, d))
                               for layer in range(self.layers)] for m in mods}
        else:
            self.hidden = [_check_array(arrays, f"hidden.{layer}", (n, d)) for layer in range(self.layers)]

    def _graph_dims(self) -> dict[str, int]:
        """The item graphs' modalities and their feature lengths."""
        return self.modalities

    def _load_head(self, arrays: dict, d: int) -> None:
        """MICRO's attention weights (eq. 7, 14) or LATTICE's modality weights ``α``."""
        if self.fused:
            self.att_w = _check_array(arrays, "att_w_weight", (d, d))
            self.att_b = _check_array(arrays, "att_w_bias", (d,))
            self.att_q1 = _check_array(arrays, "att_q1", (d,))
            self.att_q2 = _check_array(arrays, "att_q2", (d,)) if self.specific else None
        else:
            self.alpha = _check_array(arrays, "alpha", (len(self.modalities),))

    def _projected(self, m: str, f: np.ndarray) -> np.ndarray:
        w, b = self.proj[m]
        return w @ f + b

    def modality_row(self, m: str, f: np.ndarray, exclude: int | None = None) -> Row:
        """``A_m``'s row of the new item: ``λ S̃_m + (1 - λ) Ã_m`` (eq. 1-5)."""
        self._check_exclude(exclude, self.raw[m][0].shape[0])
        initial = knn_row(*self.raw[m], f, self.k, exclude)
        if not self.learn:
            return initial
        learned = knn_row(*self.learned[m], self._projected(m, f), self.k, exclude)
        return Row.total([initial.scaled(self.lam), learned.scaled(1.0 - self.lam)])

    def _fuse(self, modal: np.ndarray) -> np.ndarray:
        """MICRO eq. 7-8 and 11-15 for one item: ``modal`` is ``(M, d)``."""
        alpha = _softmax(np.tanh(modal @ self.att_w.T + self.att_b) @ self.att_q1)
        common = alpha @ modal
        if not self.specific:
            return common
        parts = np.vstack([common, modal - common])
        return _softmax(parts @ self.att_q2) @ parts

    def _place(self, feats, exclude):
        mods = list(self.modalities)
        if self.cf_feats:
            modal = np.stack([self._projected(m, feats[m]) for m in mods])
            h = self._fuse(modal) if self.fused else self.alpha @ modal
            return self._representation(h), []
        h0 = (np.mean([self._projected(m, feats[m]) for m in mods], axis=0) if self.feats_input
              else np.zeros(int(self.spec["embed_dim"]), dtype=np.float32))
        rows = {m: self.modality_row(m, feats[m], exclude) for m in mods}
        if self.fused:
            modal = np.stack([rows[m].convolve(self.hidden[m], h0) for m in mods])
            h = self._fuse(modal)
            shown = Row.total([rows[m].scaled(1.0 / len(mods)) for m in mods])
        else:
            shown = Row.total([rows[m].scaled(float(a)) for m, a in zip(mods, self.alpha, strict=True)])
            h = shown.convolve(self.hidden, h0)
        return self._representation(h, shown), shown.neighbours()

    def _cf(self, row: Row | None) -> np.ndarray:
        """``c``: the isolated item's backbone output, or the neighbours' weighted mean ``x̃``."""
        if self.item_cf is None or row is None:
            return self.isolated
        keep = row.weight > 0
        total = float(row.weight[keep].sum())
        if total <= 0:
            return self.isolated
        return (row.weight[keep] / total) @ self.item_cf[row.index[keep]]

    def _representation(self, h: np.ndarray, row: Row | None = None) -> np.ndarray:
        """``c + w h / ‖h‖`` (``w``: ``structure_weight``) with ``h`` repeated over the backbone's
        blocks (NGCF); ``row``: the new item's graph row (the neighbours of ``cf_part="neighbours"``)."""
        unit = self.weight * _unit(np.asarray(h, dtype=np.float32))
        reps = self.isolated.shape[0] // unit.shape[0]
        return (self._cf(row) + np.tile(unit, reps)).astype(np.float32)


class MMGEFFoldIn(StructureFoldIn):
    """MM-GEF: the new item's row of ``E^m`` (LATTICE's rows on the early-fused feature); it has no
    co-occurrence, so its ``E^c`` row and view are 0 and eq. 5's attention weighs ``E^m X``
    against a zero view; eq. 6 then scales each layer by the content weight ``w_m``."""

    def _graph_dims(self) -> dict[str, int]:
        return {"fused": int(self.spec["fused_dim"])}

    def _load_head(self, arrays: dict, d: int) -> None:
        self.fusion = Fusion(self.spec.get("fusion"), self.modalities, arrays)
        self.use_cf, self.attention = bool(self.spec["use_cf"]), bool(self.spec["attention"])
        if self.use_cf and self.attention:
            self.att_w = _check_array(arrays, "att_w_weight", (d, d))
            self.att_b = _check_array(arrays, "att_w_bias", (d,))
            self.att_q1 = _check_array(arrays, "att_q1", (d,))

    def _place(self, feats, exclude):
        row = self.modality_row("fused", self.fusion(feats), exclude)
        view = row.weight @ self.hidden[0][row.index]  # E^m X (its own ID embedding is 0)
        w_m = 1.0
        if self.use_cf and self.attention:
            z = np.stack([_unit(view), np.zeros_like(view)])
            w_m = float(_softmax(np.tanh(z @ self.att_w.T + self.att_b) @ self.att_q1)[0])
        elif self.use_cf:
            w_m = 0.5
        h = w_m * view
        for layer in self.hidden[1:]:
            h = w_m * (row.weight @ layer[row.index] + row.self_weight * h)
        return self._representation(h, row), row.neighbours()


def load_fold_in(spec: dict, arrays: dict[str, np.ndarray]) -> FoldIn | None:
    """The placer of an exported model; None when ``spec["kind"] == "none"`` (no content: POST /items
    answers 422). ValueError for a malformed spec or array (names the field)."""
    if not isinstance(spec, dict):
        raise ValueError("fold-in spec must be an object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"fold-in spec: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "none":
        return None
    if kind == "cb":
        return ContentFoldIn(spec, arrays)
    return (MMGEFFoldIn if kind == "mmgef" else StructureFoldIn)(spec, arrays)
