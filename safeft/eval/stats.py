"""Intervals for rates: bootstrap over prompts (and over seeds, when runs are repeated), Wilson for one rate.

    mean, lo, hi = bootstrap_ci([[0, 1, 1, 0, ...]])           # one seed: rows = seeds, columns = prompts
    mean, lo, hi = bootstrap_ci(matrix_seeds_x_prompts)         # several seeds: both resampled
    lo, hi = wilson_ci(harmful, n)                              # k of n (the training-time safety probes)

The two-way (seeds x prompts) percentile bootstrap resamples seeds and prompts independently, so the
interval holds both sources of variation; with one seed it is the ordinary bootstrap over prompts.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

N_BOOT = 2000


def bootstrap_ci(values: Sequence[Sequence[float]] | Sequence[float], level: float = 0.95, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper) of the mean of `values` (seeds x prompts, or a flat list of prompts)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"bootstrap_ci: expected a non-empty seeds x prompts matrix, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    s, p = v.shape
    # prompt resampling as multinomial counts: (n_boot, p) weights, each row sums to p
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot)          # (n_boot, p)
    if s == 1:
        means = counts @ v[0] / p                                            # (n_boot,)
    else:
        seeds = rng.integers(0, s, size=(n_boot, s))                         # (n_boot, s)
        per_prompt = v[seeds].mean(axis=1)                                   # (n_boot, p): resampled seeds' mean
        means = (counts * per_prompt).sum(axis=1) / p
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(lo), float(hi)


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate k/n (Wilson 1927): stays inside [0, 1] and is not empty at
    k = 0 or k = n, where the bootstrap over prompts collapses to a point. Small samples (probes) use it."""
    from statistics import NormalDist

    if n <= 0:
        raise ValueError(f"wilson_ci: n = {n}, expected at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: k = {k} is outside [0, {n}]")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact bounds at the ends (no rounding residue)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi
