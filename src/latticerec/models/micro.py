"""MICRO (Zhang et al., TKDE): latent structure mining with contrastive modality fusion.

Equation numbers follow sections 3.1-3.5 of the paper:

* eq. 1-5   per-modality latent graphs ``A_m = λ S̃_m + (1 - λ) Ã_m``: the shared
            :class:`~latticerec.models.structure.LatentStructure`, whose graphs are kept per modality
            instead of being summed;
* eq. 6     ``H_m = A_m^L X`` with the same item ID embeddings ``X`` for every modality;
* eq. 7-8   modality-shared fusion ``α_i^m = softmax_m(q1ᵀ tanh(W h_i^m + b))``,
            ``h_c,i = Σ_m α_i^m h_i^m`` (``W, b, q1`` shared by all modalities);
* eq. 9-10  contrastive loss ``L_C``: InfoNCE between each ``h_i^m`` and ``h_c,i``
            (:func:`~latticerec.models.losses.info_nce`), mean over modalities;
* eq. 11-12 modality-specific parts ``h_s,i^m = h_i^m - h_c,i``;
* eq. 13    soft orthogonality ``L_S`` over every modality pair
            (:func:`~latticerec.models.losses.orthogonality_loss`);
* eq. 14-15 ``[α_c,i, α_s,i^m…] = softmax(q2ᵀ [h_c,i, h_s,i^m…])``,
            ``h_i = α_c,i h_c,i + Σ_m α_s,i^m h_s,i^m``;
* eq. 16    user preference ``h_u = mean_{i ∈ I_u} h_i`` (row-normalised training matrix times ``H``);
* eq. 17    ``ŷ_ui = (x̃_u + h_u/‖h_u‖)ᵀ (x̃_i + h_i/‖h_i‖)`` with the backbone's ``x̃_u, x̃_i``;
           ``structure_weight`` w scales both unit vectors (the paper: w = 1);
* eq. 18-19 ``L = L_BPR + β_C L_C + β_S L_S`` (plus the backbone's L2 term, as in LATTICE).

The learned graphs are rebuilt once per epoch exactly as in LATTICE (:meth:`on_epoch_start`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from latticerec.graphs.normalize import row_normalize_csr
from latticerec.graphs.sparse import constant_spmm, transpose_csr
from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs
from latticerec.models.losses import info_nce, orthogonality_loss
from latticerec.models.options import (
    LATTICE_LAMBDA,
    STRUCTURE_SPACE,
    FeatureAblations,
    LatticeGraph,
    RawFeatures,
    Structure,
)
from latticerec.models.structure import LatentStructure, StructureModel, add_item_signal, build_structure

MICRO_LAMBDA = 0.7  # λ of eq. 5 with fusion (paper, section 4.1.4)


@dataclass(frozen=True)
class MicroConfig(Structure, FeatureAblations, RawFeatures, LatticeGraph):
    """MICRO options: the structure learner's (``item_layers`` = ``L``) and LATTICE's
    ``feats_input``/``cf_feats`` ablations, plus the fusion ones. Defaults: ``k = 10``, ``τ = 0.5``
    (paper, section 4.1.4); ``lambda_coeff`` unset means ``λ = 0.7`` with fusion (the paper's) and
    LATTICE's 0.9 with ``fusion=false`` (which is LATTICE); ``beta_c = 0.06`` reproduces the released
    code (0.03 times the *sum* over two modalities; eq. 9 takes their mean); ``beta_s`` has no
    published value.

    ``cl_batch`` / ``cl_negatives`` choose the items of ``L_C`` (see :class:`Micro`); ``att_init``
    the attention layers' initialisation: ``xavier`` (Xavier weights, zero bias) or ``torch``
    (``nn.Linear``'s default, the released code); ``train_features`` see :class:`RawFeatures`;
    ``lattice_graph`` / ``alpha_live`` (:class:`LatticeGraph`) combine LATTICE's modality weights,
    so they apply with ``fusion=false`` only."""

    lambda_coeff: float | None = None
    fusion: bool = True
    specific: bool = True
    preference: bool = True
    beta_c: float = 0.06
    beta_s: float = 0.1
    tau: float = 0.5
    cl_batch: int = 1024
    cl_negatives: Literal["batch", "all"] = "batch"
    cl_chunk: int = 4096
    att_init: Literal["xavier", "torch"] = "xavier"

    def __post_init__(self):
        super().__post_init__()
        if self.beta_c < 0 or self.beta_s < 0:
            raise ValueError("beta_c and beta_s must be >= 0")
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        if self.cl_chunk < 1:
            raise ValueError("cl_chunk must be >= 1")
        if self.cl_batch < 0:
            raise ValueError("cl_batch must be >= 0 (0: every item at every step)")
        if self.cl_negatives not in ("batch", "all"):
            raise ValueError("cl_negatives must be 'batch' or 'all'")
        if self.att_init not in ("xavier", "torch"):
            raise ValueError(f"att_init must be 'xavier' or 'torch', got {self.att_init!r}")
        if self.fusion and (self.lattice_graph != "per_modality" or not self.alpha_live):
            raise ValueError("lattice_graph and alpha_live combine LATTICE's modality weights: "
                             "they apply with fusion=false only")

    def skip_lambda(self) -> float:
        """``lambda_coeff``, or by default 0.7 with fusion and LATTICE's 0.9 without."""
        if self.lambda_coeff is not None:
            return self.lambda_coeff
        return MICRO_LAMBDA if self.fusion else LATTICE_LAMBDA


class Micro(StructureModel):
    """MICRO wrapped around a backbone (composition: any :class:`Backbone` works).

    Ablations of Table 5 are flags of this model (``--set key=value``):

    ==========================  =====================================================================
    Table 5 row                 options
    ==========================  =====================================================================
    MICRO                       (defaults)
    MICRO w/o. fusion           ``fusion=false``: exactly LATTICE (modality weights ``α_m``, one
                                aggregated graph, BPR only, no ``h_u``; LATTICE's ``lattice_graph``
                                and ``alpha_live`` options); the state dict has LATTICE's
                                keys, so a ``lattice`` checkpoint loads into it and scores the same.
                                The fusion options (``specific``, ``preference``, ``beta_*``, ``tau``,
                                ``cl_*``) have no effect then.
    MICRO w/o. specific         ``specific=false``: ``h_i = h_c,i`` (no eq. 11-15, no ``L_S``)
    MICRO w/o. preference       ``preference=false``: ``ŷ_ui = x̃_uᵀ (x̃_i + h_i/‖h_i‖)`` (no eq. 16)
    MICRO/feats                 ``feats_input=true``: the graph convolutions (eq. 6) start from the
                                projected features ``mean_m ẽ_m`` (eq. 4) instead of ID embeddings,
                                the same input for every modality as in eq. 6 (LATTICE/feats' input)
    CF+feats                    ``cf_feats=true``: no item graphs; ``h_i^m = ẽ_i^m`` (eq. 4)
                                replaces ``A_m^L X`` and the rest of MICRO is kept. With
                                ``fusion=false`` it is LATTICE's CF+feats, ``h_i = Σ_m α_m ẽ_i^m``.
    ==========================  =====================================================================

    Items of the contrastive loss (eq. 9-10). Eq. 9 averages over all items and the released code
    evaluates that full sum at every step with all items as negatives: ``|M| x N² d`` work per step,
    many times a LATTICE step on Baby (7,050 items). Defaults, chosen for the 2x budget:

    * ``cl_batch=1024``: each step's anchors ``i`` are 1,024 items drawn uniformly without
      replacement, so the step's loss is an unbiased estimate of eq. 9's mean over all items, and
      long-tail and cold items are anchors as often as popular ones (the cold-start argument of
      section 3.3.1). ``cl_batch=0``: every item at every step (the released code).
    * ``cl_negatives=batch``: the negatives ``j`` of eq. 10 are the other sampled items (both
      ``h_c,j`` and ``h_j^m``), as in SGL's in-batch negatives: a sampled estimate of eq. 10's
      denominator, good at ``τ = 0.5`` where logits lie in ``[-2, 2]`` and no few hard negatives
      dominate the sum. ``cl_negatives=all`` keeps every item as a negative, i.e. eq. 10 exactly
      for each anchor (the paper and released code), at ``N / cl_batch`` times the cost
      (``cl_batch=0 cl_negatives=all`` is the released code's loss).

    Per epoch on Baby-shaped data (``benchmarks/bench_micro.py --threads 1``) the defaults cost
    1.6x LATTICE (measured); the same script with ``--set cl_negatives=all`` or
    ``--set cl_batch=0 --set cl_negatives=all`` measures the costlier variants.
    Similarities are computed in chunks of ``cl_chunk`` anchors (never an ``N x N`` matrix).
    """

    Config = MicroConfig
    SEARCH_SPACE = {**STRUCTURE_SPACE, "tau": ("float", 0.1, 1.0), "beta_c": ("log", 1e-3, 1.0),
                    "beta_s": ("log", 1e-3, 1.0)}

    def __init__(self, backbone: Backbone, structure: LatentStructure, train: torch.Tensor,
                 item_layers: int = 1, cf_feats: bool = False, feats_input: bool = False,
                 fusion: bool = True, specific: bool = True, preference: bool = True,
                 beta_c: float = 0.06, beta_s: float = 0.1, tau: float = 0.5,
                 cl_batch: int = 1024, cl_negatives: str = "batch", cl_chunk: int = 4096,
                 att_init: str = "xavier", lattice_graph: str = "per_modality", alpha_live: bool = True,
                 structure_weight: float = 1.0):
        # without fusion: LATTICE's modality weights and graph options, under LATTICE's names
        super().__init__(backbone, structure, item_layers, cf_feats, feats_input, modality_weights=not fusion,
                         lattice_graph=lattice_graph, alpha_live=alpha_live,
                         structure_weight=structure_weight)
        self.fusion, self.specific, self.preference = fusion, specific, preference
        self.beta_c, self.beta_s, self.tau = beta_c, beta_s, tau
        self.cl_batch, self.cl_negatives, self.cl_chunk = cl_batch, cl_negatives, cl_chunk
        if not fusion:
            return
        d = backbone.embed_dim
        self.att_w = nn.Linear(d, d)  # W, b of eq. 7
        self.att_q1 = nn.Linear(d, 1, bias=False)  # q1 of eq. 7
        self.att_q2 = nn.Linear(d, 1, bias=False) if specific else None  # q2 of eq. 14
        for lin in (self.att_w, self.att_q1, self.att_q2) if att_init == "xavier" else ():
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if preference:
            mat = row_normalize_csr(train)  # D⁻¹ R of eq. 16 (users without items: empty rows)
            self.register_buffer("user_items", mat, persistent=False)
            self.register_buffer("user_items_t", transpose_csr(mat), persistent=False)

    @classmethod
    def from_inputs(cls, cfg: MicroConfig, inputs: ModelInputs, backbone: Backbone) -> Micro:
        structure = build_structure(cfg, inputs, backbone.embed_dim)
        if cfg.train_features:
            structure.train_raw_features()
        return cls(backbone, structure, inputs.train,
                   item_layers=cfg.item_layers, cf_feats=cfg.cf_feats, feats_input=cfg.feats_input,
                   fusion=cfg.fusion, specific=cfg.specific, preference=cfg.preference,
                   beta_c=cfg.beta_c, beta_s=cfg.beta_s, tau=cfg.tau, cl_batch=cfg.cl_batch,
                   cl_negatives=cfg.cl_negatives, cl_chunk=cfg.cl_chunk, att_init=cfg.att_init,
                   lattice_graph=cfg.lattice_graph, alpha_live=cfg.alpha_live,
                   structure_weight=cfg.structure_weight)

    # -- MICRO ---------------------------------------------------------------------------------
    def shared_attention(self, modal: torch.Tensor) -> torch.Tensor:
        """``(M, N)`` weights ``α_i^m = softmax_m(q1ᵀ tanh(W h_i^m + b))`` (eq. 7); each column sums to 1."""
        return torch.softmax(self.att_q1(torch.tanh(self.att_w(modal))).squeeze(-1), dim=0)

    def fuse(self, modal: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 7-15 on ``modal = (H_m)_m``: ``alpha`` (eq. 7), ``common`` ``h_c`` (eq. 8), ``specific``
        ``(h_s^m)_m`` (eq. 11-12), ``beta`` (eq. 14, rows ``[c, s^1, …]``) and the item
        representation ``item`` ``h`` (eq. 15; ``h_c`` itself with ``specific=false``)."""
        alpha = self.shared_attention(modal)
        common = (alpha.unsqueeze(-1) * modal).sum(0)
        out = {"alpha": alpha, "common": common, "item": common}
        if self.specific:
            specific = modal - common.unsqueeze(0)
            parts = torch.cat([common.unsqueeze(0), specific])
            beta = torch.softmax(self.att_q2(parts).squeeze(-1), dim=0)
            out.update(specific=specific, beta=beta, item=(beta.unsqueeze(-1) * parts).sum(0))
        return out

    def user_preference(self, item: torch.Tensor) -> torch.Tensor:
        """``h_u = (1/|I_u|) Σ_{i ∈ I_u} h_i`` (eq. 16) for every user at once."""
        return constant_spmm(self.user_items, item, self.user_items_t)

    def item_structure_embedding(self) -> torch.Tensor:
        """The item representation that eq. 17 adds to ``x̃_i``: ``h_i`` (LATTICE's ``H`` without fusion)."""
        if not self.fusion:
            return self.weighted_embedding()
        return self.fuse(self.modality_embeddings())["item"]

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
        """Scores' user and item sides (eq. 17) plus the intermediate embeddings the losses need."""
        users, items = self.backbone.propagate()
        if not self.fusion:
            items = add_item_signal(items, self.item_structure_embedding(), self.structure_weight)
            return users, items, None, {}
        modal = self.modality_embeddings()
        parts = self.fuse(modal)
        if self.preference:
            users = add_item_signal(users, self.user_preference(parts["item"]), self.structure_weight)
        return users, add_item_signal(items, parts["item"], self.structure_weight), modal, parts

    def propagate(self):
        users, items, _, _ = self._forward()
        return users, items

    def contrastive_anchors(self, n_items: int, device: torch.device) -> torch.Tensor | None:
        """The items ``i`` whose terms of eq. 9 a step averages: ``cl_batch`` items drawn uniformly
        without replacement from the torch generator (which the trainer seeds per epoch);
        ``None`` (every item) when ``cl_batch`` is 0 or covers the catalogue."""
        if self.cl_batch == 0 or self.cl_batch >= n_items:
            return None
        return torch.randperm(n_items, device=device)[: self.cl_batch]

    def contrastive_loss(self, modal: torch.Tensor, common: torch.Tensor,
                         items: torch.Tensor | None = None) -> torch.Tensor:
        """``L_C`` (eq. 9): the mean over modalities of :func:`info_nce` (eq. 10) between ``H_m`` and
        ``h_c``, over the anchors ``items`` (all items if ``None``); ``cl_negatives=batch`` takes the
        negatives ``j`` of eq. 10 among the anchors only, ``all`` among every item."""
        if items is not None and self.cl_negatives == "batch":
            modal, common, items = modal[:, items], common[items], None
        return torch.stack([info_nce(h, common, self.tau, items, self.cl_chunk) for h in modal]).mean()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 19: ``bpr`` (eq. 18, batch mean), ``reg`` (L2 on the batch's ego embeddings),
        ``contrastive`` ``β_C L_C`` and ``orthogonal`` ``β_S L_S`` (the last two with fusion only)."""
        user_all, item_all, modal, parts = self._forward()
        terms = self.bpr_terms(user_all, item_all, users, pos, neg)
        if not self.fusion:
            return terms
        if self.beta_c > 0:  # β_C = 0 skips L_C's cost (the term is still reported, as 0)
            anchors = self.contrastive_anchors(modal.shape[1], modal.device)
            terms["contrastive"] = self.beta_c * self.contrastive_loss(modal, parts["common"], anchors)
        else:
            terms["contrastive"] = modal.new_zeros(())
        if self.specific:
            terms["orthogonal"] = self.beta_s * orthogonality_loss(parts["specific"])
        return terms
