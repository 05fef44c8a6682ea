"""Check latticerec's functions against the released code's on the same inputs (CPU, seconds).

    python benchmarks/fidelity/check_functions.py --lattice /tmp/fidelity/orig/LATTICE/codes \\
        --micro /tmp/fidelity/orig/MICRO/codes

Imports the released modules read-only (their ``parse_args`` reads ``sys.argv``, which is cleared
first; their ``Models`` import touches no file) and prints, for each pair, the largest absolute
difference:

* legacy NDCG@K (``evaluate.metrics.ndcg_legacy_at_k``) vs ``utility/metrics.ndcg_at_k`` on random
  top-20 hit lists, K = 1, 5, 10, 20;
* InfoNCE (``models.losses.info_nce``) vs ``MICRO.batched_contrastive_loss`` (τ = 0.5, every item an
  anchor and a negative);
* the initial kNN graph (``graphs.knn.knn_graph``) vs LATTICE's ``build_sim`` →
  ``build_knn_neighbourhood`` → ``compute_normalized_laplacian`` (dense) and MICRO's
  ``build_knn_normalized_graph`` (sparse), on features whose top-k cosines are all positive (where
  latticerec's suppression of negative similarities cannot differ).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch


def _released(codes: Path, module: str):
    """Import ``module`` from a released ``codes`` folder, isolated from the other code base."""
    for name in [m for m in sys.modules if m == "Models" or m.startswith("utility")]:
        del sys.modules[name]
    sys.path.insert(0, str(codes))
    argv, sys.argv = sys.argv, [sys.argv[0]]
    try:
        return importlib.import_module(module)
    finally:
        sys.argv = argv
        sys.path.remove(str(codes))


def check_ndcg(codes: Path) -> dict[str, float]:
    from latticerec.evaluate.metrics import ndcg_legacy_at_k

    metrics = _released(codes, "utility.metrics")
    hits = (np.random.default_rng(0).random((500, 20)) < 0.15).astype(int)
    out = {}
    for k in (1, 5, 10, 20):
        ref = np.array([metrics.ndcg_at_k(list(r), k) for r in hits])
        out[f"ndcg_legacy@{k}"] = float(np.abs(ref - ndcg_legacy_at_k(torch.tensor(hits), k).numpy()).max())
    return out


def check_info_nce(codes: Path) -> dict[str, float]:
    from latticerec.models.losses import info_nce

    models = _released(codes, "Models")
    torch.manual_seed(0)
    z1, z2 = torch.randn(300, 16), torch.randn(300, 16)

    class _Self:  # the two attributes batched_contrastive_loss reads
        tau = 0.5
        sim = models.MICRO.sim

    ref = models.MICRO.batched_contrastive_loss(_Self(), z1, z2, batch_size=128)
    ours = info_nce(z1, z2, tau=0.5, chunk_size=128)
    return {"info_nce": float((ref - ours).abs())}


def check_knn(lattice: Path, micro: Path) -> dict[str, float]:
    from latticerec.graphs.knn import knn_graph

    torch.manual_seed(0)
    feats = torch.rand(300, 8) + 0.5  # positive features: every cosine is positive
    ours = knn_graph(feats, k=10).to_dense()
    lat = _released(lattice, "Models")
    dense = lat.compute_normalized_laplacian(lat.build_knn_neighbourhood(lat.build_sim(feats), 10))
    norm = _released(micro, "utility.norm")
    sparse = norm.build_knn_normalized_graph(norm.build_sim(feats), 10, True, "sym").to_dense()
    return {"knn_graph vs LATTICE": float((ours - dense).abs().max()),
            "knn_graph vs MICRO": float((ours - sparse).abs().max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lattice", type=Path, required=True, help="codes/ of CRIPAC-DIG/LATTICE")
    p.add_argument("--micro", type=Path, required=True, help="codes/ of CRIPAC-DIG/MICRO")
    args = p.parse_args(argv)
    results = {**check_ndcg(args.lattice), **check_info_nce(args.micro),
               **check_knn(args.lattice, args.micro)}
    for name, diff in results.items():
        print(f"{name:28s} max |difference| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
