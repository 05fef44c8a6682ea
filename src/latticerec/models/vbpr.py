"""VBPR (He & McAuley, AAAI 2016): BPR matrix factorisation with a content part per item.

The predictor of the paper (section 3, eq. 1-4)::

    ŷ_ui = α + β_u + β_i + γ_uᵀ γ_i + θ_uᵀ (E f_i) + β'ᵀ f_i

* ``γ_u, γ_i`` (eq. 1): latent ID factors of dimension ``K``;
* ``θ_u`` (eq. 2): the user's preference for content, ``θ_i = E f_i`` (eq. 3) the item's content
  factor, ``E`` a ``K' x F`` embedding matrix learnt from the item features ``f_i`` (no bias);
* ``β_i`` an item bias and ``β'ᵀ f_i`` (eq. 4) the content bias; ``α`` and ``β_u`` add the same
  constant to every item of a user and vanish from every ranking and from the BPR differences
  ``ŷ_ui - ŷ_uj``, so they are not kept.

As in MMRec and the MICRO paper's baseline, ``f_i`` concatenates *every* modality of the dataset
(``modalities`` picks a subset); ``K = K' = embed_dim``. Unlike MMRec, which concatenates the raw
vectors, each modality is L2-normalised first (``feature_fusion="concat"``,
:func:`latticerec.graphs.fusion.fuse_features`): TikTok's image vectors are 7x longer than its
audio ones, and raw, the image part swamped the ID factors (seed 0: test Recall@20 0.0207 raw,
below MF). ``feature_fusion`` takes the other early-fusion rules too. Trained with BPR
(section 3.2; :func:`~latticerec.models.losses.bpr_loss`), the L2 term of the batch rows of
``[γ_u; θ_u]`` and ``[γ_i; β_i]`` (``reg``, the paper's ``λ_Θ``) and, per batch, a separate
regulariser of the shared content parameters, ``λ_E (‖E‖² + ‖β'‖²)`` (``content_reg``; the paper's
update rules give ``E`` its own ``λ_E`` and ``β'`` a ``λ_β``, here one weight covers both).
``λ_E`` matters on TikTok: without it the content part fits the training pairs faster than the ID
factors and generalises worse (seed 0, validation Recall@20 after 16 epochs: 0.020 with
``λ_E = 0``, 0.036 with 1e-3, 0.045 with 1e-1, the default; MF 0.033).

The score is a dot product (the model contract): the user is ``[1, γ_u, θ_u]`` and the item
``[β_i + β'ᵀ f_i, γ_i, E f_i]`` (width ``2 embed_dim + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latticerec.graphs.fusion import fuse_features
from latticerec.models.backbones import EMBEDDING_SPACE, EmbeddingConfig
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.options import FeatureFusion, Modalities
from latticerec.models.structure import feature_modalities


@dataclass(frozen=True)
class VBPRConfig(EmbeddingConfig, Modalities, FeatureFusion):
    """``embed_dim`` (``K = K'``), ``reg`` (L2 on the batch's user and item factors),
    ``modalities`` (empty: every feature matrix of the dataset) and ``feature_fusion`` (how they
    form ``f_i``; ``concat``: the L2-normalised modalities side by side), ``content_reg`` (``λ_E``)."""

    feature_fusion: str = "concat"
    content_reg: float = 0.1

    def __post_init__(self):
        EmbeddingConfig.__post_init__(self)
        Modalities.__post_init__(self)  # and FeatureFusion's check, next in the chain
        if self.content_reg < 0:
            raise ValueError("content_reg must be >= 0")


class VBPR(Recommender):
    """``ŷ_ui = β_i + γ_uᵀγ_i + θ_uᵀ(E f_i) + β'ᵀ f_i`` (eq. 4 without the per-user constants)."""

    RANK_LOSSES = ("bpr",)  # its own loss, not bpr_terms

    Config = VBPRConfig
    SEARCH_SPACE = {**EMBEDDING_SPACE, "content_reg": ("log", 1e-3, 1.0)}

    def __init__(self, n_users: int, features: torch.Tensor, embed_dim: int = 64, reg: float = 1e-4,
                 fusion: tuple[tuple[str, ...], str] = ((), "concat"), content_reg: float = 0.1):
        super().__init__()
        n_items, n_feat = features.shape
        self.n_users, self.n_items, self.embed_dim = n_users, n_items, embed_dim
        # the modalities and rule ``f_i`` was fused from (what a new item would need)
        self.fusion_modalities, self.feature_fusion = tuple(fusion[0]), fusion[1]
        self.reg_weight, self.content_reg = reg, content_reg
        self.register_buffer("features", features.float(), persistent=False)
        self.user_factors = nn.Embedding(n_users, 2 * embed_dim)  # [γ_u; θ_u]
        self.item_factors = nn.Embedding(n_items, embed_dim)  # γ_i
        self.item_bias = nn.Parameter(torch.zeros(n_items))  # β_i
        self.content = nn.Linear(n_feat, embed_dim, bias=False)  # E
        self.content_bias = nn.Linear(n_feat, 1, bias=False)  # β'
        for weight in (self.user_factors.weight, self.item_factors.weight, self.content.weight,
                       self.content_bias.weight):
            nn.init.xavier_uniform_(weight)

    @classmethod
    def from_inputs(cls, cfg: VBPRConfig, inputs: ModelInputs) -> VBPR:
        names = feature_modalities(cfg.modalities, inputs, "vbpr")
        feats = fuse_features({m: inputs.features[m] for m in names}, cfg.feature_fusion)
        return cls(inputs.n_users, feats, cfg.embed_dim, cfg.reg, (tuple(names), cfg.feature_fusion),
                   cfg.content_reg)

    def propagate(self):
        f = self.features
        bias = self.item_bias + self.content_bias(f).squeeze(1)  # β_i + β'ᵀ f_i
        items = torch.cat([bias.unsqueeze(1), self.item_factors.weight, self.content(f)], dim=1)
        users = self.user_factors.weight
        return torch.cat([users.new_ones(self.n_users, 1), users], dim=1), items

    def ego_embeddings(self):
        return self.user_factors.weight, torch.cat([self.item_factors.weight, self.item_bias.unsqueeze(1)], 1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss(users, pos, neg)
        terms["reg_content"] = self.content_reg * (self.content.weight.pow(2).sum()
                                                   + self.content_bias.weight.pow(2).sum())
        return terms
