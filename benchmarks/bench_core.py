"""Seconds per training epoch and per full evaluation (valid split) for a CF backbone, median of
several runs, on real interaction data.

    python benchmarks/bench_core.py                      # LightGCN on TikTok and Baby
    python benchmarks/bench_core.py --model mf --repeats 5 --data ../shared/data/tiktok
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from latticerec.data.readers import load_dataset
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import evaluate_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def bench(model_name: str, data: str, repeats: int, overrides: dict) -> dict:
    dataset = load_dataset(data)
    run = resolve_config(model_name, overrides)
    model = build_model(run, dataset)
    opt = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    sampler = BPRSampler(dataset.train, seed=0)
    epoch_s, eval_s = [], []
    for rep in range(repeats):
        t = time.perf_counter()
        model.train()
        model.on_epoch_start(rep)
        for u, p, n in sampler.epoch(rep, run.train.batch_size):
            loss = sum(model.loss(torch.as_tensor(u), torch.as_tensor(p), torch.as_tensor(n)).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluate_split(model, dataset, "valid", run.train)
        eval_s.append(time.perf_counter() - t)
    return {"model": model_name, "data": dataset.name, "users": dataset.n_users,
            "items": dataset.n_items, "train": dataset.train.nnz,
            "batches": sampler.n_batches(run.train.batch_size),
            "epoch_s": statistics.median(epoch_s), "eval_s": statistics.median(eval_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lightgcn")
    ap.add_argument("--data", nargs="+", default=[str(SHARED / "tiktok"), str(SHARED / "baby")])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<10}{'data':<10}{'users':>8}{'items':>8}{'train':>9}{'batches':>8}"
          f"{'s/epoch':>10}{'s/eval':>9}")
    for data in args.data:
        r = bench(args.model, data, args.repeats, overrides)
        print(f"{r['model']:<10}{r['data']:<10}{r['users']:>8}{r['items']:>8}{r['train']:>9}"
              f"{r['batches']:>8}{r['epoch_s']:>10.3f}{r['eval_s']:>9.3f}")


if __name__ == "__main__":
    main()
