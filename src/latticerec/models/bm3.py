"""BM3 (Zhou et al., WWW 2023): bootstrap latent representations for multi-modal recommendation.

No negative sampling and no auxiliary graph. Section 3 of the paper:

* 3.1    ID encoder: LightGCN over the user-item graph, ``h_u, h_i`` (the layer mean; eq. 1-2);
         multi-modal latent: one linear projection per modality, ``h_i^m = f_m W_m + b_m`` (eq. 3);
* 3.2    contrastive view generator: a shared one-layer predictor ``f_p`` gives the online views
         ``h̃ = f_p(h)`` (IDs and every modality alike); the target views are the representations
         themselves, perturbed by dropout and cut from the graph: ``ḣ = sg(dropout(h, p))`` (eq. 4-5);
* 3.3    multi-modal contrastive loss with ``C(a, b) = 1 - cos(a, sg(b))``
         (:func:`~latticerec.models.losses.bootstrap_cosine_loss`) over the batch's observed pairs:
         graph reconstruction ``L_rec = C(h̃_u, ḣ_i) + C(h̃_i, ḣ_u)`` (eq. 6),
         inter-modality feature alignment ``L_align = Σ_m C(h̃_i^m, ḣ_i)`` (eq. 7),
         intra-modality feature masking ``L_mask = Σ_m C(h̃_i^m, ḣ_i^m)`` (eq. 8);
* 3.4    ``L = L_rec + L_align + L_mask + λ (‖h_u‖² + ‖h_i‖²)`` (eq. 9; ``λ`` is ``reg``, here on
         the batch's online representations as ``½ Σ ‖·‖² / B``); scores ``ŷ_ui = h̃_uᵀ h̃_i``.

The trainer hands every model ``(users, pos, neg)`` triples; BM3 uses the observed pairs
``(users, pos)`` and ignores ``neg``. Its loss has no ``bpr`` term (``main_term = "rec"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.graphs.adjacency import normalized_bipartite_adjacency
from latticerec.models.backbones import LightGCN
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.losses import bootstrap_cosine_loss, l2_regularizer
from latticerec.models.mmgcn import MultimodalGraphConfig, modality_features


@dataclass(frozen=True)
class BM3Config(MultimodalGraphConfig):
    """BM3 options: ``n_layers`` (1, the paper's grid is {1, 2}), ``dropout`` (p of the target views,
    0.3 of the paper's {0.3, 0.5}) and ``reg`` (λ of eq. 9, 0.1 of {0.1, 0.01})."""

    n_layers: int = 1
    reg: float = 0.1
    dropout: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")


class BM3(Recommender):
    """LightGCN ID encoder + modality projections + shared predictor, trained without negatives."""

    RANK_LOSSES = ("bpr",)  # its own loss, not bpr_terms

    Config = BM3Config
    SEARCH_SPACE = {"lr": ("log", 1e-4, 1e-2), "reg": ("log", 1e-3, 1.0), "dropout": ("float", 0.0, 0.5),
                    "n_layers": ("int", 1, 2)}  # the paper's grids widened
    main_term = "rec"  # the loss term that measures fit (there is no BPR)

    def __init__(self, inputs: ModelInputs, modalities: tuple[str, ...] = (), embed_dim: int = 64,
                 n_layers: int = 1, reg: float = 0.1, dropout: float = 0.3):
        super().__init__()
        self.n_users, self.n_items = inputs.n_users, inputs.n_items
        self.reg_weight, self.dropout = reg, dropout
        self.names = modality_features(self, inputs, modalities, "bm3")
        self.encoder = LightGCN(self.n_users, self.n_items, normalized_bipartite_adjacency(inputs.train),
                                embed_dim, n_layers, reg)
        self.projection = nn.ModuleDict({m: nn.Linear(inputs.features[m].shape[1], embed_dim)
                                         for m in self.names})  # W_m, b_m of eq. 3
        self.predictor = nn.Linear(embed_dim, embed_dim)  # f_p, shared by IDs and modalities
        for lin in [*self.projection.values(), self.predictor]:
            nn.init.xavier_normal_(lin.weight)

    @classmethod
    def from_inputs(cls, cfg: BM3Config, inputs: ModelInputs) -> BM3:
        return cls(inputs, cfg.modalities, cfg.embed_dim, cfg.n_layers, cfg.reg, cfg.dropout)

    def ego_embeddings(self):
        return self.encoder.ego_embeddings()

    def propagate(self):
        users, items = self.encoder.propagate()
        return self.predictor(users), self.predictor(items)  # h̃_u, h̃_i: the scores' views

    def target(self, h: torch.Tensor) -> torch.Tensor:
        """``ḣ = sg(dropout(h, p))`` (eq. 4-5): no gradient flows back through a target view."""
        with torch.no_grad():
            return F.dropout(h.detach(), self.dropout, self.training)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        h_u, h_i = self.encoder.propagate()
        h_u, h_i = h_u[users], h_i[pos]
        t_u, t_i = self.target(h_u), self.target(h_i)
        o_u, o_i = self.predictor(h_u), self.predictor(h_i)
        terms = {"rec": bootstrap_cosine_loss(o_u, t_i) + bootstrap_cosine_loss(o_i, t_u)}  # eq. 6
        align = mask = h_u.new_zeros(())
        for m in self.names:
            h_m = self.projection[m](getattr(self, f"feat_{m}")[pos])  # eq. 3 on the batch's items
            o_m = self.predictor(h_m)
            align = align + bootstrap_cosine_loss(o_m, t_i)  # eq. 7
            mask = mask + bootstrap_cosine_loss(o_m, self.target(h_m))  # eq. 8
        terms.update(align=align, mask=mask, reg=self.reg_weight * l2_regularizer(h_u, h_i))
        return terms
