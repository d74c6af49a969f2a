"""Per-step metrics: throughput, MFU, packing efficiency; the console line and the trackers that record them."""

from __future__ import annotations

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
    """Rank 0 logs: a console line per logged step, and every tracker of train.report_to (safeft.train.trackers).
    Other ranks only compute. A tracker that fails mid-run is dropped with one warning: training goes on."""

    def __init__(self, trackers: list, is_main: bool):
        self.trackers, self.is_main = list(trackers), is_main

    @classmethod
    def open(cls, cfg, is_main: bool, resumed_step: int = 0) -> "MetricsLogger":
        if not is_main:
            return cls([], False)
        from safeft.train.trackers import open_trackers

        logger = cls(open_trackers(cfg, resumed_step), True)
        logger._each("log_params", cfg.to_dict())
        return logger

    def _each(self, method: str, *args) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # noqa: BLE001  (a tracker's server or disk, not the training, failed)
                log.warning("tracker %s failed in %s (%s: %s); it is off for the rest of this run", t.name, method,
                            type(e).__name__, e)
                self.trackers.remove(t)

    def log(self, metrics: dict, console: Optional[object] = None) -> None:
        if not self.is_main:
            return
        self._each("log_metrics", "train", metrics, metrics["step"])
        text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if v is not None)  # no MFU on CPU
        (console.write if console is not None else log.info)(text)

    def log_probe(self, lines: list[dict], step: int) -> None:
        """One safety probe (a line per test template, see safeft.train.probe) at optimizer step `step`."""
        if not self.is_main:
            return
        values: dict = {"seconds": lines[0]["seconds"]} if lines else {}
        for line in lines:
            values[f"{line['template']}/harmful_rate"] = line["harmful_rate"]
            values[f"{line['template']}/ci95_low"], values[f"{line['template']}/ci95_high"] = line["ci95"]
        self._each("log_metrics", "safety", values, step)
        log.info("safety probe at step %d: %s (%.1f s)", step, ", ".join(
            f"{line['template']} harmful {line['harmful_rate']:.3f} [{line['ci95'][0]:.3f}, {line['ci95'][1]:.3f}] "
            f"n={line['n']}" for line in lines), lines[0]["seconds"] if lines else 0.0)

    def log_artifacts(self, paths: list[str], name: str) -> None:
        if self.is_main:
            self._each("log_artifacts", [p for p in paths if os.path.isfile(p)], name)

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)
        self.trackers = []


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
