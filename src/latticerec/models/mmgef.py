"""MM-GEF (Wu, Ariza-Casabona, Twardowski, Wijaya): an item graph learned from the early-fused
multimodal feature, joined with the collaborative item-user-item graph by soft attention, plugged
into a collaborative-filtering backbone (LightGCN by default).

Section 3 of the paper, step by step:

* 3.1      early fusion of the chosen modalities into one feature ``f_i``
  (:func:`latticerec.graphs.fusion.fuse_features`, option ``feature_fusion``);
* 3.2      a trainable linear layer ``f̃_i = W f_i + b`` to the latent space (width of the backbone's
  ID embeddings) and the content graph ``E^m``: top-k cosine kNN of ``f̃`` (eq. 1-2). "Following
  [LATTICE]", this is LATTICE's graph learner on the one fused "modality"
  (:class:`~latticerec.models.structure.LatentStructure`, reused as is): the kNN graph of the trainable
  ``f̃`` is rebuilt once per epoch with gradient (first batch) and detached afterwards, symmetric
  normalised, and mixed with the fixed kNN graph of the raw fused feature by LATTICE's skip
  connection ``λ S̃ + (1 - λ) Ã`` (``lambda_coeff``, LATTICE's 0.9 by default; ``lambda_coeff=0`` is
  the bare eq. 1-2 on ``f̃``). So ``w/o CF+Att`` is exactly LATTICE on the fused feature, which is
  how the paper reads that row ("the gain from using CLIP features in comparison to LATTICE");
* 3.3      the collaborative graph from ``C = RᵀR`` (eq. 3,
  :func:`latticerec.graphs.cooccurrence.cooccurrence_graph`; diagonal dropped, top-k per row). By
  default it is brought to the content graph's scale: the top ``cooc_topk = 10`` counts of each row
  (``knn_k``'s 10), symmetric normalised ``D^-1/2 C D^-1/2`` like ``E^m`` (eq. 3 of LATTICE). The
  paper's eq. 4, ``E^c_ij = C_ij / C_max`` over every pair (``cooc_norm=max cooc_topk=0``), has row
  sums of median 25, p90 234, max 711 on TikTok against ~1 for ``E^m``: eq. 5's weighted sum then
  adds views of incomparable size, and eq. 6 is dominated by ``E^c`` whatever the attention says.
  Measured on TikTok (seed 0, validation Recall@20): paper's graph 0.0859, symmetric top-20
  0.0892, symmetric top-10 0.0934 (the default; docs/mmgef.md);
* eq. 5    ``E^u = SoftAttn(E^m : E^c)``: the weighted sum ``E^u = diag(a^m) E^m + diag(a^c) E^c``
  whose weights come from a per-item soft attention, ``a^g_i = softmax_g(qᵀ tanh(W ẑ^g_i + b))``
  with ``ẑ^g_i`` the L2-normalised row ``i`` of ``E^g X`` (what graph ``g`` says about item ``i``;
  normalised so the attention compares directions, not the graphs' different scales). The weights
  of an item sum to 1;
* eq. 6    graph convolution ``h^t = E^u h^(t-1)``, ``h^0 = X`` the backbone's item ID embeddings,
  ``item_layers`` steps;
* 3.5      the backbone's item representations become ``x̃_i + h_i / ‖h_i‖``; score = inner product.

Ablations of Table 1 (flags of :class:`MMGEFConfig`):

==================  ===========================================  ==================================
Table 1 row         flags                                        ``E^u``
==================  ===========================================  ==================================
MM-GEF              ``use_cf=true attention=true`` (defaults)    ``diag(a^m) E^m + diag(a^c) E^c``
MM-GEF w/o Att      ``attention=false``                          ``(E^m + E^c) / 2``
MM-GEF w/o CF       ``use_cf=false``                             ``E^m``
MM-GEF w/o CF+Att   ``use_cf=false attention=false``             ``E^m``
==================  ===========================================  ==================================

Without attention the paper's "weighted sum of both E^m and E^c" has no weights to learn: the fixed
combination is the equal-weight mean (the plain sum ``E^m + E^c`` gives the same model, since
``h`` is L2-normalised before it is added, and a constant factor on ``E^u`` scales ``h`` only).
Without CF, eq. 5 attends over a single graph, whose weight is 1: ``w/o CF`` and ``w/o CF+Att`` are
the same model, and the attention layer is not built (no parameter without a gradient).
Table 2's modality subsets are ``modalities=...`` (fused before the graph) with ``use_cf`` on/off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.graphs.cooccurrence import NORMALIZATIONS, cooccurrence_graph
from latticerec.graphs.fusion import fuse_features
from latticerec.graphs.knn import weighted_spmm
from latticerec.graphs.sparse import compact_indices, constant_spmm, transpose_csr
from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.options import STRUCTURE_SPACE, FeatureFusion, Structure
from latticerec.models.structure import LatentStructure, StructureModel, feature_modalities, propagate_items

FUSED = "fused"  # the name of the single early-fused "modality" inside LatentStructure


@dataclass(frozen=True)
class MMGEFConfig(Structure, FeatureFusion):
    """MM-GEF options.

    ``modalities``: as LATTICE's (empty = every feature matrix of the dataset; precomputed item graphs
    without features cannot be fused and are skipped). ``feature_fusion``: section 3.1 rule, see
    :mod:`latticerec.graphs.fusion` (``norm_mean`` default). ``knn_k``: the k of eq. 2 (paper: 10).
    ``lambda_coeff``: LATTICE's skip connection inside ``E^m`` (0.9; 0 = eq. 1-2 on the projected
    feature only, 1 = the fixed graph of the raw fused feature, no learned graph). ``cooc_topk``: the
    top-k per row of ``E^c`` (10 by default, the content graph's k; 0 = every co-occurring pair, as
    eq. 3-4). ``cooc_norm``: ``symmetric`` (default, ``D^-1/2 C D^-1/2``: the content graph's scale)
    or ``max`` (the paper's eq. 4, ``C / C_max``). ``item_layers``: steps of eq. 6 (at least one).
    ``use_cf`` / ``attention``: the ablations of Table 1 (``w/o CF`` = ``use_cf=false``,
    ``w/o Att`` = ``attention=false``, ``w/o CF+Att`` = both).
    """

    cooc_topk: int = 10
    cooc_norm: str = "symmetric"
    use_cf: bool = True
    attention: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.cooc_topk < 0:
            raise ValueError("cooc_topk must be >= 0 (0 keeps every co-occurring pair)")
        if self.item_layers < 1:
            raise ValueError("item_layers must be >= 1 (eq. 6 needs at least one step)")
        if self.cooc_norm not in NORMALIZATIONS:
            raise ValueError(f"cooc_norm must be one of {', '.join(NORMALIZATIONS)}")


class SoftAttention(nn.Module):
    """Eq. 5's per-item soft attention over ``G`` graphs: ``a_i = softmax_g(qᵀ tanh(W ẑ^g_i + b))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.empty(dim))
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.uniform_(self.query, -dim ** -0.5, dim ** -0.5)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """``(n_items, G)`` weights from the ``G`` views ``E^g X`` (each ``n_items x d``)."""
        z = torch.stack([F.normalize(v, p=2, dim=1) for v in views], dim=1)  # n x G x d
        scores = torch.tanh(self.proj(z)) @ self.query
        return torch.softmax(scores, dim=1)


class MMGEF(StructureModel):
    """MM-GEF wrapped around a backbone (composition: any :class:`Backbone` works)."""

    Config = MMGEFConfig
    SEARCH_SPACE = {**STRUCTURE_SPACE, "cooc_topk": ("choice", (0, 10, 50))}

    def __init__(self, backbone: Backbone, structure: LatentStructure, cf_graph: torch.Tensor | None,
                 item_layers: int = 1, attention: bool = True, cf_symmetric: bool = False,
                 fusion: tuple[tuple[str, ...], str] = ((), "norm_mean"), structure_weight: float = 1.0):
        super().__init__(backbone, structure, item_layers, structure_weight=structure_weight)
        # the modalities and rule of the early-fused feature (what a new item needs)
        self.fusion_modalities, self.feature_fusion = tuple(fusion[0]), fusion[1]
        self.use_cf = cf_graph is not None
        if self.use_cf:
            cf_graph = compact_indices(cf_graph)
            self.register_buffer("cf_graph", cf_graph, persistent=False)
            # E^cᵀ for the backward pass; none when E^c = E^cᵀ (no top-k), which reuses E^c
            self.register_buffer("cf_graph_t", None if cf_symmetric else transpose_csr(cf_graph),
                                 persistent=False)
        # one graph (w/o CF) leaves the attention nothing to weigh: see the module docstring
        self.attention = SoftAttention(backbone.embed_dim) if (attention and self.use_cf) else None

    @classmethod
    def from_inputs(cls, cfg: MMGEFConfig, inputs: ModelInputs, backbone: Backbone) -> MMGEF:
        names = feature_modalities(cfg.modalities, inputs, "mmgef")
        fused = fuse_features({m: inputs.features[m] for m in names}, cfg.feature_fusion)
        search = cfg.knn_search()
        initial = {FUSED: inputs.item_knn_graph(fused, cfg.knn_k, backend=search)}
        structure = LatentStructure(initial, {FUSED: fused}, backbone.embed_dim, cfg.knn_k,
                                    cfg.lambda_coeff, search=search)
        cf = (cooccurrence_graph(inputs.train, cfg.cooc_topk, cfg.cooc_norm) if cfg.use_cf else None)
        return cls(backbone, structure, cf, cfg.item_layers, cfg.attention, cf_symmetric=cfg.cooc_topk == 0,
                   fusion=(tuple(names), cfg.feature_fusion), structure_weight=cfg.structure_weight)

    def content_terms(self):
        """``E^m`` (eq. 1-2 with LATTICE's skip connection) as weighted sparse terms."""
        return self.structure.graphs()[FUSED]

    def graph_weights(self, views: list[torch.Tensor]) -> torch.Tensor:
        """``(n_items, G)`` weights of the graphs in ``E^u`` (eq. 5); rows sum to 1."""
        n = views[0].shape[0]
        if self.attention is not None:
            return self.attention(views)
        return views[0].new_full((n, len(views)), 1.0 / len(views))

    def _cf(self, x: torch.Tensor) -> torch.Tensor:
        return constant_spmm(self.cf_graph, x, self.cf_graph_t)

    def item_structure_embedding(self, return_weights: bool = False):
        """``h = (E^u)^L X`` (eq. 5-6) with ``X`` the backbone's item ID embeddings."""
        terms = self.content_terms()
        x = self.backbone.item_embedding.weight
        if not self.use_cf:
            h = propagate_items(terms, x, self.item_layers)
            return (h, x.new_ones(x.shape[0], 1)) if return_weights else h
        views = [weighted_spmm(terms, x), self._cf(x)]  # E^m X, E^c X: layer 1 of eq. 6
        weights = self.graph_weights(views)
        w_m, w_c = weights[:, :1], weights[:, 1:]
        h = w_m * views[0] + w_c * views[1]
        for _ in range(self.item_layers - 1):
            h = w_m * weighted_spmm(terms, h) + w_c * self._cf(h)
        return (h, weights) if return_weights else h
