"""LATTICE (Zhang et al., ACM MM 2021): latent item structures mined from multimodal features,
plugged into any collaborative-filtering backbone.

LATTICE = backbone + :class:`~latticerec.models.structure.LatentStructure` (eq. 1-5), then

* aggregate ``A = Σ_m α_m A_m`` with ``α = softmax(scores)`` over learnable scores;
* eq. 6    light graph convolution ``H = A^L X`` over the item ID embeddings ``X``;
* the backbone's item representations become ``x̃_i + h_i / ‖h_i‖``; score ``ŷ_ui = x̃_uᵀ (…)``.

The modality weights ``α`` are used live, so they learn from every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latticerec.errors import ConfigError
from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.structure import (
    LatentStructure,
    StructureModel,
    build_structure,
    feature_input,
    propagate_items,
)


@dataclass(frozen=True)
class LatticeConfig:
    """LATTICE options. ``modalities`` empty means every feature matrix and precomputed item graph
    of the dataset. ``cf_feats`` and ``feats_input`` are the papers' ablations ``CF+feats`` and
    ``LATTICE/feats``."""

    backbone: str = "lightgcn"
    modalities: tuple[str, ...] = ()
    knn_k: int = 10
    lambda_coeff: float = 0.9
    item_layers: int = 1
    cf_feats: bool = False
    feats_input: bool = False

    def __post_init__(self):
        if self.knn_k < 1:
            raise ValueError("knn_k must be >= 1")
        if not 0.0 <= self.lambda_coeff <= 1.0:
            raise ValueError("lambda_coeff must lie in [0, 1]")
        if self.item_layers < 0:
            raise ValueError("item_layers must be >= 0")
        if self.cf_feats and self.feats_input:
            raise ValueError("cf_feats and feats_input are different ablations: set at most one")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities {self.modalities} lists a modality twice")


def lattice_item_embedding(structure: LatentStructure, alpha: torch.Tensor, backbone: Backbone,
                           item_layers: int, cf_feats: bool = False,
                           feats_input: bool = False) -> torch.Tensor:
    """LATTICE's item-structure embedding ``H = A^L X`` with ``A = Σ_m α_m A_m`` (eq. 6 on the
    aggregated graph); ``X`` is the backbone's item ID table, or :func:`feature_input` with
    ``feats_input``; ``cf_feats`` gives the ``CF+feats`` ablation's ``Σ_m α_m ẽ_m`` instead."""
    if cf_feats:
        weights = dict(zip(structure.names, alpha, strict=True))
        return sum(weights[m] * structure.projected(m) for m in structure.projections)
    graphs = structure.graphs()
    terms = [(a * w, g) for a, m in zip(alpha, structure.names, strict=True) for w, g in graphs[m]]
    x = feature_input(structure) if feats_input else backbone.item_embedding.weight
    return propagate_items(terms, x, item_layers)


class Lattice(StructureModel):
    """LATTICE wrapped around a backbone (composition: any :class:`Backbone` works)."""

    Config = LatticeConfig

    def __init__(self, backbone: Backbone, structure: LatentStructure, item_layers: int = 1,
                 cf_feats: bool = False, feats_input: bool = False):
        super().__init__(backbone, structure)
        self.item_layers, self.cf_feats, self.feats_input = item_layers, cf_feats, feats_input
        self.modal_scores = nn.Parameter(torch.zeros(len(structure.names)))
        if (cf_feats or feats_input) and not len(structure.projections):
            raise ConfigError("cf_feats/feats_input need item features (the modalities chosen have none)")

    @classmethod
    def from_inputs(cls, cfg: LatticeConfig, inputs: ModelInputs, backbone: Backbone) -> Lattice:
        return cls(backbone, build_structure(cfg, inputs, backbone.embed_dim),
                   cfg.item_layers, cfg.cf_feats, cfg.feats_input)

    def modal_weights(self) -> torch.Tensor:
        """``α = softmax(scores)`` over the modalities."""
        return torch.softmax(self.modal_scores, dim=0)

    def item_structure_embedding(self) -> torch.Tensor:
        """``H = A^L X`` with ``A = Σ_m α_m A_m`` (or the ``CF+feats`` ablation's ``Σ_m α_m ẽ_m``)."""
        return lattice_item_embedding(self.structure, self.modal_weights(), self.backbone,
                                      self.item_layers, self.cf_feats, self.feats_input)


