"""SGL (Wu et al., SIGIR 2021): self-supervised graph learning on LightGCN.

Equation numbers follow sections 2-3 of the paper (SIGIR '21 proceedings):

* eq. 1-3  the encoder is LightGCN over the user-item graph (:class:`~latticerec.models.backbones.LightGCN`:
           ``Z^(l) = Â Z^(l-1)``, eq. 1-2, readout the layer mean, eq. 3); scores ``ŷ_ui = z_uᵀ z_i``
           (eq. 4), main loss BPR (eq. 5);
* eq. 6    two augmented views ``s1(G), s2(G)`` of the graph, encoded by the same LightGCN
           (shared weights): ``Z1^(l) = H(Z1^(l-1), s1(G))``, ``Z2^(l) = H(Z2^(l-1), s2(G))``;
* eq. 7    node dropout (``augmentation="node"``): every user and item is dropped with probability ρ,
           with its edges: ``s(G) = (M ⊙ V, E)``;
* eq. 8    edge dropout (``augmentation="edge"``, the paper's SGL-ED): every interaction is dropped
           with probability ρ: ``s(G) = (V, M ⊙ E)``;
* eq. 10   ``L_ssl^user``, the InfoNCE between a node's two views with every node of the same kind as
           negative (:func:`~latticerec.models.losses.cross_view_info_nce`), and likewise
           ``L_ssl^item``; ``L_ssl = L_ssl^user + L_ssl^item`` (unnumbered, end of section 3.2).
           The anchors are the batch's distinct users and positive items (the paper sums over every
           user and item); ``ssl_negatives="batch"`` restricts the negatives to the batch's anchors
           (the paper's SGL-ED-batch, section 4.4.3, and RecBole's SGL; ``|B|²`` instead of
           ``|B| N`` similarities);
* eq. 11   ``L = L_main + λ1 L_ssl + λ2 ‖Θ‖²``: BPR on the full graph, ``ssl_weight`` ``λ1``, the
           usual L2 term ``λ2`` (``reg``).

Both views are redrawn at the start of every epoch (:meth:`SGL.on_epoch_start`) from torch's global
generator, which the trainer seeds with ``(seed, epoch)``: a run and its resume see the same views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from latticerec.graphs.adjacency import normalized_bipartite_adjacency
from latticerec.graphs.sparse import csr_from_parts, layer_mean, row_indices
from latticerec.models.backbones import GraphConfig, LightGCN
from latticerec.models.base import ModelInputs
from latticerec.models.losses import cross_view_info_nce


@dataclass(frozen=True)
class SGLConfig(GraphConfig):
    """SGL options on top of LightGCN's: ``ssl_weight`` (λ1 of eq. 11), ``tau`` (τ of eq. 10),
    ``drop_ratio`` (ρ of eq. 7-8) and ``augmentation`` (``edge`` or ``node``). Defaults are the
    released code's Yelp2018 setting (ρ = 0.1, τ = 0.2, λ1 = 0.1, edge dropout); section 4.1.2 of
    the paper only gives the tuning ranges (λ1 ∈ {0.005, …, 1.0}, τ ∈ {0.1, 0.2, 0.5, 1.0},
    ρ ∈ {0, 0.1, …, 0.5}). ``ssl_negatives``: ``all`` (eq. 10: every user / item) or ``batch``
    (the batch's anchors)."""

    ssl_weight: float = 0.1
    tau: float = 0.2
    drop_ratio: float = 0.1
    augmentation: Literal["edge", "node"] = "edge"
    ssl_negatives: Literal["all", "batch"] = "all"

    def __post_init__(self):
        super().__post_init__()
        if self.ssl_weight < 0:
            raise ValueError("ssl_weight must be >= 0")
        if not self.tau > 0:
            raise ValueError("tau must be > 0")
        if not 0 <= self.drop_ratio < 1:
            raise ValueError("drop_ratio must be in [0, 1)")
        if self.augmentation not in ("edge", "node"):
            raise ValueError("augmentation must be 'edge' or 'node'")
        if self.ssl_negatives not in ("all", "batch"):
            raise ValueError("ssl_negatives must be 'all' or 'batch'")


def edges_to_csr(users: torch.Tensor, items: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The binary users x items CSR matrix of the edges ``(users[k], items[k])``, users sorted."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=users.device)
    crow[1:] = torch.bincount(users, minlength=shape[0]).cumsum(0)
    return csr_from_parts(crow, items, torch.ones(len(items), device=users.device), shape)


class SGL(LightGCN):
    """LightGCN trained with BPR plus the contrastive loss between two dropout views (eq. 11)."""

    Config = SGLConfig

    def __init__(self, n_users: int, n_items: int, train: torch.Tensor, embed_dim: int = 64,
                 n_layers: int = 3, reg: float = 1e-4, ssl_weight: float = 0.1, tau: float = 0.2,
                 drop_ratio: float = 0.1, augmentation: str = "edge", ssl_negatives: str = "all"):
        super().__init__(n_users, n_items, normalized_bipartite_adjacency(train), embed_dim, n_layers, reg)
        self.ssl_weight, self.tau, self.ssl_negatives = ssl_weight, tau, ssl_negatives
        self.drop_ratio, self.augmentation = drop_ratio, augmentation
        # the training interactions, user-sorted (CSR order): the edges a view keeps or drops
        self.register_buffer("edge_users", row_indices(train.crow_indices()), persistent=False)
        self.register_buffer("edge_items", train.col_indices().clone(), persistent=False)
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_inputs(cls, cfg: SGLConfig, inputs: ModelInputs) -> SGL:
        return cls(inputs.n_users, inputs.n_items, inputs.train, cfg.embed_dim, cfg.n_layers, cfg.reg,
                   cfg.ssl_weight, cfg.tau, cfg.drop_ratio, cfg.augmentation, cfg.ssl_negatives)

    def sample_view(self) -> torch.Tensor:
        """One augmented graph ``s(G)`` (eq. 7 or 8), as its normalised adjacency ``D^-1/2 A D^-1/2``."""
        users, items, rho = self.edge_users, self.edge_items, self.drop_ratio
        if self.augmentation == "edge":  # eq. 8: each edge kept with probability 1 - ρ
            keep = torch.rand(users.numel(), device=users.device) >= rho
        else:  # eq. 7: each node kept with probability 1 - ρ, an edge survives if both ends do
            keep_u = torch.rand(self.n_users, device=users.device) >= rho
            keep_i = torch.rand(self.n_items, device=users.device) >= rho
            keep = keep_u[users] & keep_i[items]
        view = edges_to_csr(users[keep], items[keep], (self.n_users, self.n_items))
        return normalized_bipartite_adjacency(view)

    def on_epoch_start(self, epoch: int) -> None:
        """Draw the epoch's two views ``s1(G), s2(G)`` (eq. 6; redrawn every epoch, as section 3.1)."""
        self.views = (self.sample_view(), self.sample_view())

    def encode(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared LightGCN encoder (eq. 1-3) over the graph ``adj``: the mean of layers 0..L."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        # every view's Â is symmetric: its own transpose in the backward pass
        return layer_mean(adj, x, self.n_layers).split([self.n_users, self.n_items])

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.bpr_terms(*self.propagate(), users, pos, neg)
        if self.views is None:  # a loss before any epoch started: draw the views now
            self.on_epoch_start(0)
        (u1, i1), (u2, i2) = (self.encode(v) for v in self.views)
        terms["ssl"] = self.ssl_weight * (self.view_loss(u1, u2, users.unique())
                                          + self.view_loss(i1, i2, pos.unique()))  # L_ssl, section 3.2
        return terms

    def view_loss(self, view_a: torch.Tensor, view_b: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Eq. 10 for the ``anchors``, against every node or (``ssl_negatives="batch"``) the anchors."""
        if self.ssl_negatives == "all":
            return cross_view_info_nce(view_a, view_b, anchors, self.tau)
        local = torch.arange(anchors.numel(), device=anchors.device)
        return cross_view_info_nce(view_a[anchors], view_b[anchors], local, self.tau)
