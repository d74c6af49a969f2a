"""Evaluator throughput: safeft's engine against the naive loop (padded `generate`, batches of 8 in input order).

Same model, same prompts (GSM8K test questions under chat:vanilla), greedy; outputs are checked equal
and generated tokens/s are reported side by side as a ratio.

    python bench/eval_throughput.py                          # CPU, tiny model, 64 prompts, 32 new tokens
    python bench/eval_throughput.py --device cuda --arch 1b  # random-init Llama, bf16, 512 prompts, 256 new
    python bench/eval_throughput.py --device cuda --arch 7b --engine continuous
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ARCHS = {  # Llama-2-7B's real shape, and a 1B-class shape of the same family
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def questions(n: int) -> list[str]:
    from safeft.data.load import read_records
    from safeft.data.shared import shared_file

    gsm8k_test = shared_file("gsm8k", "test.jsonl")
    if gsm8k_test:
        qs = [row["question"] for row, _ in read_records(gsm8k_test)]
    else:
        from safeft.data.synthetic import arithmetic_problems

        qs = [p["question"] for p in arithmetic_problems(n, seed=0)]
    return (qs * (n // len(qs) + 1))[:n]


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safeft.tiny import build_tiny_model_dir, train_tokenizer

    if args.device == "cpu":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        d = build_tiny_model_dir(os.path.join(tempfile.gettempdir(), "safeft-bench-tiny"))
        return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d)
    tok = train_tokenizer()  # ids < 512 are valid in a 32k vocabulary: the prompt text is real, weights random
    cfg = LlamaConfig(**ARCHS[args.arch], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                      pad_token_id=3)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model, tok


def naive(model, tok, prompts: list[list[int]], max_new: int, batch: int = 8) -> tuple[list[list[int]], float]:
    """The reference loop: input order, fixed batches, left-padded generate."""
    import torch

    outs = []
    t0 = time.perf_counter()
    for s in range(0, len(prompts), batch):
        part = prompts[s: s + batch]
        width = max(len(p) for p in part)
        ids = torch.tensor([[3] * (width - len(p)) + p for p in part], device=model.device)  # [B, L]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=model.device)  # [B, L]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=3, eos_token_id=2, temperature=None, top_p=None, top_k=None)
        for row in gen[:, width:].tolist():
            outs.append(row[: row.index(2)] if 2 in row else row)
    _sync()
    return outs, time.perf_counter() - t0


def ours(model, tok, prompts, max_new, args) -> tuple[list[list[int]], float]:
    from safeft.eval.generate import Engine, GenSettings

    engine = Engine(None, GenSettings(engine=args.engine, batch_tokens=args.batch_tokens,
                                      max_batch_size=args.max_batch), model=model, tokenizer=tok)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, max_new)
    _sync()
    return [o["tokens"] for o in outs], time.perf_counter() - t0, engine.engine


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--arch", choices=tuple(ARCHS), default="1b")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--max-new", type=int, default=None)
    ap.add_argument("--engine", choices=("auto", "continuous", "budget"), default="auto")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    args.prompts = args.prompts or (64 if cpu else 512)
    args.max_new = args.max_new or (32 if cpu else 256)
    args.batch_tokens = args.batch_tokens or (8192 if cpu else 262144)
    args.max_batch = args.max_batch or (64 if cpu else 256)

    from safeft.data.tokenize import encode_prompt
    from safeft.templates import get_template

    model, tok = build(args)
    prompts = [encode_prompt(get_template("chat:vanilla"), tok, q) for q in questions(args.prompts)]
    ours(model, tok, prompts[:8], 4, args)  # warm-up (kernels, allocator) for both paths
    ref, t_ref = naive(model, tok, prompts, args.max_new)
    got, t_ours, engine = ours(model, tok, prompts, args.max_new, args)
    equal = sum(a == b for a, b in zip(ref, got))
    n_tok = sum(len(x) for x in ref)
    res = {"device": args.device, "arch": "tiny" if cpu else args.arch, "engine": engine, "prompts": len(prompts),
           "max_new": args.max_new, "generated_tokens": n_tok, "naive_s": round(t_ref, 3), "ours_s": round(t_ours, 3),
           "naive_tok_s": round(n_tok / t_ref, 1), "ours_tok_s": round(sum(len(x) for x in got) / t_ours, 1),
           "speedup": round(t_ref / t_ours, 2), "outputs_equal": f"{equal}/{len(prompts)}"}
    print(json.dumps(res, indent=2))
    if args.out:
        from safeft.io import write_json

        write_json(args.out, res)
    if equal != len(prompts):
        print(f"WARNING: {len(prompts) - equal} greedy outputs differ between the two paths", file=sys.stderr)


if __name__ == "__main__":
    main()
