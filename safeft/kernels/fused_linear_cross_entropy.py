"""Fused linear + cross-entropy: the loss of `hidden @ weight.T` against labels without the [N, V] logits.

Tokens are processed in chunks of C rows. For each chunk the logits [C, V] come from one matmul; a row
kernel computes the log-sum-exp (online, in fp32) and the per-token loss, then overwrites the logits in
place with their gradient `(softmax - onehot) * scale` (scale = token weight, / target count for "mean",
0 at ignored tokens). Two more matmuls turn that into the chunk's grad_hidden rows and add its share of
grad_weight. So for "sum" and "mean" the forward pass already holds both gradients and the backward
pass only multiplies them by grad_output (double backward is not supported). "none" cannot do that
(each token's loss has its own upstream gradient), so it saves the per-token log-sum-exp and recomputes
each chunk's logits in the backward pass.

Two implementations of the row kernel share this driver: a Triton kernel (CUDA; on CPU only under
TRITON_INTERPRET=1) and pure torch ops (any device). `impl="auto"` picks Triton on CUDA and torch
elsewhere; the environment variable SAFEFT_FLCE_IMPL=auto|triton|reference overrides "auto".

Precision: logits are produced in the inputs' dtype by the matmul (which accumulates in fp32); the
log-sum-exp, losses and softmax are fp32. grad_weight is accumulated across chunks in the weight's
dtype with in-place addmm (one rounding of the running sum per chunk), or with `grad_weight_dtype=
torch.float32` in an fp32 [V, H] accumulator (each chunk's product rounded once, the sum kept in fp32, one
cast at the end; + 4 V H bytes); the returned loss is always fp32.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the reference path needs only torch
    triton = None

IMPLS = ("auto", "triton", "reference")
REDUCTIONS = ("sum", "mean", "none")
ENV_IMPL = "SAFEFT_FLCE_IMPL"

if triton is not None:

    @triton.jit
    def _ce_rows_kernel(logits_ptr, row_stride, labels_ptr, scale_ptr, lse_ptr, loss_ptr, n_cols, ignore_index,
                        BLOCK: tl.constexpr, HAVE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr):
        """One program per row of a [C, V] logits chunk: lse, loss and (optionally) the in-place gradient."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        label = tl.load(labels_ptr + row).to(tl.int64)
        if HAVE_LSE:
            lse = tl.load(lse_ptr + row)
        else:
            running_max = tl.full([], float("-inf"), tl.float32)
            running_sum = tl.zeros([], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(row_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
                new_max = tl.maximum(running_max, tl.max(x, axis=0))
                running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
                running_max = new_max
            lse = running_max + tl.log(running_sum)
            tl.store(lse_ptr + row, lse)
        is_target = label != ignore_index
        x_label = tl.load(row_ptr + label, mask=is_target, other=0.0).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(is_target, lse - x_label, 0.0))
        if WRITE_GRAD:
            scale = tl.load(scale_ptr + row)  # 0 at ignored rows: their gradient row becomes zeros
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                grad = tl.exp(x - lse) * scale
                grad = tl.where(cols == label, grad - scale, grad)
                tl.store(row_ptr + cols, grad.to(row_ptr.dtype.element_ty), mask=mask)


def _next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def _triton_config(n_cols: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps) for the row kernel; chosen here because @triton.autotune fails in the interpreter."""
    if device.type != "cuda":  # interpreter: small blocks keep numpy temporaries small
        return min(_next_pow2(n_cols), 1024), 1
    block = min(_next_pow2(n_cols), 8192)
    return block, 16 if block >= 8192 else 8 if block >= 2048 else 4


def _rows_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: Optional[torch.Tensor],
                 lse: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [C, V] (rows contiguous), labels [C], scale [C] fp32 or None, lse [C] fp32 or None.

    Returns (loss [C] fp32, lse [C] fp32); with scale, logits are overwritten by d(loss . scale)/d(logits).
    """
    rows, n_cols = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    lse_out = lse if lse is not None else torch.empty(rows, dtype=torch.float32, device=logits.device)
    block, warps = _triton_config(n_cols, logits.device)
    _ce_rows_kernel[(rows,)](
        logits, logits.stride(0), labels, scale if scale is not None else loss, lse_out, loss, n_cols, ignore_index,
        BLOCK=block, HAVE_LSE=lse is not None, WRITE_GRAD=scale is not None, num_warps=warps,
    )
    return loss, lse_out


def _rows_torch(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: Optional[torch.Tensor],
                lse: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as _rows_triton, with torch ops (the reference; runs on any device)."""
    x = logits.float()  # [C, V] fp32; the same tensor when logits are fp32, so the gradient lands in place
    if lse is None:
        lse = torch.logsumexp(x, dim=-1)  # [C]
    target = labels != ignore_index
    safe_labels = torch.where(target, labels, 0).unsqueeze(1)  # [C, 1]
    loss = torch.where(target, lse - x.gather(1, safe_labels).squeeze(1), 0.0)  # [C]
    if scale is not None:
        x.sub_(lse.unsqueeze(1)).exp_().mul_(scale.unsqueeze(1))
        x.scatter_add_(1, safe_labels, (-scale * target).unsqueeze(1))
        if x is not logits:
            logits.copy_(x)
    return loss, lse


RowsFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _chunk_starts(n: int, chunk: int) -> range:
    return range(0, n, chunk)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, scale, reduction, ignore_index, rows_fn, chunk, need_h, need_w,
                accum_dtype):
        # hidden [N, H], weight [V, H], labels [N], scale [N] fp32: token weight (/ count for mean), 0 if ignored
        n_tokens = hidden.shape[0]
        per_token = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)  # [N] unweighted CE
        ctx.reduction, ctx.ignore_index, ctx.rows_fn, ctx.chunk = reduction, ignore_index, rows_fn, chunk
        ctx.need_h, ctx.need_w, ctx.accum_dtype = need_h, need_w, accum_dtype
        if reduction == "none" or not (need_h or need_w):
            lse = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)  # [N]
            for s in _chunk_starts(n_tokens, chunk):
                logits = hidden[s:s + chunk] @ weight.T  # [C, V]
                per_token[s:s + chunk], lse[s:s + chunk] = rows_fn(logits, labels[s:s + chunk], ignore_index, None, None)
            if reduction == "none":
                ctx.save_for_backward(hidden, weight, labels, scale, lse)
                return per_token * scale
            return (per_token * scale).sum()
        grad_h, grad_w = _chunked_grads(hidden, weight, labels, scale, None, ignore_index, rows_fn, chunk,
                                        need_h, need_w, per_token, accum_dtype)
        ctx.grads = (grad_h, grad_w)
        return (per_token * scale).sum()

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.reduction == "none":
            hidden, weight, labels, scale, lse = ctx.saved_tensors
            grad_h, grad_w = _chunked_grads(hidden, weight, labels, scale * grad_out.float(), lse, ctx.ignore_index,
                                            ctx.rows_fn, ctx.chunk, ctx.need_h, ctx.need_w, None, ctx.accum_dtype)
        else:
            if getattr(ctx, "grads", None) is None:
                raise RuntimeError("fused_linear_cross_entropy: backward ran twice (its gradients are computed in "
                                   "the forward pass and consumed once); use reduction='none' for double backward")
            grad_h, grad_w = ctx.grads
            ctx.grads = None
            # in place: the buffers are ours, and a copy of grad_weight would double the peak memory
            if grad_h is not None:
                grad_h.mul_(grad_out)
            if grad_w is not None:
                grad_w.mul_(grad_out)
        return grad_h, grad_w, None, None, None, None, None, None, None, None, None


def _chunked_grads(hidden, weight, labels, scale, lse, ignore_index, rows_fn, chunk, need_h, need_w, per_token_out,
                   accum_dtype=None):
    """grad_hidden [N, H] and grad_weight [V, H] of sum(CE * scale), one token chunk at a time.

    lse [N] given: reuse it (backward of "none"); per_token_out [N] given: write the unweighted CE there.
    accum_dtype: the dtype grad_weight is summed in over chunks (None: the weight's); returned in the weight's.
    """
    n_tokens = hidden.shape[0]
    grad_h = torch.empty_like(hidden) if need_h else None  # [N, H]
    wide = need_w and accum_dtype is not None and accum_dtype != weight.dtype
    grad_w = torch.zeros_like(weight, dtype=accum_dtype if wide else weight.dtype) if need_w else None  # [V, H]
    product = torch.empty_like(weight) if wide else None  # [V, H] one chunk's share, in the GEMM's dtype
    for s in _chunk_starts(n_tokens, chunk):
        h_chunk = hidden[s:s + chunk]  # [C, H]
        logits = h_chunk @ weight.T  # [C, V], becomes d(loss)/d(logits) in place
        loss, _ = rows_fn(logits, labels[s:s + chunk], ignore_index, scale[s:s + chunk],
                          None if lse is None else lse[s:s + chunk])
        if per_token_out is not None:
            per_token_out[s:s + chunk] = loss
        if grad_h is not None:
            torch.mm(logits, weight, out=grad_h[s:s + chunk])
        if wide:
            torch.mm(logits.T, h_chunk, out=product)
            grad_w.add_(product)
        elif grad_w is not None:
            grad_w.addmm_(logits.T, h_chunk)
    if wide:
        grad_w = grad_w.to(weight.dtype)
    return grad_h, grad_w


def _resolve_impl(impl: str, device: torch.device) -> RowsFn:
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = os.environ.get(ENV_IMPL, "auto") or "auto"
        if impl not in IMPLS:
            raise ValueError(f"environment variable {ENV_IMPL}={impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton is not None else "reference"
    if impl == "reference":
        return _rows_torch
    if triton is None:
        raise ValueError("impl 'triton' needs the triton package (pip install triton), or use impl='reference'")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"impl 'triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before triton is "
                         "imported; use impl='reference' on CPU")
    return _rows_triton


def default_chunk_size(n_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk: a chunk's logits about as large as the hidden states (C x V ~ N x H), a power of two."""
    return max(16, min(_next_pow2(-(-n_tokens * hidden_size // vocab_size)), _next_pow2(n_tokens)))


def _check_inputs(hidden, weight, labels, token_weights, reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    if hidden.dim() < 2 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: expected [N, H] and [V, H]")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)}: expected {tuple(hidden.shape[:-1])} (one per token of hidden)")
    if token_weights is not None and token_weights.shape != labels.shape:
        raise ValueError(f"token_weights {tuple(token_weights.shape)}: expected {tuple(labels.shape)} like labels")
    if hidden.dtype != weight.dtype or not hidden.is_floating_point():
        raise ValueError(f"hidden {hidden.dtype} and weight {weight.dtype}: expected one floating dtype")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels {labels.dtype}: expected int64 or int32")
    if not (hidden.device == weight.device == labels.device):
        raise ValueError(f"hidden, weight and labels on {hidden.device}, {weight.device}, {labels.device}: "
                         "expected one device")


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                               ignore_index: int = -100, token_weights: Optional[torch.Tensor] = None,
                               reduction: str = "sum", impl: str = "auto",
                               chunk_size: Optional[int] = None,
                               grad_weight_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `labels`, chunked over tokens (no [N, V] logits).

    hidden [..., H] and weight [V, H] of one float dtype (bf16 or fp32); labels [...] int (ignore_index
    = no loss); token_weights [...] multiply each token's loss and are constants (not differentiated).
    reduction: "sum"; "mean" = weighted sum / number of non-ignored tokens (the count, like torch, not
    the sum of weights; 0 when there is none, where torch gives nan); "none" = per-token weighted losses
    shaped like labels (0 at ignored tokens), differentiable. The loss is fp32. Gradients flow to hidden
    and weight. Checking the labels' range syncs the device once per call. "sum"/"mean" compute both
    gradients in the forward pass (3 GEMMs per chunk); "none" recomputes the logits in backward (4).
    grad_weight_dtype: torch.float32 sums grad_weight over chunks in fp32 (None: in the weight's dtype).
    """
    _check_inputs(hidden, weight, labels, token_weights, reduction)
    out_shape = labels.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    labels = labels.reshape(-1)  # [N]
    rows_fn = _resolve_impl(impl, hidden.device)
    target = labels != ignore_index  # [N]
    vocab = weight.shape[0]
    bad = target & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels[{i}] = {int(labels[i])}: expected a token id in [0, {vocab}) or {ignore_index}")
    scale = target.float()  # [N]
    if token_weights is not None:
        scale = scale * token_weights.reshape(-1).detach().to(device=hidden.device, dtype=torch.float32)
    if reduction == "mean":
        scale = scale / target.sum().clamp(min=1)
    chunk = chunk_size or default_chunk_size(hidden.shape[0], hidden.shape[1], vocab)
    if chunk < 1:
        raise ValueError(f"chunk_size {chunk}: expected >= 1")
    grad_on = torch.is_grad_enabled()
    need_h, need_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    labels = labels.contiguous()
    loss = _FusedLinearCrossEntropy.apply(hidden, weight, labels, scale, reduction, ignore_index, rows_fn, chunk,
                                          need_h, need_w, grad_weight_dtype)
    return loss.reshape(out_shape) if reduction == "none" else loss


__all__ = ["fused_linear_cross_entropy", "default_chunk_size", "IMPLS", "REDUCTIONS", "ENV_IMPL"]
