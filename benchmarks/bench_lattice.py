"""LATTICE (and MICRO) speed and memory on real Amazon interactions with random features of the
papers' shapes, optionally for several source trees in the same run (a before/after table).

For each (source tree, dataset, model), in its own process (so peak RSS is per case): seconds to
build the initial kNN graphs, seconds per training epoch (the learned-graph rebuild and the
optimiser included; median over the timed epochs, after one warm-up epoch), seconds of one full-
ranking evaluation of the validation split (median of 3), and the peak RSS. Baby: 7,050 items,
image 4096-d, text 1024-d; Clothing: 23,033 items. Batch 1024, as in the released code.
``--features real`` keeps a dataset's own features instead (TikTok: image and audio, 128-d each).

    python benchmarks/bench_lattice.py                               # baby + clothing, LATTICE
    python benchmarks/bench_lattice.py --datasets baby --models lattice micro --epochs 3
    python benchmarks/bench_lattice.py --datasets tiktok --features real --batch-size 2048
    git worktree add /tmp/before 29546d7                             # the code before issue 17 section 5
    python benchmarks/bench_lattice.py --datasets baby --models lattice micro \
        --tree before=/tmp/before/src --tree after=src               # same run, cases interleaved
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from paper_shapes import describe_features, optimiser, prepared  # benchmarks/paper_shapes.py

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SRC = Path(__file__).resolve().parents[1] / "src"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def measure(dataset: str, model: str, epochs: int, batch_size: int, features: str = "paper") -> dict:
    import torch

    from latticerec.graphs.knn import knn_graph
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.sampling import BPRSampler
    from latticerec.train.trainer import evaluate_split

    ds = prepared(SHARED / dataset, real=features == "real")
    t = time.perf_counter()
    for f in ds.features.values():
        knn_graph(torch.from_numpy(f), 10)
    initial_s = time.perf_counter() - t
    run = resolve_config(model, {"batch_size": str(batch_size)})
    torch.manual_seed(0)
    net = build_model(run, ds)
    opt = optimiser(list(net.parameters()), run.train.lr)
    sampler = BPRSampler(ds.train, seed=0)
    times = []
    for epoch in range(epochs + 1):  # epoch 0 warms up
        net.train()
        t = time.perf_counter()
        net.on_epoch_start(epoch)
        for users, pos, neg in sampler.epoch(epoch, batch_size):
            loss = sum(net.loss(torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    evals = []
    net.eval()
    for _ in range(3):
        t = time.perf_counter()
        with torch.no_grad():
            valid = evaluate_split(net, ds, "valid", run.train)
        evals.append(time.perf_counter() - t)
    return {"dataset": dataset, "model": model, "items": ds.n_items, "train": int(ds.train.nnz),
            "initial_graphs_s": round(initial_s, 2), "epoch_s_median": round(statistics.median(times[1:]), 2),
            "epoch_s": [round(x, 2) for x in times[1:]], "eval_s": round(statistics.median(evals), 2),
            "valid_recall@20": round(valid["recall@20"], 4), "peak_rss_gb": round(peak_rss_gb(), 2),
            "threads": torch.get_num_threads(),
            "features": describe_features(ds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["baby", "clothing"])
    p.add_argument("--models", nargs="+", default=["lattice"])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--features", choices=("paper", "real"), default="paper",
                   help="paper: random features of the papers' shapes; real: the dataset's own")
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=SRC",
                   help="a latticerec source tree to measure (repeatable; default: this one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.model, a.epochs, a.batch_size, a.features)))
        return 0
    trees = dict(t.split("=", 1) for t in a.tree) if a.tree else {"this": str(SRC)}
    results = []
    for name in a.datasets:
        if not (SHARED / name).exists():
            print(f"skip {name}: {SHARED / name} is absent")
            continue
        for model in a.models:
            for label, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
                out = subprocess.run([sys.executable, __file__, "--child", name, "--model", model,
                                      "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                                      "--features", a.features],
                                     capture_output=True, text=True, env=env)
                if out.returncode:
                    print(out.stderr[-2000:])
                    return out.returncode
                r = {"tree": label, **json.loads(out.stdout.strip().splitlines()[-1])}
                results.append(r)
                print(f"[{label}] {r['model']} on {name} ({r['items']} items, {r['train']} train pairs, "
                      f"features {r['features']}, batch {a.batch_size}, {r['threads']} threads): "
                      f"initial graphs {r['initial_graphs_s']} s, epoch {r['epoch_s_median']} s (median of "
                      f"{r['epoch_s']}), validation {r['eval_s']} s, peak RSS {r['peak_rss_gb']} GB",
                      flush=True)
    if results:
        print("\n| tree | dataset | model | epoch s | evaluation s | peak RSS GB |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['tree']} | {r['dataset']} | {r['model']} | {r['epoch_s_median']} | "
                  f"{r['eval_s']} | {r['peak_rss_gb']} |")
        by = {(r["tree"], r["dataset"], r["model"]): r for r in results}
        for (tree, dataset, model), r in by.items():
            lat = by.get((tree, dataset, "lattice"))
            if model != "lattice" and lat:
                print(f"[{tree}] {model} / lattice per epoch on {dataset}: "
                      f"{r['epoch_s_median'] / lat['epoch_s_median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
