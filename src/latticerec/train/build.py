"""Assemble a run: resolve configs from ``--set`` overrides, turn a dataset into model inputs, build
the model from the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latticerec.config import TrainConfig, field_types, make_config, parse_bool, split_overrides, to_dict
from latticerec.data.dataset import Dataset
from latticerec.errors import ConfigError
from latticerec.graphs.cache import KnnGraphCache
from latticerec.graphs.knn import knn_graph, pairs_graph
from latticerec.graphs.sparse import to_torch_csr
from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.registry import get_backbone_class, get_model_class


@dataclass(frozen=True)
class RunConfig:
    """A run's complete, typed configuration."""

    model: str
    model_config: Any
    train: TrainConfig
    backbone_config: Any = None  # for models that wrap a backbone

    def to_dict(self) -> dict:
        out = {"model": self.model, "model_config": to_dict(self.model_config),
               "train": to_dict(self.train)}
        if self.backbone_config is not None:
            out["backbone_config"] = to_dict(self.backbone_config)
        return out


def backbone_name(cls, values: dict[str, Any]) -> str | None:
    """The backbone a wrapping model class ``cls`` gets from the options ``values`` (its config's
    default when they name none); ``None`` for a model that wraps none."""
    if not getattr(cls, "wraps_backbone", False):
        return None
    name = str(values.get("backbone", cls.Config.backbone))
    get_backbone_class(name)  # a clear error for an unknown backbone
    return name


# ``protocol=released``: the released LATTICE/MICRO training loop (docs/fidelity.md), applied before
# the user's overrides. A key is set where the model (or its backbone) has the option: ``cb`` has no
# ``reg``, so it keeps none. Settings not in the preset are listed in docs/fidelity.md.
RELEASED_PRESET = {"lr": 5e-4, "batch_size": 1024, "sampler": "user", "lr_schedule": "released",
                   "zero_grad": "zeros", "reg": 1e-5, "reg_on": "final", "topk": (10, 20),
                   "ndcg": "legacy", "eval_every": 5, "patience": 11}
_RELEASED_STRUCTURE = {"lambda_coeff": 0.9, "train_features": True, "rebuild_on_eval": True,
                       "knn_relu": False}
RELEASED_MODEL_PRESET = {
    "lattice": {**_RELEASED_STRUCTURE, "lattice_graph": "joint", "alpha_live": False, "eval_phase": 1},
    "micro": {**_RELEASED_STRUCTURE, "att_init": "torch", "specific": False, "preference": False,
              "cl_batch": 0, "cl_negatives": "all"}}
RELEASED_BACKBONE_PRESET = {"lightgcn": {"n_layers": 2, "adj_norm": "released"},
                            "ngcf": {"n_layers": 2, "adj_norm": "released", "ngcf": "released"}}


def protocol_preset(model: str, backbone: str | None, protocol: Any, *classes,
                    fusion: Any = True) -> dict[str, Any]:
    """The options ``protocol`` sets for ``model`` (wrapping ``backbone``), restricted to the keys
    that one of the config ``classes`` declares; empty for the ``latticerec`` protocol. MICRO with
    ``fusion`` false (the ``fusion`` override, as given) is LATTICE and gets LATTICE's preset: the
    released LATTICE code is what that row of MICRO's Table 5 ran."""
    if protocol != "released":
        return {}
    if model == "micro" and not _flag(fusion):
        model = "lattice"
    preset = {**RELEASED_PRESET, **RELEASED_MODEL_PRESET.get(model, {}),
              **RELEASED_BACKBONE_PRESET.get(backbone or model, {})}
    declared = set().union(*(field_types(c) for c in classes))
    return {k: v for k, v in preset.items() if k in declared}


def _flag(value: Any) -> bool:
    """A boolean override as the config will read it (an invalid one reads as true here, and the
    config then rejects it by name)."""
    try:
        return parse_bool(value, "fusion")
    except ConfigError:
        return True


