"""Dataset statistics: sizes and density (the papers' Table 3) and the MICRO paper's pilot studies.

* Table 1: per modality, the mean cosine similarity of all item pairs vs co-interacted item pairs
  (two items some user interacted with both). The all-pairs mean comes in closed form from the sum
  of the normalised feature vectors ``s``: ``sum_{i != j} cos(i, j) = |s|^2 - sum_i |x_i|^2``; the
  co-interacted pairs are enumerated from ``R^T R`` a block of items at a time.
* Table 2: per modality and k in 5/10/15/20, the share of users (with at least two interactions)
  who interacted with two items that lie within each other's top-k most similar items, i.e. one is
  among the other's k nearest neighbours by cosine similarity (self excluded). Neighbours are found
  in row blocks of the similarity matrix, never the whole N x N matrix. As a chance level, the same
  figure is computed with the feature rows shuffled across items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from latticerec.data.dataset import SPLITS, Dataset

TOPK = (5, 10, 15, 20)


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def interactions(dataset: Dataset, split: str = "all") -> sp.csr_matrix:
    """Binary users x items matrix of ``split`` (``all`` pools train, valid and test)."""
    mat = sum((dataset.split(s) for s in SPLITS), start=sp.csr_matrix(dataset.train.shape)) \
        if split == "all" else dataset.split(split)
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.data[:] = 1.0
    return mat


def basic_stats(dataset: Dataset) -> dict:
    """Users, items, interactions (per split and in all), density."""
    per = {s: int(dataset.split(s).nnz) for s in SPLITS}
    n = sum(per.values())
    return {"users": dataset.n_users, "items": dataset.n_items, "interactions": n, **per,
            "density": n / max(1, dataset.n_users * dataset.n_items)}


def mean_cosine_all_pairs(xn: np.ndarray) -> float:
    """Mean cosine over ordered pairs i != j of normalised rows, in O(N d)."""
    n = xn.shape[0]
    s = xn.sum(0, dtype=np.float64)
    diag = float(np.einsum("ij,ij->", xn, xn, dtype=np.float64))
    return float((s @ s - diag) / (n * (n - 1)))


def mean_cosine_co_interacted(xn: np.ndarray, inter: sp.csr_matrix, block: int = 2048) -> tuple[float, int]:
    """Mean cosine over distinct item pairs i < j that share a user, and their number.

    For a block of items, ``B`` marks each item's co-interacted partners j > i (from ``R^T R``); the
    block's sum of cosines is ``sum_i x_i . (B x)_i``, a sparse-dense product (no pair list)."""
    rt = inter.T.tocsr()
    total, count = 0.0, 0
    for start in range(0, rt.shape[0], block):
        co = sp.triu(rt[start: start + block] @ inter, k=start + 1, format="csr")
        co.data[:] = 1.0
        total += float(np.einsum("ij,ij->", xn[start: start + co.shape[0]], co @ xn, dtype=np.float64))
        count += co.nnz
    return (total / count if count else float("nan")), count


def top_neighbours(xn: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """``(N, k)`` indices of each item's k most similar items (cosine, self excluded), best first,
    from row blocks of the similarity matrix."""
    n = xn.shape[0]
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        sims = xn[start: start + block] @ xn.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
        out[start: start + block] = np.take_along_axis(part, order, 1)
    return out


def share_users_within_topk(neigh: np.ndarray, inter: sp.csr_matrix, ks=TOPK) -> dict[int, float]:
    """Share of users (with >= 2 items) having two items where one is in the other's top-k."""
    n = neigh.shape[0]
    eligible = np.diff(inter.indptr) >= 2
    out = {}
    for k in ks:
        kk = min(k, neigh.shape[1])
        rows = np.repeat(np.arange(n), kk)
        knn = sp.csr_matrix((np.ones(n * kk, np.float32), (rows, neigh[:, :kk].ravel())), shape=(n, n))
        sym = ((knn + knn.T) > 0).astype(np.float32)
        hits = np.asarray((inter @ sym).multiply(inter).sum(1)).ravel() > 0
        out[k] = float(hits[eligible].mean()) if eligible.any() else float("nan")
    return out


def pilot_studies(dataset: Dataset, split: str = "all", ks=TOPK, seed: int = 0) -> dict:
    """MICRO Tables 1 and 2 for every modality of ``dataset``."""
    inter = interactions(dataset, split)
    rng = np.random.default_rng(seed)
    out = {}
    for m, feat in dataset.features.items():
        xn = normalise(feat)
        co_mean, n_pairs = mean_cosine_co_interacted(xn, inter)
        kmax = max(ks)
        shuffled = xn[rng.permutation(len(xn))]
        out[m] = {
            "dim": int(feat.shape[1]),
            "zero_rows": int((np.linalg.norm(xn, axis=1) == 0).sum()),
            "mean_cos_all_pairs": mean_cosine_all_pairs(xn),
            "mean_cos_co_interacted": co_mean,
            "co_interacted_pairs": n_pairs,
            "share_users_within_topk": share_users_within_topk(top_neighbours(xn, kmax), inter, ks),
            "share_users_within_topk_shuffled": share_users_within_topk(
                top_neighbours(shuffled, kmax), inter, ks),
        }
    return out


def format_stats(basic: dict, pilot: dict, ks=TOPK) -> str:
    """Human-readable tables."""
    lines = ["users  items  interactions (train/valid/test)  density",
             f"{basic['users']}  {basic['items']}  {basic['interactions']} "
             f"({basic['train']}/{basic['valid']}/{basic['test']})  {basic['density']:.6f}"]
    if pilot:
        lines += ["", "Table 1: mean cosine similarity of item pairs",
                  f"{'modality':<10}{'all pairs':>12}{'co-interacted':>15}{'pairs':>12}"]
        for m, r in pilot.items():
            lines.append(f"{m:<10}{r['mean_cos_all_pairs']:>12.4f}{r['mean_cos_co_interacted']:>15.4f}"
                         f"{r['co_interacted_pairs']:>12}")
        lines += ["", "Table 2: share of users who interacted with items within each other's top-k",
                  f"{'modality':<20}" + "".join(f"{'k=' + str(k):>9}" for k in ks)]
        for m, r in pilot.items():
            for label, key in ((m, "share_users_within_topk"),
                               (f"{m} (shuffled)", "share_users_within_topk_shuffled")):
                lines.append(f"{label:<20}" + "".join(f"{r[key][k]:>9.2%}" for k in ks))
    return "\n".join(lines)
