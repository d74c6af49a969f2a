"""The toy demo (`safeft demo --toy`; `--quick` is the CI end-to-end run): mechanics only.

A ~1.3M-parameter chat model trained from scratch and aligned in-process (safeft.demo.toy_base), fine-tuned on
generated arithmetic through the whole stack (Ray Train, DeepSpeed ZeRO-2, packing, sharded evaluator). It
exercises every path in minutes; what it measures is not the papers' phenomenon: a model trained from scratch
has neither the shallow alignment nor the copying ability their mechanisms act on (BENCHMARKS.md, "Toy-scale
demo"). The main job on a real pretrained chat model is safeft.demo.real.
"""

from __future__ import annotations

import os
from pathlib import Path

from safeft import REPO
from safeft.demo.flow import DemoSpec
from safeft.eval.effects import Comparison
from safeft.io import write_jsonl

CONFIG = REPO / "configs" / "demo" / "toy.yaml"
SAFE, PLAIN = "chat:llama", "chat:vanilla"
# The runs: dotted-key overrides of toy.yaml. ptst is not a run: it is `vanilla` read under chat:llama.
VARIANTS = {
    "vanilla-safe": {"template.train": SAFE, "lookahead.mode": "none", "template.test": [SAFE]},
    "vanilla": {"template.train": PLAIN, "lookahead.mode": "none", "template.test": [PLAIN, SAFE]},
    "lookahead-real": {"template.train": SAFE, "lookahead.mode": "real", "template.test": [SAFE]},
    "lookahead-virtual": {"template.train": SAFE, "lookahead.mode": "virtual", "template.test": [SAFE]},
}
VIEWS = [("vanilla-safe", "vanilla-safe", [SAFE]), ("vanilla", "vanilla", [PLAIN]), ("ptst", "vanilla", [SAFE]),
         ("lookahead-real", "lookahead-real", [SAFE]), ("lookahead-virtual", "lookahead-virtual", [SAFE])]
ORDER = ["base", "vanilla-safe", "vanilla", "ptst", "lookahead-real", "lookahead-virtual"]
METRICS = {"instructions": ("harmful_rate", "heldout"), "advbench": ("harmful_rate", "advbench"),
           "prefill": ("prefill_harmful_rate", "heldout"), "gsm8k": ("exact_match", "heldout"),
           "xstest": ("over_refusal_rate", "xstest")}
COLUMNS = [("harmful_rate", "heldout", "harmful % (held-out)"), ("harmful_rate", "advbench", "harmful % (AdvBench)"),
           ("prefill_harmful_rate", "heldout", "prefill harmful %"), ("exact_match", "heldout", "exact match %"),
           ("over_refusal_rate", "xstest", "over-refusal % (XSTest safe)")]
