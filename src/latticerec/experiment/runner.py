"""Run an experiment's grid: one run folder per (cell, seed), finished runs skipped, cut runs resumed.

A run folder (:class:`~latticerec.train.rundir.RunDir`) is in one of four states:

* **empty** (no ``config.json``): trained from scratch;
* **finished** (``metrics.json`` and ``per_user.npz``): skipped, after checking that its
  ``config.json`` is the planned run (same model, data and options), so an interrupted grid resumes;
* **cut** (``config.json`` but no ``metrics.json``; the process was killed): continued from its
  ``checkpoint.pt`` exactly as ``latticerec train --resume`` would (same weights, optimiser, sampler
  state and history), or trained again from scratch when it was killed before its first evaluation
  (no checkpoint yet);
* **foreign** (a ``config.json`` of another run): an error naming the folder; it is never overwritten.

``--reuse DIR`` (:func:`attach_reuse`): an *empty* planned run whose model, data and options equal
those of a finished run found under ``DIR`` (another experiment's output, say: the LightGCN reference
and LATTICE's default cell appear in most of the papers' tables) is copied from it instead of being
trained again, provided the data's content hash is still the one that run was trained on. Options
are compared as configs (an older run that lacks an option added since reads it as its default,
as ``--resume`` does); the code version is not compared.

``jobs > 1`` runs the runs in a pool of ``jobs`` worker processes (``spawn``: each worker imports
torch once and trains run after run); each worker gets ``max(1, cores // jobs)`` torch threads.
On Linux a worker ends when the runner ends, also when the runner is killed; its run is then *cut*
and resumes at the next call.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latticerec.errors import LatticeRecError, RunError


@dataclass(frozen=True)
class RunTask:
    """One run of a grid: ``model`` (registry name) on ``data`` with ``overrides`` into ``run_dir``."""

    label: str
    model: str
    data: str
    seed: int
    grid: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    reuse_from: str = ""  # a finished run folder with the same model, data and options


def cell_key(task: RunTask) -> tuple[str, str, str]:
    """The cell of a run: its label, dataset folder name and grid point (as a folder name)."""
    from latticerec.experiment.spec import point_name

    return task.label, Path(task.data).name, point_name(task.grid)


def data_spec(data: str) -> str:
    """What a run's ``config.json`` records as its data: ``synthetic`` or the absolute folder."""
    return data if data == "synthetic" else str(Path(data).resolve())


def flat_options(config: dict) -> dict[str, Any]:
    """A saved run config (``RunConfig.to_dict()``) as one flat ``--set`` key -> value mapping."""
    return {k: v for part in ("train", "backbone_config", "model_config")
            for k, v in (config.get(part) or {}).items()}


def _config_key(model: str, data: str, config: dict) -> str:
    return json.dumps([model, data, config], sort_keys=True, default=str)


def saved_config(meta: dict) -> dict | None:
    """A run's saved ``config.json`` config as today's full config dict, read as ``--resume`` reads
    it (an option added since the run was saved reads as its default); ``None`` when it no longer
    reads (a removed model or option)."""
    from latticerec.train.build import config_from_dict

    try:
        return config_from_dict(meta["config"]).to_dict()
    except (LatticeRecError, KeyError, TypeError, ValueError, AttributeError):
        return None


def finished_runs(roots) -> dict[str, str]:
    """Every finished run folder under ``roots`` (``metrics.json`` and ``per_user.npz`` beside a
    readable ``config.json``), keyed by its model, data and normalised options. Folders whose config
    no longer reads (a removed model or option) are passed over."""
    from latticerec.train.rundir import RunDir

    found: dict[str, str] = {}
    for root in roots:
        if not Path(root).is_dir():
            raise RunError(f"--reuse {root}: not a folder")
        for config_file in sorted(Path(root).rglob(RunDir.CONFIG)):
            run_dir = RunDir(config_file.parent)
            if not (run_dir.file(run_dir.METRICS).exists() and run_dir.file(run_dir.PER_USER).exists()):
                continue
            try:
                meta = run_dir.read_config()
            except (LatticeRecError, KeyError, TypeError, ValueError, AttributeError):
                continue
            config = saved_config(meta)
            if config is None:
                continue
            found.setdefault(_config_key(meta["model"], meta["data"], config), str(run_dir.path))
    return found


def attach_reuse(tasks: list[RunTask], roots) -> list[RunTask]:
    """``tasks`` with ``reuse_from`` set where a finished run under ``roots`` has the same model,
    data and options (see module)."""
    from latticerec.train.build import resolve_config

    if not roots:
        return tasks
    found = finished_runs(roots)
    out = []
    for task in tasks:
        key = _config_key(task.model, data_spec(task.data),
                          resolve_config(task.model, task.overrides).to_dict())
        source = found.get(key, "")
        if source and Path(source).resolve() == Path(task.run_dir).resolve():
            source = ""
        out.append(dataclasses.replace(task, reuse_from=source))
    return out


