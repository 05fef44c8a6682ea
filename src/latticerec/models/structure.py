"""The latent structure learner shared by LATTICE, MICRO and MM-GEF.

Equation numbers follow section 3.1-3.2 of the MICRO paper (TKDE), which restates LATTICE:

* eq. 1-3  initial graphs ``S̃_m``: cosine kNN over the raw features of modality ``m``, normalised;
* eq. 4    projections ``ẽ_m = W_m e_m + b_m`` and the learned graphs ``Ã_m`` (eq. 1-3 on ``ẽ_m``);
* eq. 5    skip connection ``A_m = λ S̃_m + (1 - λ) Ã_m``;
* eq. 6    light graph convolution ``H = A^L X`` over item embeddings ``X``;
* the backbone's item representations become ``x̃_i + h_i / ‖h_i‖``.

How the per-modality graphs are combined is each model's own part: LATTICE weighs them by
``α = softmax(scores)`` into one graph (:meth:`StructureModel.weighted_embedding`, also MICRO's
``fusion=false``), MICRO convolves each modality apart (:meth:`StructureModel.modality_embeddings`)
and fuses the results, MM-GEF learns one graph of the early-fused feature.

The learned graphs are rebuilt once per epoch, on the epoch's first batch, as in the released code:
that batch back-propagates through the graph values into ``W_m, b_m``; later batches of the epoch
reuse the graph detached (a rebuild costs ``N² d`` flops).

:class:`LatentStructure` holds the per-modality graphs ``A_m``; :class:`StructureModel` is the
backbone wrapper every structure model (LATTICE, MICRO, MM-GEF) derives from.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from latticerec.errors import ConfigError, TrainingError
from latticerec.graphs.ann import as_search
from latticerec.graphs.knn import (
    KnnSearch,
    NonFiniteFeatures,
    dense_rows_to_csr,
    knn_rows,
    skip_connection,
    weighted_spmm,
)
from latticerec.graphs.normalize import symmetric_values
from latticerec.graphs.sparse import ConstantCSR, GradCSR, compact_indices, row_indices, transpose_csr
from latticerec.models.backbones import Backbone
from latticerec.models.base import ModelInputs, Recommender

GraphTerms = list[tuple[float | torch.Tensor, torch.Tensor]]


def select_modalities(wanted: tuple[str, ...], inputs: ModelInputs) -> list[str]:
    """The modalities a model uses: ``wanted`` (checked to exist) or all features and item graphs."""
    available = list(inputs.features) + [g for g in inputs.item_graphs if g not in inputs.features]
    if not available:
        raise ConfigError("this model needs item features or a precomputed item graph, and the "
                          "dataset has neither (add <modality>_feat.npy or item_knn*.npz)")
    chosen = list(wanted) if wanted else available
    missing = [m for m in chosen if m not in available]
    if missing:
        raise ConfigError(f"modalities: {', '.join(missing)} not in the dataset; "
                          f"available: {', '.join(available)}")
    for m in chosen:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m):
            raise ConfigError(f"modality name {m!r} must be an identifier (letters, digits, _)")
    return chosen


def feature_modalities(wanted: tuple[str, ...], inputs: ModelInputs, model: str) -> list[str]:
    """The modalities a model that reads feature matrices (MM-GEF, CB, VBPR, MMGCN and its kin)
    uses: ``wanted`` (each must have features) or every feature matrix."""
    if not wanted and not inputs.features:  # before select_modalities, which would offer item graphs
        raise ConfigError(f"{model} needs item feature matrices; the dataset has none (add "
                          "<modality>_feat.npy)")
    names = select_modalities(wanted, inputs)
    if not wanted:
        names = [m for m in names if m in inputs.features]
    graph_only = [m for m in names if m not in inputs.features]
    if graph_only or not names:
        raise ConfigError(f"{model} needs item feature matrices; "
                          + (f"{', '.join(graph_only)} is a precomputed graph without features"
                             if graph_only else "the dataset has none (add <modality>_feat.npy)"))
    return names


class LatentStructure(nn.Module):
    """The per-modality latent graphs ``A_m = λ S̃_m + (1 - λ) Ã_m`` (eq. 1-5).

    Raw features are fixed buffers; the projections ``W_m, b_m`` (eq. 4) are the trainable part.
    ``search`` (option ``knn_backend``) finds the learned graphs' neighbours; their values are the
    exact, differentiable similarities of the chosen pairs whatever the backend.
    The learned graphs' neighbour lists and values are persistent buffers, so a checkpoint restores
    the exact graph a model was evaluated with.
    """

    def __init__(self, initial: dict[str, torch.Tensor], features: dict[str, torch.Tensor],
                 embed_dim: int, knn_k: int, lam: float, project: bool = False,
                 search: str | KnnSearch = "exact"):
        super().__init__()
        self.names = list(initial)
        self.knn_k, self.lam, self.search = knn_k, lam, as_search(search)
        self.normalize_learned = True  # False: the learned values are the unnormalised Ŝ_m (eq. 2)
        self.learn = lam < 1.0
        if self.learn:
            no_feats = [m for m in self.names if m not in features]
            if no_feats:
                raise ConfigError(
                    f"modalities {', '.join(no_feats)} have a precomputed graph but no features to "
                    "learn a graph from: set lambda_coeff=1 (use the given graphs as they are)")
        for m, g in initial.items():
            g = compact_indices(g)
            self.register_buffer(f"initial_{m}", g, persistent=False)
            self.register_buffer(f"initial_t_{m}", transpose_csr(g), persistent=False)
        proj_names = [m for m in self.names if m in features] if (self.learn or project) else []
        for m in proj_names:
            self.register_buffer(f"feat_{m}", features[m].float(), persistent=False)
        self.projections = nn.ModuleDict({m: nn.Linear(features[m].shape[1], embed_dim)
                                          for m in proj_names})
        n_items = next(iter(initial.values())).shape[0]
        for m in self.names if self.learn else []:
            self.register_buffer(f"learned_nbr_{m}", torch.zeros(n_items, knn_k, dtype=torch.long))
            self.register_buffer(f"learned_val_{m}", torch.zeros(n_items, knn_k))
        # whether the learned-graph buffers hold a graph (a checkpoint carries it)
        self.register_buffer("learned_ready", torch.zeros((), dtype=torch.bool))
        self._rebuild = True
        # the learned graphs between rebuilds, with their transposes (see ConstantCSR); dropped
        # whenever the buffers they come from change: rebuild, load_state_dict, .to()
        self._constant: dict[str, ConstantCSR] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module._constant.clear())

    def _apply(self, fn, *args, **kwargs):
        self._constant = {}
        return super()._apply(fn, *args, **kwargs)

    def request_rebuild(self) -> None:
        """Mark the learned graphs stale: the next training-mode call rebuilds them with gradient."""
        self._rebuild = True

    def projected(self, m: str) -> torch.Tensor:
        """``ẽ_m = W_m e_m + b_m`` (eq. 4) for every item."""
        return self.projections[m](getattr(self, f"feat_{m}"))

    def _learned(self, m: str, with_grad: bool) -> torch.Tensor:
        nbr_buf, val_buf = getattr(self, f"learned_nbr_{m}"), getattr(self, f"learned_val_{m}")
        if not with_grad and bool(self.learned_ready):
            if m not in self._constant:
                self._constant[m] = ConstantCSR.of(dense_rows_to_csr(nbr_buf, val_buf))
            return self._constant[m]
        with torch.set_grad_enabled(with_grad):
            try:
                nbr, val = knn_rows(self.projected(m), self.knn_k, normalize=self.normalize_learned,
                                    backend=self.search)
            except NonFiniteFeatures:  # the projections diverged: say so, not "bad features"
                raise TrainingError(f"modality {m}: the projections of the learned graph (eq. 4) became NaN "
                                    "or infinite; lower lr or raise reg") from None
        nbr_buf.copy_(nbr)
        val_buf.copy_(val.detach())
        self._constant.pop(m, None)
        return dense_rows_to_csr(nbr, val)

    def graphs(self) -> dict[str, GraphTerms]:
        """``A_m`` of every modality as weighted sparse terms (eq. 5)."""
        with_grad = self.learn and self.training and self._rebuild and torch.is_grad_enabled()
        out = {}
        for m in self.names:
            initial = ConstantCSR(getattr(self, f"initial_{m}"), getattr(self, f"initial_t_{m}"))
            if not self.learn:
                out[m] = [(1.0, initial)]
                continue
            out[m] = skip_connection(initial, self._learned(m, with_grad), self.lam)
        if self.learn:
            self.learned_ready.fill_(True)
        if with_grad:
            self._rebuild = False
        return out

    def train_raw_features(self) -> None:
        """Make the raw features ``e_m`` of eq. 4 trainable parameters (``train_features``): a copy,
        so the dataset's matrices and the initial graphs built from them stay as they are."""
        for m in self.projections:
            name = f"feat_{m}"
            feat = getattr(self, name).detach().clone()
            delattr(self, name)
            self._non_persistent_buffers_set.discard(name)
            self.register_parameter(name, nn.Parameter(feat))

    def rebuild_now(self) -> None:
        """Rebuild the learned graphs from the current projections, without gradient, into the
        buffers (``rebuild_on_eval``: the released code's graph at evaluation)."""
        if self.learn:
            self.learned_ready.fill_(False)
            with torch.no_grad():
                self.graphs()


