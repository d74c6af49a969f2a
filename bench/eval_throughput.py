"""Evaluator throughput: safeft's engines against the naive loop (padded `generate`, batches of 8 in input order).

Same model, same prompts (GSM8K test questions under chat:vanilla), greedy; generated tokens/s of each
engine are reported side by side with the naive loop's, as a ratio, and outputs are checked equal.

Random weights never emit EOS, so every prompt would run to --max-new and continuous batching (whose
gain is ragged lengths) would never show. A forward hook forces EOS at pseudo-random positions: a hash
of the token's position id, so a prompt stops after about --mean-stop tokens (geometric), the same in
every engine whatever bf16 near-ties do to the other tokens.

    python bench/eval_throughput.py                          # CPU, tiny model, 32 prompts, 24 new tokens
    python bench/eval_throughput.py --device cuda --arch 1b  # random-init Llama, bf16, 128 prompts, 128 new
    python bench/eval_throughput.py --device cuda --arch 7b --engines continuous
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from repo_root import REPO  # noqa: E402,F401 (safeft from this checkout)

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


def force_stops(model, eos: int, mean_len: int, salt: int = 0):
    """Make the model emit EOS at positions p where hash(p) % mean_len == 0 (a forward hook on its logits).

    Logits rows are matched to position ids as the model computed them: all positions, the last
    `logits_to_keep` (generate), or the rows `logits_to_keep` indexes (continuous batching)."""
    import torch

    def hook(module, args, kwargs, output):
        pos, keep = kwargs.get("position_ids"), kwargs.get("logits_to_keep", 0)
        if pos is None or mean_len <= 0:
            return output
        logits = output.logits  # [B, T', V]
        if isinstance(keep, torch.Tensor):
            pos = pos[..., keep]
        elif pos.shape[-1] != logits.shape[-2]:
            pos = pos[..., -logits.shape[-2]:]
        mixed = ((pos.long() * 2654435761 + salt) % 4294967296) >> 7  # [B, T']
        stop = (mixed % mean_len == 0).unsqueeze(-1)  # [B, T', 1]
        forced = torch.full_like(logits, torch.finfo(logits.dtype).min)
        forced[..., eos] = 0
        output.logits = torch.where(stop, forced, logits)
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


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


def ours(model, tok, prompts, max_new, engine_name, args) -> tuple[list[list[int]], float, str]:
    from safeft.eval.generate import Engine, GenSettings

    engine = Engine(None, GenSettings(engine=engine_name, batch_tokens=args.batch_tokens,
                                      max_batch_size=args.max_batch), model=model, tokenizer=tok)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, max_new)
    _sync()
    return [o["tokens"] for o in outs], time.perf_counter() - t0, engine.engine


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--arch", choices=tuple(ARCHS), default="1b")
    ap.add_argument("--prompts", type=int, default=None, help="default: 32 on CPU, 128 on CUDA")
    ap.add_argument("--max-new", type=int, default=None, help="default: 24 on CPU, 128 on CUDA")
    ap.add_argument("--mean-stop", type=int, default=None, help="mean forced stop length (0: never; default max-new/3)")
    ap.add_argument("--engines", default="budget,continuous", help="comma-separated: auto, budget, continuous")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    args.prompts = args.prompts or (32 if cpu else 128)
    args.max_new = args.max_new or (24 if cpu else 128)
    args.mean_stop = max(2, args.max_new // 3) if args.mean_stop is None else args.mean_stop
    args.batch_tokens = args.batch_tokens or (8192 if cpu else 262144)
    args.max_batch = args.max_batch or (64 if cpu else 256)
    return args


def main(argv=None) -> None:
    args = _args(argv)
    from safeft.data.tokenize import encode_prompt
    from safeft.templates import get_template

    model, tok = build(args)
    force_stops(model, 2, args.mean_stop)
    prompts = [encode_prompt(get_template("chat:vanilla"), tok, q) for q in questions(args.prompts)]
    engines = [e for e in args.engines.split(",") if e]
    for name in engines:  # warm-up (kernels, allocator, continuous batching's first graphs) for every path
        ours(model, tok, prompts[:8], 4, name, args)
    naive(model, tok, prompts[:8], 4)
    ref, t_ref = naive(model, tok, prompts, args.max_new)
    n_tok = sum(len(x) for x in ref)
    lengths = sorted(len(x) for x in ref)
    res = {"device": args.device, "arch": "tiny" if args.device == "cpu" else args.arch, "prompts": len(prompts),
           "max_new": args.max_new, "mean_stop": args.mean_stop, "generated_tokens": n_tok,
           "stop_lengths": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1],
                            "at_max_new": sum(n == args.max_new for n in lengths)},
           "naive_s": round(t_ref, 3), "naive_tok_s": round(n_tok / t_ref, 1), "engines": []}
    for name in engines:
        got, t_ours, picked = ours(model, tok, prompts, args.max_new, name, args)
        res["engines"].append({
            "engine": picked, "seconds": round(t_ours, 3), "tok_s": round(sum(len(x) for x in got) / t_ours, 1),
            "speedup": round(t_ref / t_ours, 2), "outputs_equal": f"{sum(a == b for a, b in zip(ref, got))}/{len(ref)}",
            "lengths_equal": f"{sum(len(a) == len(b) for a, b in zip(ref, got))}/{len(ref)}"})
    print(json.dumps(res, indent=2))
    if args.out:
        from safeft.io import write_json

        write_json(args.out, res)
    for e in res["engines"]:
        if not e["outputs_equal"].startswith(f"{len(ref)}/"):
            print(f"WARNING: {e['engine']}: greedy outputs equal for {e['outputs_equal']} prompts only "
                  f"(bf16 near-ties; stop lengths equal for {e['lengths_equal']})", file=sys.stderr)


if __name__ == "__main__":
    main()
