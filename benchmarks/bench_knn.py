"""kNN item-graph backends at scale: build time, peak memory and recall@k against exact.

For each size (items), dimension and ``knn_backend`` one child process generates seeded clustered
float32 features, builds the graph's neighbour lists with ``graphs.knn.knn_indices`` (what
``knn_graph`` / ``knn_rows`` run; values are computed exactly afterwards, the same for all
backends, so they are not part of the comparison) and reports:

* ``build s``    wall time of the neighbour search over all N items (index build + N queries);
* ``peak RSS``   the child's ``ru_maxrss`` (whole process: Python, torch, the features), and
  ``+build``: peak minus the resident memory just before the build (what the search added);
* ``recall@k``   mean ``|found ∩ exact| / k`` over a seeded sample of rows (``--sample``; all rows
  when N is at most the sample), the exact lists computed for those rows only.

``exact`` above ``--exact-max`` items is not run in full: ``--exact-blocks`` row blocks of the
chunked exact search are timed and the time is extrapolated linearly to N rows (the cost per row is
the same for every row: a ``1 x N`` product and a top-k); the table says so. ``faiss-flat`` (also
exact, ``O(N² d)``) is skipped above ``--exact-max``.

The data: ``C = round(√N)`` clusters; item ``i`` of cluster ``c`` is ``μ_c + z_i W + 0.2 ε_i`` with
``μ_c ~ N(0, I_d)``, a shared ``32 x d`` map ``W ~ N(0, 0.5/32)``, ``z_i ~ N(0, I_32)`` and noise
``ε_i ~ N(0, I_d)`` (``--noise`` sets the 0.2): clustered and of low intrinsic dimension, as content
embeddings are.

    python benchmarks/bench_knn.py --sizes 10k,100k --dims 384,512 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")
LATENT = 32


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def clustered(n: int, d: int, seed: int = 0, noise: float = 0.2, block: int = 65_536):
    """``(n, d)`` float32 features of the module docstring, generated in row blocks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = max(2, round(n ** 0.5))
    centres = rng.standard_normal((c, d), dtype=np.float32)
    w = rng.standard_normal((LATENT, d), dtype=np.float32) * np.float32((0.5 / LATENT) ** 0.5)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, block):
        b = min(block, n - s)
        out[s:s + b] = centres[rng.integers(0, c, b)] + rng.standard_normal((b, LATENT), dtype=np.float32) @ w
        out[s:s + b] += noise * rng.standard_normal((b, d), dtype=np.float32)
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(n: int, d: int, backend: str, a) -> dict:
    """One measurement (in a child process: ``ru_maxrss`` is per process)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from latticerec.graphs.knn import KnnSearch, _exact_rows, knn_indices

    torch.set_num_threads(a.threads)
    feats = torch.from_numpy(clustered(n, d, a.seed, a.noise))
    search = KnnSearch(backend, hnsw_m=a.hnsw_m, hnsw_efc=a.hnsw_efc, hnsw_ef=a.hnsw_ef,
                       ivf_nprobe=a.ivf_nprobe)
    before = rss_mb()
    note = ""
    if backend == "exact" and n > a.exact_max:
        x = F.normalize(feats, dim=1)
        rows = torch.arange(a.exact_blocks * a.chunk)
        t = time.perf_counter()
        _exact_rows(x, rows, a.k, a.chunk)
        build = (time.perf_counter() - t) * n / rows.numel()
        note = f"extrapolated from {rows.numel()} rows ({a.exact_blocks} blocks of {a.chunk})"
        found = None
    else:
        t = time.perf_counter()
        found = knn_indices(feats, a.k, backend=search)
        build = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recall = None
    if found is not None:
        sample = np.sort(np.random.default_rng(1).choice(n, min(n, a.sample), replace=False))
        rows = torch.from_numpy(sample)
        truth = _exact_rows(F.normalize(feats, dim=1), rows, a.k, None)
        hits = (found[rows].unsqueeze(2) == truth.unsqueeze(1)).any(dim=2).sum().item()
        recall = hits / truth.numel()
    return {"n": n, "d": d, "backend": backend, "build_s": build, "peak_mb": peak,
            "build_mb": peak - before, "recall": recall, "param": search.signature(n), "note": note}


def child_args(a) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
            if k in ("k", "threads", "sample", "exact_max", "exact_blocks", "chunk", "seed", "noise",
                     "hnsw_m", "hnsw_efc", "hnsw_ef", "ivf_nprobe")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10k,100k,1M", help="item counts, e.g. 10k,100k,1M")
    p.add_argument("--dims", default="384,512")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch and faiss (OpenMP) threads")
    p.add_argument("--sample", type=int, default=1000, help="rows whose recall is measured")
    p.add_argument("--exact-max", type=int, default=200_000, help="above: exact is extrapolated")
    p.add_argument("--exact-blocks", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024, help="rows per exact block when extrapolating")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.2, help="isotropic noise (harder for ANN when larger)")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-efc", type=int, default=80)
    p.add_argument("--hnsw-ef", type=int, default=64)
    p.add_argument("--ivf-nprobe", type=int, default=16)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        n, d, backend = a.case.split(",")
        print(json.dumps(run_case(int(n), int(d), backend, a)))
        return 0
    print(f"bench_knn: k={a.k}, {a.threads} thread(s), noise {a.noise}, recall on {a.sample} sampled rows; "
          f"machine: {os.cpu_count()} cores (shared with other jobs: times are upper bounds)")
    print(f"{'items':>9} {'dim':>4} {'backend':<11} {'build s':>9} {'peak RSS MB':>11} {'+build MB':>9} "
          f"{'recall@' + str(a.k):>9}  parameters / note")
    results = []
    for n in map(parse_size, a.sizes.split(",")):
        for d in map(int, a.dims.split(",")):
            for backend in a.backends.split(","):
                if backend == "faiss-flat" and n > a.exact_max:
                    print(f"{n:>9} {d:>4} {backend:<11} skipped: exact O(N² d) search like exact")
                    continue
                cmd = [sys.executable, __file__, f"--case={n},{d},{backend}", *child_args(a)]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    print(f"{n:>9} {d:>4} {backend:<11} timed out after {a.timeout:.0f} s", flush=True)
                    continue
                if out.returncode:
                    print(f"{n:>9} {d:>4} {backend:<11} failed: {out.stderr.strip()[-300:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                rec = "-" if r["recall"] is None else f"{r['recall']:.4f}"
                print(f"{n:>9} {d:>4} {backend:<11} {r['build_s']:>9.2f} {r['peak_mb']:>11.0f} "
                      f"{r['build_mb']:>9.0f} {rec:>9}  {r['param']} {r['note']}".rstrip(), flush=True)
    exact = {(r["n"], r["d"]): r["build_s"] for r in results if r["backend"] == "exact"}
    for r in results:
        if r["backend"] != "exact" and (r["n"], r["d"]) in exact:
            print(f"speed-up over exact: {r['n']} x {r['d']} {r['backend']}: "
                  f"{exact[(r['n'], r['d'])] / r['build_s']:.1f}x (recall@{a.k} {r['recall']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
