"""Import a large RecBole interactions file (default one million rows) into the MMRec layout and
print the wall time and the peak resident memory of the importing process.

    python benchmarks/bench_import.py                     # 1,000,000 rows
    python benchmarks/bench_import.py --rows 2000000      # memory should grow with rows, not text

The input has string user/item tokens, ratings and timestamps (as in RecBole's ml-1m/Amazon files).
It is generated into a temporary folder first (not timed); the import runs in a fresh child process
so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from latticerec.datasets.recbole import import_recbole
t1 = time.perf_counter()
rep = import_recbole(sys.argv[1], sys.argv[2], seed=0, progress=False, log=lambda m: None)
t2 = time.perf_counter()
print(json.dumps({"import_s": t2 - t1, "startup_s": t1 - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "users": rep["users"], "items": rep["items"], "interactions": rep["interactions"]}))
"""

BASELINE = """
import json, resource
import latticerec.datasets.recbole  # noqa: F401  (imports numpy, scipy, torch via latticerec.io)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_input(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` interactions of ~rows/20 users over ~rows/50 items, popularity-skewed, in blocks."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, rows // 20), max(1, rows // 50)
    with open(path, "w") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        block = 250_000
        for start in range(0, rows, block):
            n = min(block, rows - start)
            u = rng.integers(0, n_users, n)
            i = np.minimum((rng.pareto(1.2, n) * n_items / 20).astype(np.int64), n_items - 1)
            r = rng.integers(1, 6, n)
            t = rng.integers(9e8, 1.6e9, n)
            fh.write("\n".join(f"U{a:07d}\tI{b:06d}\t{c}\t{d}" for a, b, c, d in
                               zip(u.tolist(), i.tolist(), r.tolist(), t.tolist(), strict=True)))
            fh.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.inter"
        t = time.perf_counter()
        write_input(src, args.rows)
        print(f"generated {args.rows} rows ({src.stat().st_size / 2**20:.1f} MiB) in "
              f"{time.perf_counter() - t:.1f} s")
        base = json.loads(subprocess.run([sys.executable, "-c", BASELINE], check=True,
                                         capture_output=True, text=True).stdout)
        res = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(src), str(Path(tmp) / "out")],
                                        check=True, capture_output=True, text=True).stdout)
    print(f"imported {res['interactions']} interactions ({res['users']} users, {res['items']} items) "
          f"in {res['import_s']:.2f} s (+{res['startup_s']:.2f} s interpreter/library start-up)")
    print(f"peak RSS {res['peak_rss_mb']:.0f} MiB; after importing the libraries alone "
          f"{base['peak_rss_mb']:.0f} MiB, so the import itself used "
          f"{res['peak_rss_mb'] - base['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
