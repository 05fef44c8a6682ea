"""Compare the released code's run with latticerec runs: validation Recall@20 at matching epochs, the
final test Recall/NDCG@20 and their relative gaps; writes the curves as CSV and plots them.

    python benchmarks/fidelity/compare.py --model lattice --original /tmp/fidelity/lattice_orig.log \\
        --run latticerec=/tmp/fidelity/runs/lattice-default [--run label=RUN_DIR ...]

``--original`` is the released code's standard output (LATTICE prints it; MICRO prints the same
lines through its logger): its validation lines ``Epoch E [...]: val==[...] / train==[...], recall=[R@10,
R@20], ..., ndcg=[N@10, N@20]`` (``E`` 0-based: ``E + 1`` epochs trained), its test lines and its
final result dict. A run killed before the end is read too (marked ``partial``); MICRO's partial
logs carry the test Recall@20 only. ``--run`` names a latticerec run folder (its ``metrics.json``).

Writes ``benchmarks/fidelity/results/<model>-<label>.csv`` (``epoch,valid_recall@20,valid_ndcg@20``,
``epoch`` = epochs trained) for every source and ``docs/fidelity-<model>.png`` (Agg), and prints a
markdown table. The relative gap is ``(latticerec - original) / original``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "fidelity" / "results"
_NUM = r"([-+0-9.eE]+|nan)"
_VAL = re.compile(r"Epoch (\d+) \[[^\]]*\]:\s+(?:val|train)==\[[^\]]*\], recall=\[" + _NUM + ", " + _NUM
                  + r"\].*ndcg=\[" + _NUM + ", " + _NUM + r"\]")
_TEST = re.compile(r"Epoch (\d+) \[[^\]]*\]: test==\[[^\]]*\], recall=\[" + _NUM + ", " + _NUM
                   + r"\].*ndcg=\[" + _NUM + ", " + _NUM + r"\]")
_TEST_RECALL = re.compile(r"Test_Recall@20: " + _NUM)
_FINAL = re.compile(r"\{'precision': array\(\[.*")


def _final_dict(line: str) -> dict | None:
    """The released code's last line, ``print(test_ret)``: a dict of numpy arrays at Ks = [10, 20]."""
    text = line[line.index("{"):].replace("array(", "(")
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return {"recall@20": float(obj["recall"][1]), "ndcg@20": float(obj["ndcg"][1])}


def parse_original(path: Path) -> dict:
    """Validation curve and test metrics from the released code's output."""
    curve, test, complete = [], {}, False
    for line in path.read_text(errors="replace").splitlines():
        if (m := _TEST.search(line)) is not None:
            test = {"recall@20": float(m[3]), "ndcg@20": float(m[5]), "epoch": int(m[1]) + 1}
        elif (m := _VAL.search(line)) is not None:
            curve.append({"epoch": int(m[1]) + 1, "valid_recall@20": float(m[3]),
                          "valid_ndcg@20": float(m[5])})
        elif (m := _TEST_RECALL.search(line)) is not None:
            test = {"recall@20": float(m[1]), "ndcg@20": math.nan,
                    "epoch": curve[-1]["epoch"] if curve else math.nan}
        elif _FINAL.search(line):
            final = _final_dict(line)
            if final is not None:
                test = {**test, **final}
                complete = True
    if not curve:
        raise SystemExit(f"{path}: no validation line of the released code found")
    return {"curve": curve, "test": test, "complete": complete}


def parse_latticerec(run_dir: Path) -> dict:
    """Validation curve and test metrics from a latticerec run folder's ``metrics.json``."""
    path = run_dir / "metrics.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing (is the run finished?)")
    metrics = json.loads(path.read_text())
    curve = [{"epoch": h["epoch"], "valid_recall@20": h["valid_recall@20"],
              "valid_ndcg@20": h.get("valid_ndcg@20", math.nan)}
             for h in metrics["history"] if "valid_recall@20" in h]
    test = {"recall@20": metrics["test"]["recall@20"], "ndcg@20": metrics["test"]["ndcg@20"],
            "epoch": metrics.get("best_epoch", math.nan)}
    return {"curve": curve, "test": test, "complete": True}


