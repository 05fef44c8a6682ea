"""FREEDOM (Zhou & Shen, ACM MM 2023, "A Tale of Two Graphs: Freezing and Denoising Graph Structures
for Multimodal Recommendation"): a *frozen* item-item graph and a *denoised* user-item graph.

Section 3.1, freezing the item-item graph (built once from the raw features, never re-learnt):

* ``S^m_ij = cos(x^m_i, x^m_j)`` per modality ``m``;
* kNN sparsification into an *unweighted* graph: ``Ŝ^m_ij = 1`` if ``j`` is among the ``k`` most
  similar items of ``i`` (the item itself included), else 0;
* ``S̃^m = (D^m)^-1/2 Ŝ^m (D^m)^-1/2`` with ``D^m`` the row sums of ``Ŝ^m``;
* ``S = Σ_m α_m S̃^m`` with *fixed* modality weights ``α_m`` (a hyper-parameter, ``Σ_m α_m = 1``);
* item-item convolution ``h̃^(l) = S h̃^(l-1)``, ``h̃^(0)`` the item ID embeddings; ``h̃ = h̃^(L_ii)``.

Section 3.2, denoising the user-item graph by degree-sensitive edge pruning: before every training
epoch ``⌈|E| (1 - ρ)⌉`` of the training edges are kept, drawn without replacement with
probabilities ``p_k ∝ 1 / (sqrt(|N_u|) sqrt(|N_i|))`` for the edge ``e_k = (u, i)``, so edges of
high-degree (popular) nodes are pruned more often; the kept graph is symmetric-normalised and
LightGCN runs on it: ``H^(l+1) = Â_ρ H^(l)``, ``ĥ = mean_l h^(l)``. Evaluation uses the full graph.

Section 3.3, prediction and optimisation: ``h_u = ĥ_u``, ``h_i = ĥ_i + h̃_i``, ``ŷ_ui = h_uᵀ h_i``;
the loss is BPR plus, per modality with features, a BPR term that scores the items' projected
features ``x̃^m_i = W_m x^m_i + b_m`` against the same users::

    L = L_BPR(h_u, h_i) + λ Σ_m L_BPR(h_u, x̃^m_i)   (+ reg · L2 of the batch's ID embeddings)

Differences from the released code (read, not copied): the raw features are fixed buffers (the
released code fine-tunes them; here only ``W_m, b_m`` learn), and without-replacement sampling is
drawn with exponential keys (``top-n of log(u)/p``, Efraimidis-Spirakis), the same distribution as
``torch.multinomial`` but without its ``2^24`` category limit. The kNN pattern is that of eq. 1-2 of
LATTICE (:func:`latticerec.graphs.knn.knn_graph`, disk-cached), made unweighted; a precomputed item
graph of the dataset is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latticerec.errors import ConfigError
from latticerec.graphs.adjacency import normalized_bipartite_adjacency
from latticerec.graphs.normalize import symmetric_normalize_csr
from latticerec.graphs.sparse import binary_pattern, constant_spmm, csr_from_parts, row_indices, transpose_csr
from latticerec.models.backbones import GraphConfig, LightGCN
from latticerec.models.base import ModelInputs
from latticerec.models.losses import bpr_loss
from latticerec.models.options import Modalities
from latticerec.models.structure import select_modalities


@dataclass(frozen=True)
class FreedomConfig(GraphConfig, Modalities):
    """FREEDOM options: the LightGCN part (``embed_dim``, ``n_layers`` = 2 user-item layers, ``reg``:
    L2 on the batch's ID embeddings, 0 in the paper), ``modalities`` (empty: all), ``knn_k`` (k of
    the frozen graphs), ``modality_weights`` (``α_m`` in the order of the modalities, normalised to
    sum 1; empty: equal), ``item_layers`` (``L_ii``), ``edge_dropout`` (``ρ``, the share of
    user-item edges pruned per epoch) and ``align_weight`` (``λ`` of the modality BPR terms)."""

    n_layers: int = 2
    reg: float = 0.0
    knn_k: int = 10
    modality_weights: tuple[float, ...] = ()
    item_layers: int = 1
    edge_dropout: float = 0.8
    align_weight: float = 1e-4

    def __post_init__(self):
        GraphConfig.__post_init__(self)
        Modalities.__post_init__(self)
        if self.knn_k < 1:
            raise ValueError("knn_k must be >= 1")
        if any(w < 0 for w in self.modality_weights) or (self.modality_weights
                                                         and sum(self.modality_weights) <= 0):
            raise ValueError("modality_weights must be >= 0 with a positive sum")
        if self.item_layers < 0:
            raise ValueError("item_layers must be >= 0")
        if not 0.0 <= self.edge_dropout < 1.0:
            raise ValueError("edge_dropout must lie in [0, 1)")
        if self.align_weight < 0:
            raise ValueError("align_weight must be >= 0")


def unweighted_normalized(graph: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 Ŝ D^-1/2`` of the graph's pattern with every stored entry set to 1 (FREEDOM's
    unweighted kNN graph)."""
    return symmetric_normalize_csr(binary_pattern(graph))


