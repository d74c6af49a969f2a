"""Learning-rate schedules: linear warmup, then cosine, linear or constant, as a LambdaLR."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    return warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based); the first warmup step is not wasted at 0."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {kind!r}")


def build_scheduler(optimizer, total_steps: int, train_cfg):
    from torch.optim.lr_scheduler import LambdaLR

    warm = warmup_steps(total_steps, train_cfg.warmup_steps, train_cfg.warmup_ratio)
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warm, train_cfg.scheduler))
