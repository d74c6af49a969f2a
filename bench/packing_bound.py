"""Packing against its lower bound with real tokenizers: rows vs ceil(tokens / max_seq_len) per LookAhead mode.

GSM8K train and SAMSum test (shared data), each tokenizer in shared/data/tokenizers (or --tokenizers DIR ...),
template chat:vanilla, LookAhead none / real (m=6) / virtual; every document is tokenised once and packed at
each length by `safeft.data.pack.best_fit_decreasing` (the pipeline's packer) and, for comparison, plain BFD.

    .venv/bin/python bench/packing_bound.py [--tokenizers llama2 llama3.1 qwen3] [--lengths 2048 4096 8192]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

from repo_root import REPO  # noqa: E402,F401 (safeft from this checkout)
from safeft.data.shared import shared_data_dir, shared_tokenizer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=["llama2", "llama3.1", "qwen3"])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from safeft.config import config_from_dict
    from safeft.data.load import load_examples
    from safeft.data.pack import best_fit_decreasing
    from safeft.data.pipeline import encode_all
    from safeft.model import load_tokenizer
    from safeft.templates import get_template

    root = shared_data_dir()
    if root is None:
        sys.exit("bench/packing_bound.py needs shared data (GSM8K, SAMSum): set SAFEFT_SHARED_DATA")
    sources = {"gsm8k train": {"path": str(root / "gsm8k" / "train.jsonl")},
               "samsum test": {"path": str(root / "samsum" / "test.json"), "preset": "samsum"}}
    print("| tokenizer | data | lookahead | max_seq_len | tokens | rows (plain BFD) | lower bound | allowed (+0.2%) "
          "| efficiency | pack s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.tokenizers:
        path = name if os.path.isdir(name) else shared_tokenizer(name)
        tok = load_tokenizer(path)
        for label, src in sources.items():
            for mode in ("none", "real", "virtual"):
                cfg = config_from_dict({"model": {"name_or_path": path}, "lookahead": {"mode": mode},
                                        "data": {**src, "max_seq_len": max(args.lengths), "num_proc": 2,
                                                 "cache_dir": tempfile.mkdtemp()}})
                enc = encode_all(load_examples(cfg.data), get_template("chat:vanilla"), tok, cfg)
                lengths = enc["lengths"].tolist()
                for cap in args.lengths:
                    t0 = time.perf_counter()
                    rows = len(best_fit_decreasing(lengths, cap))
                    seconds = time.perf_counter() - t0
                    plain = len(best_fit_decreasing(lengths, cap, repair=False))
                    bound = -(-sum(lengths) // cap)
                    allowed = bound + max(1, math.ceil(0.002 * bound))
                    print(f"| {name} | {label} | {mode} | {cap} | {sum(lengths):,} | {rows} ({plain}) | {bound} | "
                          f"{allowed} | {100 * sum(lengths) / (rows * cap):.2f}% | {seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
