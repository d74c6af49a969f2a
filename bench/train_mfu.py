"""Training throughput and MFU: padded unpacked batches (SDPA) vs packed rows (varlen attention), one GPU.

    python bench/train_mfu.py --out results/train_mfu.json                 # GPU: 1B- and 3B-class Llama
    python bench/train_mfu.py --smoke --out /tmp/train_mfu.json            # CPU: tiny model, a few steps

Random-initialised Llama-architecture models (no weights are downloaded), bf16 parameters with fused
AdamW, the same documents in both variants: GSM8K-length documents (lengths from the real GSM8K train
split when present, in Llama tokens at ~3.6 characters per token). Baseline (a): micro-batches of
`--padded-batch` documents right-padded to the longest (causal attention, so real tokens never see
padding). Variant (b): best-fit-decreasing rows of `--row-tokens` tokens, varlen attention. Reported:
real tokens/s (padding excluded) and MFU = (6 N + 12 L d seq) x real tokens/s / peak, seq = each token's
document length, N without the input embedding (torchtitan's convention). Both run in the same process, side by side.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from repo_root import REPO  # noqa: E402,F401 (safeft from this checkout)

MODELS = {  # Llama-architecture shapes; vocab 32000 like Llama-2
    "llama-1b": dict(hidden=2048, layers=16, heads=16, kv_heads=8, intermediate=5504),
    "llama-3b": dict(hidden=3072, layers=26, heads=24, kv_heads=8, intermediate=8192),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128),
}


def gsm8k_lengths(n: int, seed: int, scale: float) -> list[int]:
    """Token lengths of n GSM8K-like documents (prompt + answer), scaled for the smoke model."""
    from safeft.data.shared import shared_file

    path = shared_file("gsm8k", "train.jsonl")
    rng = random.Random(seed)
    if path:
        with open(path, encoding="utf-8") as f:
            chars = [len(r["question"]) + len(r["answer"]) + 40 for r in map(json.loads, f)]
        base = [max(16, int(c / 3.6)) for c in chars]
    else:
        base = [max(16, int(rng.gauss(190, 60))) for _ in range(n)]
    return [max(8, int(rng.choice(base) * scale)) for _ in range(n)]


def build_model(shape: dict, vocab: int, device, dtype, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=8192, use_cache=False)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def padded_batches(lengths: list[int], batch: int, vocab: int, seed: int):
    import torch

    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    for i in range(0, len(order) - batch + 1, batch):
        lens = [lengths[j] for j in order[i:i + batch]]
        width = max(lens)
        ids = torch.zeros(batch, width, dtype=torch.long)  # [B, Lmax], right-padded
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for r, n in enumerate(lens):
            ids[r, :n] = torch.randint(3, vocab, (n,))
            labels[r, 1:n] = ids[r, 1:n]
        pos = torch.arange(width)[None].expand(batch, -1)
        yield {"input_ids": ids, "labels": labels, "position_ids": pos}, lens


def packed_batches(lengths: list[int], row_tokens: int, vocab: int, seed: int):
    import torch

    from safeft.data.pack import PackedCollator, pack

    docs = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,)).tolist()
        docs.append((ids, ids))
    rows = pack(docs, row_tokens, seed)
    collate = PackedCollator(0)
    for row in rows:
        b = collate([row])
        cu = b["cu_seq_lens_q"]
        yield b, (cu[1:] - cu[:-1]).tolist()


def run_variant(name, model, wrapped, batches, steps, warmup, device, varlen, n_params, shape, peak):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=device.type == "cuda")
    real, sq, seconds, done = 0, 0, 0.0, 0
    for i, (batch, lens) in enumerate(batches):
        if done >= steps:
            break
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()
                  if varlen or k in ("input_ids", "labels", "position_ids")}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, n = wrapped(**inputs)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            seconds += time.perf_counter() - t0
            real += sum(lens)
            sq += sum(x * x for x in lens)
            done += 1
    tps = real / seconds
    flops = (6.0 * n_params * real + 12.0 * shape["layers"] * shape["hidden"] * sq) / seconds
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"variant": name, "steps": done, "real_tokens": real, "tokens_per_s": tps,
            "mfu": flops / peak if peak else None, "peak_mem_gib": mem}


def bench_model(key: str, args, device, dtype, peak) -> list[dict]:
    import torch

    from safeft.loss import CausalLMWithLoss
    from safeft.model import select_attention, uses_varlen_kwargs
    from safeft.train.metrics import matmul_params

    shape = MODELS[key]
    vocab = 512 if args.smoke else 32000
    lengths = gsm8k_lengths(args.docs, args.seed, 0.25 if args.smoke else 1.0)
    out = []
    for variant in ("padded+sdpa", "packed+varlen"):
        attn = "sdpa" if variant.startswith("padded") else select_attention("auto", device.type)
        model = build_model(shape, vocab, device, dtype, attn)
        if args.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        wrapped = CausalLMWithLoss(model)
        n_params = matmul_params(model)  # torchtitan's N: without the input embedding
        batches = (padded_batches(lengths, args.padded_batch, vocab, args.seed) if variant.startswith("padded")
                   else packed_batches(lengths, args.row_tokens, vocab, args.seed))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res = run_variant(variant, model, wrapped, batches, args.steps, args.warmup, device,
                          uses_varlen_kwargs(attn), n_params, shape, peak)
        res.update(model=key, params=n_params, attention=attn)
        out.append(res)
        del model, wrapped
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out[1]["speedup_vs_padded"] = out[1]["tokens_per_s"] / out[0]["tokens_per_s"]
    return out


def main(argv=None) -> int:
    import torch

    from safeft.distributed import PEAK_FLOPS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, fp32, a few steps (runs on CPU)")
    p.add_argument("--models", default="llama-1b,llama-3b")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--docs", type=int, default=4000)
    p.add_argument("--row-tokens", type=int, default=4096)
    p.add_argument("--padded-batch", type=int, default=16)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON results path")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None) if cuda else None
    if args.smoke:
        args.models, args.steps, args.warmup, args.docs = "tiny", min(args.steps, 4), 1, 200
        args.row_tokens = min(args.row_tokens, 512)
        args.padded_batch = min(args.padded_batch, 8)
    rows = []
    for key in args.models.split(","):
        rows += bench_model(key, args, device, dtype, peak)
    from safeft.train.metrics import MFU_CONVENTION

    print(f"device: {name}, dtype {dtype}, rows of {args.row_tokens} tokens vs padded batches of "
          f"{args.padded_batch} docs; MFU convention: {MFU_CONVENTION}")
    print(f"{'model':<10}{'variant':<16}{'attention':<22}{'tokens/s':>12}{'MFU':>8}{'speedup':>9}{'mem GiB':>9}")
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] else "-"
        print(f"{r['model']:<10}{r['variant']:<16}{r['attention']:<22}{r['tokens_per_s']:>12.0f}{mfu:>8}"
              f"{r.get('speedup_vs_padded', 1.0):>8.2f}x{mem:>9}")
    from safeft.io import write_json

    write_json(args.out, {"device": name, "dtype": str(dtype), "args": vars(args), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
