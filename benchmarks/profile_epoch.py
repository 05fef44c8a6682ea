"""Where one training epoch's time goes: torch.profiler over LATTICE or MICRO epochs (LightGCN
backbone) on the real Amazon Baby interactions with random features of the papers' shapes (image
7050x4096, text 7050x1024), plus the evaluation of the validation split, grouped into the phases of a
step. Prints the profiler's top operators by self CPU time and the wall-clock seconds of each phase
(sampling, forward, backward, optimiser step, learned-graph rebuild, evaluation).

    python benchmarks/profile_epoch.py --model lattice --batch-size 1024 --threads 2
    python benchmarks/profile_epoch.py --model micro --batch-size 1024 --top 25
    python benchmarks/profile_epoch.py --data ../shared/data/tiktok --features real --batch-size 2048
    python benchmarks/profile_epoch.py --model micro --by-shape     # operators per input shape
    PYTHONPATH=/tmp/before/src python benchmarks/profile_epoch.py      # another source tree
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from paper_shapes import describe_features, optimiser, prepared  # benchmarks/paper_shapes.py

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "baby"))
    p.add_argument("--model", default="lattice")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2, help="epochs timed (after one warm-up epoch)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--top", type=int, default=15, help="operators listed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option")
    p.add_argument("--by-shape", action="store_true",
                   help="list operators per input shape (which products and tensors the time goes to)")
    p.add_argument("--features", choices=("paper", "real"), default="paper",
                   help="paper: random features of the papers' shapes; real: the dataset's own")
    a = p.parse_args(argv)
    ds = prepared(a.data, a.threads, real=a.features == "real")
    if ds is None:
        return 0

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from latticerec.config import parse_overrides
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.sampling import BPRSampler
    from latticerec.train.trainer import evaluate_split

    run = resolve_config(a.model, {"batch_size": str(a.batch_size), **parse_overrides(a.set)})
    torch.manual_seed(0)
    net = build_model(run, ds)
    opt = optimiser(list(net.parameters()), run.train.lr)
    sampler = BPRSampler(ds.train, seed=0)
    phases: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(name, fn):
        t = time.perf_counter()
        with record_function(name):
            out = fn()
        phases[name] += time.perf_counter() - t
        calls[name] += 1
        return out

    def epoch(e: int):
        net.train()
        net.on_epoch_start(e)
        batches = iter(timed("sample", lambda: list(sampler.epoch(e, a.batch_size))))
        for i, (users, pos, neg) in enumerate(batches):
            step = "forward (graph rebuild)" if i == 0 else "forward"
            b = [torch.as_tensor(x) for x in (users, pos, neg)]
            loss = timed(step, lambda b=b: sum(net.loss(*b).values()))
            opt.zero_grad(set_to_none=True)
            timed("backward (graph rebuild)" if i == 0 else "backward", loss.backward)
            timed("optimiser", opt.step)

    def evaluate():
        net.eval()
        with torch.no_grad():
            return evaluate_split(net, ds, "valid", run.train)

    epoch(0)  # warm-up: allocator, lazy initialisations
    evaluate()
    phases.clear()
    calls.clear()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.by_shape) as prof:
        t = time.perf_counter()
        for e in range(1, 1 + a.epochs):
            epoch(e)
        train_s = (time.perf_counter() - t) / a.epochs
        t = time.perf_counter()
        timed("evaluate", evaluate)
        eval_s = time.perf_counter() - t
    print(f"{a.model} on {Path(a.data).name} ({ds.n_items} items, {ds.train.nnz} train pairs, {a.features} "
          f"features: {describe_features(ds)}), batch {a.batch_size}, {torch.get_num_threads()} threads: "
          f"epoch {train_s:.2f} s (mean of {a.epochs}), validation {eval_s:.2f} s")
    print("phase seconds per epoch:")
    for name, s in sorted(phases.items(), key=lambda kv: -kv[1]):
        per = s if name == "evaluate" else s / a.epochs
        print(f"  {name:26s} {per:7.3f}")
    print("per step without the graph rebuild: "
          + ", ".join(f"{k} {1000 * phases[k] / calls[k]:.1f} ms (mean of {calls[k]})"
                      for k in ("forward", "backward") if calls[k]))
    print(prof.key_averages(group_by_input_shape=a.by_shape).table(
        sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=32, max_shapes_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
