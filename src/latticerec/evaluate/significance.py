"""Paired significance tests over users: is model A's per-user metric different from model B's?

Both runs must have scored the same users on the same test split (a seed-matched pair). For the
per-user differences ``d_u = a_u - b_u`` over the ``n`` common users:

* paired t-test (Student, 1908): ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of
  freedom (``scipy.stats.ttest_rel``);
* Wilcoxon signed-rank test (Wilcoxon, 1945) on the non-zero differences, two-sided, with the normal
  approximation for large ``n`` (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``);
* effect size ``d_z = mean(d) / sd(d)`` (Cohen's d for paired samples; ``sd`` with ``ddof=1``).

A metric of 0 for a user is a real observation (the model missed every held-out item), so users are
never dropped for having zeros; only the Wilcoxon test ignores pairs whose difference is exactly 0,
as its definition requires.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedTest:
    """The result of :func:`paired_test` (``p`` values two-sided)."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    t: float
    p_t: float
    wilcoxon: float
    p_wilcoxon: float
    effect_size: float

    def significant(self, alpha: float = 0.05) -> bool:
        """Both tests reject ``a = b`` at level ``alpha``."""
        return self.p_t < alpha and self.p_wilcoxon < alpha

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Paired t-test, Wilcoxon signed-rank test and effect size ``d_z`` of ``a - b`` (see module)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and of one length, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a paired test needs at least 2 users, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-user metrics must be finite")
    d = a - b
    sd = d.std(ddof=1)
    if sd == 0.0:  # identical differences: no variance to test against
        t, p_t = (0.0, 1.0) if d.mean() == 0.0 else (math.copysign(math.inf, d.mean()), 0.0)
    else:
        res = stats.ttest_rel(a, b)
        t, p_t = float(res.statistic), float(res.pvalue)
    if np.count_nonzero(d) == 0:
        w, p_w = 0.0, 1.0
    else:
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        w, p_w = float(res.statistic), float(res.pvalue)
    effect = float(d.mean() / sd) if sd > 0 else (0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean()))
    return PairedTest(n=int(a.size), mean_a=float(a.mean()), mean_b=float(b.mean()),
                      mean_diff=float(d.mean()), t=t, p_t=p_t, wilcoxon=w, p_wilcoxon=p_w,
                      effect_size=effect)


def align_users(users_a: np.ndarray, values_a: np.ndarray, users_b: np.ndarray,
                values_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two runs' values on the users they both evaluated, in one order; an error when the runs
    evaluated different user sets (they were not trained on the same split)."""
    users_a, users_b = np.asarray(users_a), np.asarray(users_b)
    if users_a.shape != np.asarray(values_a).shape or users_b.shape != np.asarray(values_b).shape:
        raise ValueError("per-user arrays: users and values differ in length")
    if not np.array_equal(np.sort(users_a), np.sort(users_b)):
        raise ValueError(f"the runs evaluated different users ({users_a.size} vs {users_b.size}): "
                         "compare runs trained and tested on the same split")
    order_a, order_b = np.argsort(users_a, kind="stable"), np.argsort(users_b, kind="stable")
    return np.asarray(values_a)[order_a], np.asarray(values_b)[order_b]
