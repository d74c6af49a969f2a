"""Evaluation on a real model: safeft's evaluator against lm-eval-harness (hf backend) and a naive generate loop.

SmolLM2-135M-Instruct with --dtype weights on every side, greedy, on the first --n GSM8K test questions
(the shared test.jsonl), each asked as the single user turn of the model's chat template without a system
prompt of ours (SmolLM2's template then inserts its default one), --max-new new tokens, generation ending
at the model's end-of-turn id `<|im_end|>` and no other stop string. Every side's completions are scored
by the same scorer (safeft.eval.scoring's GSM8K exact match) and compared text for text.

Sides (each in its own process, interleaved, `--repeats` times; with --pair, the default, one-process sides run
two at a time, one per core: safeft beside lm-eval, then naive; the two-process side alone):
    safeft            safeft.eval.evaluate, 1 replica (token-budget batches, longest prompt first)
    safeft-2replicas  the same with eval.replicas 2 (two Ray actors: two processes, twice the cores)
    lm-eval           lm-eval-harness `hf` backend, a local-file task (a YAML over a local jsonl, written to a
                      temporary folder; no hub), apply_chat_template, batch size --batch (see below)
    naive             left-padded `model.generate` over fixed batches of --batch prompts in input order
Batch size of lm-eval and the naive loop: by default the mean batch safeft's own engine forms on these
prompts (its budget of 16384 KV tokens and cap of 64), so every side works on batches of the same size.
Time = the side's evaluation call, model load included; wall = the whole child process (imports, Ray).

    python bench/real_eval.py                        # n 200, 128 new tokens, bf16: runs/bench/real_eval.{json,md}
    python bench/real_eval.py --dtype float32 --repeats 2 --no-pair   # exact numerics, one side at a time
    python bench/real_eval.py --n 40 --max-new 64 --sides safeft,lm-eval
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import (  # noqa: E402
    DEFAULT_MODEL, SYSTEM, TEMPLATE, LoadSampler, chat_template, child_env, gsm8k_rows, machine, markdown_table,
    median, model_dir, parse_sides, peak_rss_mb, read_json, run_children, run_slot, slots, versions, write_outputs,
)

SIDES = ("safeft", "lm-eval", "naive", "safeft-2replicas")
PROCESSES = {"safeft-2replicas": 2}  # replicas, one process each; every other side: one process
BATCH_TOKENS, MAX_BATCH = 16384, 64  # safeft's eval.batch_tokens / eval.max_batch_size defaults


# --- the sides (child processes); each returns {"completions": [...], "seconds": float} -----------------

def child_safeft(a, questions: list[str]) -> dict:
    from safeft.config import config_from_dict
    from safeft.eval.runner import evaluate

    replicas = PROCESSES.get(a.side, 1)
    cfg = config_from_dict({
        "model": {"name_or_path": a.model},
        "template": {"test": [TEMPLATE], "test_system": SYSTEM},
        "eval": {"tasks": [{"name": "gsm8k", "path": a.questions_jsonl, "limit": a.n, "max_new_tokens": a.max_new}],
                 "replicas": replicas, "backend": "auto", "engine": "budget", "batch_tokens": BATCH_TOKENS,
                 "dtype": a.dtype,
                 "max_batch_size": MAX_BATCH, "judges": ["refusal"], "output_dir": os.path.join(a.work, "eval")},
        "output": {"dir": a.work, "name": "run", "tensorboard": False},
    })
    t0 = time.perf_counter()
    summary = evaluate(cfg, models=[a.model])
    seconds = time.perf_counter() - t0
    pred = os.path.join(a.work, "eval", summary["rows"][0]["predictions"])
    with open(pred, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return {"completions": [r["completion"] for r in records], "seconds": seconds,
            "new_tokens": sum(r["completion_tokens"] for r in records)}


def child_lm_eval(a, questions: list[str]) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = os.path.join(a.work, "lm_eval_tasks")
    os.makedirs(task_dir, exist_ok=True)
    # A local-file task: datasets' json builder over our jsonl; zero-shot; the question alone as the user turn.
    yaml_text = "\n".join([
        "task: safeft_bench_gsm8k", "dataset_path: json", "dataset_kwargs:", "  data_files:",
        f"    test: {json.dumps(a.questions_jsonl)}", "test_split: test", "output_type: generate_until",
        'doc_to_text: "{{question}}"', 'doc_to_target: "{{answer}}"', "num_fewshot: 0", "generation_kwargs:",
        '  until: ["<|im_end|>"]', "  do_sample: false", f"  max_gen_toks: {a.max_new}", "metric_list:",
        "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true", ""])
    Path(task_dir, "safeft_bench_gsm8k.yaml").write_text(yaml_text, encoding="utf-8")
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": a.model, "dtype": a.dtype, "device": "cpu"},
        tasks=["safeft_bench_gsm8k"], task_manager=TaskManager(include_path=task_dir), batch_size=a.batch,
        limit=a.n, apply_chat_template=True, log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"]["safeft_bench_gsm8k"], key=lambda s: s["doc_id"])
    return {"completions": [s["resps"][0][0] for s in samples], "seconds": seconds,
            "prompts": [s["arguments"]["gen_args_0"]["arg_0"] if isinstance(s["arguments"], dict)
                        else s["arguments"][0][0] for s in samples]}


def child_naive(a, questions: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from safeft.data.tokenize import encode_prompt
    from safeft.eval.generate import end_ids
    from safeft.model import load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    template = chat_template(tok)
    ends, pad = end_ids(model, tok, template), tok.pad_token_id
    prompts = [encode_prompt(template, tok, q) for q in questions]
    completions, new_tokens = [], 0
    for s in range(0, len(prompts), a.batch):
        part = prompts[s: s + a.batch]
        width = max(len(p) for p in part)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in part])  # [B, L] left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])  # [B, L]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.max_new, do_sample=False,
                                 eos_token_id=ends, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        for row in gen[:, width:].tolist():  # [B, new]
            cut = next((k for k, t in enumerate(row) if t in ends), len(row))
            completions.append(tok.decode(row[:cut], skip_special_tokens=True))
            new_tokens += cut
    return {"completions": completions, "seconds": time.perf_counter() - t0, "new_tokens": new_tokens}


def child_main(a) -> None:
    questions = [json.loads(line)["question"] for line in Path(a.questions_jsonl).read_text().splitlines()][: a.n]
    fn = {"safeft": child_safeft, "safeft-2replicas": child_safeft, "lm-eval": child_lm_eval, "naive": child_naive}
    out = fn[a.side](a, questions)
    out["peak_rss_mb"] = peak_rss_mb()
    with open(os.path.join(a.work, "result.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)


# --- the orchestrator --------------------------------------------------------------------------------

def mean_safeft_batch(tok, questions: list[str], max_new: int) -> int:
    """The mean batch size safeft's budget engine forms on these prompts (one replica)."""
    from safeft.data.tokenize import encode_prompt
    from safeft.eval.generate import budget_batches

    template = chat_template(tok)
    lengths = [len(encode_prompt(template, tok, q)) for q in questions]
    batches = budget_batches(lengths, max_new, BATCH_TOKENS, MAX_BATCH)
    return round(len(questions) / len(batches))


