"""Sharded, vLLM-free batch evaluation: `evaluate(cfg, models=None, out_dir=None) -> summary dict`."""

from __future__ import annotations


def evaluate(cfg, models=None, out_dir=None) -> dict:
    from safeft.eval.runner import evaluate as _evaluate

    return _evaluate(cfg, models=models, out_dir=out_dir)


__all__ = ["evaluate"]
