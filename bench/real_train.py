"""Training on a real model: safeft against TRL's SFTTrainer and HF Trainer, same math, real tokens/s.

SmolLM2-135M-Instruct (fp32 weights and AdamW states, bf16 autocast forward: `train.precision:
bf16-autocast` / `bf16=True`), GSM8K train rows rendered by the model's chat template (safeft's
tokenisation, response-only labels through `<|im_end|>`), one epoch over the SAME documents on every side,
so every side trains the same real tokens; torch AdamW with the same lr, betas, eps, weight decay 0
(HF Trainer exempts norms and biases from decay, safeft does not: 0 makes the two the same) and a constant
schedule; gradient clipping 1.0; loss = mean over the step's answer tokens on every side.

Sides (each in its own process, interleaved, `--repeats` times; with --pair, the default, one-process sides run
two at a time, one per core, in the order given: safeft beside TRL's packed mode, HF Trainer beside TRL padded;
the two-rank side alone; safeft-zero2 only when named in --sides):
    safeft           packed rows (subset-sum fill), 1 row per micro-step, 1 process, `train.zero_stage: 0`
                     (DeepSpeed without ZeRO: on one process there is nothing to partition)
    safeft-zero2     the same under ZeRO-2 (the default stage; before the stage-0 fix this was the one-process side)
    safeft-2rank     ZeRO-2 on 2 processes (DeepSpeed on CPU, gloo): twice the cores
    trl-packed       SFTTrainer packing=True, packing_strategy="bfd" (padding-free: TRL's fastest correct mode)
    trl-padded       SFTTrainer without packing, right-padded micro-batches of --padded-batch documents
    hf-padded        transformers Trainer, the same padded micro-batches, the model's own loss
Packed sides take rows of --max-len tokens and accumulate --tokens-per-step / max-len of them per step; padded
sides take about as many documents per step. Step 1 is a warm-up (excluded); tokens/s = real tokens of the
later steps / their wall time, from one step end to the last. After each run the side's final weights are
saved, and one function (`heldout_loss`) loads them and scores the same held-out GSM8K test answers
(teacher-forced, fp32, one document at a time, answer tokens only).

    python bench/real_train.py                    # both lengths, 1 repeat, writes runs/bench/real_train.{json,md}
    python bench/real_train.py --lengths 512 --repeats 2 --no-pair --sides safeft,safeft-zero2,trl-packed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import (  # noqa: E402
    DEFAULT_MODEL, LoadSampler, chat_template, child_env, gsm8k_rows, machine, markdown_table, median, model_dir,
    parse_sides, peak_rss_mb, read_json, run_children, run_slot, slots, versions, write_outputs,
)

SIDES = ("safeft", "trl-packed", "hf-padded", "trl-padded", "safeft-2rank", "safeft-zero2")
DEFAULT_SIDES = SIDES[:5]  # in pairs (--pair): safeft beside TRL's packed mode, HF Trainer beside TRL padded
ZERO_STAGE = {"safeft": 0, "safeft-zero2": 2, "safeft-2rank": 2}
PROCESSES = {"safeft-2rank": 2}  # every other side: one process
PEERS = ("trl-packed", "trl-padded", "hf-padded")
HELDOUT_OFFSET = 1000  # held-out answers: GSM8K test rows from here on (real_eval.py uses the first 200)


# --- data: the same documents for every side ---------------------------------------------------------

def encode_rows(tok, rows: list[dict], max_len: int) -> list[dict]:
    """safeft's tokenisation of (question, answer) under the chat template: ids and response-only labels."""
    from safeft.data.tokenize import encode_turns, fit_length

    template = chat_template(tok)
    out = []
    for r in rows:
        enc = fit_length(encode_turns(template, tok, [(r["question"], r["answer"])]), max_len, "truncate")
        if enc is not None:
            out.append({"question": r["question"], "answer": r["answer"], "input_ids": enc.input_ids,
                        "labels": enc.labels})
    return out


