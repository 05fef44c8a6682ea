"""The released code against latticerec over several seeds: per seed and on the mean over seeds, the
validation Recall@20 curves at the epochs both sides trained and the final test Recall/NDCG@20,
with relative gaps ``(latticerec - original) / original``; plots the seed-mean curves.

    python benchmarks/fidelity/seeds.py --model lattice \\
        --pair 0=runs/fid2/lattice_orig.log,runs/fid2/lattice-released-30 \\
        --pair 1=runs/fid3/lattice_orig_s1.log,runs/fid3/lattice-released-30-s1 ...

Each ``--pair SEED=ORIGINAL_LOG,RUN_DIR``: the released code's output for that seed
(``benchmarks/fidelity/run_original.sh ... SEED``) and the latticerec run folder of the same seed.
The curves are compared at the epochs every original run evaluated (an original stops itself
early; the common range is up to the shortest); the tests are each side's own best validation epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

# benchmarks/fidelity/compare.py
from compare import ROOT, fmt, parse_latticerec, parse_original, rel_gap, save_curves


def _curve(src: dict) -> dict[int, float]:
    return {p["epoch"]: p["valid_recall@20"] for p in src["curve"]}


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return fmt(values[0]) if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(model: str, pairs: dict[int, tuple[dict, dict]]) -> str:
    seeds = sorted(pairs)
    common = set.intersection(*(set(_curve(o)) & set(_curve(r)) for o, r in pairs.values()))
    epochs = sorted(common)
    lines = [f"Validation Recall@20, mean over seeds {', '.join(map(str, seeds))} "
             f"(epochs every run of both sides evaluated: {epochs[0]}-{epochs[-1]}):", "",
             "| epochs | original | latticerec | gap |", "|---|---|---|---|"]
    gaps = []
    for e in epochs:
        o = statistics.mean(_curve(pairs[s][0])[e] for s in seeds)
        r = statistics.mean(_curve(pairs[s][1])[e] for s in seeds)
        gaps.append((r - o) / o)
        lines.append(f"| {e} | {o:.4f} | {r:.4f} | {rel_gap(r, o)} |")
    per_seed = []
    for s in seeds:
        o, r = _curve(pairs[s][0]), _curve(pairs[s][1])
        per_seed.append(statistics.mean((r[e] - o[e]) / o[e] for e in epochs))
    lines += ["", f"Gap of the seed-mean curves over epochs {epochs[0]}-{epochs[-1]}: mean "
              f"{statistics.mean(gaps):+.1%}, median {statistics.median(gaps):+.1%}; per seed (mean gap "
              "over the same epochs): " + ", ".join(f"seed {s} {g:+.1%}" for s, g in zip(seeds, per_seed,
                                                                                         strict=True)), ""]
    lines += ["Final test, each run at its own best validation epoch:", "",
              "| seed | original best epoch | original Recall@20 | latticerec best epoch | latticerec "
              "Recall@20 | gap | original NDCG@20 | latticerec NDCG@20 | gap |", "|---" * 9 + "|"]
    cols = {"or": [], "lr": [], "on": [], "ln": []}
    for s in seeds:
        ot, lt = pairs[s][0]["test"], pairs[s][1]["test"]
        cols["or"].append(ot["recall@20"])
        cols["lr"].append(lt["recall@20"])
        cols["on"].append(ot["ndcg@20"])
        cols["ln"].append(lt["ndcg@20"])
        lines.append(f"| {s} | {ot.get('epoch', '-')} | {fmt(ot['recall@20'])} | {lt['epoch']} | "
                     f"{fmt(lt['recall@20'])} | {rel_gap(lt['recall@20'], ot['recall@20'])} | "
                     f"{fmt(ot['ndcg@20'])} | {fmt(lt['ndcg@20'])} | "
                     f"{rel_gap(lt['ndcg@20'], ot['ndcg@20'])} |")
    means = {k: statistics.mean(v) for k, v in cols.items()}
    lines.append(f"| mean ± std | | {_mean_std(cols['or'])} | | {_mean_std(cols['lr'])} | "
                 f"{rel_gap(means['lr'], means['or'])} | {_mean_std(cols['on'])} | {_mean_std(cols['ln'])} | "
                 f"{rel_gap(means['ln'], means['on'])} |")
    return "\n".join(lines)


def plot(path: Path, model: str, pairs: dict[int, tuple[dict, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sides = (("original (released code)", 0, "C0"), ("latticerec protocol=released", 1, "C1"))
    for side, idx, colour in sides:
        curves = [_curve(pairs[s][idx]) for s in sorted(pairs)]
        for c in curves:
            ax.plot(sorted(c), [c[e] for e in sorted(c)], "-", color=colour, alpha=0.25, linewidth=1)
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(epochs, [statistics.mean(c[e] for c in curves) for e in epochs], "o-", color=colour,
                markersize=3, label=f"{side}, mean of {len(curves)} seeds")
    save_curves(fig, ax, f"{model.upper()} on TikTok: released code vs latticerec, per seed and mean", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="lattice or micro (names the plot)")
    p.add_argument("--pair", action="append", required=True, metavar="SEED=ORIGINAL_LOG,RUN_DIR")
    p.add_argument("--plot", type=Path, default=None, help="default docs/fidelity-<model>-seeds.png")
    args = p.parse_args(argv)
    pairs = {}
    for spec in args.pair:
        seed, sep, rest = spec.partition("=")
        log, comma, run = rest.partition(",")
        if not (sep and comma and seed.isdigit()):
            raise SystemExit(f"--pair {spec!r}: expected SEED=ORIGINAL_LOG,RUN_DIR")
        pairs[int(seed)] = (parse_original(Path(log)), parse_latticerec(Path(run)))
    plot(args.plot or ROOT / "docs" / f"fidelity-{args.model}-seeds.png", args.model, pairs)
    print(report(args.model, pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
