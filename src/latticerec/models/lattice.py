"""LATTICE (Zhang et al., ACM MM 2021): latent item structures mined from multimodal features,
plugged into any collaborative-filtering backbone.

LATTICE = backbone + :class:`~latticerec.models.structure.LatentStructure`:

* eq. 1-5  per modality ``m`` the latent graph ``A_m = λ S̃_m + (1 - λ) Ã_m``: the fixed kNN graph
  of the raw features mixed with the kNN graph of the projected features, rebuilt every epoch;
* aggregation ``A = Σ_m α_m A_m`` with ``α = softmax(scores)`` over learnable scores, used live (they
  learn from every batch); ``alpha_live=false``: α taken when the learned graph is built and kept
  with it; ``lattice_graph=joint``: the released code's ``A = (1-λ) sym_norm(Σ_m α_m Ŝ_m) +
  λ Σ_m α_m S̃_m`` (:meth:`Lattice.joint_terms`);
* eq. 6    light graph convolution ``H = A^L X`` over the item ID embeddings ``X``;
* the backbone's item representations become ``x̃_i + h_i / ‖h_i‖``; score ``ŷ_ui = x̃_uᵀ (…)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.options import (
    STRUCTURE_SPACE,
    FeatureAblations,
    LatticeGraph,
    RawFeatures,
    Structure,
)
from latticerec.models.structure import LatentStructure, StructureModel, build_structure


@dataclass(frozen=True)
class LatticeConfig(Structure, FeatureAblations, RawFeatures, LatticeGraph):
    """LATTICE options: the structure learner's (``modalities``: empty means every feature matrix
    and precomputed item graph of the dataset; ``knn_k``, ``lambda_coeff`` = 0.9, ``item_layers``),
    the ablations ``cf_feats`` (``CF+feats``) and ``feats_input`` (``LATTICE/feats``),
    ``train_features`` and the released code's ``lattice_graph`` / ``alpha_live``."""


class Lattice(StructureModel):
    """LATTICE wrapped around a backbone (composition: any :class:`Backbone` works)."""

    Config = LatticeConfig
    SEARCH_SPACE = STRUCTURE_SPACE

    def __init__(self, backbone: Backbone, structure: LatentStructure, item_layers: int = 1,
                 cf_feats: bool = False, feats_input: bool = False, lattice_graph: str = "per_modality",
                 alpha_live: bool = True, structure_weight: float = 1.0):
        super().__init__(backbone, structure, item_layers, cf_feats, feats_input, modality_weights=True,
                         lattice_graph=lattice_graph, alpha_live=alpha_live,
                         structure_weight=structure_weight)

    @classmethod
    def from_inputs(cls, cfg: LatticeConfig, inputs: ModelInputs, backbone: Backbone) -> Lattice:
        structure = build_structure(cfg, inputs, backbone.embed_dim)
        if cfg.train_features:
            structure.train_raw_features()
        return cls(backbone, structure, cfg.item_layers, cfg.cf_feats, cfg.feats_input,
                   cfg.lattice_graph, cfg.alpha_live, cfg.structure_weight)

    def item_structure_embedding(self) -> torch.Tensor:
        """``H = A^L X`` with ``A = Σ_m α_m A_m`` (or the ``CF+feats`` ablation's ``Σ_m α_m ẽ_m``);
        with ``lattice_graph=joint`` ``A`` of :meth:`joint_terms`."""
        return self.weighted_embedding()
