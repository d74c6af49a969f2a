"""Per-step metrics: console, `logs/metrics.jsonl`, TensorBoard; throughput and MFU."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

log = logging.getLogger("safeft.train")


MFU_CONVENTION = ("torchtitan/PaLM: 6 N + 12 L d seq FLOPs per token, N without the input embedding, "
                  "non-causal attention term")


def flops_per_step(n_params: int, layers: int, d_model: int, real_tokens: float, sum_doc_len_sq: float) -> float:
    """ANCHORS section 5: (6 N + 12 L d seq) per real token, with seq the token's own document length.

    The convention torchtitan uses: N excludes the input embedding (a lookup, no matmul; see
    `matmul_params`), and the attention term counts the full s x s scores (PaLM), about twice the work a
    causal kernel does, so MFU figures compare with torchtitan's and PaLM's, not with causal-FLOP counts.
    """
    return 6.0 * n_params * real_tokens + 12.0 * layers * d_model * sum_doc_len_sq


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (unless it is tied to the
    output projection, which is a matmul). ZeRO-3 partitions are counted whole (ds_numel)."""
    def numel(p):
        return getattr(p, "ds_numel", p.numel())

    total = sum(numel(p) for p in model.parameters())
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is None or (out is not None and out.weight is emb.weight):
        return total
    return total - numel(emb.weight)


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB (process peak RSS)


class MetricsLogger:
    """Rank 0 writes; other ranks only compute. Lines append to metrics.jsonl as each step ends."""

    def __init__(self, run_dir: str, tensorboard: bool, is_main: bool):
        self.is_main = is_main
        self.writer = None
        self.path = os.path.join(run_dir, "logs", "metrics.jsonl")
        if not is_main:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional
                log.warning("tensorboard is not installed; metrics go to logs/metrics.jsonl only")

    def log(self, metrics: dict, console: Optional[object] = None) -> None:
        if not self.is_main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(f"train/{k}", v, metrics["step"])
        text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if v is not None)  # no MFU on CPU
        (console.write if console is not None else log.info)(text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