def write_csv(path: Path, curve: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "valid_recall@20", "valid_ndcg@20"])
        w.writeheader()
        w.writerows(curve)


def fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else "-"


def rel_gap(ours: float, ref: float) -> str:
    if not (math.isfinite(ours) and math.isfinite(ref)) or ref == 0:
        return "n/a"
    return f"{(ours - ref) / ref:+.1%}"


def table(model: str, original: dict, runs: dict[str, dict]) -> str:
    """Markdown: valid Recall@20 at the original's evaluated epochs, then final test metrics."""
    labels = list(runs)
    head = "| epoch | original | " + " | ".join(f"{k} | gap" for k in labels) + " |"
    rows = [head, "|" + "---|" * (2 + 2 * len(labels))]
    by_epoch = {k: {p["epoch"]: p["valid_recall@20"] for p in r["curve"]} for k, r in runs.items()}
    for point in original["curve"]:
        e, ref = point["epoch"], point["valid_recall@20"]
        cells = []
        for k in labels:
            v = by_epoch[k].get(e, math.nan)
            cells += [fmt(v), rel_gap(v, ref)]
        rows.append(f"| {e} | {ref:.4f} | " + " | ".join(cells) + " |")
    status = "" if original["complete"] else " (original run partial)"
    rows.append("")
    rows.append(f"Final test ({model}{status}; each at its best validation epoch):")
    rows.append("")
    rows.append("| source | best epoch | test Recall@20 | gap | test NDCG@20 | gap |")
    rows.append("|---|---|---|---|---|---|")
    ot = original["test"]
    rows.append(f"| original | {ot.get('epoch', '-')} | {fmt(ot.get('recall@20', math.nan))} |  | "
                f"{fmt(ot.get('ndcg@20', math.nan))} |  |")
    for k in labels:
        t = runs[k]["test"]
        rows.append(f"| {k} | {t['epoch']} | {fmt(t['recall@20'])} | "
                    f"{rel_gap(t['recall@20'], ot.get('recall@20', math.nan))} | {fmt(t['ndcg@20'])} | "
                    f"{rel_gap(t['ndcg@20'], ot.get('ndcg@20', math.nan))} |")
    return "\n".join(rows)


def plot(path: Path, model: str, original: dict, runs: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, src, style in [("original (released code)", original, "o-"),
                              *((k, r, ".-") for k, r in runs.items())]:
        xs = [p["epoch"] for p in src["curve"]]
        ys = [p["valid_recall@20"] for p in src["curve"]]
        ax.plot(xs, ys, style, label=label, markersize=5 if style == "o-" else 3)
    save_curves(fig, ax, f"{model.upper()} on TikTok: released code vs latticerec", path)


def save_curves(fig, ax, title: str, path: Path) -> None:
    """Label the validation-curve axes, write the figure as PNG at ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("epochs trained")
    ax.set_ylabel("validation Recall@20")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="lattice or micro (names the outputs)")
    p.add_argument("--original", type=Path, required=True, help="the released code's output log")
    p.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR",
                   help="a latticerec run folder (repeatable)")
    p.add_argument("--plot", type=Path, default=None, help="default docs/fidelity-<model>.png")
    args = p.parse_args(argv)
    original = parse_original(args.original)
    runs = {}
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run {spec!r}: expected LABEL=RUN_DIR")
        runs[label] = parse_latticerec(Path(folder))
    write_csv(RESULTS / f"{args.model}-original.csv", original["curve"])
    for label, r in runs.items():
        write_csv(RESULTS / f"{args.model}-{label}.csv", r["curve"])
    plot(args.plot or ROOT / "docs" / f"fidelity-{args.model}.png", args.model, original, runs)
    print(table(args.model, original, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
