"""Fused linear cross-entropy vs full-logit torch cross-entropy: peak memory, time, correctness.

  python bench/fused_ce.py                    # CPU: tokens 4096, hidden 512, vocab 32000, fp32, reference path
  python bench/fused_ce.py --device cuda      # GPU: hidden 4096, vocab 32000/128256, tokens 4k-32k, bf16

Baseline ("torch"): what an HF causal LM does, `logits = hidden @ weight.T`, upcast to fp32, then
F.cross_entropy; Liger's LigerFusedLinearCrossEntropyLoss joins on CUDA when importable. Every number
is forward + backward of the summed loss with gradients for hidden and weight. The fused kernel runs both
ways the trainer calls it: `sum` (plain SFT: gradients in forward, 3 GEMMs per chunk) and `none` summed
afterwards (constrained SFT: 4 GEMMs, logits recomputed in backward); on CUDA also `sum` with the fp32
grad_weight accumulator the trainer uses.

Memory on CPU: each variant runs in a fresh subprocess that creates its inputs, resets the kernel's
peak-RSS mark (`echo 5 > /proc/self/clear_refs`), runs forward+backward once and reads VmHWM from
/proc/self/status: peak = VmHWM - RSS just before the call. That counts everything the call touched
(tensors, gradients, allocator slack, BLAS workspaces) and nothing from before; torch's CPU allocator
caches nothing, so it is the real cost. Memory on CUDA: torch.cuda.max_memory_allocated() minus the
allocation before the call (inputs excluded, gradients included). Times are medians (CPU: of --reps
runs after one warm-up; CUDA: triton.testing.do_bench), reported as ratios to the baseline, no target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from repo_root import REPO  # noqa: E402
CPU_SHAPE = dict(tokens=4096, hidden=512, vocab=32000)
GPU_VOCABS = (32000, 128256)
GPU_TOKENS = (4096, 8192, 16384, 32768)


def make_inputs(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g).to(device, dtype).requires_grad_()  # [N, H]
    w = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5).to(device, dtype).requires_grad_()  # [V, H]
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::10] = -100  # prompt tokens
    return h, w, labels.to(device)


def torch_loss(h, w, labels):
    logits = (h @ w.T).float()  # [N, V], as HF causal LMs upcast before the loss
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def fused_loss(impl: str, reduction: str = "sum", fp32_grad_w: bool = False):
    """reduction "sum": gradients in the forward pass (3 GEMMs per chunk; plain SFT in the trainer); "none":
    per-token losses summed afterwards, logits recomputed in backward (4 GEMMs; constrained SFT)."""
    from safeft.kernels import fused_linear_cross_entropy

    accum = torch.float32 if fp32_grad_w else None
    if reduction == "none":
        return lambda h, w, labels: fused_linear_cross_entropy(h, w, labels, reduction="none", impl=impl,
                                                               grad_weight_dtype=accum).sum()
    return lambda h, w, labels: fused_linear_cross_entropy(h, w, labels, reduction="sum", impl=impl,
                                                           grad_weight_dtype=accum)


CPU_VARIANTS = {"torch": lambda: torch_loss, "fused_sum": lambda: fused_loss("reference", "sum"),
                "fused_none": lambda: fused_loss("reference", "none")}


def liger_loss():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    module = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")
    return lambda h, w, labels: module(w, h, labels)  # Liger's argument order: (lin_weight, _input, target)


def fwd_bwd(fn, h, w, labels) -> float:
    h.grad = w.grad = None
    loss = fn(h, w, labels)
    loss.backward()
    return float(loss)


# ---------------------------------------------------------------- CPU


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_child(variant: str, reps: int, shape: dict) -> dict:
    """Run in a fresh process: peak RSS of one forward+backward, then the median time of `reps` more."""
    h, w, labels = make_inputs(**shape, dtype=torch.float32, device="cpu")
    fn = CPU_VARIANTS[variant]()
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS mark to the current RSS
        f.write("5")
    loss = fwd_bwd(fn, h, w, labels)
    peak_mb = (_rss_kb("VmHWM") - before) / 1024
    grads = (h.grad.clone(), w.grad.clone())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fwd_bwd(fn, h, w, labels)
        times.append(time.perf_counter() - t0)
    torch.save({"loss": loss, "grad_h": grads[0], "grad_w": grads[1]}, os.environ["FLCE_BENCH_GRADS"])
    return {"variant": variant, "peak_mb": peak_mb, "median_s": statistics.median(times), "loss": loss}


def run_cpu(args) -> dict:
    results, grads = {}, {}
    for variant in CPU_VARIANTS:
        path = os.path.join(args.tmp, f"flce_{variant}.pt")
        env = dict(os.environ, FLCE_BENCH_GRADS=path, PYTHONPATH=REPO)
        shape = [str(args.cpu_shape[k]) for k in ("tokens", "hidden", "vocab")]
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--reps", str(args.reps),
                              "--cpu-shape", *shape], env=env,
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        grads[variant] = torch.load(path, weights_only=True)
        os.remove(path)
    t = results["torch"]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    out = {"shape": args.cpu_shape, "dtype": "float32", "threads": torch.get_num_threads(), "torch": t}
    for name in ("fused_sum", "fused_none"):  # reference row kernel (pure torch)
        f = results[name]
        out[name] = dict(f, peak_ratio_over_torch=f["peak_mb"] / t["peak_mb"],
                         time_ratio_over_torch=f["median_s"] / t["median_s"],
                         loss_rel_err=abs(f["loss"] - t["loss"]) / abs(t["loss"]),
                         grad_hidden_rel_err=rel(grads[name]["grad_h"], grads["torch"]["grad_h"]),
                         grad_weight_rel_err=rel(grads[name]["grad_w"], grads["torch"]["grad_w"]))
    return out


# ---------------------------------------------------------------- CUDA


def cuda_measure(fn, h, w, labels) -> dict:
    from triton.testing import do_bench

    torch.cuda.synchronize()
    h.grad = w.grad = None
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fwd_bwd(fn, h, w, labels)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grads = (h.grad.float(), w.grad.float())
    h.grad = w.grad = None
    ms = do_bench(lambda: fn(h, w, labels).backward(), grad_to_none=[h, w], return_mode="median")
    return {"loss": loss, "peak_gb": peak / 2**30, "median_ms": ms, "grads": grads}


def run_cuda(args) -> list[dict]:
    variants = {"torch": torch_loss, "fused_triton_sum": fused_loss("triton", "sum"),
                "fused_triton_none": fused_loss("triton", "none"),
                "fused_triton_sum_fp32gw": fused_loss("triton", "sum", fp32_grad_w=True)}
    liger = liger_loss()
    if liger is not None:
        variants["liger"] = liger
    rows = []
    for vocab in args.vocabs:
        for tokens in args.tokens:
            h, w, labels = make_inputs(tokens, 4096, vocab, torch.bfloat16, "cuda")
            row = {"tokens": tokens, "hidden": 4096, "vocab": vocab, "dtype": "bfloat16"}
            ref = None
            for name, fn in variants.items():
                try:
                    m = cuda_measure(fn, h, w, labels)
                except torch.OutOfMemoryError:
                    row[name] = "OOM"
                    torch.cuda.empty_cache()
                    continue
                grads = m.pop("grads")
                if name == "torch":
                    ref = (m["loss"], grads)
                elif ref is not None:  # correctness vs torch on this shape
                    m["loss_rel_err"] = abs(m["loss"] - ref[0]) / abs(ref[0])
                    m["grad_hidden_rel_err"] = float((grads[0] - ref[1][0]).norm() / ref[1][0].norm())
                    m["grad_weight_rel_err"] = float((grads[1] - ref[1][1]).norm() / ref[1][1].norm())
                row[name] = m
                del grads
            ref = None
            print(json.dumps(row), flush=True)
            rows.append(row)
            del h, w, labels
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--reps", type=int, default=3, help="CPU: timed runs per variant (median)")
    p.add_argument("--tokens", type=int, nargs="+", default=list(GPU_TOKENS), help="CUDA: token counts")
    p.add_argument("--vocabs", type=int, nargs="+", default=list(GPU_VOCABS), help="CUDA: vocabulary sizes")
    p.add_argument("--cpu-shape", type=int, nargs=3, metavar=("TOKENS", "HIDDEN", "VOCAB"),
                   default=[CPU_SHAPE[k] for k in ("tokens", "hidden", "vocab")],
                   help="CPU: problem size (smoke runs use a smaller one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.cpu_shape = dict(zip(("tokens", "hidden", "vocab"), args.cpu_shape))
    if args.child:
        print(json.dumps(cpu_child(args.child, args.reps, args.cpu_shape)))
        return
    if args.device == "cuda":
        result = {"device": torch.cuda.get_device_name(), "rows": run_cuda(args)}
    else:
        result = {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", **run_cpu(args)}
        print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
