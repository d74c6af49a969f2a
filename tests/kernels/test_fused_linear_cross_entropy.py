"""fused_linear_cross_entropy: the torch reference path against full-logit torch CE, input errors, memory.

The Triton kernel's tests live in test_fused_linear_cross_entropy_triton.py; on CPU they need
TRITON_INTERPRET=1 before triton is imported, so test_triton_kernel_interpreted runs them in a fresh process.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import REPO, cpu_env, torch_linear_ce
from safeft.kernels import fused_linear_cross_entropy

RTOL, ATOL = 1e-5, 1e-5  # fp32: only the summation order differs


def _inputs(n, h, v, weighted=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[1::3] = -100
    weights = torch.rand(n, generator=g) * 2 if weighted else None
    return hidden, weight, labels, weights


def _grads(fn, hidden, weight, reduction, upstream=None):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w)
    (loss * upstream).sum().backward() if reduction == "none" else (loss * 0.7).backward()
    return loss.detach().float(), h.grad.float(), w.grad.float()


@pytest.mark.parametrize("shape", [(37, 24, 131), (64, 32, 256)], ids=["odd", "pow2"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_reference_matches_full_logit_torch(shape, reduction, weighted):
    hidden, weight, labels, weights = _inputs(*shape, weighted)
    upstream = torch.randn(shape[0])
    got = _grads(lambda h, w: fused_linear_cross_entropy(h, w, labels, token_weights=weights, reduction=reduction,
                                                         impl="reference", chunk_size=8), hidden, weight, reduction,
                 upstream)
    want = _grads(lambda h, w: torch_linear_ce(h, w, labels, weights, reduction), hidden, weight, reduction, upstream)
    for name, a, b in zip(("loss", "grad_hidden", "grad_weight"), got, want):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def test_bf16_reference_within_bf16_tolerance_of_fp32_torch():
    hidden, weight, labels, weights = _inputs(96, 64, 300, seed=3)
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    got = _grads(lambda h, w: fused_linear_cross_entropy(h, w, labels, token_weights=weights, impl="reference",
                                                         chunk_size=16), hb, wb, "sum")
    # fp32 torch on the same (bf16-representable) values: only the bf16 logits/gradients rounding differs
    want = _grads(lambda h, w: torch_linear_ce(h, w, labels, weights, "sum"), hb.float(), wb.float(), "sum")
    assert got[1].dtype == torch.float32  # _grads upcasts; the real grads are bf16 like the inputs
    torch.testing.assert_close(got[0], want[0], rtol=1e-2, atol=0)
    for a, b in zip(got[1:], want[1:]):
        assert (a - b).norm() / b.norm() < 1e-2


def test_reference_path_never_builds_full_logits():
    """No tensor created in forward or backward is as large as the [N, V] logits."""
    n, h, v, chunk = 64, 16, 512, 8
    hidden, weight, labels, _ = _inputs(n, h, v)
    hidden.requires_grad_()
    weight.requires_grad_()

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    with LargestOutput():
        fused_linear_cross_entropy(hidden, weight, labels, impl="reference", chunk_size=chunk).backward()
    assert LargestOutput.largest == max(chunk * v, v * h)  # one chunk's logits, or grad_weight


def test_input_shapes_no_grad_and_edge_cases():
    hidden, weight, labels, weights = _inputs(12, 8, 20)
    flat = fused_linear_cross_entropy(hidden, weight, labels, token_weights=weights, reduction="none")
    batched = fused_linear_cross_entropy(hidden.view(3, 4, 8), weight, labels.view(3, 4),
                                         token_weights=weights.view(3, 4), reduction="none")
    assert batched.shape == (3, 4) and torch.equal(batched.reshape(-1), flat)
    assert flat[1] == 0  # ignored token
    with torch.no_grad():
        no_grad = fused_linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    assert not no_grad.requires_grad
    torch.testing.assert_close(no_grad, torch_linear_ce(hidden.detach(), weight, labels))
    none_left = torch.full_like(labels, -100)
    assert fused_linear_cross_entropy(hidden, weight, none_left, reduction="mean").item() == 0.0  # torch: nan


def test_double_backward_is_refused():
    hidden, weight, labels, _ = _inputs(12, 8, 20)
    loss = fused_linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("change, match", [
    (dict(labels=torch.tensor([0, 25, 1] + [0] * 9)), r"labels\[1\] = 25: expected a token id in \[0, 20\)"),
    (dict(labels=torch.zeros(11, dtype=torch.long)), r"labels \(11,\): expected \(12,\)"),
    (dict(token_weights=torch.ones(5)), r"token_weights \(5,\): expected \(12,\)"),
    (dict(weight=torch.randn(20, 8, dtype=torch.float64)), "expected one floating dtype"),
    (dict(reduction="avg"), "reduction 'avg': expected one of sum, mean, none"),
    (dict(impl="cuda"), "impl 'cuda': expected one of"),
])
def test_bad_inputs_raise_clear_errors(change, match):
    hidden, weight, labels, _ = _inputs(12, 8, 20)
    kwargs = dict(hidden=hidden, weight=weight, labels=labels) | change
    with pytest.raises(ValueError, match=match):
        fused_linear_cross_entropy(kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("labels"), **kwargs)


def test_impl_choice_and_env_override(monkeypatch):
    hidden, weight, labels, _ = _inputs(12, 8, 20)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("SAFEFT_FLCE_IMPL", "triton")  # CPU tensors without the interpreter: refused clearly
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1|needs the triton package"):
        fused_linear_cross_entropy(hidden, weight, labels)
    fused_linear_cross_entropy(hidden, weight, labels, impl="reference")  # an explicit impl beats the variable
    monkeypatch.setenv("SAFEFT_FLCE_IMPL", "fast")
    with pytest.raises(ValueError, match="SAFEFT_FLCE_IMPL='fast'"):
        fused_linear_cross_entropy(hidden, weight, labels)
    monkeypatch.delenv("SAFEFT_FLCE_IMPL")
    torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, labels),  # auto on CPU = reference
                               torch_linear_ce(hidden, weight, labels))


def test_triton_kernel_interpreted():
    """Runs test_fused_linear_cross_entropy_triton.py in a fresh process with TRITON_INTERPRET=1."""
    module = REPO / "tests" / "kernels" / "test_fused_linear_cross_entropy_triton.py"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
                          cwd=REPO, env=cpu_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(r"\b1[0-9] passed", summary) and "skipped" not in summary, summary


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fp32_weight_gradient_accumulator(reduction):
    """bf16 over 64 chunks: the fp32 accumulator keeps grad_weight nearer the fp32 reference than bf16 sums do."""
    hidden, weight, labels, weights = _inputs(1024, 32, 96, seed=5)
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    upstream = torch.ones(1024)
    want = _grads(lambda h, w: torch_linear_ce(h, w, labels, weights, reduction), hb.float(), wb.float(), reduction,
                  upstream)[2]
    err = {}
    for accum in (None, torch.float32):
        loss, _, grad_w = _grads(lambda h, w: fused_linear_cross_entropy(
            h, w, labels, token_weights=weights, reduction=reduction, impl="reference", chunk_size=16,
            grad_weight_dtype=accum), hb, wb, reduction, upstream)
        err[accum] = float((grad_w - want).abs().max())
    assert err[torch.float32] < 0.5 * err[None], err