def combine_graphs(graphs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``S = Σ_m α_m S̃^m`` as one CSR matrix (the supports merged once, before training)."""
    parts = [w * g.to_sparse_coo() for w, g in zip(weights, graphs, strict=True)]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total.coalesce().to_sparse_csr()


def edge_keep_probabilities(train: torch.Tensor) -> torch.Tensor:
    """``p_k ∝ 1 / (sqrt(|N_u|) sqrt(|N_i|))`` of every stored edge of the users x items CSR matrix,
    in storage order (degree-sensitive pruning, section 3.2)."""
    rows, cols = row_indices(train.crow_indices()), train.col_indices()
    deg_u = train.crow_indices().diff().float()
    deg_i = torch.bincount(cols, minlength=train.shape[1]).float()
    return (deg_u[rows] * deg_i[cols]).rsqrt()


def prune_edges(train: torch.Tensor, probs: torch.Tensor, dropout: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The users x items CSR matrix of ``⌈|E| (1 - ρ)⌉`` edges drawn without replacement with
    probabilities ``probs`` (exponential keys: the ``n`` largest ``log(u) / p``)."""
    n_edges = probs.numel()
    n_keep = max(1, int(torch.tensor(n_edges * (1.0 - dropout)).ceil()))
    u = torch.rand(n_edges, generator=generator, device=probs.device).clamp_min(1e-12)
    keep = torch.topk(u.log() / probs, n_keep).indices.sort().values  # storage order: row-major
    rows, cols = row_indices(train.crow_indices())[keep], train.col_indices()[keep]
    crow = torch.zeros(train.shape[0] + 1, dtype=torch.long, device=probs.device)
    crow[1:] = torch.bincount(rows, minlength=train.shape[0]).cumsum(0)
    return csr_from_parts(crow, cols, torch.ones(n_keep, device=probs.device), tuple(train.shape))


class Freedom(LightGCN):
    """LightGCN on the degree-pruned user-item graph plus convolution over the frozen item graph."""

    Config = FreedomConfig

    def __init__(self, train: torch.Tensor, item_graph: torch.Tensor, features: dict[str, torch.Tensor],
                 cfg: FreedomConfig):
        n_users, n_items = train.shape
        super().__init__(n_users, n_items, normalized_bipartite_adjacency(train), cfg.embed_dim,
                         cfg.n_layers, cfg.reg)
        self.item_layers, self.edge_dropout, self.align_weight = (
            cfg.item_layers, cfg.edge_dropout, cfg.align_weight)
        self.register_buffer("full_adj", self.adj, persistent=False)  # evaluation: every edge
        self.register_buffer("train_matrix", train, persistent=False)
        self.register_buffer("edge_probs", edge_keep_probabilities(train), persistent=False)
        self.register_buffer("item_graph", item_graph, persistent=False)  # S, frozen
        self.register_buffer("item_graph_t", transpose_csr(item_graph), persistent=False)
        self.modalities = list(features)
        for m, f in features.items():
            self.register_buffer(f"feat_{m}", f.float(), persistent=False)
        self.projections = nn.ModuleDict({m: nn.Linear(f.shape[1], cfg.embed_dim)
                                          for m, f in features.items()})  # W_m, b_m
        self._pruned = False

    @classmethod
    def from_inputs(cls, cfg: FreedomConfig, inputs: ModelInputs) -> Freedom:
        names = select_modalities(cfg.modalities, inputs)
        weights = list(cfg.modality_weights) or [1.0] * len(names)
        if len(weights) != len(names):
            raise ConfigError(f"modality_weights has {len(weights)} weights for the {len(names)} "
                              f"modalities {', '.join(names)}")
        weights = [w / sum(weights) for w in weights]
        graphs = [unweighted_normalized(inputs.item_knn_graph(inputs.features[m], cfg.knn_k))
                  if m in inputs.features else inputs.item_graphs[m] for m in names]
        train = inputs.train.to_sparse_csr() if inputs.train.layout != torch.sparse_csr else inputs.train
        train = csr_from_parts(train.crow_indices(), train.col_indices(),
                               torch.ones_like(train.values(), dtype=torch.float32), tuple(train.shape))
        feats = {m: inputs.features[m] for m in names if m in inputs.features}
        return cls(train, combine_graphs(graphs, weights), feats, cfg)

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pruned user-item graph (section 3.2)."""
        self.resample_graph()

    def resample_graph(self) -> None:
        if self.edge_dropout > 0:
            self.adj = normalized_bipartite_adjacency(
                prune_edges(self.train_matrix, self.edge_probs, self.edge_dropout))
        self._pruned = True

    def item_graph_embedding(self) -> torch.Tensor:
        """``h̃ = S^(L_ii) X`` over the frozen item graph, ``X`` the item ID embeddings."""
        h = self.item_embedding.weight
        for _ in range(self.item_layers):
            h = constant_spmm(self.item_graph, h, self.item_graph_t)
        return h

    def propagate(self):
        if not self.training:
            self.adj, self._pruned = self.full_adj, False
        elif not self._pruned:
            self.resample_graph()
        users, items = self.propagate_with(self.item_embedding.weight)
        return users, items + self.item_graph_embedding()

    def projected(self, m: str) -> torch.Tensor:
        """``x̃^m = W_m x^m + b_m`` for every item."""
        return self.projections[m](getattr(self, f"feat_{m}"))

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        user_all, item_all = self.propagate()
        terms = self.bpr_terms(user_all, item_all, users, pos, neg)
        if self.modalities:
            u = user_all[users]
            align = sum(bpr_loss((u * x[pos]).sum(-1), (u * x[neg]).sum(-1))
                        for x in (self.projected(m) for m in self.modalities))
            terms["align"] = self.align_weight * align
        return terms
