"""Data pipeline benchmark: safeft's fused pipeline vs TRL's SFT dataset preparation, side by side.

Both sides start from shared/data/gsm8k/train.jsonl (7473 rows), use ONE tokenizer (a 32k-vocabulary BPE
trained in-process, or a real one with `--tokenizer DIR`, e.g. ../shared/data/tokenizers/llama2), the
template chat:vanilla, response-only labels and best-fit-decreasing
packing, on the same cores (num_proc 2 each). TRL runs its own `SFTTrainer._prepare_dataset` on
prompt-completion data with completion-only loss and `packing_strategy="bfd"`.

Sanity: both sides must produce the same number of loss tokens and real tokens.
The machine is shared, so the sides run interleaved, `--repeats` times, and medians are reported.

    .venv/bin/python bench/data_pipeline.py [--lengths 512 2048 4096] [--repeats 3] [--num-proc 2] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from repo_root import REPO  # noqa: E402,F401 (safeft from this checkout)
from safeft.data.load import read_records  # noqa: E402
from safeft.data.shared import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()
if SHARED is None:
    sys.exit("bench/data_pipeline.py needs GSM8K: set SAFEFT_SHARED_DATA to the folder holding gsm8k/train.jsonl")
GSM8K_TRAIN = SHARED / "gsm8k" / "train.jsonl"
TEMPLATE = "chat:vanilla"


def read_rows(path: Path) -> list[dict]:
    return [row for row, _ in read_records(str(path))]


def build_tokenizer(rows: list[dict], out_dir: str):
    from safeft.templates import get_template
    from safeft.tiny import train_tokenizer

    template = get_template(TEMPLATE)
    corpus = [template.full(r["question"], r["answer"]) for r in rows]
    # GSM8K train alone yields ~25k merges; its test split and SAMSum dialogues fill the vocabulary to ~32k.
    corpus += [r["question"] + " " + r["answer"] for r in read_rows(GSM8K_TRAIN.parent / "test.jsonl")]
    samsum = GSM8K_TRAIN.parents[1] / "samsum" / "test.json"
    if samsum.is_file():
        corpus += [r["dialogue"] + "\n" + r["summary"] for r in read_rows(samsum)]
    tok = train_tokenizer(corpus, vocab_size=32000)
    tok.save_pretrained(out_dir)
    return tok


def run_safeft(tok, max_len: int, num_proc: int, work: str, tok_dir: str) -> dict:
    from safeft.config import config_from_dict
    from safeft.data.pipeline import prepare

    cfg = config_from_dict({
        "model": {"name_or_path": tok_dir},
        "data": {"path": str(GSM8K_TRAIN), "max_seq_len": max_len, "num_proc": num_proc,
                 "cache_dir": tempfile.mkdtemp(dir=work)},  # a fresh cache dir: always a full build
        "template": {"train": TEMPLATE},
    })
    t0 = time.perf_counter()
    prepared = prepare(cfg, tokenizer=tok)
    elapsed = time.perf_counter() - t0
    s = prepared.stats
    return {"seconds": elapsed, "examples": s["documents"], "tokens": s["tokens"], "loss_tokens": s["loss_tokens"],
            "rows": s["rows"], "efficiency": s["packing_efficiency"]}


def run_trl(tok, max_len: int, num_proc: int, work: str) -> dict:
    import datasets
    import numpy as np
    from trl import SFTConfig, SFTTrainer

    from safeft.templates import get_template

    template = get_template(TEMPLATE)
    args = SFTConfig(output_dir=work + "/trl", max_length=max_len, packing=True, packing_strategy="bfd",
                     completion_only_loss=True, dataset_num_proc=num_proc, report_to=[], use_cpu=True,
                     bf16=False)
    # _prepare_dataset reads only these attributes of the trainer.
    trainer = SimpleNamespace(_tokenizer=tok, completion_only_loss=True, chat_template=None)
    t0 = time.perf_counter()
    rows = read_rows(GSM8K_TRAIN)
    sep = template.separator()
    ds = datasets.Dataset.from_dict({"prompt": [template.prompt(r["question"]) for r in rows],
                                     "completion": [sep + r["answer"] for r in rows]})
    packed = SFTTrainer._prepare_dataset(trainer, ds, tok, args, packing=True, formatting_func=None,
                                         dataset_name="train")
    elapsed = time.perf_counter() - t0
    labels = packed.with_format("numpy")["labels"]
    lengths = np.array([len(x) for x in labels])
    seq_lengths = packed["seq_lengths"]
    tokens = int(lengths.sum())
    return {"seconds": elapsed, "examples": sum(len(s) for s in seq_lengths), "tokens": tokens,
            "loss_tokens": int(sum(int((x != -100).sum()) for x in labels)), "rows": len(packed),
            "efficiency": tokens / (len(packed) * max_len)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer folder, or a shared one by name: llama2, llama3.1, qwen3 (default: a BPE "
                        "trained in-process)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()
    datasets.disable_caching()
    work = tempfile.mkdtemp(prefix="safeft-bench-")
    rows = read_rows(GSM8K_TRAIN)
    if args.tokenizer:
        from safeft.model import load_tokenizer

        from safeft.data.shared import shared_tokenizer

        tok_dir = args.tokenizer if os.path.isdir(args.tokenizer) else shared_tokenizer(args.tokenizer)
        if tok_dir is None:
            sys.exit(f"--tokenizer {args.tokenizer}: neither a folder nor a shared tokenizer (llama2, llama3.1, qwen3)")
        tok = load_tokenizer(tok_dir)
        kind = f"{args.tokenizer} ({type(tok).__name__})"
    else:
        tok_dir, tok, kind = work + "/tok", build_tokenizer(rows, work + "/tok"), "byte-level BPE"
    print(f"GSM8K train: {len(rows)} rows; tokenizer: {kind}, vocab {len(tok)}; "
          f"num_proc {args.num_proc}; {args.repeats} interleaved repeats, medians")
    results = []
    for max_len in args.lengths:
        runs = {"safeft": [], "trl": []}
        for _ in range(args.repeats):
            runs["trl"].append(run_trl(tok, max_len, args.num_proc, work))
            runs["safeft"].append(run_safeft(tok, max_len, args.num_proc, work, tok_dir))
        s, t = runs["safeft"][-1], runs["trl"][-1]
        if (s["loss_tokens"], s["tokens"], s["examples"]) != (t["loss_tokens"], t["tokens"], t["examples"]):
            print(f"SANITY FAILED at {max_len}: safeft {s} vs trl {t}")
            return 1
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        results.append({"max_seq_len": max_len, "examples": s["examples"], "tokens": s["tokens"],
                        "loss_tokens": s["loss_tokens"], "safeft_rows": s["rows"], "trl_rows": t["rows"],
                        "lower_bound": -(-s["tokens"] // max_len),
                        "safeft_eff": s["efficiency"], "trl_eff": t["efficiency"],
                        "safeft_s": med["safeft"], "trl_s": med["trl"],
                        "safeft_all_s": [round(r["seconds"], 3) for r in runs["safeft"]],
                        "trl_all_s": [round(r["seconds"], 3) for r in runs["trl"]]})
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_table(results: list[dict]) -> None:
    head = (f"{'max_len':>7} {'loss tok':>9} {'rows s/T':>11} {'bound':>6} {'eff safeft':>10} {'eff TRL':>8} "
            f"{'safeft ex/s':>11} {'TRL ex/s':>9} {'safeft tok/s':>12} {'TRL tok/s':>10} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['max_seq_len']:>7} {r['loss_tokens']:>9} {r['safeft_rows']:>5}/{r['trl_rows']:<5} "
              f"{r['lower_bound']:>6} "
              f"{100 * r['safeft_eff']:>9.2f}% {100 * r['trl_eff']:>7.2f}% "
              f"{r['examples'] / r['safeft_s']:>11.0f} {r['examples'] / r['trl_s']:>9.0f} "
              f"{r['tokens'] / r['safeft_s']:>12.0f} {r['tokens'] / r['trl_s']:>10.0f} "
              f"{r['trl_s'] / r['safeft_s']:>5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
