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

from latticerec.graphs.normalize import symmetric_values
from latticerec.graphs.sparse import ConstantCSR, GradCSR, row_indices
from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.options import (
    STRUCTURE_SPACE,
    FeatureAblations,
    LatticeGraph,
    RawFeatures,
    Structure,
)
from latticerec.models.structure import LatentStructure, StructureModel, build_structure, propagate_items


@dataclass(frozen=True)
class LatticeConfig(Structure, FeatureAblations, RawFeatures, LatticeGraph):
    """LATTICE options: the structure learner's (``modalities``: empty means every feature matrix
    and precomputed item graph of the dataset; ``knn_k``, ``lambda_coeff`` = 0.9, ``item_layers``),
    the ablations ``cf_feats`` (``CF+feats``) and ``feats_input`` (``LATTICE/feats``),
    ``train_features`` and the released code's ``lattice_graph`` / ``alpha_live``."""


def _csr_values(graph) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR structure of a learned graph term and its stored values (with gradient if any)."""
    if isinstance(graph, GradCSR):
        return graph.csr, graph.values
    csr = graph.csr if isinstance(graph, ConstantCSR) else graph
    return csr, csr.values()


class Lattice(StructureModel):
    """LATTICE wrapped around a backbone (composition: any :class:`Backbone` works)."""

    Config = LatticeConfig
    SEARCH_SPACE = STRUCTURE_SPACE

    def __init__(self, backbone: Backbone, structure: LatentStructure, item_layers: int = 1,
                 cf_feats: bool = False, feats_input: bool = False, lattice_graph: str = "per_modality",
                 alpha_live: bool = True):
        super().__init__(backbone, structure, item_layers, cf_feats, feats_input, modality_weights=True)
        self.joint = lattice_graph == "joint" and structure.learn and not cf_feats
        structure.normalize_learned = not self.joint  # joint: Ŝ_m kept unnormalised
        self.alpha_live = alpha_live
        if not alpha_live:  # α of the graph last built; all zeros until one is built
            self.register_buffer("graph_alpha", torch.zeros(len(structure.names)))
            self._take_alpha = True

    @classmethod
    def from_inputs(cls, cfg: LatticeConfig, inputs: ModelInputs, backbone: Backbone) -> Lattice:
        structure = build_structure(cfg, inputs, backbone.embed_dim)
        if cfg.train_features:
            structure.train_raw_features()
        return cls(backbone, structure, cfg.item_layers, cfg.cf_feats, cfg.feats_input,
                   cfg.lattice_graph, cfg.alpha_live)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._take_alpha = True

    def before_evaluation(self) -> None:
        super().before_evaluation()
        self._take_alpha = True

    def modal_weights(self) -> torch.Tensor:
        """``α = softmax(scores)``; with ``alpha_live=false`` the live α only when the graph is built
        (the epoch's first call, or after :meth:`before_evaluation`), stored, and the stored value
        (no gradient) on every other call."""
        alpha = super().modal_weights()
        if self.alpha_live:
            return alpha
        if self._take_alpha or not bool(self.graph_alpha.sum() > 0):
            self.graph_alpha.copy_(alpha.detach())
            self._take_alpha = False
            return alpha
        return self.graph_alpha

    def joint_terms(self) -> list:
        """``A = (1-λ) sym_norm(Σ_m α_m Ŝ_m) + λ Σ_m α_m S̃_m`` (``lattice_graph=joint``) as weighted
        sparse terms: the joint normalisation ``D^-1/2 (Σ_m α_m Ŝ_m) D^-1/2``, ``D`` the row sums of
        the α-weighted sum, is applied to each ``Ŝ_m``'s stored values, so the supports are never
        merged."""
        graphs, alpha, lam = self.structure.graphs(), self.modal_weights(), self.structure.lam
        learned = [_csr_values(graphs[m][-1][1]) for m in self.structure.names]
        rows = [row_indices(csr.crow_indices()) for csr, _ in learned]
        n = learned[0][0].shape[0]
        degree = sum(torch.zeros(n, device=v.device, dtype=v.dtype).index_add(0, r, a * v)
                     for a, (_, v), r in zip(alpha, learned, rows, strict=True))
        terms = [(lam * a, ConstantCSR(getattr(self.structure, f"initial_{m}"),
                                       getattr(self.structure, f"initial_t_{m}")))
                 for a, m in zip(alpha, self.structure.names, strict=True) if lam > 0]
        for a, (csr, v), r in zip(alpha, learned, rows, strict=True):
            terms.append((1.0 - lam, GradCSR(csr, symmetric_values(a * v, r, csr.col_indices(), degree))))
        return terms

    def item_structure_embedding(self) -> torch.Tensor:
        """``H = A^L X`` with ``A = Σ_m α_m A_m`` (or the ``CF+feats`` ablation's ``Σ_m α_m ẽ_m``);
        with ``lattice_graph=joint`` ``A`` of :meth:`joint_terms`."""
        if self.joint:
            return propagate_items(self.joint_terms(), self.item_input(), self.item_layers)
        return self.weighted_embedding()
