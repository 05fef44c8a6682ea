"""CB, the content-based baseline of MM-GEF's Table 1: no training.

* every item's feature is the early-fused feature of its modalities (section 3.1, the same ``feature_fusion``
  option as MM-GEF), L2-normalised: ``f̂_i = f_i / ‖f_i‖``;
* a user's profile is the mean of the normalised features of their training items,
  ``p_u = (1/|N_u|) Σ_(i ∈ N_u) f̂_i``;
* items are ranked by the cosine similarity ``cos(p_u, f̂_i)``.

``propagate()`` returns ``(p_u / ‖p_u‖, f̂_i)``, so the dot-product score of the model contract *is*
the cosine. A user without training items gets the zero profile (every score 0). The model has no
trainable parameters (``trainable = False``); its ``loss`` reports the BPR loss of the cosine scores
for monitoring only (it has no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latticerec.graphs.fusion import fuse_features
from latticerec.graphs.sparse import binary_pattern
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.losses import bpr_loss
from latticerec.models.options import FeatureFusion, Modalities
from latticerec.models.structure import feature_modalities


@dataclass(frozen=True)
class CBConfig(Modalities, FeatureFusion):
    """``modalities`` as LATTICE's (empty = every feature matrix); ``feature_fusion`` as MM-GEF's."""


class ContentBased(Recommender):
    """User profile = mean of the user's item features; score = cosine (no training)."""

    RANK_LOSSES = ("bpr",)  # its own loss, not bpr_terms

    Config = CBConfig
    trainable = False

    def __init__(self, train: torch.Tensor, item_features: torch.Tensor,
                 fusion: tuple[tuple[str, ...], str] = ((), "norm_mean")):
        super().__init__()
        # the modalities and rule the item features were fused from (what a new item needs)
        self.fusion_modalities, self.feature_fusion = tuple(fusion[0]), fusion[1]
        if train.shape[1] != item_features.shape[0]:
            raise ValueError(f"train has {train.shape[1]} items, features {item_features.shape[0]}")
        self.register_buffer("train_matrix", train, persistent=False)
        self.register_buffer("item_unit", F.normalize(item_features.float(), p=2, dim=1), persistent=False)
        deg = train.crow_indices().diff().float()
        self.register_buffer("inv_degree", torch.where(deg > 0, 1.0 / deg.clamp_min(1.0),
                                                       torch.zeros_like(deg)), persistent=False)

    @classmethod
    def from_inputs(cls, cfg: CBConfig, inputs: ModelInputs) -> ContentBased:
        names = feature_modalities(cfg.modalities, inputs, "cb")
        return cls(binary_pattern(inputs.train),
                   fuse_features({m: inputs.features[m] for m in names}, cfg.feature_fusion),
                   (tuple(names), cfg.feature_fusion))

    def profiles(self) -> torch.Tensor:
        """``p_u``: the mean normalised feature of each user's training items (zeros without any)."""
        return (self.train_matrix @ self.item_unit) * self.inv_degree.unsqueeze(1)

    def propagate(self):
        return F.normalize(self.profiles(), p=2, dim=1), self.item_unit

    def ego_embeddings(self):
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            u_all, i_all = self.propagate()
            u = u_all[users]
            bpr = bpr_loss((u * i_all[pos]).sum(-1), (u * i_all[neg]).sum(-1))
        return {"bpr": bpr, "reg": bpr.new_zeros(())}
