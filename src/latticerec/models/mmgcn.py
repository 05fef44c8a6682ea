"""MMGCN (Wei et al., ACM MM 2019): a graph convolution network per modality on the user-item graph.

Section 2 of the paper (MM '19 proceedings), for every modality ``m`` (here: every feature matrix
of the dataset):

* 2.1     a modality-specific user-item graph ``G_m``: the training graph, whose item nodes carry the
          item's pre-extracted features ``i_m`` and whose user nodes carry a learned preference ``u_m``
          in that modality (here every modality's features are first projected to width ``d``,
          ``i_m = W_0,m f_m + b``; the paper feeds them raw, the released code projects the visual
          ones only);
* 2.2     aggregation (eq. 1-2, mean aggregator; eq. 3 is the max aggregator, not used here)
          ``h_m = LeakyReLU( (1/|N_u|) Σ_{j ∈ N_u} W_1,m j_m )`` (and symmetrically for items);
* 2.3     combination (eq. 4-7) with the ID embedding ``u_id`` shared by every modality:
          ``û_m = LeakyReLU(W_2,m u_m) + u_id`` (eq. 5) and
          ``u_m^(l) = LeakyReLU(W_3,m (h_m ‖ û_m))`` (eq. 6, ``combination="concat"``, this module's
          default) or ``LeakyReLU(W_3,m h_m + û_m)`` (eq. 7, ``combination="element"``; the paper's
          Table 3 finds it the better of the two, and its Table 2 reports MMGCN with it);
* 2.4     layer recursion (eq. 8); after ``L`` layers ``u* = Σ_m u_m^(L)``, ``i* = Σ_m i_m^(L)``
          (eq. 9) and ``ŷ_ui = u*ᵀ i*``;
* 2.5     BPR over the triples (eq. 10-11); the paper's ``λ‖Θ‖²`` covers every parameter, here the
          L2 term is on the batch's ID embeddings only.

Each layer has its own ``W_1, W_2, W_3``. As in the released code, each modality's layer-0 node
representations are L2-normalised (the paper leaves their scale open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.graphs.adjacency import bipartite_adjacency
from latticerec.graphs.normalize import row_normalize_csr
from latticerec.graphs.sparse import ConstantCSR, binary_pattern
from latticerec.models.backbones import GRAPH_SPACE, GraphConfig
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.options import Modalities
from latticerec.models.structure import feature_modalities


@dataclass(frozen=True)
class MultimodalGraphConfig(GraphConfig, Modalities):
    """What the multimodal graph baselines (MMGCN, GRCN, BM3) share: ``embed_dim``, ``reg``,
    ``n_layers`` (LightGCN's group) and ``modalities`` (empty: every feature matrix of the dataset)."""

    def __post_init__(self):
        GraphConfig.__post_init__(self)  # the embedding checks end their chain without super()
        Modalities.__post_init__(self)


@dataclass(frozen=True)
class MMGCNConfig(MultimodalGraphConfig):
    """MMGCN options: ``n_layers`` (L, 2 by default as in the released code) and ``combination``
    (``concat`` = ``g_co``, eq. 6, ``element`` = ``g_ele``, eq. 7, of section 2.3)."""

    n_layers: int = 2
    combination: Literal["concat", "element"] = "concat"

    def __post_init__(self):
        super().__post_init__()
        if self.combination not in ("concat", "element"):
            raise ValueError("combination must be 'concat' or 'element'")


def mean_adjacency(train: torch.Tensor) -> ConstantCSR:
    """``D^-1 A`` of the user-item graph ``A = [[0, R], [Rᵀ, 0]]``: row ``k`` averages ``k``'s
    neighbours (the mean aggregator of eq. 2), with its transpose for the backward pass."""
    return ConstantCSR.of(row_normalize_csr(binary_pattern(bipartite_adjacency(train))))


def modality_features(module: nn.Module, inputs: ModelInputs, wanted: tuple[str, ...],
                      model: str) -> list[str]:
    """Register every chosen modality's features as a (non-persistent) buffer ``feat_<m>``."""
    names = feature_modalities(wanted, inputs, model)
    for m in names:
        module.register_buffer(f"feat_{m}", inputs.features[m].float(), persistent=False)
    return names


class MMGCNLayer(nn.Module):
    """One aggregation + combination layer (section 2.2-2.3) of one modality."""

    def __init__(self, dim: int, concat: bool):
        super().__init__()
        self.concat = concat
        self.w1 = nn.Linear(dim, dim, bias=False)
        self.w2 = nn.Linear(dim, dim)
        self.w3 = nn.Linear(2 * dim if concat else dim, dim)
        for lin in (self.w1, self.w2, self.w3):
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, adj: ConstantCSR, x: torch.Tensor, x_id: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(adj @ self.w1(x))  # eq. 2: mean of W_1 j_m over the neighbours
        x_hat = F.leaky_relu(self.w2(x)) + x_id  # û_m (eq. 5)
        if self.concat:
            return F.leaky_relu(self.w3(torch.cat([h, x_hat], dim=1)))  # g_co (eq. 6)
        return F.leaky_relu(self.w3(h) + x_hat)  # g_ele (eq. 7)


class MMGCN(Recommender):
    """A GCN per modality over the user-item graph; the modality representations are summed."""

    Config = MMGCNConfig
    SEARCH_SPACE = {**GRAPH_SPACE, "n_layers": ("int", 1, 3)}

    def __init__(self, inputs: ModelInputs, modalities: tuple[str, ...] = (), embed_dim: int = 64,
                 n_layers: int = 2, reg: float = 1e-4, combination: str = "concat"):
        super().__init__()
        self.n_users, self.n_items, self.reg_weight = inputs.n_users, inputs.n_items, reg
        self.names = modality_features(self, inputs, modalities, "mmgcn")
        adj = mean_adjacency(inputs.train)
        self.register_buffer("adj_mean", adj.csr, persistent=False)
        self.register_buffer("adj_mean_t", adj.csr_t, persistent=False)
        self.id_embedding = nn.Embedding(self.n_users + self.n_items, embed_dim)  # u_id and i_id
        self.preference = nn.ParameterDict({m: nn.Parameter(torch.empty(self.n_users, embed_dim))
                                            for m in self.names})  # u_m
        self.projection = nn.ModuleDict({m: nn.Linear(inputs.features[m].shape[1], embed_dim)
                                         for m in self.names})  # f_m -> i_m
        self.layers = nn.ModuleDict({m: nn.ModuleList(MMGCNLayer(embed_dim, combination == "concat")
                                                      for _ in range(n_layers)) for m in self.names})
        nn.init.xavier_uniform_(self.id_embedding.weight)
        for m in self.names:
            nn.init.xavier_uniform_(self.preference[m])
            nn.init.xavier_uniform_(self.projection[m].weight)

    @classmethod
    def from_inputs(cls, cfg: MMGCNConfig, inputs: ModelInputs) -> MMGCN:
        return cls(inputs, cfg.modalities, cfg.embed_dim, cfg.n_layers, cfg.reg, cfg.combination)

    def ego_embeddings(self):
        return self.id_embedding.weight[: self.n_users], self.id_embedding.weight[self.n_users:]

    def modality_representation(self, m: str) -> torch.Tensor:
        """``[u_m^(L); i_m^(L)]`` of modality ``m`` (sections 2.1-2.4, eq. 8)."""
        items = self.projection[m](getattr(self, f"feat_{m}"))
        x = F.normalize(torch.cat([self.preference[m], items], dim=0), dim=1)
        adj = ConstantCSR(self.adj_mean, self.adj_mean_t)
        for layer in self.layers[m]:
            x = layer(adj, x, self.id_embedding.weight)
        return x

    def propagate(self):
        out = torch.stack([self.modality_representation(m) for m in self.names]).sum(0)  # u*, i* (eq. 9)
        return out[: self.n_users], out[self.n_users:]