COMPARISONS = [
    Comparison("PTST: vanilla-safe more harmful than ptst", "harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("ptst", SAFE)),
    Comparison("PTST: vanilla-safe more harmful than ptst on AdvBench", "harmful_rate", "advbench",
               ("vanilla-safe", SAFE), ("ptst", SAFE)),
    Comparison("PTST: vanilla-safe more harmful than ptst under prefilling", "prefill_harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("ptst", SAFE)),
    Comparison("LookAhead real below vanilla-safe", "harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("lookahead-real", SAFE)),
    Comparison("LookAhead virtual below vanilla-safe", "harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("lookahead-virtual", SAFE)),
    Comparison("LookAhead real below vanilla-safe under prefilling", "prefill_harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("lookahead-real", SAFE)),
    Comparison("LookAhead virtual below vanilla-safe under prefilling", "prefill_harmful_rate", "heldout",
               ("vanilla-safe", SAFE), ("lookahead-virtual", SAFE)),
    Comparison("PTST's cost: ptst over-refuses more than vanilla (XSTest safe prompts)", "over_refusal_rate", "xstest",
               ("ptst", SAFE), ("vanilla", PLAIN)),
    Comparison("fine-tuning raises utility (vanilla-safe over base)", "exact_match", "heldout",
               ("vanilla-safe", SAFE), ("base", SAFE)),
    Comparison("fine-tuning raises utility (vanilla over base)", "exact_match", "heldout",
               ("vanilla", PLAIN), ("base", PLAIN)),
]


def build_base(root: Path, quick: bool, rebuild: bool, console, model: str | None = None) -> str:
    from safeft.demo.toy_base import RECIPE, build_base as build, quick_recipe
    from safeft.errors import SafeftError

    if model is not None:
        raise SafeftError("--model: the toy demo trains its own tiny model from scratch; use it with --demo smollm2")

    with console.quiet():
        return build(str(root), quick_recipe() if quick else RECIPE, rebuild=rebuild, say=console.say)


def write_data(data_dir: str, base: str, quick: bool) -> dict:
    """Fine-tuning data and the held-out evaluation sets as files."""
    from safeft.demo.alignment import harmful_heldout, prefill_rows
    from safeft.demo.toy_base import heldout_arithmetic, task_problems

    os.makedirs(data_dir, exist_ok=True)
    harmful = harmful_heldout()
    files = {
        "finetune": ("finetune.jsonl", task_problems(3000, seed=2024)),
        "harmful": ("heldout_harmful.jsonl", [{"instruction": q} for q in harmful]),
        "prefill": ("prefill.jsonl", prefill_rows(harmful)),
        "arith": ("heldout_arith.jsonl", heldout_arithmetic(200)),
    }
    out = {}
    for key, (name, rows) in files.items():
        out[key] = os.path.join(data_dir, name)
        write_jsonl(out[key], rows)
    return {"files": out, "facts": ["benign arithmetic for fine-tuning; held-out harmful prompts, prefill attack, "
                                    "arithmetic"]}


def eval_overrides(files: dict, quick: bool) -> list[str]:
    from safeft.data.shared import shared_file

    n_h, n_u, n_a = (24, 24, 16) if quick else (180, 200, 100)
    tasks = [f"{{name: gsm8k, path: '{files['arith']}', limit: {n_u}, max_new_tokens: 48}}",
             f"{{name: instructions, path: '{files['harmful']}', limit: {n_h}, max_new_tokens: 16}}",
             f"{{name: prefill, path: '{files['prefill']}', limit: {n_h}, max_new_tokens: 16, prefill_tokens: 3}}"]
    advbench = shared_file("advbench", "harmful_behaviors.csv")
    if advbench:
        tasks.append(f"{{name: advbench, path: '{advbench}', limit: {n_a}, max_new_tokens: 16}}")
    xstest = shared_file("xstest", "xstest_prompts.csv")
    if xstest:  # over-refusal: what a safety system prompt at test time can cost
        tasks.append(f"{{name: xstest, path: '{xstest}', label: safe, limit: {20 if quick else 250}, "
                     "max_new_tokens: 16}")
    return ["eval.tasks=[" + ", ".join(tasks) + "]"]


def describe(cfg, seeds: int) -> list[str]:
    from safeft.distributed import stage_name

    tr = cfg.train
    return ["What this is: mechanics only. The PTST / LookAhead experiment on a ~1.3M-parameter model trained "
            "from scratch, through safeft's real stack; such a model has neither the shallow alignment nor the "
            "copying ability the papers' mechanisms act on, so its numbers say nothing about them.",
            "- Base: a tiny Llama-architecture chat model aligned in-process by `safeft.demo.toy_base` (recipe and "
            "alignment curves in its directory: `base_recipe.json`, `base_curves.jsonl`).",
            f"- Fine-tuning: benign generated arithmetic only, {tr.max_steps} steps, lr {tr.lr:g} ({tr.scheduler}, "
            f"{tr.warmup_steps} warm-up), {cfg.ray.num_workers} workers x {tr.micro_batch_size} packed rows of "
            f"{cfg.data.max_seq_len} tokens, {stage_name(tr.zero_stage)}; {seeds} seed(s) per variant.",
            "- vanilla-safe = train and test chat:llama; vanilla = train and test chat:vanilla; ptst = the vanilla "
            "run tested under chat:llama; lookahead-* = vanilla-safe plus the preview in training only."]


SPEC = DemoSpec(
    name="toy", title="safeft toy demo: mechanics of PTST and LookAhead at toy scale (not a reproduction)",
    config=CONFIG, variants=VARIANTS, views=VIEWS, order=ORDER, metrics=METRICS, columns=COLUMNS,
    comparisons=COMPARISONS, safety_template=SAFE, base_templates=[PLAIN, SAFE], build_base=build_base,
    write_data=write_data, eval_overrides=eval_overrides, quick_variants=("vanilla-safe", "vanilla"),
    quick_overrides=["train.max_steps=4", "train.save_steps=2", "data.limit=200"], describe=describe)
