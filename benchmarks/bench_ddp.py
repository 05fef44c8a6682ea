"""Data-parallel training, 1 vs N processes: accuracy and seconds per epoch from the CLI's
``metrics.json`` (docs/distributed.md). Each setting is one ``latticerec train`` run, the same model,
data, seed and epochs; prints one JSON line per setting.

    OMP_NUM_THREADS is set per setting (threads per process); on this 2-core machine:
    python benchmarks/bench_ddp.py --data ../shared/data/tiktok --epochs 30 --seed 0 --out /tmp/ddp
    python benchmarks/bench_ddp.py --settings 1x1,1x2,2x1     # processes x threads (the default)

Seconds per epoch is the mean of the history's ``seconds`` (training only, rank 0, which waits for
every all-reduce, so it is the run's time); evaluation seconds likewise; ``wall_s`` the whole
command (start-up, data load, graph build, training, evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_setting(args, processes: int, threads: int) -> dict:
    out = Path(args.out) / f"{args.model}-{processes}p{threads}t"
    cmd = [sys.executable, "-m", "latticerec", "train", "--model", args.model, "--data", args.data,
           "--seed", str(args.seed), "--epochs", str(args.epochs), "--quiet", "--overwrite",
           "--out", str(out), "--cache-dir", str(Path(args.out) / "cache"), *args.extra]
    if processes > 1:
        cmd += ["--nproc", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    evals = [h["eval_seconds"] for h in history if "eval_seconds" in h]
    return {"model": args.model, "data": Path(args.data).name, "processes": processes,
            "threads_per_process": threads, "epochs": metrics["epochs_run"],
            "best_epoch": metrics["best_epoch"],
            "epoch_s": round(statistics.mean(h["seconds"] for h in history), 3),
            "eval_s": round(statistics.mean(evals), 3) if evals else None,
            "train_s": metrics["train_seconds"], "wall_s": round(wall, 1),
            "test_recall@20": round(metrics["test"]["recall@20"], 5),
            "test_ndcg@20": round(metrics["test"]["ndcg@20"], 5),
            "valid_recall@20": round(metrics["valid"]["recall@20"], 5),
            "command": f"OMP_NUM_THREADS={threads} python " + " ".join(cmd[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "tiktok"))
    parser.add_argument("--model", default="lattice")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="1x1,1x2,2x1", help="processes x threads, comma-separated")
    parser.add_argument("--out", default="/tmp/bench-ddp")
    parser.add_argument("extra", nargs="*", help="more 'latticerec train' options, after --")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: absent (the real data lives in ../shared/data)")
    for setting in args.settings.split(","):
        processes, threads = (int(x) for x in setting.split("x"))
        print(json.dumps(run_setting(args, processes, threads)), flush=True)


if __name__ == "__main__":
    main()
