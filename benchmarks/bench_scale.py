"""Training at catalogue scale on one machine: LATTICE-LightGCN (and LightGCN, MICRO, MM-GEF) on the
synthetic generator's data at 100k and 1M items (2 users per item, 10 interactions per item; image
512-d + text 384-d), through the product's own path (``load_dataset``, ``build_model``, ``fit``).

Each case runs in its own process (peak RSS is per case) and prints: data load seconds, model build
seconds (the initial kNN graphs of both modalities, found by ``knn_backend``), seconds of each
training epoch (the learned graphs re-found every epoch, the optimiser), seconds of the validation
and test evaluations (a seeded sample of ``--eval-users`` users, stated), peak RSS, and test
Recall/NDCG@20 after the epochs. The data are generated once into ``--work`` (``latticerec data
synth``) and reused.

    python benchmarks/bench_scale.py --sizes 100k --models lattice lightgcn micro mmgef --epochs 2
    python benchmarks/bench_scale.py --sizes 1M --models lattice lightgcn --epochs 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
DIMS = "image=512,text=384"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def generate(work: Path, size: str) -> Path:
    """The synthetic dataset of ``size`` items (2 users and 10 interactions per item), made once."""
    out = work / f"synth-{size}"
    if not (out / "synth.inter").exists():
        n = SIZES[size]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "latticerec", "data", "synth", "--users", str(2 * n),
                        "--items", str(n), "--interactions", str(10 * n), "--dims", DIMS, "--out", str(out)],
                       check=True)
        print(f"generated {out} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def measure(data: str, model: str, epochs: int, batch_size: int, eval_users: int, options: list[str]) -> dict:
    import torch

    from latticerec.config import parse_overrides
    from latticerec.data.readers import load_dataset
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.trainer import fit

    def say(msg):  # phases as they end, on stderr: a run stopped early still tells where it was
        print(f"[{model}] {msg}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    ds = load_dataset(data)
    load_s = time.perf_counter() - t
    say(f"data loaded in {load_s:.1f} s: {ds.n_items} items, {ds.n_users} users, {ds.train.nnz} train pairs; "
        f"peak RSS {peak_rss_gb():.2f} GB")
    run = resolve_config(model, {"batch_size": str(batch_size), "epochs": str(epochs),
                                 "eval_every": str(epochs), "eval_users": str(eval_users), "seed": "0",
                                 **parse_overrides(options)})
    t = time.perf_counter()
    net = build_model(run, ds)
    build_s = time.perf_counter() - t
    rss_built = peak_rss_gb()
    say(f"model built (initial kNN graphs) in {build_s:.1f} s; peak RSS {rss_built:.2f} GB")
    t = time.perf_counter()
    result = fit(net, ds, run.train, progress=False,
                 log=lambda m: say(f"{m}; peak RSS {peak_rss_gb():.2f} GB"))
    fit_s = time.perf_counter() - t
    last = result["history"][-1]
    epoch_s = [h["seconds"] for h in result["history"]]
    eval_s = last.get("eval_seconds")
    test_s = fit_s - sum(epoch_s) - sum(h.get("eval_seconds", 0) for h in result["history"])
    return {"model": model, "items": ds.n_items, "users": ds.n_users, "train": int(ds.train.nnz),
            "batch_size": batch_size, "threads": torch.get_num_threads(), "load_s": round(load_s, 1),
            "build_s": round(build_s, 1), "epoch_s": [round(x, 1) for x in epoch_s],
            "valid_eval_s": eval_s, "test_eval_s": round(test_s, 1), "eval_users": eval_users,
            "peak_rss_gb": round(peak_rss_gb(), 2), "rss_after_build_gb": round(rss_built, 2),
            "recall@20": round(result["test"]["recall@20"], 4),
            "ndcg@20": round(result["test"]["ndcg@20"], 4), "options": options}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["100k"], choices=sorted(SIZES))
    p.add_argument("--models", nargs="+", default=["lattice", "lightgcn"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=65536,
                   help="BPR triples per step (default 65536: a step's cost is the full propagation, so "
                        "large batches make an epoch few steps)")
    p.add_argument("--eval-users", type=int, default=20000, help="users ranked per split (0: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="option for every case (repeatable), e.g. knn_backend=faiss-ivf")
    p.add_argument("--work", default="/tmp/latticerec-bench-scale", help="where the data are generated")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.model, a.epochs, a.batch_size, a.eval_users, a.set)))
        return 0
    rows = []
    for size in a.sizes:
        data = generate(Path(a.work), size)
        for model in a.models:
            cmd = [sys.executable, __file__, "--child", str(data), "--model", model,
                   "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                   "--eval-users", str(a.eval_users)]
            for s in a.set:
                cmd += ["--set", s]
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr: the phases, live
            if out.returncode:
                print(f"{model} at {size}: failed (exit {out.returncode})", flush=True)
                continue
            r = {"size": size, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\n| items | users | train pairs | model | load s | build s | s / epoch | valid eval s "
          "| test eval + wrap-up s | peak RSS GB | Recall@20 | NDCG@20 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['users']:,} | {r['train']:,} | {r['model']} | {r['load_s']} | "
              f"{r['build_s']} | {' / '.join(map(str, r['epoch_s']))} | {r['valid_eval_s']} | "
              f"{r['test_eval_s']} | "
              f"{r['peak_rss_gb']} | {r['recall@20']} | {r['ndcg@20']} |")
    if rows:
        r = rows[0]
        print(f"\nbatch {r['batch_size']}, {r['threads']} threads, metrics over a seeded sample of "
              f"{r['eval_users'] or 'all'} users per split; options: {' '.join(a.set) or 'defaults'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
