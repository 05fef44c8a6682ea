"""Data-parallel training, 1 vs N processes: accuracy and seconds per epoch from the CLI's
``metrics.json`` (docs/distributed.md). Each setting is one ``latticerec train`` run, the same model,
data, seed and epochs; prints one JSON line per setting.

    OMP_NUM_THREADS is set per setting (threads per process); on this 2-core machine:
    python benchmarks/bench_ddp.py --data ../shared/data/tiktok --epochs 30 --seed 0 --out /tmp/ddp
    python benchmarks/bench_ddp.py --settings 1x1,1x2,2x1     # processes x threads (the default)
    python benchmarks/bench_ddp.py --breakdown                # where a step's time goes (1 thread)

Seconds per epoch is the mean of the history's ``seconds`` (training only, rank 0, which waits for
every all-reduce, so it is the run's time); evaluation seconds likewise; ``wall_s`` the whole
command (start-up, data load, graph build, training, evaluation).

``--breakdown`` times, in one thread, a training step on the whole global batch and on half of it
(what each of 2 ranks computes: the full-graph propagation is the same, only the per-triple part
halves), and an ``all_reduce`` of the model's gradients between 2 gloo processes over loopback.
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


def _median_step_s(model, optimizer, sampler, batch_size: int, steps: int) -> float:
    import torch

    model.train()
    model.on_epoch_start(0)
    times = []
    for i, (u, p, n) in enumerate(sampler.epoch(0, batch_size)):
        if i > steps:
            break
        start = time.perf_counter()
        loss = sum(model.loss(torch.as_tensor(u), torch.as_tensor(p), torch.as_tensor(n)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i > 0:  # the first batch of an epoch also rebuilds the learned item graphs
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _allreduce_rank(rank: int, port: int, numel: int, repeats: int, result) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    flat = torch.randn(numel)
    dist.all_reduce(flat)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - start)
    if rank == 0:
        result.put(statistics.median(times))
    dist.destroy_process_group()


def breakdown(args) -> None:
    import socket

    import torch
    import torch.multiprocessing as mp

    from latticerec.data.readers import load_dataset
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.sampling import BPRSampler

    torch.set_num_threads(1)
    dataset = load_dataset(args.data)
    run = resolve_config(args.model, {"seed": args.seed})
    model = build_model(run, dataset, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    sampler = BPRSampler(dataset.train, seed=args.seed)
    batch = run.train.batch_size
    full = _median_step_s(model, optimizer, sampler, batch, 8)
    half = _median_step_s(model, optimizer, sampler, (batch + 1) // 2, 8)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    result = ctx.SimpleQueue()
    procs = [ctx.Process(target=_allreduce_rank, args=(r, port, numel, 20, result)) for r in range(2)]
    for proc in procs:
        proc.start()
    allreduce = result.get()
    for proc in procs:
        proc.join()
    print(json.dumps({"model": args.model, "data": dataset.name, "batch_size": batch,
                      "batches_per_epoch": sampler.n_batches(batch),
                      "step_s_full_batch": round(full, 4), "step_s_half_batch": round(half, 4),
                      "gradient_floats": numel, "allreduce_s_2_gloo_ranks": round(allreduce, 4)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "tiktok"))
    parser.add_argument("--model", default="lattice")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="1x1,1x2,2x1", help="processes x threads, comma-separated")
    parser.add_argument("--out", default="/tmp/bench-ddp")
    parser.add_argument("--breakdown", action="store_true",
                        help="time a step on the whole and on half a batch, and a gradient all_reduce")
    parser.add_argument("extra", nargs="*", help="more 'latticerec train' options, after --")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: absent (the real data lives in ../shared/data)")
    if args.breakdown:
        breakdown(args)
        return
    for setting in args.settings.split(","):
        processes, threads = (int(x) for x in setting.split("x"))
        print(json.dumps(run_setting(args, processes, threads)), flush=True)


if __name__ == "__main__":
    main()
