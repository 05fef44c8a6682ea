"""What a fresh output tensor costs on this machine (docs/speed.md, session 22).

Above glibc's largest mmap threshold (32 MB) every new tensor is new memory whose pages are first
touched by the operation that fills it. Three probes, each the same product into a fresh tensor and
into a reused one (``out=``), interleaved, median of ``--repeats`` rounds:

* ``scores``: one evaluation block, ``4,096 x 64 @ 64 x 7,050`` (Baby's items; 115 MB of scores);
* ``spmm``: ``addmm(X, Â, X)`` on a random symmetric 300k-node graph with ~4M entries, ``X`` 300k x 64
  (LightGCN's layer at catalogue scale; 77 MB);
* ``horner``: a 3-layer LightGCN propagation (``graphs/sparse._horner``) on that graph, fresh layers
  against layers 1-2 written into two reused buffers (the same result, checked bit for bit).

    OMP_NUM_THREADS=2 python benchmarks/probe_fresh_memory.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def _ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def _graph(n: int, pairs: int):
    import torch

    warnings.filterwarnings("ignore", message="Sparse", category=UserWarning)  # CSR is 'beta'
    g = torch.Generator().manual_seed(0)
    r, c = (torch.randint(0, n, (pairs,), generator=g) for _ in range(2))
    coo = torch.sparse_coo_tensor(torch.stack([torch.cat([r, c]), torch.cat([c, r])]),
                                  torch.rand(2 * pairs, generator=g), (n, n)).coalesce()
    csr = coo.to_sparse_csr()
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)


def _horner(adj, x, layers: int, scratch=None):
    import torch

    scale, total = 1.0 / (layers + 1), x
    for layer in range(layers):
        last = layer == layers - 1
        out = {} if last or scratch is None else {"out": scratch[layer % 2]}
        total = torch.addmm(x, adj, total, beta=scale if last else 1.0, alpha=scale if last else 1.0, **out)
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    users, items = torch.randn(4096, 64), torch.randn(7050, 64)
    block = torch.empty(4096, 7050)
    adj = _graph(300_000, 2_000_000)
    x = torch.randn(adj.shape[0], 64)
    buf, scratch = torch.empty_like(x), [torch.empty_like(x), torch.empty_like(x)]
    assert torch.equal(_horner(adj, x, 3), _horner(adj, x, 3, scratch))
    cases = {
        "scores": (lambda: users @ items.T, lambda: torch.matmul(users, items.T, out=block), 10),
        "spmm": (lambda: torch.addmm(x, adj, x), lambda: torch.addmm(x, adj, x, out=buf), 5),
        "horner": (lambda: _horner(adj, x, 3), lambda: _horner(adj, x, 3, scratch), 3),
    }
    print(f"{args.threads} thread(s), median of {args.repeats} interleaved rounds (ms per call)")
    print(f"{'probe':8} {'fresh':>8} {'reused':>8} {'ratio':>6}")
    for name, (fresh, reused, calls) in cases.items():
        a, b = [], []
        for _ in range(args.repeats):
            a.append(_ms(fresh, calls))
            b.append(_ms(reused, calls))
        fa, fb = statistics.median(a), statistics.median(b)
        print(f"{name:8} {fa:8.1f} {fb:8.1f} {fa / fb:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
