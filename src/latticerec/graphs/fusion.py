"""Early fusion of item modalities into one feature vector (MM-GEF, section 3.1).

MM-GEF fuses *before* any graph is built: its CLIP image and text vectors live in one space and have
one dimension, and the paper simply averages them. For modalities that do not share a space (TikTok's
image and audio vectors are both 128-d but come from different encoders, with mean norms 33.1 and
4.5), a plain mean is dominated by the larger-norm modality, so three rules are offered:

* ``"norm_mean"`` (default): the mean of the per-modality L2-normalised vectors,
  ``f_i = (1/M) Σ_m e_i^m / ‖e_i^m‖``. Every modality weighs the same; for CLIP vectors (compared by
  cosine, of similar norms) it is the paper's average up to scale. Modalities of a smaller dimension
  are first mapped to the largest one by a fixed random projection (:func:`random_projection`), which
  preserves cosines (Johnson-Lindenstrauss) and is not trained;
* ``"mean"``: the paper's literal average of the raw vectors, ``f_i = (1/M) Σ_m e_i^m`` (all
  modalities must have the same dimension);
* ``"concat"``: the per-modality L2-normalised vectors side by side, scaled by ``1/√M`` (unit norm);
  the cosine of two such vectors is the mean of the per-modality cosines.

One modality is returned as it is by ``"mean"`` and L2-normalised by the other two rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FUSIONS = ("norm_mean", "mean", "concat")
PROJECTION_SEED = 0


def random_projection(in_dim: int, out_dim: int, seed: int = PROJECTION_SEED,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed ``in_dim x out_dim`` Gaussian matrix with entries ``N(0, 1/out_dim)``: ``x P``
    approximately preserves norms and cosines. Drawn from its own generator, so it depends on
    ``(in_dim, out_dim, seed)`` only and leaves the global random state alone."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + in_dim * 10_007 + out_dim)
    return (torch.randn(in_dim, out_dim, generator=gen) / out_dim ** 0.5).to(device)


def fuse_features(features: dict[str, torch.Tensor] | list[torch.Tensor], how: str = "norm_mean",
                  seed: int = PROJECTION_SEED) -> torch.Tensor:
    """One ``(n_items, d)`` float32 feature matrix from the per-modality matrices (section 3.1)."""
    feats = [f.float() for f in (features.values() if isinstance(features, dict) else features)]
    if not feats:
        raise ValueError("early fusion needs at least one feature matrix")
    if how not in FUSIONS:
        raise ValueError(f"fusion {how!r}: expected one of {', '.join(FUSIONS)}")
    if len({f.shape[0] for f in feats}) != 1:
        raise ValueError(f"feature matrices disagree on the number of items: {[f.shape for f in feats]}")
    dims = [f.shape[1] for f in feats]
    if how == "mean":
        if len(set(dims)) != 1:
            raise ValueError(f"fusion 'mean' averages raw vectors and needs one dimension, got {dims}; "
                             "use 'norm_mean' (projects to a common dimension) or 'concat'")
        return torch.stack(feats).mean(0)
    unit = [F.normalize(f, p=2, dim=1) for f in feats]
    if how == "concat":
        return torch.cat(unit, dim=1) / len(unit) ** 0.5
    common = max(dims)
    projected = [u if u.shape[1] == common
                 else F.normalize(u @ random_projection(u.shape[1], common, seed, u.device), dim=1)
                 for u in unit]
    return torch.stack(projected).mean(0)
