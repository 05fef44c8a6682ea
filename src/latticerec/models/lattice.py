"""LATTICE (Zhang et al., ACM MM 2021): latent item structures mined from multimodal features,
plugged into any collaborative-filtering backbone.

LATTICE = backbone + :class:`~latticerec.models.structure.LatentStructure`:

* eq. 1-5  per modality ``m`` the latent graph ``A_m = λ S̃_m + (1 - λ) Ã_m``: the fixed kNN graph
  of the raw features mixed with the kNN graph of the projected features, rebuilt every epoch;
* aggregation ``A = Σ_m α_m A_m`` with ``α = softmax(scores)`` over learnable scores, used live (they
  learn from every batch);
* eq. 6    light graph convolution ``H = A^L X`` over the item ID embeddings ``X``;
* the backbone's item representations become ``x̃_i + h_i / ‖h_i‖``; score ``ŷ_ui = x̃_uᵀ (…)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.options import STRUCTURE_SPACE, FeatureAblations, Structure
from latticerec.models.structure import LatentStructure, StructureModel, build_structure


@dataclass(frozen=True)
class LatticeConfig(Structure, FeatureAblations):
    """LATTICE options: the structure learner's (``modalities``: empty means every feature matrix
    and precomputed item graph of the dataset; ``knn_k``, ``lambda_coeff`` = 0.9, ``item_layers``)
    and the ablations ``cf_feats`` (``CF+feats``) and ``feats_input`` (``LATTICE/feats``)."""


class Lattice(StructureModel):
    """LATTICE wrapped around a backbone (composition: any :class:`Backbone` works)."""

    Config = LatticeConfig
    SEARCH_SPACE = STRUCTURE_SPACE

    def __init__(self, backbone: Backbone, structure: LatentStructure, item_layers: int = 1,
                 cf_feats: bool = False, feats_input: bool = False):
        super().__init__(backbone, structure, item_layers, cf_feats, feats_input, modality_weights=True)

    @classmethod
    def from_inputs(cls, cfg: LatticeConfig, inputs: ModelInputs, backbone: Backbone) -> Lattice:
        return cls(backbone, build_structure(cfg, inputs, backbone.embed_dim),
                   cfg.item_layers, cfg.cf_feats, cfg.feats_input)

    def item_structure_embedding(self) -> torch.Tensor:
        """``H = A^L X`` with ``A = Σ_m α_m A_m`` (or the ``CF+feats`` ablation's ``Σ_m α_m ẽ_m``)."""
        return self.weighted_embedding()