def _csr_values(graph) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR structure of a learned graph term and its stored values (with gradient if any)."""
    if isinstance(graph, GradCSR):
        return graph.csr, graph.values
    csr = graph.csr if isinstance(graph, ConstantCSR) else graph
    return csr, csr.values()


def propagate_items(terms: GraphTerms, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Eq. 6 stacked ``L`` times: ``H_(l) = A H_(l-1)``, ``H_(0) = X``; returns ``H_(L)``."""
    for _ in range(n_layers):
        x = weighted_spmm(terms, x)
    return x


def add_item_signal(items: torch.Tensor, h: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``x̃_i + w h_i / ‖h_i‖`` (LATTICE's sum after eq. 6, MICRO eq. 17, both with ``w = 1``;
    ``structure_weight``). A backbone whose output stacks ``r`` blocks of width ``d`` (NGCF's layer
    concatenation) gets ``h`` added to every block, i.e. to each layer's item embedding."""
    reps, rem = divmod(items.shape[1], h.shape[1])
    if rem:
        raise ValueError(f"backbone width {items.shape[1]} is not a multiple of {h.shape[1]}")
    h = F.normalize(h, p=2, dim=1)
    if weight != 1.0:
        h = h * weight
    return items + (h.repeat(1, reps) if reps > 1 else h)


def feature_input(structure: LatentStructure) -> torch.Tensor:
    """Mean of the projected features ``ẽ_m`` (eq. 4): the ``feats`` ablations' graph input."""
    return torch.stack([structure.projected(m) for m in structure.projections]).mean(0)


class StructureModel(Recommender):
    """What LATTICE, MICRO and MM-GEF share: the backbone they wrap (its ID tables carry the L2
    term), a :class:`LatentStructure` whose learned graphs are rebuilt once per epoch, the item
    convolution of eq. 6 (``item_layers`` steps from ``X``), and scores with
    ``item_structure_embedding()`` added to the backbone's items (L2-normalised, times
    ``structure_weight``).

    ``X`` is the backbone's item ID table, or the mean projected feature with ``feats_input``;
    ``cf_feats`` replaces the convolution by the projected features. ``modality_weights=True`` adds
    LATTICE's learnable scores (``modal_scores``) of ``α = softmax(scores)``."""

    wraps_backbone = True

    def __init__(self, backbone: Backbone, structure: LatentStructure, item_layers: int = 1,
                 cf_feats: bool = False, feats_input: bool = False, modality_weights: bool = False,
                 lattice_graph: str = "per_modality", alpha_live: bool = True,
                 structure_weight: float = 1.0):
        super().__init__()
        self.backbone, self.structure = backbone, structure
        self.structure_weight = float(structure_weight)
        self.reg_weight = backbone.reg_weight
        self.item_layers, self.cf_feats, self.feats_input = item_layers, cf_feats, feats_input
        if (cf_feats or feats_input) and not len(structure.projections):
            raise ConfigError("cf_feats/feats_input need item features (the modalities chosen have none)")
        if not modality_weights and (lattice_graph != "per_modality" or not alpha_live):
            raise ConfigError("lattice_graph and alpha_live combine LATTICE's modality weights; "
                              "this model has none")
        self.joint = modality_weights and lattice_graph == "joint" and structure.learn and not cf_feats
        self.alpha_live = alpha_live
        if modality_weights:
            self.modal_scores = nn.Parameter(torch.zeros(len(structure.names)))
            structure.normalize_learned = not self.joint  # joint: Ŝ_m kept unnormalised
        if not alpha_live:  # α of the graph last built; all zeros until one is built
            self.register_buffer("graph_alpha", torch.zeros(len(structure.names)))
        self._take_alpha = True

    def ego_embeddings(self):
        return self.backbone.ego_embeddings()

    def on_epoch_start(self, epoch: int) -> None:
        self.structure.request_rebuild()
        self.backbone.on_epoch_start(epoch)
        self._take_alpha = True

    def before_evaluation(self) -> None:
        """``rebuild_on_eval``: the learned graphs rebuilt from the current projections."""
        self.structure.rebuild_now()
        self._take_alpha = True

    def item_structure_embedding(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def propagate(self):
        users, items = self.backbone.propagate()
        return users, add_item_signal(items, self.item_structure_embedding(), self.structure_weight)

    def item_input(self) -> torch.Tensor:
        """``X`` of eq. 6: the backbone's item ID embeddings, or :func:`feature_input` (``feats_input``)."""
        return feature_input(self.structure) if self.feats_input else self.backbone.item_embedding.weight

    def modal_weights(self) -> torch.Tensor:
        """LATTICE's ``α = softmax(scores)`` over the modalities (built with ``modality_weights``);
        with ``alpha_live=false`` the live α only when the graph is built (the epoch's first call,
        or after :meth:`before_evaluation`), stored, and the stored value (no gradient) on every
        other call."""
        alpha = torch.softmax(self.modal_scores, dim=0)
        if self.alpha_live:
            return alpha
        if self._take_alpha or not bool(self.graph_alpha.sum() > 0):
            self.graph_alpha.copy_(alpha.detach())
            self._take_alpha = False
            return alpha
        return self.graph_alpha

    def joint_terms(self) -> list:
        """``A = (1-λ) sym_norm(Σ_m α_m Ŝ_m) + λ Σ_m α_m S̃_m`` (``lattice_graph=joint``) as weighted
        sparse terms: the joint normalisation ``D^-1/2 (Σ_m α_m Ŝ_m) D^-1/2``, ``D`` the row sums of
        the α-weighted sum, is applied to each ``Ŝ_m``'s stored values, so the supports are never
        merged."""
        graphs, alpha, lam = self.structure.graphs(), self.modal_weights(), self.structure.lam
        learned = [_csr_values(graphs[m][-1][1]) for m in self.structure.names]
        rows = [row_indices(csr.crow_indices()) for csr, _ in learned]
        n = learned[0][0].shape[0]
        degree = sum(torch.zeros(n, device=v.device, dtype=v.dtype).index_add(0, r, a * v)
                     for a, (_, v), r in zip(alpha, learned, rows, strict=True))
        terms = [(lam * a, ConstantCSR(getattr(self.structure, f"initial_{m}"),
                                       getattr(self.structure, f"initial_t_{m}")))
                 for a, m in zip(alpha, self.structure.names, strict=True) if lam > 0]
        for a, (csr, v), r in zip(alpha, learned, rows, strict=True):
            terms.append((1.0 - lam, GradCSR(csr, symmetric_values(a * v, r, csr.col_indices(), degree))))
        return terms

    def weighted_embedding(self) -> torch.Tensor:
        """LATTICE's ``H = A^L X`` with ``A = Σ_m α_m A_m`` (eq. 6 on the aggregated graph; with
        ``lattice_graph=joint`` ``A`` of :meth:`joint_terms`), or the ``CF+feats`` ablation's
        ``Σ_m α_m ẽ_m``."""
        if self.joint:
            return propagate_items(self.joint_terms(), self.item_input(), self.item_layers)
        alpha = self.modal_weights()
        if self.cf_feats:
            weights = dict(zip(self.structure.names, alpha, strict=True))
            return sum(weights[m] * self.structure.projected(m) for m in self.structure.projections)
        graphs = self.structure.graphs()
        terms = [(a * w, g) for a, m in zip(alpha, self.structure.names, strict=True) for w, g in graphs[m]]
        return propagate_items(terms, self.item_input(), self.item_layers)

    def modality_embeddings(self) -> torch.Tensor:
        """``(M, N, d)``: ``H_m = A_m^L X`` for each modality (eq. 6 per graph), or ``ẽ_m`` with
        ``cf_feats``."""
        if self.cf_feats:
            return torch.stack([self.structure.projected(m) for m in self.structure.projections])
        graphs, x = self.structure.graphs(), self.item_input()
        return torch.stack([propagate_items(graphs[m], x, self.item_layers) for m in self.structure.names])


def build_structure(cfg, inputs: ModelInputs, embed_dim: int) -> LatentStructure:
    """Initial graphs for the chosen modalities (precomputed item graphs are used as given; features
    get the cached kNN graph of eq. 1-3) and the learned-graph machinery around them; ``cfg`` is a
    :class:`~latticerec.models.options.Structure` config (with :class:`FeatureAblations`); both
    kinds of kNN graph use its ``knn_backend``."""
    names = select_modalities(cfg.modalities, inputs)
    search = cfg.knn_search()
    initial = {m: inputs.item_knn_graph(inputs.features[m], cfg.knn_k, backend=search) if m in inputs.features
               else inputs.item_graphs[m] for m in names}
    feats = {m: inputs.features[m] for m in names if m in inputs.features}
    return LatentStructure(initial, feats, embed_dim, cfg.knn_k, cfg.skip_lambda(),
                           project=cfg.cf_feats or cfg.feats_input, search=search)
