"""Collaborative-filtering backbones: MF, LightGCN and NGCF.

Each exposes its ID embedding tables (``user_embedding``, ``item_embedding``) and ``propagate()``;
multimodal models wrap a backbone and add to its item representations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.graphs.adjacency import normalized_bipartite_adjacency, released_bipartite_adjacency
from latticerec.graphs.sparse import compact_indices, constant_spmm, layer_mean, transpose_csr
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.options import EMBEDDING_SPACE  # search spaces: format in models/options.py

GRAPH_SPACE = {**EMBEDDING_SPACE, "n_layers": ("int", 1, 4)}
ADJ_NORMS = ("symmetric", "released")
NGCF_LAYERS = ("latticerec", "released")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings every backbone shares: ID embedding size and the L2 weight on batch embeddings."""

    embed_dim: int = 64
    reg: float = 1e-4

    def __post_init__(self):
        if self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1")
        if self.reg < 0:
            raise ValueError("reg must be >= 0")


@dataclass(frozen=True)
class GraphConfig(EmbeddingConfig):
    """Graph backbones (LightGCN, NGCF): ``n_layers`` propagation steps over the user-item graph;
    ``adj_norm`` its normalisation: ``symmetric`` ``D^-1/2 A D^-1/2`` (the papers) or ``released``
    ``D^-1 (A + I)`` (the released LATTICE/MICRO code, :func:`released_bipartite_adjacency`)."""

    n_layers: int = 3
    adj_norm: Literal["symmetric", "released"] = "symmetric"

    def __post_init__(self):
        super().__post_init__()
        if self.n_layers < 0:
            raise ValueError("n_layers must be >= 0")
        if self.adj_norm not in ADJ_NORMS:
            raise ValueError(f"adj_norm must be one of {', '.join(ADJ_NORMS)}, got {self.adj_norm!r}")

    def adjacency(self, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The user-item adjacency ``Â`` of ``adj_norm`` and its transpose (``None``: symmetric)."""
        if self.adj_norm == "released":
            adj = released_bipartite_adjacency(train)
            return adj, transpose_csr(adj)
        return normalized_bipartite_adjacency(train), None


@dataclass(frozen=True)
class NGCFConfig(GraphConfig):
    """NGCF adds ``mess_dropout``: the dropout rate applied to each layer's messages during training
    (0 turns it off), and ``ngcf``: the layer of :class:`NGCF` (``latticerec``) or of the released
    LATTICE/MICRO code (``released``)."""

    mess_dropout: float = 0.1
    ngcf: Literal["latticerec", "released"] = "latticerec"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.mess_dropout < 1:
            raise ValueError("mess_dropout must be in [0, 1)")
        if self.ngcf not in NGCF_LAYERS:
            raise ValueError(f"ngcf must be one of {', '.join(NGCF_LAYERS)}, got {self.ngcf!r}")


class Backbone(Recommender):
    """ID embeddings for users and items, Xavier-initialised; subclasses define ``propagate``."""

    def __init__(self, n_users: int, n_items: int, embed_dim: int, reg: float):
        super().__init__()
        self.n_users, self.n_items, self.embed_dim = n_users, n_items, embed_dim
        self.reg_weight = reg
        self.user_embedding = nn.Embedding(n_users, embed_dim)
        self.item_embedding = nn.Embedding(n_items, embed_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    @property
    def out_dim(self) -> int:
        """Width of the representations ``propagate()`` returns."""
        return self.embed_dim

    def ego_embeddings(self):
        return self.user_embedding.weight, self.item_embedding.weight

    def propagate_with(self, item_ego: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagate with ``item_ego`` as the layer-0 item embeddings (defaults to the ID table)."""
        raise NotImplementedError

    def propagate(self):
        return self.propagate_with(self.item_embedding.weight)


class MF(Backbone):
    """BPR-MF: ``ŷ_ui = x_uᵀ x_i`` on the ID embeddings (Rendle et al., 2009)."""

    Config = EmbeddingConfig
    SEARCH_SPACE = EMBEDDING_SPACE

    @classmethod
    def from_inputs(cls, cfg: EmbeddingConfig, inputs: ModelInputs) -> MF:
        return cls(inputs.n_users, inputs.n_items, cfg.embed_dim, cfg.reg)

    def propagate_with(self, item_ego):
        return self.user_embedding.weight, item_ego


class LightGCN(Backbone):
    """LightGCN (He et al., 2020): ``E^(l+1) = Â E^(l)`` (eq. 7) over the symmetric normalised
    user-item adjacency, final representation the layer mean ``Σ_l E^(l) / (L + 1)`` (eq. 8)."""

    Config = GraphConfig
    SEARCH_SPACE = GRAPH_SPACE

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, embed_dim: int = 64,
                 n_layers: int = 3, reg: float = 1e-4, adj_t: torch.Tensor | None = None):
        super().__init__(n_users, n_items, embed_dim, reg)
        self.n_layers = n_layers
        self.register_buffer("adj", compact_indices(adj), persistent=False)
        # None: Â is symmetric, Âᵀ = Â
        self.register_buffer("adj_t", compact_indices(adj_t), persistent=False)

    @classmethod
    def from_inputs(cls, cfg: GraphConfig, inputs: ModelInputs) -> LightGCN:
        adj, adj_t = cfg.adjacency(inputs.train)
        return cls(inputs.n_users, inputs.n_items, adj, cfg.embed_dim, cfg.n_layers, cfg.reg, adj_t)

    def propagate_with(self, item_ego):
        """Eq. 7-8 by Horner's rule: ``Σ_{l=0..L} Â^l E = E + Â(E + Â(E + …))``, one sparse
        ``addmm`` per layer and no layer kept for the sum (the same value as summing the layers);
        the backward pass likewise (:func:`~latticerec.graphs.sparse.layer_mean`)."""
        x = torch.cat([self.user_embedding.weight, item_ego], dim=0)
        return layer_mean(self.adj, x, self.n_layers, self.adj_t).split([self.n_users, self.n_items])