def resolve_config(model: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Route each override to the training, model or backbone config; unknown keys are errors.
    A ``protocol`` override first applies its preset (:func:`protocol_preset`), which the other
    overrides then replace key by key."""
    cls = get_model_class(model)
    values = dict(overrides or {})
    backbone = backbone_name(cls, values)
    classes = (TrainConfig, cls.Config) if backbone is None \
        else (TrainConfig, cls.Config, get_backbone_class(backbone).Config)
    values = {**protocol_preset(model, backbone, values.get("protocol"), *classes,
                                fusion=values.get("fusion", True)), **values}
    if backbone is None:
        train_values, model_values = split_overrides(values, TrainConfig, cls.Config)
        backbone_cfg = None
    else:
        bcls = get_backbone_class(backbone)
        train_values, model_values, backbone_values = split_overrides(
            values, TrainConfig, cls.Config, bcls.Config)
        backbone_cfg = make_config(bcls.Config, backbone_values, where=f"backbone {backbone}")
    train = make_config(TrainConfig, train_values, where="training")
    if train.rank_loss not in cls.RANK_LOSSES:
        raise ConfigError(f"rank_loss={train.rank_loss}: model {model} trains with a loss of its own "
                          f"(rank_loss {' or '.join(cls.RANK_LOSSES)} only)")
    return RunConfig(model=model,
                     model_config=make_config(cls.Config, model_values, where=f"model {model}"),
                     train=train, backbone_config=backbone_cfg)


# options renamed since runs were first saved: (model, old key) -> new key
RENAMED = {("mmgef", "fusion"): "feature_fusion", ("cb", "fusion"): "feature_fusion"}
# options added with a default that changed the model: a saved run without the option was trained
# with this value (GRCN followed its paper from session 9 on; runs saved before keep their formulas)
LEGACY = {"grcn": {"edge_score": "cosine", "confidence_of": "sender", "pruning": "hard",
                   "aggregation": "mean", "content_parts": "convolved", "confidence_init": "xavier"}}


def config_from_dict(saved: dict) -> RunConfig:
    """Rebuild a :class:`RunConfig` from :meth:`RunConfig.to_dict` output (a saved run); options
    saved under an old name (:data:`RENAMED`) are read under the new one, options it lacks whose
    default has since changed the model take the value it was trained with (:data:`LEGACY`).
    A malformed ``saved`` (a key missing or of the wrong JSON type) is a :class:`ConfigError`."""
    if not isinstance(saved, dict):
        raise ConfigError(f"run config: expected a JSON object, got {type(saved).__name__}")
    for key, kind, name in (("model", str, "a string"), ("model_config", dict, "an object"),
                            ("train", dict, "an object"), ("backbone_config", (dict, type(None)),
                                                            "an object or null")):
        if key not in saved and key != "backbone_config":
            raise ConfigError(f"run config: no {key!r}")
        if not isinstance(saved.get(key), kind):
            raise ConfigError(f"run config: {key!r} must be {name}, got {saved.get(key)!r:.60}")
    cls = get_model_class(saved["model"])
    values = {RENAMED.get((saved["model"], k), k): v for k, v in saved["model_config"].items()}
    legacy = LEGACY.get(saved["model"], {})
    if legacy and not legacy.keys() & values.keys():
        values.update(legacy)
    model_cfg = make_config(cls.Config, values, where=f"model {saved['model']}")
    backbone_cfg = None
    if (saved.get("backbone_config") is None) == getattr(cls, "wraps_backbone", False):
        raise ConfigError(f"run config: model {saved['model']} "
                          + ("wraps a backbone but 'backbone_config' is missing"
                             if saved.get("backbone_config") is None else
                             "wraps no backbone but has a 'backbone_config'"))
    if saved.get("backbone_config") is not None:
        backbone_cfg = make_config(get_backbone_class(model_cfg.backbone).Config,
                                   saved["backbone_config"], where=f"backbone {model_cfg.backbone}")
    return RunConfig(model=saved["model"], model_config=model_cfg,
                     train=make_config(TrainConfig, saved["train"], where="training"),
                     backbone_config=backbone_cfg)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a :class:`ConfigError` for another name, for CUDA on a
    machine without it, and for a GPU index beyond this machine's GPUs."""
    index = name[5:] if name.startswith("cuda:") else None
    if name not in ("cpu", "cuda") and not (index is not None and index.isascii() and index.isdigit()):
        raise ConfigError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if name != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is available")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def model_inputs(dataset: Dataset, device: torch.device | str = "cpu",
                 graph_cache: KnnGraphCache | None = None) -> ModelInputs:
    """Sizes and tensors from a dataset: what a model is allowed to see. Precomputed item graphs
    become normalised CSR tensors; kNN graphs of features come from ``graph_cache`` (on disk) when
    given, else are built in memory."""
    n_items = dataset.n_items
    return ModelInputs(
        n_users=dataset.n_users,
        n_items=n_items,
        train=to_torch_csr(dataset.train, device=device),
        features={m: torch.as_tensor(f, device=device).float() for m, f in dataset.features.items()},
        item_graphs={g: pairs_graph(torch.as_tensor(p, device=device), n_items)
                     for g, p in dataset.item_graphs.items()},
        knn_graph=graph_cache if graph_cache is not None else knn_graph,
    )


def build_model(run: RunConfig, dataset: Dataset, device: torch.device | str = "cpu",
                graph_cache: KnnGraphCache | None = None) -> Recommender:
    """The model of ``run`` on ``dataset``; a wrapping model gets its backbone built first."""
    torch.manual_seed(run.train.seed)  # initial weights are a function of the seed
    cls = get_model_class(run.model)
    inputs = model_inputs(dataset, device, graph_cache)
    if run.backbone_config is None:
        return cls.from_inputs(run.model_config, inputs).to(device)
    backbone = get_backbone_class(run.model_config.backbone).from_inputs(run.backbone_config, inputs)
    return cls.from_inputs(run.model_config, inputs, backbone).to(device)
