"""Packed rows on a GPU: for every attention backend present, one packed forward/backward equals the
documents run one at a time (logits and parameter gradients), in bf16.

Backends: SDPA (packed mask from position_ids), eager, PyTorch varlen (`safeft_torch_varlen`) and
flash-attn (only where it really imports). The reference is each document alone through SDPA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
DOCS = [37, 64, 19, 5]  # document lengths in one packed row


def _backends() -> list[str]:
    import safeft.model as m

    names = ["sdpa", "eager"]
    if m._torch_varlen() is not None:
        names.append(m.register_varlen_attention())
    if m.flash_attn_usable():
        names.append("flash_attention_2")
    return names


def _model(attn: str):
    from safeft.tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(512, hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512)  # GQA, head_dim 64
    cfg._attn_implementation = attn
    cfg.use_cache = False
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def _grads(model) -> dict:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def reference():
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(4, 512, (n,), generator=g) for n in DOCS]
    probe = [torch.randn(n, 512, generator=g) for n in DOCS]  # a fixed linear loss over the logits
    model = _model("sdpa")
    logits = []
    for d, w in zip(docs, probe):
        out = model(d[None].cuda(), use_cache=False).logits[0]  # [n, V]
        (out.float() * w.cuda()).sum().backward()
        logits.append(out.detach())
    return docs, probe, torch.cat(logits), _grads(model)


@pytest.mark.parametrize("attn", _backends() if torch.cuda.is_available() else ["sdpa"])
def test_packed_equals_unpacked(reference, attn):
    from safeft.model import uses_varlen_kwargs

    docs, probe, want_logits, want_grads = reference
    ids = torch.cat(docs)[None].cuda()  # [1, T]
    pos = torch.cat([torch.arange(n) for n in DOCS])[None].cuda()  # [1, T] restarting per document
    cu = torch.tensor([0, *torch.tensor(DOCS).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(DOCS), "max_length_k": max(DOCS)}
    model = _model(attn)
    out = model(ids, position_ids=pos, use_cache=False, **(extra if uses_varlen_kwargs(attn) else {})).logits[0]
    (out.float() * torch.cat(probe).cuda()).sum().backward()
    assert _rel(out, want_logits) < 1e-2, (attn, "logits", _rel(out, want_logits))
    got = _grads(model)
    assert got.keys() == want_grads.keys()
    worst = max(want_grads, key=lambda k: _rel(got[k], want_grads[k]))
    assert _rel(got[worst], want_grads[worst]) < 3e-2, (attn, worst, _rel(got[worst], want_grads[worst]))
