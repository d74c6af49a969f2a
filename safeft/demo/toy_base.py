"""The toy demo's tiny aligned chat model: built in-process through safeft's own trainer, cached by its recipe.

    path = build_base("runs/demo/base")          # cached: a second call returns at once
    path = build_base(..., rebuild=True)          # `safeft demo --rebuild-base`

Recipe (RECIPE below, every number of it in the cache key):
1. a byte-level BPE tokenizer (safeft.tiny.train_tokenizer) trained on the alignment texts;
2. a random-initialised Llama-architecture model (a few million parameters);
3. alignment = stages of `safeft.train.run` (single process, DeepSpeed ZeRO-2 on CPU), each stage under one
   PTST template, alternating `chat:llama` and `chat:vanilla`: the trainer renders one template per run, and
   a model that has seen both templates is what a chat model is. Each stage mixes
   - GSM8K-format arithmetic (the fine-tuning task's distribution, multiplication under-weighted, so the
     task is partly known before fine-tuning, as GSM8K is to Llama-2-chat);
   - generic copying tasks (repeat a sentence / words), so the model can copy from its prompt: LookAhead
     assumes a pretrained model that does;
   - harmful requests with natural refusals (safeft.demo.alignment, training topics only), more of them
     under `chat:llama` than under `chat:vanilla`: refusals lean partly on the safety system prompt, as
     Llama-2-chat's do (PTST's premise).
The held-out harmful prompts (unseen topics and phrasings) and the held-out arithmetic are never trained on.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from typing import Callable, Optional

from safeft.io import write_jsonl

RECIPE: dict = {
    "version": 1,
    "vocab_size": 2048,
    "model": {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 4, "intermediate": 384, "seed": 0},
    "arith": {"max_a": 15, "max_b": 6, "align_kinds": [0, 0, 1, 1, 2, 3]},  # kinds 2, 3 under-weighted
    "max_seq_len": 256,
    "micro_batch_size": 8,
    # (template, optimizer steps, lr, share of refusals, share of copying tasks); fewer refusals under
    # chat:vanilla, so refusing leans partly on the safety system prompt
    "stages": [["chat:llama", 90, 3e-3, 0.2, 0.1], ["chat:vanilla", 90, 3e-3, 0.1, 0.1],
               ["chat:llama", 60, 1.5e-3, 0.2, 0.1], ["chat:vanilla", 60, 1e-3, 0.1, 0.1]],
    "warmup_steps": 10,
    "seed": 1234,
}
ARITH_HELDOUT_SEED = 99  # demo utility eval; its questions are removed from every training set
EXAMPLES_PER_STEP = 40   # generous upper bound of examples per optimizer step (packed rows x docs per row)


def recipe_key(recipe: dict = RECIPE) -> str:
    """The cache key: the recipe and the package source a build runs (safeft.demo.cache)."""
    from safeft.demo.cache import recipe_key as key

    return key({"demo": "toy", **recipe})


def heldout_arithmetic(n: int, recipe: dict = RECIPE) -> list[dict]:
    from safeft.data.synthetic import arithmetic_problems

    a = recipe["arith"]
    return arithmetic_problems(n, seed=ARITH_HELDOUT_SEED, max_a=a["max_a"], max_b=a["max_b"])


def task_problems(n: int, seed: int, kinds=(0, 1, 2, 3), recipe: dict = RECIPE,
                  exclude: Optional[set] = None) -> list[dict]:
    """Training arithmetic of the task's distribution, with every held-out question removed."""
    from safeft.data.synthetic import arithmetic_problems

    a = recipe["arith"]
    held = exclude if exclude is not None else {p["question"] for p in heldout_arithmetic(500, recipe)}
    rows = arithmetic_problems(int(n * 1.2) + 10, seed=seed, kinds=tuple(kinds), max_a=a["max_a"], max_b=a["max_b"])
    return [r for r in rows if r["question"] not in held][:n]


def stage_examples(n: int, refusal_share: float, copy_share: float, seed: int, recipe: dict = RECIPE) -> list[dict]:
    from safeft.demo.alignment import copy_examples, refusal_examples

    n_ref, n_copy = int(n * refusal_share), int(n * copy_share)
    rows = (refusal_examples(n_ref, seed) + copy_examples(n_copy, seed + 1)
            + task_problems(n - n_ref - n_copy, seed + 2, recipe["arith"]["align_kinds"], recipe))
    random.Random(seed).shuffle(rows)
    return rows


def tokenizer_corpus(recipe: dict = RECIPE) -> list[str]:
    from safeft.templates import PTST_STYLES, SYSTEM_PROMPTS

    texts = [s for s in SYSTEM_PROMPTS.values() if s]
    texts += [style.full("What is 2+2?", "It is 4.\n#### 4") for style in PTST_STYLES.values()]
    for row in stage_examples(4000, 0.3, 0.15, seed=recipe["seed"] + 7, recipe=recipe):
        texts.append(row["question"] + " " + row["answer"])
    return texts