def select_docs(tok, n_tokens: int, max_len: int, seed: int) -> list[dict]:
    """Shuffled GSM8K train documents, as many as fit in `n_tokens` real tokens."""
    rows = gsm8k_rows("train")
    random.Random(seed).shuffle(rows)
    docs, total = [], 0
    for doc in encode_rows(tok, rows[: 4 * n_tokens // 100 + 8], max_len):  # GSM8K documents: > 100 tokens each
        if total + len(doc["input_ids"]) > n_tokens:
            break
        docs.append(doc)
        total += len(doc["input_ids"])
    return docs


# --- held-out loss: one function, every side's saved weights -----------------------------------------

def heldout_loss(weights_dir: str, docs: list[dict]) -> float:
    """Mean cross-entropy over the answer tokens of `docs`: fp32, no autocast, one document per forward
    (no padding), so every side's weights are scored by exactly the same computation."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            logits = model(input_ids=torch.tensor([d["input_ids"]])).logits[0, :-1]  # [T-1, V]
            targets = torch.tensor(d["labels"][1:])  # [T-1]
            mask = targets != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"))
            count += int(mask.sum())
    return total / count


# --- the sides (child processes) ---------------------------------------------------------------------

def child_safeft(a) -> dict:
    from safeft.config import config_from_dict
    from safeft.train.loop import TrainHooks, run

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config_from_dict({
        "model": {"name_or_path": a.model},
        "data": {"path": a.docs_jsonl, "max_seq_len": a.max_len, "num_proc": 1, "seed": a.seed,
                 "cache_dir": os.path.join(a.work, "data-cache")},
        "template": {"train": "chat-template", "train_system": "none"},
        "train": {"precision": "bf16-autocast", "optimizer": "torch", "zero_stage": ZERO_STAGE[a.side], "epochs": 1,
                  "micro_batch_size": 1, "gradient_accumulation_steps": a.rows_per_step // world, "lr": a.lr,
                  "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "scheduler": "constant",
                  "warmup_steps": 0, "max_grad_norm": 1.0, "seed": a.seed, "resume": "never", "log_steps": 1,
                  "export_dtype": "float32", "keep_checkpoints": False},  # like the peers: weights only
        "output": {"dir": a.work, "name": "run", "tensorboard": False},
    })
    marks = []

    def on_log(m: dict) -> None:
        marks.append({"t": time.perf_counter(), "tokens": m["tokens"], "loss": m["loss"], "rss_mb": peak_rss_mb()})

    result = run(cfg, TrainHooks(on_log=on_log))
    stats = [read_json(str(p)) for p in Path(a.work, "data-cache").glob("*/stats.json")]
    cumulative = 0
    for m in marks:
        cumulative += m["tokens"]
        m["tokens"] = cumulative
    return {"marks": marks, "weights": result.export_dir, "data_tokens": stats[0]["tokens"] if stats else None,
            "rows": stats[0]["rows"] if stats else None}


def child_hf(a) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    docs = read_json(a.docs)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.pad_token_id = tok.pad_token_id
    ds = datasets.Dataset.from_dict({"input_ids": [d["input_ids"] for d in docs],
                                     "labels": [d["labels"] for d in docs]})
    packed = a.side == "trl-packed"
    micro, accum = (1, a.rows_per_step) if packed else (a.padded_batch, a.padded_accum)
    common = dict(output_dir=os.path.join(a.work, "out"), per_device_train_batch_size=micro,
                  gradient_accumulation_steps=accum, learning_rate=a.lr, lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                  max_grad_norm=1.0, num_train_epochs=1, optim="adamw_torch", bf16=True, use_cpu=True,
                  logging_steps=1, save_strategy="no", report_to="none", seed=a.seed, dataloader_num_workers=0,
                  gradient_checkpointing=False, disable_tqdm=True)
    if a.side.startswith("trl"):
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=a.max_len, packing=packed, packing_strategy="bfd")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    else:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=ds, processing_class=tok,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    seen = {"tokens": 0}

    def count(module, args, kwargs):  # real tokens as the forward sees them (no prefetch skew)
        mask = kwargs.get("attention_mask")
        seen["tokens"] += int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())

    model.register_forward_pre_hook(count, with_kwargs=True)
    marks = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
            marks.append({"t": time.perf_counter(), "tokens": seen["tokens"], "loss": loss, "rss_mb": peak_rss_mb()})

    trainer.add_callback(Marks())
    trainer.train()
    weights = os.path.join(a.work, "final")
    trainer.save_model(weights)
    return {"marks": marks, "weights": weights, "data_tokens": seen["tokens"],
            "rows": len(trainer.train_dataset)}


def child_main(a) -> None:
    out = child_safeft(a) if a.side.startswith("safeft") else child_hf(a)
    out["peak_rss_mb"] = peak_rss_mb()
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(a.work, f"result-{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)


# --- the orchestrator --------------------------------------------------------------------------------

def run_side(side: str, max_len: int, docs_path: str, docs_jsonl: str, args, plan: dict, log: str) -> dict:
    from safeft.distributed import _free_port

    work = tempfile.mkdtemp(prefix=f"{side}-{max_len}-", dir=args.work)
    base = [sys.executable, __file__, "--child", side, "--work", work, "--model", args.model_dir,
            "--docs", docs_path, "--docs-jsonl", docs_jsonl, "--max-len", str(max_len), "--lr", str(args.lr),
            "--seed", str(args.seed), "--rows-per-step", str(plan["rows_per_step"]),
            "--padded-batch", str(plan["padded_batch"]), "--padded-accum", str(plan["padded_accum"])]
    world = PROCESSES.get(side, 1)
    port = str(_free_port())
    envs = [child_env(args.threads, **({"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} if world > 1 else {}))
            for r in range(world)]
    wall = run_children([base] * world, envs, log, args.timeout)
    results = [read_json(os.path.join(work, f"result-{r}.json")) for r in range(world)]
    main = results[0]
    marks = main["marks"]
    if len(marks) < 2:
        raise RuntimeError(f"{side}: {len(marks)} optimizer steps; needs a warm-up step and at least one more")
    seconds = marks[-1]["t"] - marks[0]["t"]
    tokens = marks[-1]["tokens"] - marks[0]["tokens"]
    loss = heldout_loss(main["weights"], plan["heldout"])
    shutil.rmtree(work, ignore_errors=True)
    return {"side": side, "max_len": max_len, "processes": world, "steps": len(marks), "wall_s": round(wall, 1),
            "timed_s": round(seconds, 2), "timed_tokens": tokens, "tokens_total": marks[-1]["tokens"],
            "tokens_per_s": round(tokens / seconds, 1),
            # peak RSS at the last step's end: training, not the final save (safeft also writes a checkpoint)
            "peak_rss_mb": round(max(r["marks"][-1]["rss_mb"] for r in results)),
            "peak_rss_mb_all": round(sum(r["marks"][-1]["rss_mb"] for r in results)),
            "train_losses": [m["loss"] for m in marks], "heldout_loss": round(loss, 4),
            "data_tokens": main.get("data_tokens"), "rows": main.get("rows"), "load_1m": os.getloadavg()[0]}


def trained_every_document(r: dict, plan: dict) -> bool:
    """Every side trains every document once (safeft's empty slots in the last step: 1 pad token each)."""
    ok = (plan["real_tokens"] <= r["tokens_total"] <= plan["real_tokens"] + plan["rows_per_step"]
          and (not r["side"].startswith("safeft") or r["data_tokens"] == plan["real_tokens"]))
    if not ok:
        print(f"SANITY FAILED: {r['side']} trained {r['tokens_total']} tokens, the documents hold "
              f"{plan['real_tokens']}", flush=True)
    return ok


def plan_for(tok, max_len: int, args) -> dict:
    rows_per_step = max(2, args.tokens_per_step // max_len)
    docs = select_docs(tok, int(args.steps * rows_per_step * max_len * args.fill), max_len, args.seed)
    # padded sides: about as many documents per step, in micro-batches of at most --padded-batch documents
    docs_per_step = -(-len(docs) // args.steps)
    accum = -(-docs_per_step // args.padded_batch)
    heldout = encode_rows(tok, gsm8k_rows("test")[HELDOUT_OFFSET: HELDOUT_OFFSET + args.heldout], max_len)
    return {"rows_per_step": rows_per_step, "docs": docs, "heldout": heldout,
            "padded_accum": accum, "padded_batch": -(-docs_per_step // accum),
            "real_tokens": sum(len(d["input_ids"]) for d in docs),
            "answer_tokens": sum(sum(1 for x in d["labels"] if x != -100) for d in docs)}


def summarize(runs: list[dict], plans: dict, lengths: list[int], sides: list[str]) -> tuple[list[dict], str]:
    """Medians per side and length; ratios against TRL's faster mode and against HF Trainer, from the same runs."""
    rows = []
    for max_len in lengths:
        mine_of = {s: [r for r in runs if r["side"] == s and r["max_len"] == max_len] for s in sides}
        med = {s: median([r["tokens_per_s"] for r in v]) for s, v in mine_of.items() if v}
        trl_best = max((s for s in ("trl-packed", "trl-padded") if med.get(s)), key=lambda s: med[s], default=None)
        for s, mine in mine_of.items():
            if not mine:
                continue
            rows.append({"max_len": max_len, "side": s, "processes": mine[0]["processes"], "steps": mine[0]["steps"],
                         "tokens_per_s": med[s], "tokens_per_s_runs": [r["tokens_per_s"] for r in mine],
                         "vs_trl_best": round(med[s] / med[trl_best], 2) if trl_best else None, "trl_best": trl_best,
                         "vs_hf_trainer": round(med[s] / med["hf-padded"], 2) if med.get("hf-padded") else None,
                         "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
                         "peak_rss_mb_all": median([r["peak_rss_mb_all"] for r in mine]),
                         "heldout_loss": median([r["heldout_loss"] for r in mine]),
                         "heldout_runs": [r["heldout_loss"] for r in mine],
                         "real_tokens": plans[max_len]["real_tokens"]})
    table = markdown_table(
        ["max_len", "side", "processes", "steps", "real tokens/s (median)", "runs", "vs TRL's best", "vs HF Trainer",
         "peak RSS MB (per process / all)", "held-out loss (runs)"],
        [[r["max_len"], r["side"], r["processes"], r["steps"], r["tokens_per_s"],
          ", ".join(f"{x:.1f}" for x in r["tokens_per_s_runs"]),
          f"{r['vs_trl_best']:.2f}x ({r['trl_best']})" if r["vs_trl_best"] else "",
          f"{r['vs_hf_trainer']:.2f}x" if r["vs_hf_trainer"] else "",
          f"{r['peak_rss_mb']:.0f} / {r['peak_rss_mb_all']:.0f}", ", ".join(f"{x:.4f}" for x in r["heldout_runs"])]
         for r in rows])
    return rows, table


def render(record: dict) -> str:
    plans = {int(k): v for k, v in record["plans"].items()}
    summary, table = summarize(record["runs"], plans, sorted(plans), list(dict.fromkeys(r["side"] for r in record["runs"])))
    record["summary"] = summary
    base = ", ".join(f"{L}: {p['base_heldout_loss']}" for L, p in sorted(plans.items()))
    return (f"real_train {record['date']}, {record['machine']['cpu']}, {record['threads']} thread(s) per process, "
            f"load average {record['load_average_1m']}, wall {record['wall_s']} s\n\nheld-out loss before "
            f"training: {base}\n\n" + table)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a named default or an HF directory with a chat template")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"any of {', '.join(SIDES)}")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--pair", action=argparse.BooleanOptionalAction, default=True,
                   help="one-process sides two at a time, one per core (--no-pair: one side at a time)")
    p.add_argument("--tokens-per-step", type=int, default=2048, help="packed: rows of max-len per step = this / max-len")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run, the first one a warm-up")
    p.add_argument("--fill", type=float, default=0.95, help="documents fill this share of steps x tokens-per-step")
    p.add_argument("--padded-batch", type=int, default=4, help="documents per micro-step on the padded sides")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=16, help="held-out GSM8K test answers scored after each run")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per process (every side alike)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="runs/bench/real_train.json")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--render", default=None, help="only rewrite the table of an earlier --out JSON (and its .md)")
    for name in ("child", "docs", "docs-jsonl", "model-dir"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--max-len", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rows-per-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--padded-accum", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.side = args.child
        child_main(args)
        return 0
    if args.render:
        record = read_json(args.render)
        md = render(record)
        write_outputs(args.render, record, md)
        print(md)
        return 0
    args.sides = parse_sides(p, args.sides, SIDES)
    return orchestrate(args)


def orchestrate(args) -> int:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from safeft.io import write_jsonl
    from safeft.model import load_tokenizer

    torch.set_num_threads(args.threads)
    keep = args.work is not None
    args.work = args.work or tempfile.mkdtemp(prefix="safeft-real-train-")
    os.makedirs(args.work, exist_ok=True)
    args.model_dir = model_dir(args.model)
    tok = load_tokenizer(args.model_dir)
    log = os.path.join(args.work, "children.log")
    load = LoadSampler()
    t0 = time.perf_counter()
    plans, runs = {}, []
    for max_len in args.lengths:
        plan = plans[max_len] = plan_for(tok, max_len, args)
        docs_path = os.path.join(args.work, f"docs-{max_len}.json")
        with open(docs_path, "w", encoding="utf-8") as f:
            json.dump(plan["docs"], f)
        docs_jsonl = os.path.join(args.work, f"docs-{max_len}.jsonl")
        write_jsonl(docs_jsonl, [{"question": d["question"], "answer": d["answer"]} for d in plan["docs"]])
        print(f"max_len {max_len}: {len(plan['docs'])} documents, {plan['real_tokens']} real tokens "
              f"({plan['answer_tokens']} answer tokens); packed: {plan['rows_per_step']} rows per step; padded: "
              f"{plan['padded_batch']} x {plan['padded_accum']} documents per step", flush=True)
        for rep in range(args.repeats):
            order = slots(args.sides, PROCESSES, args.pair)
            for slot in (order if rep % 2 == 0 else order[::-1]):  # interleaved; a pair stays a pair
                for r in run_slot(slot, lambda side: run_side(side, max_len, docs_path, docs_jsonl, args, plan, log)):
                    r["repeat"] = rep
                    runs.append(r)
                    print(f"  {r['side']:13s} rep {rep}: {r['tokens_per_s']:7.1f} tok/s over {r['timed_tokens']} "
                          f"tokens ({r['steps']} steps), peak RSS {r['peak_rss_mb']} MB, held-out loss "
                          f"{r['heldout_loss']:.4f}, load {r['load_1m']:.1f}"
                          + (f", beside {r['ran_with'][0]}" if r["ran_with"] else ""), flush=True)
                    if not trained_every_document(r, plan):
                        return 1
        plan["base_heldout_loss"] = round(heldout_loss(args.model_dir, plan["heldout"]), 4)
    record = {"benchmark": "real_train", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "machine": machine(), "versions": versions(), "threads": args.threads,
              "load_average_1m": load.summary(), "wall_s": round(time.perf_counter() - t0, 1),
              "settings": {k: getattr(args, k) for k in ("model", "lengths", "repeats", "pair", "tokens_per_step",
                                                           "steps", "padded_batch", "lr", "seed", "heldout")},
              "plans": {L: {k: v for k, v in p.items() if k not in ("docs", "heldout")} for L, p in plans.items()},
              "runs": runs}
    md = render(record)
    write_outputs(args.out, record, md)
    print(md)
    if not keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
