"""Bootstrap intervals for rates over prompts (and over seeds, when runs are repeated).

    mean, lo, hi = bootstrap_ci([[0, 1, 1, 0, ...]])           # one seed: rows = seeds, columns = prompts
    mean, lo, hi = bootstrap_ci(matrix_seeds_x_prompts)         # several seeds: both resampled

The two-way (seeds x prompts) percentile bootstrap resamples seeds and prompts independently, so the
interval holds both sources of variation; with one seed it is the ordinary bootstrap over prompts.
"""

from __future__ import annotations

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
