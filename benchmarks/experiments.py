"""Run named experiment grids through the CLI over several seeds and tabulate mean ± std.

Each run is ``latticerec train ... --out RUNS/<name>-s<seed>``; runs that already have a
``metrics.json`` are reused, so the script can be interrupted and restarted. The table reports the
test metrics at the best-valid epoch (hyper-parameters are chosen on valid only).

    python benchmarks/experiments.py --data ../shared/data/tiktok --runs runs/exp \\
        --exp lightgcn="--model lightgcn" --exp lattice="--model lattice --backbone lightgcn" \\
        --seeds 2024 2025 2026 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

METRICS = ("recall@20", "precision@20", "ndcg@20")


def _stale(metrics: Path, patience: int | None) -> bool:
    """A finished run is redone when it stopped under another ``--patience`` (it is resumed)."""
    if not metrics.exists():
        return True
    return patience is not None and json.loads(metrics.read_text())["config"]["train"]["patience"] != patience


def run_one(name: str, args: str, data: str, seed: int, runs: Path, threads: int,
            patience: int | None = None) -> dict:
    out = runs / f"{name}-s{seed}"
    metrics = out / "metrics.json"
    if patience is not None:
        args = f"{args} --set patience={patience}"
    if _stale(metrics, patience):
        cmd = [sys.executable, "-m", "latticerec.cli", "train", *shlex.split(args), "--data", data,
               "--seed", str(seed), "--out", str(out), "--quiet"]
        if (out / "checkpoint.pt").exists():
            # an interrupted run continues from its last checkpoint; a run stopped by a smaller
            # patience continues too, exactly as if it had been trained with the new one
            cmd.append("--resume")
        else:  # nothing to continue (killed before its first evaluation, or a model with nothing
            cmd.append("--overwrite")  # to train): a run folder is only replaced when asked to
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train.log", "a") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{name} seed {seed} failed: see {out / 'train.log'}")
    return json.loads(metrics.read_text())


def table(results: dict[str, list[dict]]) -> str:
    head = "| run | " + " | ".join(f"test {m}" for m in METRICS) + " | valid recall@20 | epochs | s/run |"
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for name, res in results.items():
        cells = []
        for m in METRICS:
            v = np.array([r["test"][m] for r in res])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
        valid = np.array([r["valid"]["recall@20"] for r in res])
        epochs = np.mean([r["best_epoch"] for r in res])
        secs = np.mean([r["train_seconds"] for r in res])
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {valid.mean():.4f} | {epochs:.0f} | {secs:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--runs", default="runs/exp")
    p.add_argument("--exp", action="append", required=True, metavar="NAME=ARGS",
                   help="a named run: NAME='--model ... --set ...' (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs); "
                   "keep jobs x threads <= cores across everything running: oversubscribed OpenMP "
                   "threads make each epoch many times slower")
    p.add_argument("--patience", type=int, help="early-stopping patience of every run (added as "
                   "--set patience=N); finished runs with another patience are resumed under it")
    p.add_argument("--json", help="also write the raw results here")
    a = p.parse_args(argv)
    exps = dict(e.split("=", 1) for e in a.exp)
    runs = Path(a.runs)
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    jobs = [(n, args, s) for s in a.seeds for n, args in exps.items()]  # seed-major: every row early
    with ThreadPoolExecutor(a.jobs) as pool:
        done = list(pool.map(lambda j: run_one(j[0], j[1], a.data, j[2], runs, threads, a.patience), jobs))
    results: dict[str, list[dict]] = {n: [] for n in exps}
    for (n, _, _), r in zip(jobs, done, strict=True):
        results[n].append(r)
    print(f"{a.data}, seeds {a.seeds}: mean ± std (population std over seeds)")
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps({n: [{k: r[k] for k in ("valid", "test", "best_epoch",
                                                                    "train_seconds")} for r in rs]
                                            for n, rs in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