def run_side(side: str, args, log: str) -> dict:
    work = tempfile.mkdtemp(prefix=f"{side}-", dir=args.work)
    cmd = [sys.executable, __file__, "--child", side, "--work", work, "--model", args.model_dir, "--n", str(args.n),
           "--max-new", str(args.max_new), "--batch", str(args.batch), "--questions-jsonl", args.questions_jsonl,
           "--dtype", args.dtype]
    wall = run_children([cmd], [child_env(args.threads)], log, args.timeout)
    out = read_json(os.path.join(work, "result.json"))
    shutil.rmtree(work, ignore_errors=True)
    out.update(side=side, wall_s=round(wall, 1), seconds=round(out["seconds"], 1),
               questions_per_s=round(args.n / out["seconds"], 3), load_1m=os.getloadavg()[0])
    return out


def common_prefix(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(runs: list[dict], references: list[str], args) -> tuple[list[dict], dict, str]:
    from safeft.eval.scoring import score_gsm8k

    first = {s: next(r for r in runs if r["side"] == s) for s in args.sides if any(r["side"] == s for r in runs)}
    for r in runs:
        _, metrics = score_gsm8k(r["completions"], references)
        r["exact_match_strict"], r["exact_match_flexible"] = metrics["exact_match_strict"], metrics["exact_match_flexible"]
        same_side = first[r["side"]]
        r["identical_to_own_first_run"] = sum(x == y for x, y in zip(r["completions"], same_side["completions"]))
    agreement = {}
    for a in first:
        for b in first:
            if a < b:
                ca, cb = first[a]["completions"], first[b]["completions"]
                diff = [k for k, (x, y) in enumerate(zip(ca, cb)) if x != y]
                agreement[f"{a} vs {b}"] = {
                    "identical": len(ca) - len(diff), "different": len(diff),
                    "median_common_prefix_chars": median([common_prefix(ca[k], cb[k]) for k in diff]),
                    "median_length_chars": median([len(ca[k]) for k in diff])}
    rows = []
    base = median([r["questions_per_s"] for r in runs if r["side"] == "lm-eval"])
    for s in first:
        mine = [r for r in runs if r["side"] == s]
        qps = median([r["questions_per_s"] for r in mine])
        rows.append({"side": s, "seconds": median([r["seconds"] for r in mine]), "seconds_runs": [r["seconds"] for r in mine],
                     "wall_s": median([r["wall_s"] for r in mine]), "questions_per_s": qps,
                     "vs_lm_eval": round(qps / base, 2) if base else None,
                     "exact_match_strict": first[s]["exact_match_strict"],
                     "exact_match_flexible": first[s]["exact_match_flexible"],
                     "peak_rss_mb": round(median([r["peak_rss_mb"] for r in mine])),
                     "repeat_identical": min(r["identical_to_own_first_run"] for r in mine)})
    table = markdown_table(
        ["side", "eval s (median; runs)", "wall s", "questions/s", "vs lm-eval", "EM strict / flexible",
         "peak RSS MB", "identical across own repeats"],
        [[r["side"], f"{r['seconds']:.1f} ({', '.join(f'{x:.1f}' for x in r['seconds_runs'])})", r["wall_s"],
          f"{r['questions_per_s']:.3f}", f"{r['vs_lm_eval']:.2f}x" if r["vs_lm_eval"] else "",
          f"{100 * r['exact_match_strict']:.1f}% / {100 * r['exact_match_flexible']:.1f}%", r["peak_rss_mb"],
          f"{r['repeat_identical']}/{args.n}"] for r in rows])
    table += "\n" + markdown_table(
        ["pair (first runs)", "identical completions", "different", "median chars before they part", "median length"],
        [[k, f"{v['identical']}/{args.n}", v["different"], v["median_common_prefix_chars"], v["median_length_chars"]]
         for k, v in agreement.items()])
    return rows, agreement, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a named default or an HF directory with a chat template")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="lm-eval and naive batch size (default: safeft's mean)")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="weights on every side (bf16: what safeft's demo evaluates in on a CPU with native bf16)")
    p.add_argument("--pair", action=argparse.BooleanOptionalAction, default=True,
                   help="one-process sides two at a time, one per core (--no-pair: one side at a time)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per process (every side alike)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", default="runs/bench/real_eval.json")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    for name in ("child", "questions-jsonl"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.side = args.child
        child_main(args)
        return 0
    args.sides = parse_sides(p, args.sides, SIDES)
    return orchestrate(args)


def orchestrate(args) -> int:
    from safeft.io import write_jsonl
    from safeft.model import load_tokenizer

    keep = args.work is not None
    args.work = args.work or tempfile.mkdtemp(prefix="safeft-real-eval-")
    os.makedirs(args.work, exist_ok=True)
    args.model_dir = model_dir(args.model)
    rows = gsm8k_rows("test")[: args.n]
    args.n = len(rows)
    args.questions_jsonl = os.path.join(args.work, "gsm8k_test.jsonl")
    write_jsonl(args.questions_jsonl, rows)
    tok = load_tokenizer(args.model_dir)
    if args.batch is None:
        args.batch = mean_safeft_batch(tok, [r["question"] for r in rows], args.max_new)
    print(f"{args.n} GSM8K test questions, {args.max_new} new tokens, lm-eval/naive batch {args.batch}, "
          f"{args.threads} thread(s) per process", flush=True)
    log = os.path.join(args.work, "children.log")
    load = LoadSampler()
    t0 = time.perf_counter()
    runs = []
    for rep in range(args.repeats):
        plan = slots(args.sides, PROCESSES, args.pair)
        for slot in (plan if rep % 2 == 0 else plan[::-1]):  # interleaved; a pair stays a pair
            for r in run_slot(slot, lambda side: run_side(side, args, log)):
                r["repeat"] = rep
                runs.append(r)
                print(f"  {r['side']:17s} rep {rep}: {r['seconds']:7.1f} s ({r['questions_per_s']:.3f} q/s), wall "
                      f"{r['wall_s']} s, peak RSS {r['peak_rss_mb']:.0f} MB, load {r['load_1m']:.1f}"
                      + (f", beside {r['ran_with'][0]}" if r["ran_with"] else ""), flush=True)
    template = chat_template(tok)
    prompts_equal = None
    lm = next((r for r in runs if r["side"] == "lm-eval"), None)
    if lm is not None:  # lm-eval renders its own prompts: are they ours, character for character?
        prompts_equal = sum(p == template.prompt(r["question"]) for p, r in zip(lm["prompts"], rows))
    summary, agreement, table = compare(runs, [r["answer"] for r in rows], args)
    record = {"benchmark": "real_eval", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "machine": machine(), "versions": versions(), "threads": args.threads,
              "load_average_1m": load.summary(), "wall_s": round(time.perf_counter() - t0, 1),
              "settings": {"model": args.model, "n": args.n, "max_new": args.max_new, "batch": args.batch,
                           "repeats": args.repeats, "pair": args.pair, "dtype": args.dtype, "template": TEMPLATE,
                           "system": SYSTEM},
              "lm_eval_prompts_equal_safeft": prompts_equal, "summary": summary, "agreement": agreement,
              "runs": [{k: v for k, v in r.items() if k != "prompts"} for r in runs]}
    md = (f"real_eval {record['date']}, {record['machine']['cpu']}, {args.threads} thread(s) per process, load "
          f"average {record['load_average_1m']}, wall {record['wall_s']} s; n {args.n}, {args.dtype}, max new "
          f"{args.max_new}, "
          f"lm-eval/naive batch {args.batch}; lm-eval prompts equal to safeft's: {prompts_equal}/{args.n}\n\n" + table)
    write_outputs(args.out, record, md)
    print(md)
    if not keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
