"""The exact kNN search's block size: CPU seconds of ``knn_indices`` (exact backend) with the
cache-sized default blocks (``graphs.knn.CHUNK_FLOATS``) against the blocks of the default before
them (as many rows as keep 64M similarities, at most 4,096), on seeded random
features, interleaved and repeated (median), and whether the neighbour lists are identical.

    python benchmarks/bench_exact_chunks.py                      # 6,710 and 20,000 items, 64-d and 128-d
    python benchmarks/bench_exact_chunks.py --sizes 7050 --dims 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[6710, 20000])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from latticerec.graphs.knn import MAX_CHUNK_FLOATS, _chunk_rows, knn_indices

    torch.set_num_threads(a.threads)
    print("| items | dim | before: rows, CPU s | default: rows, CPU s | speed-up | same neighbours |")
    print("|---|---|---|---|---|---|")
    for n in a.sizes:
        for d in a.dims:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(n, d, generator=gen)
            blocks = {"before": min(n, MAX_CHUNK_FLOATS // n, 4096), "default": None}  # the old default
            seconds = {key: [] for key in blocks}
            found = {}
            for _ in range(a.repeats):
                for key, chunk in blocks.items():
                    t = time.process_time()
                    found[key] = knn_indices(x, a.k, chunk_size=chunk)
                    seconds[key].append(time.process_time() - t)
            old, new = (statistics.median(seconds[key]) for key in blocks)
            print(f"| {n:,} | {d} | {blocks['before']}, {old:.3f} | {_chunk_rows(n, None)}, {new:.3f} | "
                  f"{old / new:.2f}x | {torch.equal(found['before'], found['default'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
