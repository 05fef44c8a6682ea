"""The synthetic generator at any size, streamed to the MMRec layout with bounded memory.

The same model as :mod:`latticerec.data.synthetic` (content predicts behaviour), built to scale:

* items fall into ``C`` latent clusters; item ``i`` has a latent vector ``z_i = c_(k(i)) + 0.3 ε``
  and, per modality ``m``, the feature ``f_i^m = z_i P_m + noise · ε`` (a random linear view);
* item popularity ``π_i ~ Pareto(2) + 1``;
* user ``u`` has cluster preferences ``p_u ~ Dirichlet(0.15)`` (a few clusters each) and
  ``n_u ~ Poisson(N / U)`` interactions (at least 3, so every user has a valid and a test item);
  each draws a cluster ``k ~ p_u``, then an item of that cluster with probability ``∝ π_i``;
  repeated pairs are dropped;
* the per-user random split of :func:`~latticerec.data.synthetic.split_per_user`.

Memory is bounded by the block sizes, never by the catalogue: features are written block by block
into a memory-mapped ``.npy`` (``items x d`` floats on disk, ``block_items x d`` in memory), users are
generated ``block_users`` at a time (their ``block_users x C`` preferences), and interactions are
streamed as text. The folder is built hidden and published when complete
(:func:`~latticerec.datasets.staging.staged_folder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latticerec.data.synthetic import split_per_user
from latticerec.datasets.prepare import atomic_write_chunks, iter_inter_lines
from latticerec.datasets.staging import staged_folder
from latticerec.errors import DataError
from latticerec.io import atomic_write_json

LATENT_DIM = 16


def parse_dims(text: str) -> dict[str, int]:
    """``"image=512,text=384"`` -> ``{"image": 512, "text": 384}``, with a clear error."""
    dims: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name.isidentifier():
            raise DataError(f"--dims: expected name=size pairs like image=512,text=384, got {part!r}")
        try:
            size = int(value)
        except ValueError:
            raise DataError(f"--dims: {name}={value!r} is not an integer") from None
        if not 1 <= size <= 65536:
            raise DataError(f"--dims: {name}={size} must lie in [1, 65536]")
        if name in dims:
            raise DataError(f"--dims: {name} is given twice")
        dims[name] = size
    return dims


def _cluster_sampler(item_cluster: np.ndarray, popularity: np.ndarray, n_clusters: int):
    """Draw items of given clusters with probability ``∝ π_i`` (inverse CDF within each cluster)."""
    order = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(popularity[order])
    bounds = np.searchsorted(item_cluster[order], np.arange(n_clusters + 1))
    lo = np.where(bounds[:-1] > 0, cum[np.maximum(bounds[:-1] - 1, 0)], 0.0)
    hi = cum[np.maximum(bounds[1:] - 1, 0)]

    def draw(clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        target = lo[clusters] + rng.random(clusters.size) * (hi[clusters] - lo[clusters])
        pos = np.searchsorted(cum, target, side="right")
        pos = np.clip(pos, bounds[clusters], bounds[clusters + 1] - 1)
        return order[pos]

    return draw


def _draw_categorical(prob: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per entry of ``rows`` from the row-stochastic ``prob`` (vectorised)."""
    cum = np.cumsum(prob, axis=1)
    cum /= cum[:, -1:]
    flat = (cum + np.arange(prob.shape[0])[:, None]).ravel()
    idx = np.searchsorted(flat, rows + rng.random(rows.size), side="right")
    return np.minimum(idx - rows * prob.shape[1], prob.shape[1] - 1)


