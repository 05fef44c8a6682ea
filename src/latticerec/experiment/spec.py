"""Experiment specs: a TOML file naming a grid of models x datasets x seeds x option values.

::

    name = "lattice-k"                      # optional (default: the file's stem)
    description = "LATTICE sensitivity to k"
    datasets = ["../shared/data/tiktok"]    # folders (relative to the current directory) or "synthetic"
    seeds = [0, 1, 2]
    reference = "lightgcn"                  # optional: the label every cell is tested against
    metrics = ["recall@20", "ndcg@20"]      # test metrics summarised and tested (default these two)
    alpha = 0.05                            # significance level of the paired tests

    [options]                               # every run (any --set key)
    epochs = 200

    [grid]                                  # every model: the cartesian product of the values
    item_layers = [1, 2]

    [tune]                                  # optional: tune before the seeds, the same budget each
    trials = 20                             # optuna trials per cell (finished or pruned)
    metric = "recall@20"                    # the validation objective (recall@20 or ndcg@20)
    epochs = 200                            # epoch cap of a trial (default: the runs' epochs option)
    seed = 0                                # seed of the sampler and the trials (default: seeds[0])
    models = ["lattice"]                    # labels tuned (default: every model with a search space)

    [[models]]
    label = "lightgcn"                      # unique; the run folders' and tables' name
    model = "lightgcn"                      # registry name (default: the label)

    [[models]]
    label = "lattice"
    model = "lattice"
    reference = "lightgcn"                  # optional: this model's own reference ("" for none)
    options = { backbone = "lightgcn" }
    grid = { knn_k = [5, 10, 20] }          # this model only, crossed with the global grid
    tune_start = "lightgcn"                 # optional: its studies' first trial is lightgcn's best

Unknown keys, wrong types and bad values are errors naming the file (and the model table); model
names and options are checked against the registry when the grid is planned (:func:`plan`, at run
time), so a spec may name models that a later version registers.

A cell is (label, dataset, grid point); its runs are its seeds, in
``OUT/runs/<label>/<dataset>/<grid point>/seed-<s>``. With ``[tune]`` each tuned cell first gets an
optuna study on the validation split (:func:`~latticerec.experiment.tune.tune`, the model's
``SEARCH_SPACE``, the cell's options fixed, no test read) in ``OUT/tune/<label>/<dataset>/<grid
point>``, ``trials`` trials for every cell, so every tuned model gets the same budget; its runs then
train with the study's best options on top of the cell's. The reference cell of a cell is the reference
label's cell on the same dataset at the same global grid point (so the reference model has no
grid of its own). ``tune_start`` names a tuned label whose study (same dataset, same global grid
point; no grid of its own) must finish first: its best options are the first trial of this
label's studies (``tune --start-from``), within the same ``trials``; ``experiment`` runs such
studies after the others.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latticerec.errors import ConfigError

TOP_KEYS = ("name", "description", "datasets", "seeds", "reference", "metrics", "alpha", "options",
            "grid", "tune", "published", "models")
TUNE_KEYS = ("trials", "metric", "epochs", "seed", "models")
MODEL_KEYS = ("label", "model", "reference", "options", "grid", "tune_start")
RESERVED = ("seed",)  # set by the spec's seeds, not as an option
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")  # a folder name (at most 100 characters)
_METRIC = re.compile(r"(recall|precision|ndcg|hit)@([1-9][0-9]*)")


@dataclass(frozen=True)
class ModelEntry:
    label: str
    model: str
    reference: str | None = None  # None: the spec's reference
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    tune_start: str | None = None  # a tuned label: its study's best options start this one's studies


@dataclass(frozen=True)
class TuneSpec:
    """The spec's ``[tune]`` table: the same optuna budget for every tuned cell."""

    trials: int
    metric: str = "recall@20"
    epochs: int | None = None  # None: the runs' ``epochs`` option, else the training default
    seed: int | None = None  # None: the spec's first seed
    models: tuple[str, ...] | None = None  # None: every model whose class declares a SEARCH_SPACE


