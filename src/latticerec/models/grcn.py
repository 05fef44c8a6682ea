"""GRCN (Wei et al., ACM MM 2020): graph-refined convolutional network for implicit feedback.

Implicit feedback holds false-positive interactions (a click on an item the user does not like).
GRCN scores every user-item edge by how well the item's content fits the user's preference in each
modality, weights (softly prunes) the edges by these scores, and runs the graph convolution on the
refined graph.

Section 2 of the paper (MM '20 proceedings), with ``N(k)`` the training neighbours of node ``k`` and
``m`` every feature modality. The defaults follow the paper; each option in parentheses brings back
another variant (the paper's ablations, the released code, or this module's earlier behaviour):

* 2.2.1  graph refining layer. Prototypical network: the item's content
         ``î_m = LeakyReLU(W_m f_m + b_m)`` (eq. 1) and the user's preference prototype ``û_m``
         found by neighbour routing (eq. 2-4, ``routing_iters`` times) from a learned ``u_m^(0)``:
         ``p_ui = softmax_{i ∈ N(u)}(î_mᵀ u_m^(t-1))``, ``u_m^(t) = norm(u_m^(t-1) + Σ_{i ∈ N(u)}
         p_ui î_m)``.
         Pruning operations: every edge gets two scores per modality, each softmax-normalised over
         the *receiving* node's neighbours (eq. 5),
         ``s^m_{u←i} = exp(û_mᵀ î_m) / Σ_{j ∈ N(u)} exp(û_mᵀ ĵ_m)`` and
         ``s^m_{i←u} = exp(î_mᵀ û_m) / Σ_{v ∈ N(i)} exp(î_mᵀ v̂_m)``
         (``edge_score="softmax"``; ``"cosine"``: the raw ``û_mᵀ î_m`` in both directions), fused
         over the modalities with the base vector ``ρ`` of eq. 6 (a learned row per user and item),
         ``s_{u←i} = max_m ρ^m_u s^m_{u←i}``, ``s_{i←u} = max_m ρ^m_i s^m_{i←u}`` (eq. 7,
         ``modality_weighting="confidence"`` with ``confidence_of="receiver"``; ``"sender"``: the
         message's source node's ``ρ``, as the released code; ``modality_weighting="mean"|"max"``:
         the paper's ``GRCN_mean`` / ``GRCN_max`` of section 3.3.2, no base vector). The fused
         scores weight the edges as they are, soft pruning (``pruning="soft"``); ``"hard"`` is the
         paper's ``GRCN_hard`` (section 3.3.2, and the released code's default), ``ReLU(s)``, which
         removes every edge whose fused score is negative;
* 2.2.2  graph convolution on the refined graph, ``e_u^(l) = Σ_{i ∈ N(u)} s_{u←i} e_i^(l-1)`` and
         ``e_i^(l) = Σ_{u ∈ N(i)} s_{i←u} e_u^(l-1)`` (eq. 8, ``aggregation="sum"``; ``"mean"``
         also divides by ``|N(k)|``), ``n_layers`` layers, ``e = e^(0) + … + e^(L)`` (eq. 9);
* 2.2.3  ``e*_u = e_u ‖ û_1 ‖ … ‖ û_M``, ``e*_i = e_i ‖ î_1 ‖ … ‖ î_M`` (eq. 10,
         ``content_parts="raw"``; ``"convolved"``: each modality's ``[û_m; î_m]`` plus one
         convolution of it with that modality's own scores ``s^m`` (pruned as ``pruning`` says and
         aggregated as ``aggregation`` says), as the released code does), ``ŷ_ui = e*_uᵀ e*_i``
         (eq. 11);
* 2.3    BPR (eq. 12-13).

Where this still differs from the paper (details it leaves open are taken from the released code):

* ``î_m``, ``u_m^(0)``, every routed ``û_m`` and the layer-0 ID embeddings are L2-normalised rows
  (the paper normalises the routed prototypes only; the released code all four);
* ``ρ`` starts at 1 (``confidence_init="ones"``: every edge at its plain softmax weight), chosen on
  TikTok validation (seed 0, 5 epochs: valid Recall@20 0.0718 against 0.0157); the released code
  starts it Xavier-normal (``"xavier"``: std ≈ ``sqrt(2 / (|U| + |I| + M))``, about 0.01 on TikTok,
  so the refined graph's weights, ``ρ`` times softmax scores that sum to 1 per node, start near zero
  and the ID convolution is almost off). ``ρ`` is learned without constraint, so a fused score can
  be negative under soft pruning;
* the ``λ‖θ‖²`` of eq. 13 covers every parameter; here the L2 term is on the batch's ID embeddings
  (the released code: ID embeddings and preferences).

The released code differs from the paper's defaults in ``confidence_of="sender"``,
``pruning="hard"`` and ``content_parts="convolved"``; this module's earlier behaviour is
``edge_score="cosine" confidence_of="sender" pruning="hard" aggregation="mean"
content_parts="convolved"`` (the same representations and gradients as before, up to float
rounding).

Every edge computation is over the edge list (``O(|E| d)``), never a dense matrix: edge dot
products ``u_uᵀ i_i`` at the stored entries of ``R`` (``torch.sparse.sampled_addmm``) and weighted
neighbour sums (CSR products), each with a backward pass that is again one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from latticerec.graphs.sparse import INT32_LIMIT, csr_from_parts, row_indices, transpose_csr
from latticerec.models.backbones import GRAPH_SPACE
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.mmgcn import MultimodalGraphConfig, modality_features

WEIGHTINGS = ("confidence", "max", "mean")
EDGE_SCORES = ("softmax", "cosine")
CONFIDENCE_OF = ("receiver", "sender")
PRUNINGS = ("soft", "hard")
AGGREGATIONS = ("sum", "mean")
CONTENT_PARTS = ("raw", "convolved")
CONFIDENCE_INITS = ("xavier", "ones")


# every string option of GRCN and its allowed values (checked by the config and the constructor)
CHOICES = {"modality_weighting": WEIGHTINGS, "edge_score": EDGE_SCORES, "confidence_of": CONFIDENCE_OF,
           "pruning": PRUNINGS, "aggregation": AGGREGATIONS, "content_parts": CONTENT_PARTS,
           "confidence_init": CONFIDENCE_INITS}


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _check_choices(**values: str) -> None:
    for name, value in values.items():
        _check_choice(name, value, CHOICES[name])


@dataclass(frozen=True)
class GRCNConfig(MultimodalGraphConfig):
    """GRCN options: ``n_layers`` (ID convolution layers, 2 as the released code),
    ``routing_iters`` (routing steps of the prototypical network), ``content_dim`` (width of each
    modality part), ``modality_weighting`` (how the modalities' scores are fused: eq. 7's
    ``confidence``, or ``max`` / ``mean``), ``edge_score`` (eq. 5's ``softmax`` or a raw ``cosine``),
    ``confidence_of`` (whose ``ρ`` weights an edge's score: eq. 7's ``receiver`` or the released
    code's ``sender``), ``pruning`` (``soft``, the paper's GRCN, or ``hard``, its GRCN_hard),
    ``aggregation`` (eq. 8's ``sum`` or a degree ``mean``), ``content_parts`` (eq. 10's ``raw``
    modality vectors, or ``convolved`` once as in the released code) and ``confidence_init`` (the
    base vectors' start: the released code's ``xavier``, or ``ones``; the paper leaves it open)."""

    n_layers: int = 2
    routing_iters: int = 3
    content_dim: int = 64
    modality_weighting: Literal["confidence", "max", "mean"] = "confidence"
    edge_score: Literal["softmax", "cosine"] = "softmax"
    confidence_of: Literal["receiver", "sender"] = "receiver"
    pruning: Literal["soft", "hard"] = "soft"
    aggregation: Literal["sum", "mean"] = "sum"
    content_parts: Literal["raw", "convolved"] = "raw"
    confidence_init: Literal["xavier", "ones"] = "ones"

    def __post_init__(self):
        super().__post_init__()
        if self.routing_iters < 0:
            raise ValueError("routing_iters must be >= 0")
        if self.content_dim < 1:
            raise ValueError("content_dim must be >= 1")
        _check_choices(**{name: getattr(self, name) for name in CHOICES})


# -- edge-list operations -------------------------------------------------------------------------


class EdgeGraph(nn.Module):
    """The training graph ``R`` (users x items) as an edge list in ``R``'s CSR order, with the CSR
    structures of ``R`` and ``Rᵀ`` (32-bit indices where the sizes allow: torch's CPU CSR products
    run faster on them) and the permutations between the two edge orders. Buffers only, so they
    follow the model's device."""

    def __init__(self, train: torch.Tensor):
        super().__init__()
        crow, col = train.crow_indices().long(), train.col_indices().long()
        n_edges = col.numel()
        self.shape = (int(train.shape[0]), int(train.shape[1]))
        order = torch.arange(n_edges, dtype=torch.float64, device=col.device)
        rt = transpose_csr(csr_from_parts(crow, col, order, self.shape))
        rt_order = rt.values().long()  # position k of Rᵀ holds the R edge rt_order[k]
        r_order = torch.empty_like(rt_order)
        r_order[rt_order] = torch.arange(n_edges, device=col.device)  # and R edge e sits at r_order[e]
        small = max(*self.shape, n_edges) < INT32_LIMIT
        index = torch.int32 if small else torch.int64
        buffers = {"users": row_indices(crow), "items": col, "rt_order": rt_order, "r_order": r_order,
                   "r_crow": crow.to(index), "r_col": col.to(index),
                   "rt_crow": rt.crow_indices().to(index), "rt_col": rt.col_indices().to(index),
                   "user_degree": crow.diff().float(), "item_degree": rt.crow_indices().diff().float()}
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def n_edges(self) -> int:
        return self.items.numel()

    def dot(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``u_uᵀ i_i`` for every edge ``(u, i)``, in ``R``'s order: ``(E,)``."""
        return _EdgeDot.apply(users, items, self)

    def to_users(self, weights: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ N(u)} w_ui x_i`` for every user, ``weights`` in ``R``'s edge order."""
        return _EdgeSum.apply(weights, items, self, False)

    def to_items(self, weights: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``Σ_{u ∈ N(i)} w_ui x_u`` for every item, ``weights`` in ``R``'s edge order."""
        return _EdgeSum.apply(weights.index_select(0, self.rt_order), users, self, True)

    def csr(self, values: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """``R`` (or ``Rᵀ``) with the given stored values (in that matrix's own order)."""
        if transposed:
            return csr_from_parts(self.rt_crow, self.rt_col, values, (self.shape[1], self.shape[0]))
        return csr_from_parts(self.r_crow, self.r_col, values, self.shape)

    def sampled_dot(self, a: torch.Tensor, b: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """``a_rᵀ b_c`` at every stored entry ``(r, c)`` of ``R`` (or ``Rᵀ``), in its order."""
        if self.n_edges == 0:
            return a.new_zeros(0)
        ones = torch.ones(self.n_edges, dtype=a.dtype, device=a.device)
        return torch.sparse.sampled_addmm(self.csr(ones, transposed), a, b.T, beta=0.0).values()


class _EdgeDot(torch.autograd.Function):
    """Edge dot products ``s_e = u_uᵀ i_i``; backward ``∂U = S ∂s I`` and ``∂I = Sᵀ U`` with ``S`` the
    edge gradients placed on ``R``'s structure (two CSR products, no ``E x d`` gathers)."""

    @staticmethod
    def forward(ctx, users, items, graph):
        ctx.graph = graph
        ctx.save_for_backward(users, items)
        return graph.sampled_dot(users, items)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        users, items = ctx.saved_tensors
        graph = ctx.graph
        g_users = graph.csr(grad) @ items if ctx.needs_input_grad[0] else None
        g_items = None
        if ctx.needs_input_grad[1]:
            g_items = graph.csr(grad.index_select(0, graph.rt_order), transposed=True) @ users
        return g_users, g_items, None


class _EdgeSum(torch.autograd.Function):
    """``Y = A_w X`` with ``A = R`` (``transposed=False``: users ← items) or ``A = Rᵀ``, ``w`` in
    ``A``'s own edge order; backward ``∂w_rc = ∂Y_rᵀ X_c`` at the stored entries (sampled dot
    products) and ``∂X = A_wᵀ ∂Y``."""

    @staticmethod
    def forward(ctx, weights, x, graph, transposed):
        ctx.graph, ctx.transposed = graph, transposed
        ctx.save_for_backward(weights, x)
        return graph.csr(weights.detach(), transposed) @ x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weights, x = ctx.saved_tensors
        graph, transposed = ctx.graph, ctx.transposed
        g_weights = graph.sampled_dot(grad, x, transposed) if ctx.needs_input_grad[0] else None
        g_x = None
        if ctx.needs_input_grad[1]:  # Aᵀ's values: w in Aᵀ's order
            back = graph.r_order if transposed else graph.rt_order
            g_x = graph.csr(weights.index_select(0, back), not transposed) @ grad
        return g_weights, g_x, None, None


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``scores`` (``(E,)`` or ``(E, M)``) over the edges that share ``index`` (one
    group per receiving node, ``n`` nodes), column by column; shifted by each group's maximum."""
    flat = scores.dim() == 1
    s = scores.unsqueeze(1) if flat else scores
    idx = index.unsqueeze(1).expand_as(s)
    top = s.new_full((n, s.shape[1]), float("-inf")).scatter_reduce(0, idx, s.detach(), "amax")
    p = torch.exp(s - top.index_select(0, index))
    out = p / p.new_zeros(n, s.shape[1]).index_add(0, index, p).index_select(0, index)
    return out.squeeze(1) if flat else out


def modality_scores(affinity: torch.Tensor, edge_users: torch.Tensor, edge_items: torch.Tensor,
                    n_users: int, n_items: int, edge_score: str = "softmax"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: from the affinities ``û_mᵀ î_m`` of every edge and modality (``(E, M)``) the scores
    ``(s^m_{u←i}, s^m_{i←u})``, each ``(E, M)``: softmax over the receiving user's, resp. item's,
    neighbours (``softmax``), or the affinity itself in both directions (``cosine``)."""
    _check_choice("edge_score", edge_score, EDGE_SCORES)
    if edge_score == "cosine":
        return affinity, affinity
    return (segment_softmax(affinity, edge_users, n_users),
            segment_softmax(affinity, edge_items, n_items))


def fuse_scores(to_user: torch.Tensor, to_item: torch.Tensor, weighting: str, pruning: str = "soft",
                rho_to_user: torch.Tensor | None = None, rho_to_item: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7: the edge weights ``(s_{u←i}, s_{i←u})``, each ``(E,)``, from the per-modality scores
    ``(E, M)`` of both directions. ``confidence``: ``max_m ρ^m s^m`` with ``rho_to_user`` /
    ``rho_to_item`` the ``ρ`` rows (``(E, M)``) that weight each direction; ``max`` / ``mean``:
    over the modalities, no ``ρ``. ``pruning="hard"`` applies ``ReLU`` (GRCN_hard)."""
    _check_choice("modality_weighting", weighting, WEIGHTINGS)
    _check_choice("pruning", pruning, PRUNINGS)
    if weighting == "mean":
        w_u, w_i = to_user.mean(1), to_item.mean(1)
    elif weighting == "max":
        w_u, w_i = to_user.amax(1), to_item.amax(1)
    else:
        if rho_to_user is None or rho_to_item is None:
            raise ValueError("confidence weighting needs the base vectors of both message directions")
        w_u, w_i = (rho_to_user * to_user).amax(1), (rho_to_item * to_item).amax(1)
    return (F.relu(w_u), F.relu(w_i)) if pruning == "hard" else (w_u, w_i)


# -- the model ------------------------------------------------------------------------------------


class GRCN(Recommender):
    """Routing-based edge scores, (soft) pruning, and a graph convolution on the refined graph."""

    Config = GRCNConfig
    SEARCH_SPACE = {**GRAPH_SPACE, "n_layers": ("int", 1, 3)}

    def __init__(self, inputs: ModelInputs, modalities: tuple[str, ...] = (), embed_dim: int = 64,
                 n_layers: int = 2, reg: float = 1e-4, routing_iters: int = 3, content_dim: int = 64,
                 modality_weighting: str = "confidence", edge_score: str = "softmax",
                 confidence_of: str = "receiver", pruning: str = "soft", aggregation: str = "sum",
                 content_parts: str = "raw", confidence_init: str = "ones"):
        super().__init__()
        _check_choices(modality_weighting=modality_weighting, edge_score=edge_score,
                       confidence_of=confidence_of, pruning=pruning, aggregation=aggregation,
                       content_parts=content_parts, confidence_init=confidence_init)
        self.n_users, self.n_items, self.reg_weight = inputs.n_users, inputs.n_items, reg
        self.n_layers, self.routing_iters, self.weighting = n_layers, routing_iters, modality_weighting
        self.edge_score, self.confidence_of, self.pruning = edge_score, confidence_of, pruning
        self.aggregation, self.content_parts = aggregation, content_parts
        self.names = modality_features(self, inputs, modalities, "grcn")
        self.graph = EdgeGraph(inputs.train)
        self.id_embedding = nn.Embedding(self.n_users + self.n_items, embed_dim)
        self.preference = nn.ParameterDict({m: nn.Parameter(torch.empty(self.n_users, content_dim))
                                            for m in self.names})  # u_m^(0)
        self.projection = nn.ModuleDict({m: nn.Linear(inputs.features[m].shape[1], content_dim)
                                         for m in self.names})  # W_m, b_m
        nn.init.xavier_normal_(self.id_embedding.weight)
        for m in self.names:
            nn.init.xavier_normal_(self.preference[m])
            nn.init.xavier_normal_(self.projection[m].weight)
        if modality_weighting == "confidence":  # ρ (eq. 6): one base vector per user and item
            rho = torch.empty(self.n_users + self.n_items, len(self.names))
            self.confidence = nn.Parameter(nn.init.xavier_normal_(rho) if confidence_init == "xavier"
                                           else nn.init.ones_(rho))

    @classmethod
    def from_inputs(cls, cfg: GRCNConfig, inputs: ModelInputs) -> GRCN:
        return cls(inputs, cfg.modalities, cfg.embed_dim, cfg.n_layers, cfg.reg, cfg.routing_iters,
                   cfg.content_dim, cfg.modality_weighting, cfg.edge_score, cfg.confidence_of,
                   cfg.pruning, cfg.aggregation, cfg.content_parts, cfg.confidence_init)

    @property
    def edge_users(self) -> torch.Tensor:
        return self.graph.users

    @property
    def edge_items(self) -> torch.Tensor:
        return self.graph.items

    def ego_embeddings(self):
        return self.id_embedding.weight[: self.n_users], self.id_embedding.weight[self.n_users:]

    def prototypes(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(û_m, î_m)`` of section 2.2.1 (eq. 1-4): routed user prototypes and item contents, unit rows."""
        graph = self.graph
        items = F.normalize(F.leaky_relu(self.projection[m](getattr(self, f"feat_{m}"))), dim=1)
        users = F.normalize(self.preference[m], dim=1)
        for _ in range(self.routing_iters):
            p = segment_softmax(graph.dot(users, items), graph.users, self.n_users)  # eq. 2 / 4
            users = F.normalize(users + graph.to_users(p, items), dim=1)  # eq. 3 / 4
        return users, items

    def modality_scores(self, affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5 on this model's graph: ``(s^m_{u←i}, s^m_{i←u})``, each ``(E, M)``."""
        return modality_scores(affinity, self.graph.users, self.graph.items, self.n_users, self.n_items,
                               self.edge_score)

    def edge_weights(self, affinity: torch.Tensor, scores: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined graph's weights ``(s_{u←i}, s_{i←u})`` (eq. 5-7) for the affinities ``(E, M)``;
        ``scores``: their eq. 5 scores when already computed (:meth:`modality_scores`)."""
        graph = self.graph
        to_user, to_item = scores if scores is not None else self.modality_scores(affinity)
        if self.weighting != "confidence":
            return fuse_scores(to_user, to_item, self.weighting, self.pruning)
        rho_users = self.confidence.index_select(0, graph.users)
        rho_items = self.confidence.index_select(0, self.n_users + graph.items)
        if self.confidence_of == "sender":
            rho_users, rho_items = rho_items, rho_users  # u ← i weighted by the item's ρ, and back
        return fuse_scores(to_user, to_item, "confidence", self.pruning, rho_users, rho_items)

    def convolve(self, x: torch.Tensor, to_user: torch.Tensor, to_item: torch.Tensor) -> torch.Tensor:
        """One layer of eq. 8 on the refined graph: ``x_u ← Σ_{i ∈ N(u)} s_{u←i} x_i`` and
        ``x_i ← Σ_{u ∈ N(i)} s_{i←u} x_u`` (divided by ``|N(k)|`` when ``aggregation="mean"``)."""
        graph = self.graph
        users = graph.to_users(to_user, x[self.n_users:])
        items = graph.to_items(to_item, x[: self.n_users])
        if self.aggregation == "mean":
            users = users / graph.user_degree.clamp_min(1.0)[:, None]
            items = items / graph.item_degree.clamp_min(1.0)[:, None]
        return torch.cat([users, items], dim=0)

    def propagate(self):
        protos = [self.prototypes(m) for m in self.names]
        affinity = torch.stack([self.graph.dot(u, i) for u, i in protos], dim=1)  # û_mᵀ î_m: (E, M)
        scores = self.modality_scores(affinity)
        to_user, to_item = self.edge_weights(affinity, scores)
        x = F.normalize(self.id_embedding.weight, dim=1)
        total = x
        for _ in range(self.n_layers):  # eq. 8-9
            x = self.convolve(x, to_user, to_item)
            total = total + x
        parts = [total]
        if self.content_parts == "convolved":
            s_user, s_item = scores
            if self.pruning == "hard":
                s_user, s_item = F.relu(s_user), F.relu(s_item)
        for k, (u, i) in enumerate(protos):  # eq. 10
            c = torch.cat([u, i], dim=0)
            if self.content_parts == "convolved":
                c = c + self.convolve(c, s_user[:, k], s_item[:, k])
            parts.append(c)
        out = torch.cat(parts, dim=1)
        return out[: self.n_users], out[self.n_users:]
