"""GRCN (Wei et al., ACM MM 2020): graph-refined convolutional network for implicit feedback.

Implicit feedback holds false-positive interactions (a click on an item the user does not like).
GRCN scores every user-item edge by how well the item's content fits the user's preference in each
modality, prunes the edges that fit badly, and runs the graph convolution on the refined graph.

Section 2 of the paper (MM '20 proceedings), with ``E`` the training interactions and ``m`` every
feature modality; where this implementation departs from the paper it says so:

* 2.2.1  graph refining layer. Prototypical network: the item's content
         ``î_m = LeakyReLU(W_m f_m + b_m)`` (eq. 1; rows L2-normalised here, as the released code)
         and the user's preference prototype ``û_m`` found by neighbour routing (eq. 2-4,
         ``routing_iters`` times): ``p_ui = softmax_{i ∈ N(u)}(î_mᵀ û_m)``,
         ``û_m ← norm(û_m + Σ_{i ∈ N(u)} p_ui î_m)``, starting from a learned ``û_m = norm(u_m)``.
         Pruning operations: the paper scores each edge in both directions with softmax-normalised
         affinities, ``s^m_{u←i} = softmax_{j ∈ N(u)}(û_mᵀ î_m)`` and
         ``s^m_{i←u} = softmax_{v ∈ N(i)}(î_mᵀ v̂_m)`` (eq. 5), and fuses the modalities with a
         learned base vector ``ρ`` (eq. 6) of the *receiving* node,
         ``s_{u←i} = max_m ρ^m_u s^m_{u←i}`` (eq. 7); its GRCN weights the edges with these
         (positive) scores, "soft" pruning, and ``ReLU`` only appears in its ``GRCN_hard`` variant
         (section 3.3.2). Here the affinity is the raw cosine ``s^m_ui = û_mᵀ î_m``, the same in
         both directions, the modalities are integrated by ``modality_weighting`` (``mean``,
         ``max``, the paper's ``GRCN_mean`` / ``GRCN_max``, or ``confidence``: the max over ``m`` of
         ``κ_(j,m) s^m_ui`` with a learned confidence ``κ`` of the message's *source* node ``j``)
         and the edge weight is ``ŝ_ui = ReLU(s_ui)``: an edge whose affinity is negative is removed;
* 2.2.2  graph convolution on the refined graph: the paper's ``e_u^(l) = Σ_{i ∈ N(u)} s_{u←i}
         e_i^(l-1)`` (eq. 8, its weights already normalised over ``N(u)``) becomes here a weighted
         mean over the original neighbourhood, ``x_k^(l) = (1/|N(k)|) Σ_{j ∈ N(k)} ŝ_jk x_j^(l-1)``,
         on the ID embeddings (``n_layers`` layers, ``x^(0) + … + x^(L)``, eq. 9 and the released
         code); as in the released code (not in eq. 10), each modality's ``[û_m; î_m]`` is also
         convolved once, with its own pruned weights ``ReLU(s^m)``;
* 2.2.3  the representation concatenates the ID part and every modality part (eq. 10),
         ``ŷ_ui = u*ᵀ i*`` (eq. 11);
* 2.3    BPR (eq. 12-13; the paper's ``λ‖θ‖²`` covers every parameter, here the L2 term is on the
         batch's ID embeddings).

Edge weights are computed over the edge list (``O(|E| d)``), never as a dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.graphs.sparse import GradCSR, csr_from_parts, row_indices, spmm, transpose_csr
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.mmgcn import MultimodalGraphConfig, modality_features

WEIGHTINGS = ("confidence", "max", "mean")


@dataclass(frozen=True)
class GRCNConfig(MultimodalGraphConfig):
    """GRCN options: ``n_layers`` (ID convolution layers, 2 as the released code),
    ``routing_iters`` (routing steps of the prototypical network), ``content_dim`` (width of each
    modality part) and ``modality_weighting`` (how the modalities' affinities are integrated)."""

    n_layers: int = 2
    routing_iters: int = 3
    content_dim: int = 64
    modality_weighting: Literal["confidence", "max", "mean"] = "confidence"

    def __post_init__(self):
        super().__post_init__()
        if self.routing_iters < 0:
            raise ValueError("routing_iters must be >= 0")
        if self.content_dim < 1:
            raise ValueError("content_dim must be >= 1")
        if self.modality_weighting not in WEIGHTINGS:
            raise ValueError(f"modality_weighting must be one of {', '.join(WEIGHTINGS)}")


def refine_weights(affinity: torch.Tensor, weighting: str, conf_src_user: torch.Tensor | None = None,
                   conf_src_item: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 2.2.1 (pruning, eq. 5-7; see the module docstring for the differences): the pruned
    edge weights ``(ŝ_user→item, ŝ_item→user)``, each ``(E,)``, from the per-modality affinities
    ``(E, M)``; ``confidence`` needs the message sources' ``κ`` rows (``(E, M)`` each). ``ReLU``
    removes every edge whose integrated affinity is negative."""
    if weighting == "mean":
        s = affinity.mean(1)
        return F.relu(s), F.relu(s)
    if weighting == "max":
        s = affinity.amax(1)
        return F.relu(s), F.relu(s)
    if conf_src_user is None or conf_src_item is None:
        raise ValueError("confidence weighting needs the confidences of both message directions")
    return F.relu((conf_src_user * affinity).amax(1)), F.relu((conf_src_item * affinity).amax(1))


class GRCN(Recommender):
    """Routing-based edge affinities, pruning, and a graph convolution on the refined graph."""

    Config = GRCNConfig

    def __init__(self, inputs: ModelInputs, modalities: tuple[str, ...] = (), embed_dim: int = 64,
                 n_layers: int = 2, reg: float = 1e-4, routing_iters: int = 3, content_dim: int = 64,
                 modality_weighting: str = "confidence"):
        super().__init__()
        self.n_users, self.n_items, self.reg_weight = inputs.n_users, inputs.n_items, reg
        self.n_layers, self.routing_iters, self.weighting = n_layers, routing_iters, modality_weighting
        self.names = modality_features(self, inputs, modalities, "grcn")
        self._edge_buffers(inputs.train)
        self.id_embedding = nn.Embedding(self.n_users + self.n_items, embed_dim)
        self.preference = nn.ParameterDict({m: nn.Parameter(torch.empty(self.n_users, content_dim))
                                            for m in self.names})  # u_m
        self.projection = nn.ModuleDict({m: nn.Linear(inputs.features[m].shape[1], content_dim)
                                         for m in self.names})  # W_m, b_m
        nn.init.xavier_normal_(self.id_embedding.weight)
        for m in self.names:
            nn.init.xavier_normal_(self.preference[m])
            nn.init.xavier_normal_(self.projection[m].weight)
        if modality_weighting == "confidence":  # κ: one confidence per node and modality
            self.confidence = nn.Parameter(nn.init.xavier_normal_(
                torch.empty(self.n_users + self.n_items, len(self.names))))

    def _edge_buffers(self, train: torch.Tensor) -> None:
        """The edge list (CSR order of ``R``), the binary ``R`` and ``Rᵀ`` (structures of the weighted
        sums), the permutation from ``R``'s edge order to ``Rᵀ``'s, and the node degrees."""
        crow, col = train.crow_indices(), train.col_indices()
        order = torch.arange(col.numel(), dtype=torch.float64, device=col.device)
        r = csr_from_parts(crow, col, order, tuple(train.shape))
        rt = transpose_csr(r)
        self.register_buffer("edge_users", row_indices(crow), persistent=False)
        self.register_buffer("edge_items", col.clone(), persistent=False)
        self.register_buffer("r_ones", csr_from_parts(crow, col, torch.ones_like(order, dtype=torch.float32),
                                                      tuple(train.shape)), persistent=False)
        self.register_buffer("rt_ones", csr_from_parts(rt.crow_indices(), rt.col_indices(),
                                                       torch.ones_like(order, dtype=torch.float32),
                                                       tuple(rt.shape)), persistent=False)
        self.register_buffer("rt_order", rt.values().long(), persistent=False)
        self.register_buffer("user_degree", crow.diff().float().clamp_min(1.0), persistent=False)
        self.register_buffer("item_degree", rt.crow_indices().diff().float().clamp_min(1.0),
                             persistent=False)

    def edge_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``u_uᵀ i_i`` for every training edge ``(u, i)``, in ``R``'s CSR order."""
        return (users.index_select(0, self.edge_users) * items.index_select(0, self.edge_items)).sum(1)

    def user_sum(self, values: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ N(u)} v_ui x_i`` for every user: ``R_v X`` with the edge values ``v`` (sparse)."""
        return spmm(GradCSR(self.r_ones, values), items)

    def item_sum(self, values: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``Σ_{u ∈ N(i)} v_ui x_u`` for every item: ``R_vᵀ X``."""
        return spmm(GradCSR(self.rt_ones, values.index_select(0, self.rt_order)), users)

    @classmethod
    def from_inputs(cls, cfg: GRCNConfig, inputs: ModelInputs) -> GRCN:
        return cls(inputs, cfg.modalities, cfg.embed_dim, cfg.n_layers, cfg.reg, cfg.routing_iters,
                   cfg.content_dim, cfg.modality_weighting)

    def ego_embeddings(self):
        return self.id_embedding.weight[: self.n_users], self.id_embedding.weight[self.n_users:]

    def prototypes(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(û_m, î_m)`` of section 2.2.1 (eq. 1-4): routed user prototypes and item contents, unit rows."""
        eu = self.edge_users
        items = F.normalize(F.leaky_relu(self.projection[m](getattr(self, f"feat_{m}"))), dim=1)
        users = F.normalize(self.preference[m], dim=1)
        for _ in range(self.routing_iters):
            p = torch.exp(self.edge_scores(users, items) - 1.0)  # cosines are <= 1: no overflow
            p = p / torch.zeros_like(users[:, 0]).index_add(0, eu, p).index_select(0, eu)  # softmax
            users = F.normalize(users + self.user_sum(p, items), dim=1)
        return users, items

    def refined_weights(self, affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruned weights of both message directions for the affinities ``(E, M)``."""
        if self.weighting != "confidence":
            return refine_weights(affinity, self.weighting)
        return refine_weights(affinity, "confidence", self.confidence.index_select(0, self.edge_users),
                              self.confidence.index_select(0, self.n_users + self.edge_items))

    def convolve(self, x: torch.Tensor, w_ui: torch.Tensor, w_iu: torch.Tensor) -> torch.Tensor:
        """One step of section 2.2.2 (eq. 8) on the refined graph, as a weighted mean:
        ``x_k ← (1/|N(k)|) Σ_j ŝ_jk x_j``."""
        xu, xi = x[: self.n_users], x[self.n_users:]
        users = self.user_sum(w_iu, xi) / self.user_degree[:, None]
        items = self.item_sum(w_ui, xu) / self.item_degree[:, None]
        return torch.cat([users, items], dim=0)

    def propagate(self):
        protos = {m: self.prototypes(m) for m in self.names}
        affinity = torch.stack([self.edge_scores(u, i) for u, i in protos.values()], dim=1)  # s^m_ui
        w_ui, w_iu = self.refined_weights(affinity)
        x = F.normalize(self.id_embedding.weight, dim=1)
        parts, total = [], x
        for _ in range(self.n_layers):
            x = self.convolve(x, w_ui, w_iu)
            total = total + x
        parts.append(total)
        for k, (u, i) in enumerate(protos.values()):
            c = torch.cat([u, i], dim=0)
            s_m = F.relu(affinity[:, k])
            parts.append(c + self.convolve(c, s_m, s_m))
        out = torch.cat(parts, dim=1)
        return out[: self.n_users], out[self.n_users:]
