"""An experiment's results: ``results.csv`` (one row per run), ``summary.md`` and ``summary.json``
(mean ± std per cell, paired tests against the reference), all written atomically.

The paired test of a cell against its reference cell (same dataset, same global grid point) is
seed-matched: for the seeds both cells finished, each user's per-user test metric is averaged over
those seeds (``ā_u = mean_s a_{u,s}``, ``b̄_u`` likewise), and
:func:`~latticerec.evaluate.significance.paired_test` runs the paired t-test and the Wilcoxon
signed-rank test over users on ``(ā_u, b̄_u)``, with the effect size ``d_z = mean(d) / sd(d)``. A cell
is marked when both tests give ``p < alpha``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from latticerec.errors import LatticeRecError
from latticerec.io import atomic_write_bytes

LEAD = ("label", "model", "dataset", "point", "seed", "run_dir")
RUN_STATS = ("best_epoch", "epochs_run", "stopped_early", "train_seconds", "seconds")


def run_row(task) -> dict[str, Any] | None:
    """The ``results.csv`` row of ``task``'s run (``None`` while it has no ``metrics.json``, and for a
    folder that holds another run than the planned one: other options, model or data, e.g. an older
    run left there by a spec or ``--set`` that has changed since; its figures are not this run's)."""
    from latticerec.experiment.runner import cell_key, data_spec, flat_options, run_state
    from latticerec.train.build import resolve_config
    from latticerec.train.rundir import RunDir

    run_dir = RunDir(task.run_dir)
    if not run_dir.file(run_dir.METRICS).exists():
        return None
    expected = {"model": task.model, "data": data_spec(task.data),
                "config": resolve_config(task.model, task.overrides).to_dict()}
    try:
        if run_state(run_dir, expected) != "finished":
            return None
    except LatticeRecError:  # a foreign run (the runner reported it failed)
        return None
    m = run_dir.read_metrics()
    label, dataset, point = cell_key(task)
    row: dict[str, Any] = {"label": label, "model": task.model, "dataset": dataset, "point": point,
                           "seed": task.seed, "run_dir": task.run_dir}
    for key, value in flat_options(m.get("config") or {}).items():
        row.setdefault(key, ";".join(map(str, value)) if isinstance(value, list) else value)
    history = m.get("history") or []
    row.update({k: m.get(k) for k in RUN_STATS[:-1]},
               seconds=round(float(m.get("train_seconds") or 0.0)
                             + sum(float(r.get("eval_seconds", 0.0)) for r in history), 2))
    for split in ("valid", "test"):
        row.update({f"{split}_{k}": v for k, v in sorted((m.get(split) or {}).items())})
    return row


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV, columns: the lead ones, then options, run statistics and metrics (first seen)."""
    columns: list[str] = list(LEAD)
    for row in rows:
        columns += [k for k in row if k not in columns and k not in RUN_STATS
                    and not k.startswith(("valid_", "test_"))]
    columns += list(RUN_STATS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _per_user(tasks, done: set[str]) -> dict[int, dict]:
    """Per-user test metrics of the runs of ``tasks`` that have a ``results.csv`` row (``done``: their
    run folders), by seed."""
    from latticerec.train.rundir import RunDir

    return {t.seed: RunDir(t.run_dir).read_per_user() for t in tasks if t.run_dir in done}


def seed_matched_test(runs_a: dict[int, dict], runs_b: dict[int, dict], metric: str):
    """:func:`paired_test` of per-user ``metric`` averaged over the seeds both have (module doc);
    ``(PairedTest, seeds)``, or ``(None, [])`` without a common seed."""
    from latticerec.evaluate.significance import align_users, paired_test

    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        return None, []
    pairs = [align_users(runs_a[s]["users"], runs_a[s][metric], runs_b[s]["users"], runs_b[s][metric])
             for s in seeds]
    if len({a.shape for a, _ in pairs}) != 1:
        raise ValueError("the seeds' runs tested different users")
    return paired_test(np.mean([a for a, _ in pairs], axis=0), np.mean([b for _, b in pairs], axis=0)), seeds


def _study_record(out: str | Path | None, key: tuple) -> dict | None:
    """A tuned cell's study (``OUT/tune/<label>/<dataset>/<point>/best_trial.json``): trials, the
    best validation value and the options its runs took; ``None`` for a cell that was not tuned."""
    if out is None or not (path := Path(out, "tune", *key, "best_trial.json")).exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    keep = ("metric", "trials", "best_trial", "best_valid", "best_options", "best_params")
    return {k: record.get(k) for k in keep}


def summarise(spec, tasks, rows: list[dict], out: str | Path | None = None) -> dict:
    """``summary.json``'s content: per cell the mean and std of each metric over its finished seeds
    and, against its reference, the paired tests per metric; with ``out``, a tuned cell's study.
    A cell's ``options`` are the ones its spec entry sets and its grid point (``default``: none)."""
    from latticerec.experiment.runner import cell_key
    from latticerec.experiment.spec import point_name

    by_cell: dict[tuple, list] = {}
    for t in tasks:
        by_cell.setdefault(cell_key(t), []).append(t)
    done = {(r["label"], r["dataset"], r["point"], r["seed"]): r for r in rows}
    fixed = {m.label: m.options for m in spec.models}
    cells = []
    for key, cell_tasks in by_cell.items():
        finished = [done[(*key, t.seed)] for t in cell_tasks if (*key, t.seed) in done]
        values = {m: [float(r.get(f"test_{m}", math.nan)) for r in finished] for m in spec.metrics}
        cells.append({"label": key[0], "model": cell_tasks[0].model, "dataset": key[1], "point": key[2],
                      "options": point_name({**fixed[key[0]], **cell_tasks[0].grid}),
                      "grid": cell_tasks[0].grid, "seeds": [r["seed"] for r in finished],
                      "planned_seeds": len(cell_tasks),
                      "mean": {m: float(np.mean(v)) if v else None for m, v in values.items()},
                      "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()},
                      "reference": spec.reference_of(key[0]), "tests": {},
                      "tuning": _study_record(out, key),
                      "published": spec.published.get(key[1], {}).get("figures", {}).get(key[0])})
    runs = {r["run_dir"] for r in rows}
    for cell in cells:
        if cell["reference"] is not None:
            _test_cell(spec, cell, by_cell, runs)
    return {"name": spec.name, "description": spec.description, "spec": spec.path,
            "metrics": list(spec.metrics), "alpha": spec.alpha, "grid": spec.grid,
            "model_grids": {m.label: m.grid for m in spec.models}, "cells": cells,
            "published_sources": {d: p["source"] for d, p in spec.published.items()}}