def write_synthetic(out: str | Path, n_users: int, n_items: int, n_interactions: int,
                    dims: dict[str, int], n_clusters: int | None = None, noise: float = 0.6,
                    seed: int = 0, block_users: int = 100_000, block_items: int = 65_536,
                    log=None) -> dict:
    """Generate the dataset (see module docstring) into ``out``; returns its summary (also written as
    ``synth_report.json``). Same arguments -> identical files."""
    for name, value, low in (("users", n_users, 1), ("items", n_items, 2),
                             ("interactions", n_interactions, 1)):
        if value < low:
            raise DataError(f"--{name} must be >= {low}, got {value}")
    if n_interactions > n_users * n_items:
        raise DataError(f"--interactions {n_interactions} exceeds --users x --items = "
                        f"{n_users * n_items} (each user-item pair occurs at most once)")
    if n_clusters is not None and not 1 <= n_clusters <= n_items:
        raise DataError(f"--clusters must lie in [1, --items = {n_items}], got {n_clusters}")
    if seed < 0:
        raise DataError(f"--seed must be >= 0, got {seed}")
    if not dims:
        raise DataError("--dims: at least one modality is needed")
    with staged_folder(out) as out:  # the dataset appears all at once, or not at all
        n_clusters = n_clusters or int(max(8, min(1024, round(np.sqrt(n_items) / 4))))
        rng = np.random.default_rng(seed)
        centroids = rng.standard_normal((n_clusters, LATENT_DIM))
        item_cluster = rng.integers(0, n_clusters, size=n_items)
        popularity = rng.pareto(2.0, size=n_items) + 1.0
        projections = {m: rng.standard_normal((LATENT_DIM, d)) / np.sqrt(LATENT_DIM)
                       for m, d in dims.items()}

        # features: one memory-mapped .npy per modality, filled block by block
        feat_rng = np.random.default_rng([seed, 1])
        maps = {m: np.lib.format.open_memmap(out / f"{m}_feat.npy", mode="w+", dtype=np.float32,
                                             shape=(n_items, d)) for m, d in dims.items()}
        for start in range(0, n_items, block_items):
            stop = min(n_items, start + block_items)
            latent = centroids[item_cluster[start:stop]] + 0.3 * feat_rng.standard_normal(
                (stop - start, LATENT_DIM))
            for m, proj in projections.items():
                noisy = latent @ proj + noise * feat_rng.standard_normal((stop - start, proj.shape[1]))
                maps[m][start:stop] = noisy.astype(np.float32)
        for m in dims:
            maps[m].flush()
            del maps[m]

        draw_item = _cluster_sampler(item_cluster, popularity, n_clusters)
        mean = n_interactions / n_users
        counts = {"train": 0, "valid": 0, "test": 0}

        def blocks():
            user_rng = np.random.default_rng([seed, 2])
            first = True
            for start in range(0, n_users, block_users):
                stop = min(n_users, start + block_users)
                pref = user_rng.dirichlet(np.full(n_clusters, 0.15), size=stop - start)
                n_u = np.clip(user_rng.poisson(mean, size=stop - start), 3, n_items)
                rows = np.repeat(np.arange(stop - start), n_u)
                items = draw_item(_draw_categorical(pref, rows, user_rng), user_rng)
                key = np.unique((rows + start).astype(np.int64) * n_items + items)
                users, items = key // n_items, key % n_items
                labels = split_per_user(users, items, user_rng)
                for name, lab in (("train", 0), ("valid", 1), ("test", 2)):
                    counts[name] += int((labels == lab).sum())
                lines = iter_inter_lines(users, items, labels)
                header = next(lines)
                if first:
                    yield header
                    first = False
                yield from lines
                if log is not None:
                    log(f"users {stop}/{n_users}")
            if not counts["valid"] or not counts["test"]:
                raise DataError(
                    f"--users {n_users} --items {n_items} --interactions {n_interactions}: too few distinct "
                    f"interactions per user for a split ({counts['train']}/{counts['valid']}/"
                    f"{counts['test']} train/valid/test); raise --items or --interactions")

        atomic_write_chunks(out / "synth.inter", blocks())
        report = {"users": n_users, "items": n_items, "clusters": n_clusters, "requested_interactions":
                  n_interactions, "interactions": sum(counts.values()), "split": counts, "dims": dims,
                  "noise": noise, "seed": seed}
        atomic_write_json(out / "synth_report.json", report)
    return report
