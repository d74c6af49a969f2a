"""The fused linear cross-entropy at real LLM shapes on a GPU: bf16 kernel against an fp32 full-logit reference.

V=128256 (Llama-3) runs the kernel's largest configuration (BLOCK 8192, 16 warps, 16 loop iterations),
which no CPU test reaches; V=32000 is Llama-2's. Both reduction paths: `sum` (gradients computed in the
forward) and `none` (the trainer's path: logits recomputed in the backward).
"""

from __future__ import annotations

import pytest
import torch

from helpers import torch_linear_ce

pytestmark = pytest.mark.gpu
N, H = 4096, 4096


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def _run(fn, hidden, weight, labels, upstream, reduction):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, labels, reduction)
    (loss.float() * upstream).sum().backward() if reduction == "none" else loss.backward()
    return loss.detach().float(), h.grad.float(), w.grad.float()


@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_bf16_kernel_matches_fp32_reference(vocab, reduction):
    from safeft.kernels import fused_linear_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(N, H, device="cuda", generator=g).to(torch.bfloat16)  # [N, H]
    weight = (torch.randn(vocab, H, device="cuda", generator=g) / H ** 0.5).to(torch.bfloat16)  # [V, H]
    labels = torch.randint(0, vocab, (N,), device="cuda", generator=g)  # [N]
    labels[::7] = -100
    upstream = torch.rand(N, device="cuda", generator=g)  # [N] a non-uniform gradient for reduction="none"
    got = _run(lambda h, w, y, r: fused_linear_cross_entropy(h, w, y, reduction=r, impl="triton"),
               hidden, weight, labels, upstream, reduction)
    # the reference: the same bf16 values upcast to fp32, full [N, V] logits
    want = _run(lambda h, w, y, r: torch_linear_ce(h.float(), w.float(), y, reduction=r),
                hidden, weight, labels, upstream, reduction)
    loss, gh, gw = got
    assert torch.isfinite(loss).all() and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    if reduction == "sum":
        assert loss.item() == pytest.approx(want[0].item(), rel=5e-3)
    else:
        torch.testing.assert_close(loss, want[0], atol=5e-2, rtol=1e-2)
    assert _rel(gh, want[1]) < 2e-2, ("grad_hidden", _rel(gh, want[1]))
    assert _rel(gw, want[2]) < 2e-2, ("grad_weight", _rel(gw, want[2]))
    assert gh[labels == -100].abs().max().item() == 0  # ignored tokens get no gradient