@functools.lru_cache(maxsize=2)
def load_data(spec: str):
    """The dataset ``spec`` (cached: a worker trains many runs on one dataset)."""
    from latticerec.data.readers import load_dataset

    return load_dataset(spec)


def run_state(run_dir, expected: dict) -> str:
    """``"empty"``, ``"finished"`` or ``"cut"`` (see module); a :class:`RunError` for a folder that
    holds another run. ``expected`` is ``{"model", "data", "config"}`` of the planned run."""
    if not run_dir.has_config():
        if run_dir.existing(run_dir.TRAINING_FILES):
            raise RunError(f"{run_dir.path}: holds run files but no config.json; not a run of this "
                           "experiment (move it away or give another --out)")
        return "empty"
    saved = run_dir.read_config()
    saved = {**saved, "config": saved_config(saved)}  # None (no longer reads) differs from any plan
    if any(saved.get(k) != v for k, v in expected.items()):
        raise RunError(f"{run_dir.path}: holds a run with other options, model or data than the spec "
                       "asks for now; give another --out (a run folder is never overwritten)")
    done = run_dir.file(run_dir.METRICS).exists() and run_dir.file(run_dir.PER_USER).exists()
    return "finished" if done else "cut"


def train_into(model_name: str, data: str, overrides: dict, out, *, device: str = "cpu",
               cache_dir: str | None = None, on_evaluate=None, test: bool = True,
               log=None, reuse_from: str = "") -> tuple[str, dict | None]:
    """Train ``model_name`` on ``data`` into the run folder ``out`` (see :func:`run_state`); returns
    ``(state before, metrics.json content or None when skipped)``. ``on_evaluate`` and ``test``
    are :func:`~latticerec.train.trainer.fit`'s. ``reuse_from``: a finished run of the same model,
    data and options, copied (state ``"reused"``) instead of training when ``out`` is empty and the
    data's content hash is the one it was trained on."""
    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.train.build import build_model, resolve_config, resolve_device
    from latticerec.train.rundir import RunDir
    from latticerec.train.trainer import fit

    run = resolve_config(model_name, overrides)
    run_dir = RunDir(out)
    spec = data_spec(data)
    with run_dir.lock():
        state = run_state(run_dir, {"model": model_name, "data": spec, "config": run.to_dict()})
        if state == "finished":
            return state, None
        dataset = load_data(spec)
        data_hash = dataset.content_hash()  # hashes every array of the data: once per run
        if state == "empty" and reuse_from:
            source = RunDir(reuse_from)
            if source.read_config().get("dataset_hash") == data_hash:
                meta = {"model": model_name, "data": spec, "config": run.to_dict(), "dataset_hash": data_hash}
                run_dir.copy_finished_from(source, meta)
                return "reused", run_dir.read_metrics()
        model = build_model(run, dataset, resolve_device(device), KnnGraphCache(cache_dir))
        run_dir.write_config({"model": model_name, "data": spec, "config": run.to_dict(),
                              "dataset_hash": data_hash})
        resume = state == "cut" and run_dir.has_checkpoint()
        result = fit(model, dataset, run.train, out_dir=run_dir, resume=resume, progress=False,
                     log=log or (lambda m: print(m, file=sys.stderr)), on_evaluate=on_evaluate,
                     test=test, overwrite=state == "cut" and not resume)
        metrics = {"model": model_name, "data": spec, **{k: v for k, v in result.items() if k != "history"},
                   "config": run.to_dict(), "dataset": dataset.summary(), "dataset_hash": data_hash,
                   "history": result["history"]}
        run_dir.write_metrics(metrics)
    return ("resumed" if resume else state), metrics


def run_task(task: RunTask, device: str = "cpu", cache_dir: str | None = None) -> dict:
    """Train one grid run; ``{"run_dir", "state", "seconds"}`` (``state``: finished = skipped)."""
    start = time.perf_counter()
    state, _ = train_into(task.model, task.data, task.overrides, task.run_dir, device=device,
                          cache_dir=cache_dir, reuse_from=task.reuse_from)
    return {"run_dir": task.run_dir, "state": state, "seconds": round(time.perf_counter() - start, 2)}


CHECK_STATES = {"empty": "to train", "cut": "cut (to resume)", "reusable": "to copy from --reuse"}


