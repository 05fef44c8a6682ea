"""Option groups shared by the model configs, each defined (and validated) once.

A model's ``Config`` is a frozen dataclass composed of the groups it uses, so every option name has
one meaning and one check wherever it appears, and ``--set key=value`` keys stay flat:

=====================  ==========================================  ===============================
group                  options                                     used by
=====================  ==========================================  ===============================
:class:`Modalities`    ``modalities``                              lattice, micro, mmgef, cb
:class:`Structure`     ``backbone knn_k lambda_coeff item_layers``  lattice, micro, mmgef
:class:`KnnBackend`    ``knn_backend knn_auto_items knn_hnsw_ef``   lattice, micro, mmgef
                       ``knn_ivf_nprobe`` (part of Structure)
:class:`FeatureAblations` ``cf_feats feats_input``                 lattice, micro
:class:`FeatureFusion` ``feature_fusion``                          mmgef, cb
=====================  ==========================================  ===============================

Each group's ``__post_init__`` checks its own fields and hands on to the next group (cooperative
inheritance), so a composed config runs every check exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latticerec.graphs.ann import AUTO_ITEMS, KnnSearch
from latticerec.graphs.fusion import FUSIONS

LATTICE_LAMBDA = 0.9  # LATTICE's skip-connection weight λ (eq. 5)
FAISS_INT = 2**31 - 1  # faiss's int parameters (efSearch): a larger one is an OverflowError


# Tuning search spaces (``latticerec tune``): option -> ("log" | "float", low, high), ("int", low,
# high) or ("choice", (values...)); keys are ``--set`` keys (training options such as ``lr`` too).
# EMBEDDING_SPACE: the learning rate and L2 weight every ID-embedding model tunes. The L2 range
# reaches 1e-1: on TikTok LightGCN's validation optimum is near 2e-2-3e-2 (docs/accuracy.md).
EMBEDDING_SPACE = {"lr": ("log", 1e-4, 1e-2), "reg": ("log", 1e-6, 1e-1)}
# the structure learner's space, with the backbone's lr and L2 weight: the part LATTICE, MICRO and
# MM-GEF share. structure_weight around the papers' 1: at the large L2 weights that suit LightGCN on
# TikTok its item outputs are ~0.5 long and a unit-length structure signal outweighs them
# (docs/accuracy.md, session 16)
STRUCTURE_SPACE = {**EMBEDDING_SPACE, "knn_k": ("int", 5, 50), "lambda_coeff": ("float", 0.0, 1.0),
                   "item_layers": ("int", 1, 6), "structure_weight": ("log", 0.05, 2.0)}


@dataclass(frozen=True)
class _Group:
    def __post_init__(self):
        """End of the chain of group checks."""


@dataclass(frozen=True)
class Modalities(_Group):
    """``modalities``: the feature matrices / precomputed item graphs to use (empty: all of them)."""

    modalities: tuple[str, ...] = ()

    def __post_init__(self):
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities {self.modalities} lists a modality twice")
        super().__post_init__()


@dataclass(frozen=True)
class KnnBackend(_Group):
    """How the neighbours of every kNN item graph (the initial graphs and the graphs re-learned each
    epoch) are found: ``knn_backend`` ``exact | faiss-flat | faiss-hnsw | faiss-ivf | auto`` (auto:
    exact up to ``knn_auto_items`` items, faiss HNSW above), HNSW's ``knn_hnsw_ef`` (efSearch) and
    IVF's ``knn_ivf_nprobe`` (cells scanned per query); :class:`~latticerec.graphs.ann.KnnSearch`.
    ``knn_relu``: negative similarities of the chosen pairs set to 0 (eq. 1, default) or kept
    (``false``, the released code)."""

    knn_backend: str = "auto"
    knn_auto_items: int = AUTO_ITEMS
    knn_hnsw_ef: int = KnnSearch.hnsw_ef
    knn_ivf_nprobe: int = KnnSearch.ivf_nprobe
    knn_relu: bool = True

    def __post_init__(self):
        self.knn_search()  # a ValueError naming the option
        if self.knn_hnsw_ef > FAISS_INT:  # faiss's efSearch is a C int
            raise ValueError(f"knn_hnsw_ef must be <= 2**31 - 1, got {self.knn_hnsw_ef}")
        super().__post_init__()

    def knn_search(self) -> KnnSearch:
        """The options as a :class:`~latticerec.graphs.ann.KnnSearch`."""
        return KnnSearch(self.knn_backend, auto_items=self.knn_auto_items, hnsw_ef=self.knn_hnsw_ef,
                         ivf_nprobe=self.knn_ivf_nprobe, relu=self.knn_relu)


@dataclass(frozen=True)
class Structure(KnnBackend, Modalities):
    """The latent structure learner (eq. 1-6) and the backbone it is plugged into: ``knn_k`` (k of
    eq. 2), ``lambda_coeff`` (λ of eq. 5; 1 = the initial graphs only), ``item_layers`` (L of eq. 6),
    ``structure_weight`` (``w`` of ``x̃_i + w h_i / ‖h_i‖``, LATTICE's sum after eq. 6 / MICRO eq. 17; the
    papers' 1: the unit-length structure signal; less lets a backbone whose L2 weight keeps its
    embeddings short, well under unit length, still carry the collaborative signal)."""

    backbone: str = "lightgcn"
    knn_k: int = 10
    lambda_coeff: float = LATTICE_LAMBDA
    item_layers: int = 1
    structure_weight: float = 1.0

    def __post_init__(self):
        if self.knn_k < 1:
            raise ValueError("knn_k must be >= 1")
        if self.lambda_coeff is not None and not 0.0 <= self.lambda_coeff <= 1.0:
            raise ValueError("lambda_coeff must lie in [0, 1]")
        if self.item_layers < 0:
            raise ValueError("item_layers must be >= 0")
        if not (math.isfinite(self.structure_weight) and self.structure_weight > 0):
            raise ValueError("structure_weight must be a finite number > 0")
        super().__post_init__()

    def skip_lambda(self) -> float:
        """λ of eq. 5 as the model uses it."""
        return self.lambda_coeff


@dataclass(frozen=True)
class FeatureAblations(_Group):
    """The papers' feature ablations: ``cf_feats`` (``CF+feats``: projected features replace the
    graph convolution) and ``feats_input`` (``/feats``: the convolution starts from features)."""

    cf_feats: bool = False
    feats_input: bool = False

    def __post_init__(self):
        if self.cf_feats and self.feats_input:
            raise ValueError("cf_feats and feats_input are different ablations: set at most one")
        super().__post_init__()


@dataclass(frozen=True)
class FeatureFusion(_Group):
    """``feature_fusion``: the early-fusion rule of MM-GEF section 3.1
    (:mod:`latticerec.graphs.fusion`)."""

    feature_fusion: str = "norm_mean"

    def __post_init__(self):
        if self.feature_fusion not in FUSIONS:
            raise ValueError(f"feature_fusion must be one of {', '.join(FUSIONS)}")
        super().__post_init__()


@dataclass(frozen=True)
class RawFeatures(_Group):
    """``train_features``: the raw feature matrices ``e_m`` of eq. 4 are trainable parameters (the
    released code's ``nn.Embedding.from_pretrained(..., freeze=False)``) instead of fixed buffers.
    They get a gradient through the learned graphs' rebuild batch only and are not in the L2 term;
    the initial graphs ``S̃_m`` stay those of the features as loaded."""

    train_features: bool = False


LATTICE_GRAPHS = ("per_modality", "joint")


@dataclass(frozen=True)
class LatticeGraph(_Group):
    """How LATTICE combines its modalities' graphs with ``α = softmax(scores)``.

    ``lattice_graph``: ``per_modality`` ``A = Σ_m α_m (λ S̃_m + (1-λ) sym_norm(Ŝ_m))`` (each learned
    graph normalised on its own), or ``joint`` (the released code)
    ``A = (1-λ) sym_norm(Σ_m α_m Ŝ_m) + λ Σ_m α_m S̃_m``, one normalisation of the α-weighted
    unnormalised kNN graphs ``Ŝ_m`` of the projected features.
    ``alpha_live``: ``true`` α enters every batch; ``false`` (the released code) α is taken when the
    learned graph is built (the epoch's first batch, or an evaluation rebuild) and kept with it."""

    lattice_graph: str = "per_modality"
    alpha_live: bool = True

    def __post_init__(self):
        if self.lattice_graph not in LATTICE_GRAPHS:
            raise ValueError(f"lattice_graph must be one of {', '.join(LATTICE_GRAPHS)}, "
                             f"got {self.lattice_graph!r}")
        super().__post_init__()