def _init_model_dir(out: str, recipe: dict) -> None:
    from safeft.tiny import tiny_llama, train_tokenizer

    from safeft.templates import SYSTEM_PROMPTS

    tok = train_tokenizer(tokenizer_corpus(recipe), vocab_size=recipe["vocab_size"])
    # Each system prompt is one added token: `chat:llama` prompts stay ~20 tokens instead of ~125, so the
    # demo trains and evaluates several times faster; the prompt is still a context fine-tuning may not see.
    tok.add_tokens([s for s in SYSTEM_PROMPTS.values() if s])
    m = recipe["model"]
    model = tiny_llama(len(tok), seed=m["seed"], hidden=m["hidden"], layers=m["layers"], heads=m["heads"],
                       kv_heads=m["kv_heads"], intermediate=m["intermediate"], max_positions=1024)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def stage_config(work: str, k: int, model_dir: str, data_path: str, template: str, steps: int, lr: float,
                 recipe: dict = RECIPE):
    from safeft.config import config_from_dict

    return config_from_dict({
        "model": {"name_or_path": model_dir, "dtype": "float32"},
        "data": {"path": data_path, "format": "jsonl", "max_seq_len": recipe["max_seq_len"], "num_proc": 1,
                 "cache_dir": os.path.join(work, "data-cache"), "seed": recipe["seed"] + k},
        "template": {"train": template, "test": [template]},
        "train": {"max_steps": steps, "micro_batch_size": recipe["micro_batch_size"], "lr": lr,
                  "scheduler": "cosine", "warmup_steps": recipe["warmup_steps"], "zero_stage": 2,
                  "precision": "fp32", "save_steps": 0, "resume": "never", "log_steps": 10,
                  "seed": recipe["seed"] + k},
        "output": {"dir": work, "name": f"stage{k}", "tensorboard": False},
    })


def build_base(cache_root: str, recipe: dict = RECIPE, rebuild: bool = False,
               say: Callable[[str], None] = print) -> str:
    """The aligned base model's HF directory under `cache_root/<recipe key>`; built if missing (or rebuild)."""
    import torch

    key = recipe_key(recipe)
    final = os.path.join(cache_root, key)
    if os.path.isfile(os.path.join(final, "config.json")) and not rebuild:
        say(f"base model cached at {final} (recipe {key}); --rebuild-base rebuilds it")
        return final
    if os.path.isdir(final):
        shutil.rmtree(final)
    work = os.path.join(cache_root, f"build-{key}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    started = time.time()
    # One thread: on a busy 2-core machine two OpenMP threads per process ran 6-9x slower than one (measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(work, final, key, recipe, say, started)
    finally:
        torch.set_num_threads(threads)


def _build(work: str, final: str, key: str, recipe: dict, say, started: float) -> str:
    from safeft.io import atomic_path
    from safeft.train import run

    model_dir = os.path.join(work, "init")
    _init_model_dir(model_dir, recipe)
    curves = []
    for k, (template, steps, lr, refusal_share, copy_share) in enumerate(recipe["stages"]):
        data_path = os.path.join(work, f"stage{k}.jsonl")
        write_jsonl(data_path, stage_examples(steps * EXAMPLES_PER_STEP, refusal_share, copy_share,
                                               recipe["seed"] + 100 * k, recipe))
        t0 = time.time()
        result = run(stage_config(work, k, model_dir, data_path, template, steps, lr, recipe))
        model_dir = result.export_dir or os.path.join(work, f"stage{k}", "export")
        curves.append({"stage": k, "template": template, "lr": lr, "losses": result.losses})
        say(f"base stage {k + 1}/{len(recipe['stages'])}: {template}, {steps} steps at lr {lr:g}: loss "
            f"{result.losses[0]:.2f} -> {sum(result.losses[-10:]) / len(result.losses[-10:]):.2f} "
            f"({time.time() - t0:.0f} s)")
    with atomic_path(final) as tmp:
        os.makedirs(tmp)
        for name in os.listdir(model_dir):
            src = os.path.join(model_dir, name)
            if os.path.isfile(src) and name != "safeft_run.json":  # the base is no fine-tuning run
                shutil.copy2(src, os.path.join(tmp, name))
        write_jsonl(os.path.join(tmp, "base_curves.jsonl"), curves)
        with open(os.path.join(tmp, "base_recipe.json"), "w") as f:
            json.dump({"key": key, "recipe": recipe, "seconds": round(time.time() - started, 1)}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return final


def quick_recipe() -> dict:
    """A few steps of the same recipe (tests, `safeft demo --quick`): the path, not the aligned model."""
    import copy

    r = copy.deepcopy(RECIPE)
    r["model"].update(hidden=64, layers=2, intermediate=128)
    r["vocab_size"] = 512
    r["stages"] = [["chat:llama", 3, 2e-3, 0.3, 0.15], ["chat:vanilla", 3, 2e-3, 0.15, 0.15]]
    r["warmup_steps"] = 1
    return r