def dropout_scale(x: torch.Tensor, p: float) -> torch.Tensor:
    """The inverted-dropout factors for ``x``: ``1 / (1 - p)`` with probability ``1 - p``, else 0
    (``x * dropout_scale(x, p)`` is ``F.dropout(x, p)`` in distribution). From one uniform draw per
    entry compared in place: on CPU, ``F.dropout``'s ``bernoulli_`` mask and its rescaling cost about
    three times as much (20 ms against 6 ms for NGCF's 16,018 x 64 layer on TikTok, one thread).
    NGCF uses it on CPU only: on CUDA ``F.dropout`` is one fused kernel with a 1-byte mask."""
    return torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class NGCF(Backbone):
    """NGCF (Wang et al., 2019), eq. 7 in matrix form as the authors' code computes it, each term
    through its own LeakyReLU: ``E^(l) = LeakyReLU((L + I) E^(l-1) W1 + b1) + LeakyReLU((L E^(l-1) ⊙
    E^(l-1)) W2 + b2)`` (the paper writes one LeakyReLU around the sum), message dropout, each layer
    L2-normalised; the representation concatenates layers 0..L (width ``d (L + 1)``).

    ``layer="released"``: the released LATTICE/MICRO code's layer,
    ``E^(l) = LeakyReLU_0.01(Â E^(l-1) W1) + LeakyReLU_0.01((E^(l-1) ⊙ Â E^(l-1)) W2)`` with
    ``nn.Linear``'s default initialisation, message dropout, and the representation the **mean** of
    layer 0 and the L2-normalised layers 1..L (width ``d``)."""

    Config = NGCFConfig
    SEARCH_SPACE = {**GRAPH_SPACE, "n_layers": ("int", 1, 3), "mess_dropout": ("float", 0.0, 0.5)}

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, embed_dim: int = 64,
                 n_layers: int = 3, reg: float = 1e-4, mess_dropout: float = 0.1,
                 adj_t: torch.Tensor | None = None, layer: str = "latticerec"):
        super().__init__(n_users, n_items, embed_dim, reg)
        self.n_layers, self.mess_dropout, self.released = n_layers, mess_dropout, layer == "released"
        self.register_buffer("adj", compact_indices(adj), persistent=False)
        # None: Â is symmetric, Âᵀ = Â
        self.register_buffer("adj_t", compact_indices(adj_t), persistent=False)
        self.w_gc = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(n_layers))
        self.w_bi = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(n_layers))
        for lin in [] if self.released else [*self.w_gc, *self.w_bi]:  # released: nn.Linear's init
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    @classmethod
    def from_inputs(cls, cfg: NGCFConfig, inputs: ModelInputs) -> NGCF:
        adj, adj_t = cfg.adjacency(inputs.train)
        return cls(inputs.n_users, inputs.n_items, adj, cfg.embed_dim, cfg.n_layers, cfg.reg,
                   cfg.mess_dropout, adj_t, cfg.ngcf)

    @property
    def out_dim(self) -> int:
        return self.embed_dim * (1 if self.released else self.n_layers + 1)

    def propagate_with(self, item_ego):
        x = torch.cat([self.user_embedding.weight, item_ego], dim=0)
        layers = [x]
        for w_gc, w_bi in zip(self.w_gc, self.w_bi, strict=True):
            side = constant_spmm(self.adj, x, self.adj_t)
            if self.released:
                x = F.leaky_relu(w_gc(side), 0.01) + F.leaky_relu(w_bi(x * side), 0.01)
            else:
                x = F.leaky_relu(w_gc(side + x), 0.2) + F.leaky_relu(w_bi(side * x), 0.2)
            if self.training and self.mess_dropout > 0:  # CUDA's fused dropout is one kernel
                x = x * dropout_scale(x, self.mess_dropout) if x.device.type == "cpu" else \
                    F.dropout(x, self.mess_dropout, True)
            layers.append(F.normalize(x, p=2, dim=1))
        out = torch.stack(layers).mean(0) if self.released else torch.cat(layers, dim=1)
        return out.split([self.n_users, self.n_items])