@dataclass(frozen=True)
class ExperimentSpec:
    path: str
    name: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelEntry, ...]
    description: str = ""
    reference: str | None = None
    metrics: tuple[str, ...] = ("recall@20", "ndcg@20")
    alpha: float = 0.05
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    tune: TuneSpec | None = None
    # dataset folder name -> {"source": str, "figures": {label: {metric: value}}}: figures published
    # elsewhere (e.g. the papers' tables), shown beside the measured ones; never used in a test
    published: dict[str, dict] = field(default_factory=dict)

    def reference_of(self, label: str) -> str | None:
        """The label ``label``'s cells are tested against (``None``: none, or itself)."""
        entry = next(m for m in self.models if m.label == label)
        ref = self.reference if entry.reference is None else (entry.reference or None)
        return None if ref == label else ref


def _fail(path, where: str, msg: str):
    raise ConfigError(f"{path}: {where}{': ' if where else ''}{msg}")


def _check_keys(path, where: str, table: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        _fail(path, where, f"unknown key(s) {', '.join(map(repr, unknown))}; "
              f"valid keys: {', '.join(allowed)}")


def _string_list(path, where: str, value, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        _fail(path, where, f"{name} must be a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
        _fail(path, where, f"{name} lists a value twice: {value!r}")
    return tuple(value)


def _options(path, where: str, value, name: str) -> dict:
    if not isinstance(value, dict):
        _fail(path, where, f"[{name}] must be a table of option = value")
    for key, v in value.items():
        if key in RESERVED:
            _fail(path, where, f"{name}.{key}: set seeds with the top-level 'seeds' list")
        if isinstance(v, dict):
            _fail(path, where, f"{name}.{key}: expected a value or a list, got a table")
    return dict(value)


def _grid(path, where: str, value, name: str) -> dict:
    grid = _options(path, where, value, name)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(path, where, f"{name}.{key}: expected a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            _fail(path, where, f"{name}.{key}: lists a value twice")
    return grid


def _model(path, i: int, table) -> ModelEntry:
    if not isinstance(table, dict):
        _fail(path, f"models[{i}]", "expected a table ([[models]])")
    hint = table.get("label", table.get("model"))
    where = f"models[{i}]" + (f" ({hint})" if isinstance(hint, str) else "")
    _check_keys(path, where, table, MODEL_KEYS)
    label = table.get("label", table.get("model"))
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        _fail(path, where, f"label {label!r}: letters, digits and _ . + -, at most 100 characters "
              "(give 'label' or 'model')")
    model = table.get("model", label)
    if not isinstance(model, str) or not model:
        _fail(path, where, f"model must be a registry name, got {model!r}")
    ref = table.get("reference")
    if ref is not None and not isinstance(ref, str):
        _fail(path, where, f"reference must be a label or \"\", got {ref!r}")
    start = table.get("tune_start")
    if start is not None and not isinstance(start, str):
        _fail(path, where, f"tune_start must be a model label, got {start!r}")
    return ModelEntry(label=label, model=model, reference=ref,
                      options=_options(path, where, table.get("options", {}), "options"),
                      grid=_grid(path, where, table.get("grid", {}), "grid"), tune_start=start)


def _positive_int(path, where: str, value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(path, where, f"{name} must be a positive integer, got {value!r}")
    return value


def _tune(path, table, labels: list[str]) -> TuneSpec:
    from latticerec.experiment.tune import OBJECTIVES

    if not isinstance(table, dict):
        _fail(path, "tune", "expected a table ([tune])")
    _check_keys(path, "tune", table, TUNE_KEYS)
    if "trials" not in table:
        _fail(path, "tune", "missing 'trials' (the optuna trials of every tuned cell)")
    metric = table.get("metric", "recall@20")
    if metric not in OBJECTIVES:
        _fail(path, "tune", f"metric {metric!r}: expected one of {', '.join(OBJECTIVES)}")
    seed = table.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        _fail(path, "tune", f"seed must be an integer in [0, 2**32), got {seed!r}")
    models = table.get("models")
    if models is not None:
        models = _string_list(path, "tune", models, "models")
        unknown = [m for m in models if m not in labels]
        if unknown:
            _fail(path, "tune", f"models {unknown}: not model labels ({', '.join(labels)})")
    epochs = table.get("epochs")
    return TuneSpec(trials=_positive_int(path, "tune", table["trials"], "trials"), metric=metric,
                    epochs=None if epochs is None else _positive_int(path, "tune", epochs, "epochs"),
                    seed=seed, models=models)


def _published(path, table, names: list[str], labels: list[str], metrics: tuple[str, ...]) -> dict:
    """``[published.<dataset>]`` tables: ``source = "..."`` and ``<label> = { "<metric>" = value }``."""
    if not isinstance(table, dict):
        _fail(path, "", "published must be a table of [published.<dataset folder name>] tables")
    out = {}
    for dataset, entries in table.items():
        where = f"published.{dataset}"
        if dataset not in names:
            _fail(path, where, f"not a dataset of the spec ({', '.join(names)})")
        if not isinstance(entries, dict) or not isinstance(entries.get("source"), str) \
                or not entries["source"].strip():
            _fail(path, where, "needs source = \"where the figures come from\"")
        figures = {}
        for label, values in entries.items():
            if label == "source":
                continue
            if label not in labels:
                _fail(path, where, f"{label!r} is not a model label ({', '.join(labels)})")
            if not isinstance(values, dict) or not values:
                _fail(path, f"{where}.{label}", "expected a table of metric = value")
            for metric, value in values.items():
                if metric not in metrics:
                    _fail(path, f"{where}.{label}", f"{metric!r} is not one of the spec's metrics "
                          f"({', '.join(metrics)})")
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                    _fail(path, f"{where}.{label}", f"{metric} must be a number in [0, 1], got {value!r}")
            figures[label] = {m: float(v) for m, v in values.items()}
        out[dataset] = {"source": entries["source"].strip(), "figures": figures}
    return out


def parse_spec(data: dict, path: str | Path = "<spec>") -> ExperimentSpec:
    """An :class:`ExperimentSpec` from the parsed TOML ``data`` (errors name ``path``)."""
    path = str(path)
    _check_keys(path, "", data, TOP_KEYS)
    for key in ("datasets", "seeds", "models"):
        if key not in data:
            _fail(path, "", f"missing {key!r}")
    datasets = _string_list(path, "", data["datasets"], "datasets")
    names = [Path(d).name for d in datasets]
    if len(set(names)) != len(names):
        _fail(path, "", f"datasets {list(datasets)}: two folders have one name (the run folders use it)")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        _fail(path, "", f"seeds must be a non-empty list of distinct integers in [0, 2**32), got {seeds!r}")
    metrics = _string_list(path, "", data.get("metrics", ["recall@20", "ndcg@20"]), "metrics")
    bad = [m for m in metrics if not _METRIC.fullmatch(m)]
    if bad:
        _fail(path, "", f"metrics {bad}: expected recall@K, precision@K, ndcg@K or hit@K (K >= 1)")
    alpha = data.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        _fail(path, "", f"alpha must be a number in (0, 1), got {alpha!r}")
    for key in ("name", "description", "reference"):
        if key in data and not isinstance(data[key], str):
            _fail(path, "", f"{key} must be a string, got {data[key]!r}")
    name = data.get("name", Path(path).stem)
    if not _LABEL.fullmatch(name):
        _fail(path, "", f"name {name!r}: letters, digits and _ . + -, at most 100 characters")
    if not isinstance(data["models"], list) or not data["models"]:
        _fail(path, "", "models must be a non-empty list of [[models]] tables")
    models = tuple(_model(path, i, t) for i, t in enumerate(data["models"]))
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        _fail(path, "", f"model labels must be unique, got {labels}")
    spec = ExperimentSpec(path=path, name=name, datasets=datasets, seeds=tuple(seeds), models=models,
                          description=data.get("description", ""), reference=data.get("reference") or None,
                          metrics=metrics, alpha=float(alpha),
                          options=_options(path, "", data.get("options", {}), "options"),
                          grid=_grid(path, "", data.get("grid", {}), "grid"),
                          tune=_tune(path, data["tune"], labels) if "tune" in data else None,
                          published=_published(path, data.get("published", {}), names, labels, metrics))
    for m in models:
        ref = spec.reference_of(m.label)
        if ref is not None and ref not in labels:
            _fail(path, f"models ({m.label})", f"reference {ref!r} is not a model label "
                  f"({', '.join(labels)})")
        both = sorted(set(m.grid) & set(spec.grid))
        if both:
            _fail(path, f"models ({m.label})", f"grid key(s) {', '.join(both)} also in the global [grid]")
        if ref is not None and next(e for e in models if e.label == ref).grid:
            _fail(path, f"models ({ref})", "a reference model cannot have a grid of its own (its cells "
                  "are matched to the others' by dataset and global grid point)")
        if m.tune_start is not None:
            _check_tune_start(spec, m, labels)
    return spec


def _check_tune_start(spec: ExperimentSpec, entry: ModelEntry, labels: list[str]) -> None:
    where, start = f"models ({entry.label})", entry.tune_start
    if spec.tune is None:
        _fail(spec.path, where, "tune_start needs a [tune] table")
    if start not in labels or start == entry.label:
        _fail(spec.path, where, f"tune_start {start!r} is not another model's label ({', '.join(labels)})")
    target = next(e for e in spec.models if e.label == start)
    untuned = [e.label for e in (entry, target) if spec.tune.models is not None
               and e.label not in spec.tune.models]  # without [tune] models: known when planned
    if untuned:
        _fail(spec.path, where, f"tune_start {start!r}: {' and '.join(untuned)} not tuned ([tune] models)")
    if target.tune_start is not None:
        _fail(spec.path, where, f"tune_start {start!r} starts from {target.tune_start!r} in turn: a study "
              "can only start from one that starts from nothing")
    if target.grid:
        _fail(spec.path, f"models ({start})", "a tune_start model cannot have a grid of its own (its "
              "study is matched to the others' by dataset and global grid point)")


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and check the spec file ``path``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment spec") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML spec ({exc})") from None
    return parse_spec(data, path)


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` (``[{}]`` for no grid), in the file's order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, Any]) -> str:
    """A grid point as a folder name: ``knn_k=5,lambda_coeff=0.5`` (``default`` for none)."""
    if not point:
        return "default"
    text = ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


@dataclass(frozen=True)
class StudyTask:
    """One tuned cell's optuna study (:func:`plan_studies`)."""

    label: str
    model: str
    data: str
    grid: dict[str, Any]
    fixed: dict[str, Any]  # the cell's options, held fixed by the study
    out: str  # the study's folder: study.db, trials/, best_config.json, best_trial.json
    trials: int
    metric: str
    epochs: int
    seed: int
    start_from: str | None = None  # the folder of the study whose best options are the first trial

    @property
    def run_dir(self) -> str:
        """The study's folder (named like a run's, for the runner's outcomes)."""
        return self.out


def _tuned(spec: ExperimentSpec, entry: ModelEntry) -> bool:
    from latticerec.models.registry import get_model_class

    if spec.tune is None:
        return False
    if spec.tune.models is not None:
        return entry.label in spec.tune.models
    return bool(getattr(get_model_class(entry.model), "SEARCH_SPACE", None))


def plan_studies(spec: ExperimentSpec, out: str | Path, extra: dict | None = None) -> list[StudyTask]:
    """The optuna study of every tuned cell (``[tune]``; none without it), in the spec's order."""
    from latticerec.train.build import resolve_config

    studies = []
    for entry, data, point in cells(spec):
        if not _tuned(spec, entry):
            continue
        fixed = {**spec.options, **entry.options, **point, **(extra or {})}
        try:  # the cell's options checked now, before any trial
            epochs = spec.tune.epochs or int(resolve_config(entry.model, fixed).train.epochs)
            resolve_config(entry.model, {**fixed, "epochs": epochs})
        except ConfigError as exc:
            raise ConfigError(f"{spec.path}: models ({entry.label}), {point_name(point)}: {exc}") from None
        fixed.pop("epochs", None)  # the trials' cap is the study's
        folder = Path(out) / "tune" / entry.label / Path(data).name / point_name(point)
        seed = spec.seeds[0] if spec.tune.seed is None else spec.tune.seed
        start = None
        if entry.tune_start is not None:  # same dataset and global grid point
            target = next((e for e in spec.models if e.label == entry.tune_start), None)
            if target is not None and not _tuned(spec, target):
                raise ConfigError(f"{spec.path}: models ({entry.label}): tune_start {entry.tune_start!r} "
                                  "is not tuned (its model declares no SEARCH_SPACE)")
            g_point = {k: v for k, v in point.items() if k in spec.grid}
            start = str(Path(out) / "tune" / entry.tune_start / Path(data).name / point_name(g_point))
        studies.append(StudyTask(label=entry.label, model=entry.model, data=data, grid=point, fixed=fixed,
                                 out=str(folder), trials=spec.tune.trials, metric=spec.tune.metric,
                                 epochs=epochs, seed=seed, start_from=start))
    return studies


def tuned_options(spec: ExperimentSpec, study: StudyTask) -> dict[str, Any]:
    """The options the study ``study`` chose (its ``best_config.json``), or a :class:`ConfigError`
    naming the spec and the cell when the study has not finished."""
    from latticerec.experiment.optfile import read_options_file

    best = Path(study.out) / "best_config.json"
    if not best.exists():
        raise ConfigError(f"{spec.path}: models ({study.label}), {point_name(study.grid)}: tuned, but its "
                          f"study has not finished ({best} is missing); run the experiment to tune it")
    return read_options_file(best, study.model)


def restrict(spec: ExperimentSpec, labels=None, datasets=None) -> ExperimentSpec:
    """``spec`` cut to the model ``labels`` and the ``datasets`` (a dataset by its path as the spec
    writes it or by its folder name); ``None`` keeps all. The runs keep their folders, so a grid can
    be run part by part into one output (``experiment --models/--datasets``)."""
    import dataclasses

    if labels is None and datasets is None:
        return spec

    def pick(option: str, wanted, known: list[str], name=lambda v: v) -> list[str]:
        if wanted is None:
            return known
        unknown = [w for w in wanted if not any(w in (k, name(k)) for k in known)]
        if unknown:
            _fail(spec.path, "", f"{option} {' '.join(unknown)}: not in the spec (it has: "
                  f"{', '.join(name(k) for k in known)})")
        return [k for k in known if any(w in (k, name(k)) for w in wanted)]

    keep = set(pick("--models", labels, [m.label for m in spec.models]))
    data = pick("--datasets", datasets, list(spec.datasets), lambda d: Path(d).name)
    return dataclasses.replace(spec, models=tuple(m for m in spec.models if m.label in keep),
                               datasets=tuple(data))


def plan(spec: ExperimentSpec, out: str | Path, extra: dict | None = None, *,
         untuned: str = "raise") -> list:
    """Every run of ``spec`` as a :class:`~latticerec.experiment.runner.RunTask` (folders under
    ``out``), each config resolved against the registry now (errors name the spec file and the model).
    ``extra``: options set on every run on top of the spec (``--set``). A tuned cell's runs take its
    study's best options on top (:func:`tuned_options`: the studies must have run; with ``untuned=
    "skip"`` the cells of a study that has not finished are left out instead, with ``"fixed"`` they
    keep the spec's options alone)."""
    from latticerec.experiment.runner import RunTask
    from latticerec.train.build import resolve_config

    if "seed" in (extra or {}):
        raise ConfigError(f"--set seed: the runs' seeds are the spec's 'seeds' list ({spec.path})")
    studies = {(s.label, s.data, point_name(s.grid)): s for s in plan_studies(spec, out, extra)}
    tasks = []
    for entry, data, point in cells(spec):
        overrides = {**spec.options, **entry.options, **point, **(extra or {})}
        study = studies.get((entry.label, data, point_name(point)))
        if study is not None:
            finished = (Path(study.out) / "best_config.json").exists()
            if untuned == "skip" and not finished:
                continue
            if untuned != "fixed" or finished:
                overrides.update(tuned_options(spec, study))
        try:
            run = resolve_config(entry.model, {**overrides, "seed": spec.seeds[0]})
        except ConfigError as exc:
            raise ConfigError(f"{spec.path}: models ({entry.label}), {point_name(point)}: {exc}") from None
        uncut = [m for m in spec.metrics if int(_METRIC.fullmatch(m).group(2)) not in run.train.topk]
        if uncut:  # the runs would not compute them: a summary of NaN, a paired test without data
            raise ConfigError(f"{spec.path}: models ({entry.label}), {point_name(point)}: metrics "
                              f"{', '.join(uncut)}: the runs evaluate at topk {list(run.train.topk)} only "
                              "(add the cut-off to the 'topk' option or change 'metrics')")
        cell_dir = Path(out) / "runs" / entry.label / Path(data).name / point_name(point)
        tasks += [RunTask(label=entry.label, model=entry.model, data=data, seed=seed, grid=point,
                          overrides={**overrides, "seed": seed}, run_dir=str(cell_dir / f"seed-{seed}"))
                  for seed in spec.seeds]
    return tasks


def cells(spec: ExperimentSpec):
    """``(model entry, dataset, grid point)`` of every cell, in the spec's order."""
    for entry in spec.models:
        for data in spec.datasets:
            for g_point in grid_points(spec.grid):
                for m_point in grid_points(entry.grid):
                    yield entry, data, {**g_point, **m_point}