def check_tasks(tasks: list[RunTask], device: str = "cpu", cache_dir: str | None = None,
                log=print) -> list[dict]:
    """``experiment --check``: nothing is trained or written in the run folders. Per cell (label,
    dataset, grid point) the state of its runs (finished, cut, empty, or empty and copied from
    ``--reuse``) and, when a run is left to train, the cell's model built once on its data, so that a
    cell that cannot run (a foreign run folder, an option the data cannot serve) is found now, not
    when its turn comes. Initial kNN graphs built on the way go to the graph cache, which the runs
    read. Returns ``{"cell", "states", "error"}`` per cell (``error`` empty: the cell can run)."""
    from collections import Counter

    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.train.build import build_model, resolve_config, resolve_device
    from latticerec.train.rundir import RunDir

    cells: dict[tuple, list[RunTask]] = {}
    for task in tasks:
        cells.setdefault(cell_key(task), []).append(task)
    outcomes = []
    for key, cell in cells.items():
        states, error = Counter(), ""
        runs = [resolve_config(task.model, task.overrides) for task in cell]  # the cell's seeds
        for task, run in zip(cell, runs, strict=True):
            expected = {"model": task.model, "data": data_spec(task.data), "config": run.to_dict()}
            try:
                state = run_state(RunDir(task.run_dir), expected)
            except LatticeRecError as exc:
                error = error or str(exc)
                continue
            states["reusable" if state == "empty" and task.reuse_from else state] += 1
        if not error and (states["empty"] or states["cut"]):
            try:
                build_model(runs[0], load_data(data_spec(cell[0].data)), resolve_device(device),
                            KnnGraphCache(cache_dir))
            except (LatticeRecError, ValueError, RuntimeError, OSError) as exc:
                error = str(exc)
        outcome = {"cell": "/".join(key), "states": dict(states), "error": error}
        outcomes.append(outcome)
        counts = ", ".join(f"{n} {CHECK_STATES.get(s, s)}" for s, n in states.items())
        log(f"{outcome['cell']}: {counts or 'no runs'}: " + (f"FAILS: {error}" if error else "ok"))
    return outcomes


def _worker_init(threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        from latticerec.process import end_with

        end_with(parent)
    torch.set_num_threads(threads)


def _safely(fn, item, device: str, cache_dir: str | None) -> dict:
    """``fn(item, ...)``, or a ``failed`` outcome naming ``item.run_dir`` when it raises a known error
    (a pool worker must not die of one: the other runs go on)."""
    try:
        return fn(item, device, cache_dir)
    except (LatticeRecError, ValueError, RuntimeError, OSError) as exc:
        return {"run_dir": item.run_dir, "state": "failed", "error": str(exc)}


def run_study(study, device: str = "cpu", cache_dir: str | None = None) -> dict:
    """Run (or resume) one tuned cell's optuna study (:class:`~latticerec.experiment.spec.StudyTask`)
    to its ``trials``; validation only: the best trial is not evaluated on test here (the cell's
    seeds are, once trained)."""
    from latticerec.experiment.tune import start_point, tune

    start = time.perf_counter()
    first = start_point(study.start_from) if study.start_from else None
    record = tune(study.model, study.data, study.trials, study.out, metric=study.metric,
                  epochs=study.epochs, fixed=study.fixed, seed=study.seed, device=device,
                  cache_dir=cache_dir, evaluate_test=False, start=first, log=lambda m: None)
    return {"run_dir": study.run_dir, "state": "tuned", "best_valid": record["best_valid"],
            "trials": sum(record["trials"].values()), "seconds": round(time.perf_counter() - start, 2)}


def _in_pool(fn, items: list, jobs: int, device: str, cache_dir: str | None, log, describe) -> list[dict]:
    """``fn(item, device, cache_dir)`` for every item (:func:`_safely`), in this process (``jobs`` 1)
    or in a pool of ``jobs`` worker processes; ``log`` gets ``describe(index, outcome)`` for each as
    it ends."""
    outcomes = []

    def note(i: int, out: dict) -> None:
        outcomes.append(out)
        log(f"[{len(outcomes)}/{len(items)}] {describe(i, out)}")

    if jobs <= 1:
        for i, item in enumerate(items):
            note(i, _safely(fn, item, device, cache_dir))
        return outcomes
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_safely, fn, item, device, cache_dir): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            note(futures[fut], fut.result())
    return outcomes


def run_studies(studies: list, jobs: int = 1, device: str = "cpu", cache_dir: str | None = None,
                log=print) -> list[dict]:
    """Run the tuned cells' studies (``jobs`` at a time); a failed study is reported and the others
    go on. Returns one outcome per study (``state``: tuned / failed)."""
    def describe(i: int, out: dict) -> str:
        if out["state"] == "failed":
            return f"{studies[i].out}: FAILED: {out.get('error')}"
        return f"{studies[i].out}: study of {out['trials']} trials, best valid {out['best_valid']:.4f}"

    return _in_pool(run_study, studies, jobs, device, cache_dir, log, describe)


def run_tasks(tasks: list[RunTask], jobs: int = 1, device: str = "cpu", cache_dir: str | None = None,
              log=print) -> list[dict]:
    """Run ``tasks`` (``jobs`` at a time); a failed run is reported and the others go on. Returns one
    outcome per task (``state``: empty / cut / resumed / reused / finished / failed)."""
    def describe(i: int, out: dict) -> str:
        what = {"finished": "already finished, skipped", "failed": f"FAILED: {out.get('error')}",
                "resumed": "resumed from its checkpoint",
                "reused": f"copied from the finished run {tasks[i].reuse_from}"}.get(out["state"], "trained")
        return f"{tasks[i].run_dir}: {what}"

    return _in_pool(run_task, tasks, jobs, device, cache_dir, log, describe)
