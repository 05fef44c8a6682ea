"""Hyper-parameter tuning with optuna on the validation split only.

Each trial samples the model's search space (``SEARCH_SPACE`` next to the model class, e.g.
:data:`latticerec.models.options.STRUCTURE_SPACE`) with the TPE sampler (Bergstra et al., 2011),
trains into its own run folder ``OUT/trials/trial-NNNN`` and reports the validation metric after
every evaluation; the median pruner stops a trial whose value at an epoch is below the median of
the earlier trials at that epoch. The objective is the validation metric (``recall@20`` or
``ndcg@20``) of the best-validation epoch; the training loop runs with ``test=False``, so the test
split is not read by any trial. Only when the study is done are the best trial's saved weights
evaluated on the test split, once, and reported.

A study in SQLite (``--storage sqlite:///study.db``, by default ``OUT/study.db``) resumes: the
trials already finished or pruned count towards ``--trials``; a trial left running by a killed
process (its process id is gone) is marked failed and replaced.

A study can start from a known point (``--start-from DIR``, another finished study's folder; in a
spec, ``tune_start = "LABEL"``): its first trial trains the best options of that study (the
options this model's space tunes; the others at this model's defaults), then TPE goes on as usual,
within the same number of trials (optuna's ``enqueue_trial``). A structure model that wraps LightGCN
can so start where LightGCN's own study ended. The start is part of the study's settings.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from latticerec.errors import ConfigError, LatticeRecError
from latticerec.io import atomic_write_json

OBJECTIVES = ("recall@20", "ndcg@20")


def search_space(model: str, options: dict | None = None) -> dict[str, tuple]:
    """The ``SEARCH_SPACE`` declared on the model class, checked. A model that wraps a backbone
    also tunes the backbone's own options (its ``SEARCH_SPACE`` keys the model does not declare:
    LightGCN's ``n_layers``, say), so it gets at least the space of the backbone it is compared
    with (less the ones ``options`` fix); ``options`` (the study's fixed options) also name the
    backbone (default: the model's)."""
    from latticerec.models.registry import get_backbone_class, get_model_class
    from latticerec.train.build import backbone_name

    cls = get_model_class(model)
    space = dict(getattr(cls, "SEARCH_SPACE", None) or {})
    if not space:
        raise ConfigError(f"model {model!r} declares no SEARCH_SPACE to tune")
    backbone = backbone_name(cls, options or {})
    if backbone is not None:
        for key, spec in getattr(get_backbone_class(backbone), "SEARCH_SPACE", {}).items():
            if key not in (options or {}):  # a backbone option the study holds fixed is not tuned
                space.setdefault(key, spec)
    for key, spec in space.items():
        kind = spec[0] if isinstance(spec, tuple) and spec else None
        ok = (kind in ("log", "float", "int") and len(spec) == 3 and spec[1] < spec[2]
              and (kind != "log" or spec[1] > 0)) or (kind == "choice" and len(spec) == 2 and spec[1])
        if not ok:
            raise ConfigError(f"{model}.SEARCH_SPACE[{key!r}]: malformed {spec!r}")
    return dict(space)


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One value per option of ``space`` from the optuna ``trial``."""
    out = {}
    for key, (kind, *args) in space.items():
        if kind == "int":
            out[key] = trial.suggest_int(key, args[0], args[1])
        elif kind == "choice":
            out[key] = trial.suggest_categorical(key, list(args[0]))
        else:
            out[key] = trial.suggest_float(key, args[0], args[1], log=kind == "log")
    return out


def start_point(path: str | Path) -> dict[str, Any]:
    """The best options of a finished study (``best_params`` of its ``best_trial.json``; ``path``
    is the study's folder or that file), checked; a :class:`ConfigError` names the file."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / "best_trial.json"
    if not file.is_file():
        raise ConfigError(f"--start-from {path}: {file} is missing (the study has not finished)")
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--start-from {file}: not a readable best_trial.json ({exc})") from None
    params = record.get("best_params") if isinstance(record, dict) else None
    if not isinstance(params, dict) or not params or not all(
            isinstance(k, str) and isinstance(v, (int, float, str)) and not isinstance(v, bool)
            for k, v in params.items()):
        raise ConfigError(f"--start-from {file}: 'best_params' must be a non-empty table of options "
                          f"to numbers or strings, got {params!r}")
    return params


def start_trial(model: str, space: dict[str, tuple], start: dict[str, Any],
                defaults: dict[str, Any]) -> dict[str, Any]:
    """The first trial's values: ``start``'s values for the options ``space`` tunes (each within its
    range), the model's ``defaults`` for the others where they lie in the range (the sampler draws
    the rest). Options of ``start`` that ``space`` does not tune are left out (a backbone's study
    may tune options the wrapping model holds fixed); a value out of range is a :class:`ConfigError`."""
    import math

    values = {}
    for key, (kind, *args) in space.items():
        given = key in start
        value = start[key] if given else defaults.get(key)
        if kind == "choice":
            ok = value in list(args[0])
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and args[0] <= value <= args[1] and (kind != "int" or float(value).is_integer()))
        if ok:
            values[key] = int(value) if kind == "int" else value if kind == "choice" else float(value)
        elif given:
            bounds = args[0] if kind == "choice" else f"[{args[0]}, {args[1]}]"
            raise ConfigError(f"--start-from: {key}={value!r} is outside {model}'s search space "
                              f"({kind} {bounds})")
    if not any(key in start for key in values):
        raise ConfigError(f"--start-from: none of its options ({', '.join(sorted(start))}) is tuned "
                          f"by {model}'s study ({', '.join(space)})")
    return values


def _owner() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def fail_dead_trials(storage, study) -> int:
    """Mark the study's running trials whose process (same host) is gone as failed; their number."""
    import optuna

    n = 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, _, host = str(t.user_attrs.get("owner", "")).partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)  # public API
        storage.set_trial_user_attr(trial_id, "killed", True)
        storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        n += 1
    return n


def _check_study(study, settings: dict, where: str) -> None:
    settings = json.loads(json.dumps(settings))  # as stored (tuples become lists)
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        diff = sorted(k for k in settings if saved.get(k) != settings[k])
        raise LatticeRecError(f"{where}: study {study.study_name!r} was run with other settings "
                              f"({', '.join(diff)}); give another --study-name or the same options")


def _check_out(out: Path, name: str) -> None:
    """``out`` must be a folder (or not exist yet) and hold no other study's result."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    try:
        done = json.loads((out / "best_trial.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if isinstance(done, dict) and done.get("study") not in (None, name):
        raise ConfigError(f"{out}: holds the study {done['study']!r} (best_trial.json), not {name!r}; "
                          "give another --out")


def _storage(url: str, where: str):
    """optuna's ``RDBStorage`` at ``url``; a :class:`ConfigError` naming ``where`` when it cannot be
    opened (not a database URL, a folder that does not exist, ...)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ValueError, ImportError, optuna.exceptions.OptunaError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot open the optuna storage {url!r} ({first})") from None


def tune(model: str, data: str, trials: int, out: str | Path, *, storage: str | None = None,
         study_name: str | None = None, metric: str = "recall@20", epochs: int = 50,
         fixed: dict | None = None, seed: int = 2024, warmup: int = 5, device: str = "cpu",
         cache_dir: str | None = None, evaluate_test: bool = True, start: dict | None = None,
         log=print) -> dict:
    """Run (or resume) the study until it has ``trials`` finished or pruned trials; write
    ``OUT/best_config.json`` (for ``train --config``) and ``OUT/best_trial.json``; return the latter.
    ``start``: options of the first trial (:func:`start_trial`; e.g. :func:`start_point` of another
    study)."""
    import optuna

    from latticerec.experiment.optfile import write_options_file
    from latticerec.experiment.runner import data_spec, flat_options, train_into
    from latticerec.train.build import resolve_config

    if metric not in OBJECTIVES:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(OBJECTIVES)}")
    out = Path(out)
    space = search_space(model, fixed)
    fixed = dict(fixed or {})
    clash = sorted(set(fixed) & (set(space) | {"epochs", "seed"}))
    if clash:
        raise ConfigError(f"--set {', '.join(clash)}: tuned by the study (or --epochs/--seed)")
    resolved = resolve_config(model, {**fixed, "epochs": epochs, "seed": seed}).to_dict()  # fail now
    fixed = {k: flat_options(resolved)[k] for k in fixed}  # typed, as the configs parsed them
    if start is not None:
        start = start_trial(model, space, start, flat_options(resolved))
    name = study_name or f"{model}-{Path(data).name}"
    _check_out(out, name)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    rdb = _storage(url, "--storage" if storage else str(out))
    others = [] if storage else sorted(set(optuna.get_all_study_names(rdb)) - {name})
    if others:  # its trials/ folder holds their runs: their trial-NNNN would be this study's
        raise ConfigError(f"{out}: holds the study {others[0]!r} ({url}), not {name!r}; give another "
                          "--out (or the same --model, --data and --study-name to resume it)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5,
                                                                   n_warmup_steps=warmup))
    settings = {"model": model, "data": data_spec(data), "metric": metric, "epochs": epochs,
                "fixed": fixed, "seed": seed, "space": {k: list(v) for k, v in space.items()}}
    _check_study(study, settings if start is None else {**settings, "start": start}, url)
    dead = fail_dead_trials(rdb, study)
    # a resumed study must not draw the values its first trials drew: the sampler's random stream
    # restarts with the process, so it is seeded past the trials the study already holds
    held = study.get_trials(deepcopy=False)  # read once (after the dead ones were marked failed)
    study.sampler = optuna.samplers.TPESampler(seed=(seed + len(held)) % 2**32)
    waiting = optuna.trial.TrialState.WAITING  # enqueued, not started: its values are not params yet
    if start is not None and not any(
            t.state == waiting or (t.params == start and not t.user_attrs.get("killed")) for t in held):
        study.enqueue_trial(start)  # the first trial (again, if a killed process lost it)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    n_done = sum(t.state in done_states for t in held)
    killed = f", {dead} left running by a killed process marked failed" if dead else ""
    log(f"study {name!r} in {url}: {n_done} trials done{killed}")

    def objective(trial) -> float:
        params = suggest(trial, space)
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("owner", _owner())
        trial.set_user_attr("run_dir", str(run_dir))

        def report(epoch: int, valid: dict) -> None:
            trial.report(valid[metric], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid {metric} {valid[metric]:.4f}")

        try:
            _, result = train_into(model, data, {**fixed, **params, "epochs": epochs, "seed": seed},
                                   run_dir, device=device, cache_dir=cache_dir, on_evaluate=report,
                                   test=False, log=lambda m: None)
        finally:  # the best weights stay (the best trial is tested from them); the rest is disk
            (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        value = float(result["valid"][metric])
        log(f"trial {trial.number}: valid {metric} {value:.4f} (best epoch {result['best_epoch']}) "
            f"{params}")
        return value

    remaining = max(0, trials - n_done)
    if remaining:
        study.optimize(objective, n_trials=remaining, catch=(LatticeRecError,))
    return _finish(study, model, data, out, metric, fixed, device, cache_dir, evaluate_test, log,
                   write_options_file)


def _finish(study, model, data, out, metric, fixed, device, cache_dir, evaluate_test, log, write):
    """The best trial: its options file, and (``evaluate_test``) its saved weights on test, once."""
    import optuna

    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                        optuna.trial.TrialState.FAIL)}
    if not states["complete"]:
        raise LatticeRecError(f"study {study.study_name!r}: no trial completed ({states})")
    best = study.best_trial
    options = {**fixed, **best.params}
    write(out / "best_config.json", model, options)
    record = {"study": study.study_name, "model": model, "data": data, "metric": metric,
              "trials": states, "best_trial": best.number, "best_valid": best.value,
              "best_options": options, "best_params": dict(best.params),
              "run_dir": best.user_attrs.get("run_dir"), "test": None}
    if evaluate_test:
        from latticerec.graphs.cache import KnnGraphCache
        from latticerec.train.build import resolve_device
        from latticerec.train.rundir import RunDir, load_trained
        from latticerec.train.trainer import evaluate_split

        trained = load_trained(RunDir(record["run_dir"]), resolve_device(device), KnnGraphCache(cache_dir))
        record["valid"] = evaluate_split(trained.model, trained.dataset, "valid", trained.run.train)
        record["test"] = evaluate_split(trained.model, trained.dataset, "test", trained.run.train)
        record["best_epoch"] = trained.best_epoch
    atomic_write_json(out / "best_trial.json", record)
    log(json.dumps({k: record[k] for k in ("trials", "best_trial", "best_valid", "best_options")}))
    return record
