"""LATTICE speed and memory on real Amazon interactions with random features of the papers' shapes.

For each dataset (run in its own process, so peak RSS is per dataset): seconds to build the initial
kNN graphs, seconds per training epoch (the learned-graph rebuild included), median over epochs, and
the process's peak RSS. Baby: 7,050 items, image 4096-d, text 1024-d; Clothing: 23,033 items.

    python benchmarks/bench_lattice.py                 # baby and clothing, 3 epochs each
    python benchmarks/bench_lattice.py --datasets baby --epochs 5 --model micro
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAPES = {"image": 4096, "text": 1024}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def measure(dataset: str, model: str, epochs: int, batch_size: int) -> dict:
    import numpy as np
    import torch

    from latticerec.data.readers import load_dataset
    from latticerec.graphs.knn import knn_graph
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.sampling import BPRSampler

    ds = load_dataset(SHARED / dataset)
    rng = np.random.default_rng(0)
    feats = {m: rng.standard_normal((ds.n_items, d), dtype=np.float32) for m, d in SHAPES.items()}
    ds = dataclasses.replace(ds, features=feats, item_graphs={})
    t = time.perf_counter()
    for f in feats.values():
        knn_graph(torch.from_numpy(f), 10)
    initial_s = time.perf_counter() - t
    run = resolve_config(model, {"batch_size": str(batch_size)})
    net = build_model(run, ds)
    opt = torch.optim.Adam(net.parameters(), lr=run.train.lr)
    sampler = BPRSampler(ds.train, seed=0)
    times = []
    net.train()
    for epoch in range(epochs):
        t = time.perf_counter()
        net.on_epoch_start(epoch)
        for users, pos, neg in sampler.epoch(epoch, batch_size):
            loss = sum(net.loss(torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return {"dataset": dataset, "model": model, "items": ds.n_items, "train": int(ds.train.nnz),
            "initial_graphs_s": round(initial_s, 2), "epoch_s_median": round(statistics.median(times), 2),
            "epoch_s": [round(x, 2) for x in times], "peak_rss_gb": round(peak_rss_gb(), 2),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["baby", "clothing"])
    p.add_argument("--model", default="lattice")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.model, a.epochs, a.batch_size)))
        return 0
    for name in a.datasets:
        if not (SHARED / name).exists():
            print(f"skip {name}: {SHARED / name} is absent")
            continue
        out = subprocess.run([sys.executable, __file__, "--child", name, "--model", a.model,
                              "--epochs", str(a.epochs), "--batch-size", str(a.batch_size)],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['model']} on {name} ({r['items']} items, {r['train']} train interactions, "
              f"random image 4096-d + text 1024-d, {r['threads']} threads): initial graphs "
              f"{r['initial_graphs_s']} s, epoch {r['epoch_s_median']} s (median of {r['epoch_s']}), "
              f"peak RSS {r['peak_rss_gb']} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
