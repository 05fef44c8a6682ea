"""Resident memory phase by phase of LATTICE-style training on a large catalogue: data load, model
build (the initial kNN graphs, one call of each kNN step timed and measured), a few BPR steps (the
first one re-learns the graphs from the projections and back-propagates through them) and the
ranking of a block of users. Prints one line per phase: seconds since start, RSS at its end and
the highest RSS sampled inside it (a thread reads ``/proc/self/status`` every 0.1 s; Linux only).

    python benchmarks/memory_phases.py --data /tmp/latticerec-bench-scale/synth-1M \\
        --cache /tmp/memory-phases-cache --hnsw-m 8 --hnsw-efc 16

``--hnsw-m``/``--hnsw-efc`` override the HNSW construction parameters of every search (cheaper
graphs build faster; the memory of the phases other than the index itself does not depend on them,
the index's links take ``2 M x 4`` bytes per item on its base layer). The data come from
``latticerec data synth`` (``benchmarks/bench_scale.py`` makes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import threading
import time


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 2**20
    return 0.0


class Phases:
    """Prints each phase's end time, RSS and the peak RSS sampled since the previous mark."""

    def __init__(self):
        self.t0, self.peak = time.perf_counter(), 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.peak = max(self.peak, rss_gb())
            time.sleep(0.1)

    def mark(self, what: str) -> None:
        print(f"{time.perf_counter() - self.t0:8.1f} s  RSS {rss_gb():6.2f} GB  peak {self.peak:6.2f} GB  "
              f"{what}", flush=True)
        self.peak = rss_gb()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="lattice")
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eval-users", type=int, default=4096)
    p.add_argument("--cache", help="kNN graph cache folder (a second run skips the initial graphs)")
    p.add_argument("--hnsw-m", type=int)
    p.add_argument("--hnsw-efc", type=int)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    import latticerec.graphs.ann as ann
    import latticerec.graphs.knn as knn
    from latticerec.data.readers import load_dataset
    from latticerec.evaluate.ranking import evaluate_ranking
    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.train.build import build_model, resolve_config

    torch.set_num_threads(a.threads)
    phases = Phases()
    if a.hnsw_m or a.hnsw_efc:
        index = ann._index
        changes = {k: v for k, v in (("hnsw_m", a.hnsw_m), ("hnsw_efc", a.hnsw_efc)) if v}
        ann._index = lambda x, method, search, k: index(x, method, dataclasses.replace(search, **changes), k)
    def timed(f, name):
        def call(*args, **kwargs):
            phases.mark(f"(before {name})")
            out = f(*args, **kwargs)
            phases.mark(name)
            return out
        return call

    for name in ("knn_indices", "knn_values"):  # each kNN step is a phase of its own
        setattr(knn, name, timed(getattr(knn, name), name))

    ds = load_dataset(a.data)
    phases.mark(f"data loaded: {ds.n_items} items, {ds.n_users} users, {ds.train.nnz} train pairs")
    run = resolve_config(a.model, {"batch_size": a.batch_size})
    model = build_model(run, ds, torch.device("cpu"), KnnGraphCache(a.cache))
    phases.mark("model built (initial graphs)")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    coo = ds.train.tocoo()
    rows, cols = torch.as_tensor(coo.row).long(), torch.as_tensor(coo.col).long()
    model.train()
    model.on_epoch_start(0)
    for step in range(a.steps):
        t = time.perf_counter()
        idx = torch.randint(0, coo.nnz, (a.batch_size,), generator=gen)
        neg = torch.randint(0, ds.n_items, (a.batch_size,), generator=gen)
        opt.zero_grad(set_to_none=True)
        sum(model.loss(rows[idx], cols[idx], neg).values()).backward()
        opt.step()
        relearned = ", graphs re-learned" if step == 0 else ""
        phases.mark(f"step {step} ({time.perf_counter() - t:.1f} s{relearned})")
    users, items = model.full_representations()
    t = time.perf_counter()
    evaluate_ranking(users, items, ds.valid, exclude=[ds.train], topk=(20,), block=slice(0, a.eval_users))
    phases.mark(f"ranking of {a.eval_users} users against all items ({time.perf_counter() - t:.1f} s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of the process (ru_maxrss): {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
