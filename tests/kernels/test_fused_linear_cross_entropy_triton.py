"""The Triton row kernel against the torch reference path and plain full-logit torch cross-entropy.

Runs only where Triton can: on CUDA, or on CPU under TRITON_INTERPRET=1, which must be set before triton
is imported, so test_fused_linear_cross_entropy.py runs this module in a fresh interpreter process.
Shapes stay tiny: the interpreter executes every kernel op in numpy.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from helpers import torch_linear_ce
from skip_report import NO_CUDA

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason=f"{NO_CUDA} for Triton, or TRITON_INTERPRET=1 "
                                       "(see test_fused_linear_cross_entropy.py)")

# fp32 tolerances: both sides sum the same fp32 products in a different order
RTOL, ATOL = 1e-5, 1e-5
SHAPES = [(37, 24, 131), (64, 32, 256)]  # (tokens, hidden, vocab): odd, and powers of two


def _inputs(n, h, v, weighted, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(DEVICE, dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::4] = -100  # ignored tokens, including the first
    weights = torch.rand(n, generator=g) * 2 if weighted else None
    upstream = torch.randn(n, generator=g)  # a non-uniform gradient for reduction="none"
    return hidden, weight, labels.to(DEVICE), None if weights is None else weights.to(DEVICE), upstream.to(DEVICE)


def _loss_and_grads(fn, hidden, weight, labels, weights, upstream, reduction):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, labels, weights, reduction)
    ((loss * upstream).sum() if reduction == "none" else loss * 1.7).backward()
    return loss.detach().float(), h.grad.float(), w.grad.float()


def _flce(impl, chunk):
    from safeft.kernels import fused_linear_cross_entropy

    return lambda h, w, y, tw, red: fused_linear_cross_entropy(h, w, y, token_weights=tw, reduction=red, impl=impl,
                                                               chunk_size=chunk)


def _torch(h, w, y, tw, red):
    return torch_linear_ce(h, w, y, tw, red)


@pytest.mark.parametrize("shape", SHAPES, ids=["odd", "pow2"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_triton_matches_torch_and_reference(shape, reduction, weighted):
    args = _inputs(*shape, weighted)
    got = _loss_and_grads(_flce("triton", 16), *args, reduction)
    want = _loss_and_grads(_torch, *args, reduction)
    ref = _loss_and_grads(_flce("reference", 16), *args, reduction)
    for name, a, b, c in zip(("loss", "grad_hidden", "grad_weight"), got, want, ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} vs torch: {m}")
        torch.testing.assert_close(a, c, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} vs reference: {m}")


def test_small_vocab_blocks_loop_and_mask(monkeypatch):
    """BLOCK 32 over vocab 131: five blocks, the last one masked, in both the lse and the gradient loops."""
    module = importlib.import_module("safeft.kernels.fused_linear_cross_entropy")  # the package attribute is the function
    monkeypatch.setattr(module, "_triton_config", lambda n_cols, device: (32, 1))
    args = _inputs(37, 24, 131, weighted=True, seed=1)
    for reduction in ("sum", "none"):
        got = _loss_and_grads(_flce("triton", 8), *args, reduction)
        want = _loss_and_grads(_torch, *args, reduction)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_bf16_inputs_match_reference_path():
    """bf16 logits are loaded and upcast in the kernel; the reference path upcasts with torch: same numbers."""
    args = _inputs(37, 24, 131, weighted=True, dtype=torch.bfloat16, seed=2)
    got = _loss_and_grads(_flce("triton", 16), *args, "sum")
    ref = _loss_and_grads(_flce("reference", 16), *args, "sum")
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-4)
    for a, b in zip(got[1:], ref[1:]):  # gradients are rounded to bf16 in both paths
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-2)
