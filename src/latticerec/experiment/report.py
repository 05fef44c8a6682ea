"""``latticerec report SPEC_OUTPUT``: the markdown tables and PNG figures of a finished experiment.

Read from ``SPEC_OUTPUT/summary.json`` (written by ``latticerec experiment``), written to
``SPEC_OUTPUT/report/``:

* ``report.md``: the summary tables (mean ± std, paired tests) and the figures;
* ``sensitivity-<option>.png`` for each option that a model's cells vary alone (one numeric grid
  key): the metric against the option's value, mean with ± std error bars over seeds, one line per
  model and dataset, the reference cell's mean as a dashed line (e.g. MICRO's Fig. 4-6);
* ``bars-<dataset>.png`` for the other cells (a table of models and ablations): one bar per cell with
  ± std error bars, ``*`` over the cells that differ from their reference (e.g. a results table).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from latticerec.errors import LatticeRecError


def read_summary(output: str | Path) -> dict:
    path = Path(output) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatticeRecError(f"{output}: not an experiment output (no summary.json); run "
                              "'latticerec experiment SPEC.toml --out DIR' first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LatticeRecError(f"{path}: unreadable ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("cells"), list) \
            or not isinstance(summary.get("metrics"), list):
        raise LatticeRecError(f"{path}: expected the summary of 'latticerec experiment'")
    if not isinstance(summary.get("name"), str) or not _number(summary.get("alpha")) \
            or not all(isinstance(m, str) for m in summary["metrics"]):
        raise LatticeRecError(f"{path}: expected the summary of 'latticerec experiment' (a name, an "
                              "alpha and metric names)")
    kinds = {"label": str, "dataset": str, "point": str, "grid": dict, "mean": dict, "std": dict,
             "tests": dict, "seeds": list, "planned_seeds": int}
    numbers = ("mean_a", "mean_b", "mean_diff", "t", "p_t", "p_wilcoxon", "effect_size", "n")
    for i, cell in enumerate(summary["cells"]):
        if not isinstance(cell, dict):
            raise LatticeRecError(f"{path}: cells[{i}] is not an object")
        bad = [k for k, kind in kinds.items() if not isinstance(cell.get(k), kind)]
        if bad or not all(isinstance(cell[d].get(m), float | int | type(None))
                          for d in ("mean", "std") for m in summary["metrics"]):
            raise LatticeRecError(f"{path}: cells[{i}]: missing or malformed {', '.join(bad) or 'mean/std'}")
        for m, test in cell["tests"].items():
            if not isinstance(test, dict) or not all(_number(test.get(k)) for k in numbers) \
                    or not isinstance(test.get("seeds"), list) \
                    or not isinstance(test.get("significant"), bool):
                raise LatticeRecError(f"{path}: cells[{i}]: tests.{m}: missing or malformed")
        if not isinstance(cell.get("reference"), str | type(None)):
            raise LatticeRecError(f"{path}: cells[{i}]: malformed reference")
    return summary


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def sensitivity_groups(summary: dict) -> dict[str, list[dict]]:
    """Option -> the cells of the models that vary that numeric option alone."""
    groups: dict[str, list[dict]] = {}
    for label in dict.fromkeys(c["label"] for c in summary["cells"]):
        cells = [c for c in summary["cells"] if c["label"] == label and c["mean"]]
        varied = [k for k in dict.fromkeys(k for c in cells for k in c["grid"])
                  if len({repr(c["grid"].get(k)) for c in cells}) > 1]
        if len(varied) == 1 and all(_number(c["grid"].get(varied[0])) for c in cells):
            groups.setdefault(varied[0], []).extend(cells)
    return groups


def _err(std) -> float:
    return 0.0 if std is None else std


def _sensitivity_figure(summary, key: str, cells: list[dict], path: Path) -> Path:
    from latticerec.experiment.plots import pyplot, save

    plt = pyplot()
    metrics = summary["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False,
                             layout="constrained")
    refs = {(c["label"], c["dataset"]): c for c in summary["cells"]}
    for ax, m in zip(axes[0], metrics, strict=True):
        for (label, dataset) in dict.fromkeys((c["label"], c["dataset"]) for c in cells):
            line = sorted((c for c in cells if (c["label"], c["dataset"]) == (label, dataset)
                           and c["mean"].get(m) is not None), key=lambda c: c["grid"][key])
            x = [c["grid"][key] for c in line]
            ax.errorbar(x, [c["mean"][m] for c in line], yerr=[_err(c["std"][m]) for c in line],
                        marker="o", capsize=3, label=f"{label} ({dataset})")
            ref = refs.get((line[0]["reference"], dataset)) if line and line[0]["reference"] else None
            if ref is not None and ref["mean"].get(m) is not None:
                ax.axhline(ref["mean"][m], ls="--", lw=1, color="grey", label=f"{ref['label']} ({dataset})")
        ax.set(xlabel=key, ylabel=f"test {m}", title=m)
        ax.legend(fontsize=7)
    fig.suptitle(f"{summary['name']}: sensitivity to {key}")
    return save(fig, path)


def _bar_figure(summary, dataset: str, cells: list[dict], path: Path) -> Path:
    from latticerec.experiment.plots import pyplot, save

    plt = pyplot()
    metrics = summary["metrics"]
    names = [c["label"] + ("" if c["point"] == "default" else f"\n{c['point']}") for c in cells]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.7 * len(cells) + 1.5) * len(metrics), 4.2),
                             squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], metrics, strict=True):
        means = [c["mean"].get(m) if c["mean"].get(m) is not None else math.nan for c in cells]
        errs = [_err(c["std"].get(m)) for c in cells]
        bars = ax.bar(range(len(cells)), means, yerr=errs, capsize=3,
                      color=["#999999" if c["reference"] is None else "#4c72b0" for c in cells])
        for bar, c, err in zip(bars, cells, errs, strict=True):
            if c["tests"].get(m, {}).get("significant"):
                ax.annotate("*", (bar.get_x() + bar.get_width() / 2, bar.get_height() + err),
                            ha="center", va="bottom")
        ax.set_xticks(range(len(cells)), names, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel=f"test {m}", title=m)
    fig.suptitle(f"{summary['name']} on {dataset} (mean ± std over seeds; * p < {summary['alpha']} vs "
                 "reference)")
    return save(fig, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_report(output: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the experiment in ``output`` (see module); returns ``report.md``."""
    from latticerec.experiment.results import summary_markdown
    from latticerec.io import atomic_write_bytes

    summary = read_summary(output)
    out = Path(out) if out else Path(output) / "report"
    figures = []
    groups = sensitivity_groups(summary)
    for key, cells in groups.items():
        figures.append(_sensitivity_figure(summary, key, cells, out / f"sensitivity-{_slug(key)}.png"))
    in_lines = {id(c) for cells in groups.values() for c in cells}
    dashed = {(c["reference"], c["dataset"]) for cells in groups.values() for c in cells}  # drawn already
    for dataset in dict.fromkeys(c["dataset"] for c in summary["cells"]):
        rest = [c for c in summary["cells"] if c["dataset"] == dataset and id(c) not in in_lines
                and (c["label"], dataset) not in dashed]
        if rest:
            figures.append(_bar_figure(summary, dataset, rest, out / f"bars-{_slug(dataset)}.png"))
    text = summary_markdown(summary) + "\n## Figures\n\n" + "".join(
        f"![{p.stem}]({p.name})\n\n" for p in figures)
    path = out / "report.md"
    atomic_write_bytes(path, text.encode())
    return path