def _test_cell(spec, cell: dict, by_cell: dict[tuple, list], runs: set[str]) -> None:
    """Fill ``cell["tests"]``: the paired tests against its reference cell, one per metric, over the
    finished runs (``runs``: their folders) of the two cells."""
    from latticerec.experiment.spec import point_name

    g_point = {k: v for k, v in cell["grid"].items() if k in spec.grid}
    ref_key = (cell["reference"], cell["dataset"], point_name(g_point))
    if ref_key not in by_cell:
        return
    a = _per_user(by_cell[(cell["label"], cell["dataset"], cell["point"])], runs)
    b = _per_user(by_cell[ref_key], runs)
    for m in spec.metrics:
        try:
            res, seeds = seed_matched_test(a, b, m)
        except (KeyError, ValueError) as exc:
            raise LatticeRecError(f"paired test {cell['label']} vs {cell['reference']} ({m}): "
                                  f"{exc}") from None
        if res is not None:
            cell["tests"][m] = {**res.to_dict(), "seeds": seeds, "significant": res.significant(spec.alpha)}


def _fmt(mean, std) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def summary_markdown(summary: dict) -> str:
    """The tables of ``summary.md`` (also the body of ``latticerec report``)."""
    metrics, alpha = summary["metrics"], summary["alpha"]
    lines = [f"# {summary['name']}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [f"Test metrics, mean ± std over seeds (n: finished seeds). `*`: differs from the cell's "
              f"reference at p < {alpha} in both the paired t-test and the Wilcoxon signed-rank test "
              "over users (per-user metrics averaged over the seeds both cells finished).", ""]
    for dataset in dict.fromkeys(c["dataset"] for c in summary["cells"]):
        cells = [c for c in summary["cells"] if c["dataset"] == dataset]
        source = summary.get("published_sources", {}).get(dataset)
        shown = [m for m in metrics if any(m in (c.get("published") or {}) for c in cells)] if source else []
        extra = f" published {' / '.join(shown)} |" if shown else ""
        lines += [f"## {dataset}", "",
                  "| model | options | n | " + " | ".join(metrics) + f" | reference |{extra}",
                  "|---|---|---|" + "---|" * len(metrics) + "---|" + "---|" * bool(shown)]
        for c in cells:
            marks = ["*" if c["tests"].get(m, {}).get("significant") else "" for m in metrics]
            figures = c.get("published") or {}
            cited = (" " + " / ".join(f"{figures[m]:.4f}" if m in figures else "–" for m in shown) + " |"
                     if shown else "")
            lines.append(f"| {c['label']} | {_options(c)} | {len(c['seeds'])}/{c['planned_seeds']} | "
                         + " | ".join(_fmt(c["mean"][m], c["std"][m]) + k for m, k in zip(metrics, marks,
                                                                                          strict=True))
                         + f" | {c['reference'] or '–'} |{cited}")
        if shown:
            lines += ["", f"Published figures ({dataset}): {source}. Shown for comparison only; they were "
                      "measured elsewhere, under their own protocol, and enter no test."]
        tested = [(c, m) for c in cells for m in metrics if m in c["tests"]]
        if tested:
            lines += ["", f"Paired tests against the reference ({dataset}):", "",
                      "| model | options | metric | reference | mean | ref. mean | Δ | t | p (t) | "
                      "p (Wilcoxon) | d_z | users | seeds | p < α |", "|---" * 14 + "|"]
            for c, m in tested:
                r = c["tests"][m]
                lines.append(f"| {c['label']} | {_options(c)} | {m} | {c['reference']} | {r['mean_a']:.4f} | "
                             f"{r['mean_b']:.4f} | {r['mean_diff']:+.4f} | {r['t']:.2f} | {r['p_t']:.2g} | "
                             f"{r['p_wilcoxon']:.2g} | {r['effect_size']:+.3f} | {r['n']} | "
                             f"{len(r['seeds'])} | {'yes' if r['significant'] else 'no'} |")
        tuned = [c for c in cells if c.get("tuning")]
        if tuned:
            lines += ["", f"Tuned on validation only ({dataset}; optuna TPE, median pruner; the same "
                      "number of trials for every tuned cell; the seeds above trained with the options "
                      "chosen):", "", "| model | options | trials (complete / pruned / failed) | best valid "
                      "| options chosen by the study |", "|---|---|---|---|---|"]
            for c in tuned:
                t = c["tuning"]
                counts = " / ".join(str(t["trials"].get(k, 0)) for k in ("complete", "pruned", "fail"))
                chosen = ", ".join(f"{k}={_short(v)}" for k, v in sorted((t.get("best_params")
                                                                          or t["best_options"]).items()))
                lines.append(f"| {c['label']} | {_options(c)} | {counts} | {t['metric']} "
                             f"{t['best_valid']:.4f} | {chosen} |")
        lines.append("")
    return "\n".join(lines)


def _options(cell: dict) -> str:
    """A cell's options column (a ``summary.json`` written before cells carried ``options``: its point)."""
    return cell.get("options") or cell["point"]


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_results(spec, tasks, out: str | Path) -> dict[str, Path]:
    """Write ``OUT/results.csv``, ``OUT/summary.json`` and ``OUT/summary.md`` from the finished runs."""
    out = Path(out)
    rows = [r for r in (run_row(t) for t in tasks) if r is not None]
    summary = summarise(spec, tasks, rows, out)
    paths = {"csv": out / "results.csv", "json": out / "summary.json", "summary": out / "summary.md"}
    atomic_write_bytes(paths["csv"], csv_text(rows).encode())
    atomic_write_bytes(paths["json"], (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(paths["summary"], summary_markdown(summary).encode())
    return paths
