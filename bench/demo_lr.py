"""How the main job's fine-tuning learning rate was chosen: from loss and utility only, never from safety.

The main job (`safeft demo`, configs/demo/smollm2.yaml) fine-tunes the aligned SmolLM2 base on the config's
`data.limit` GSM8K train rows, one epoch; the step budget is fixed by the 2-core CPU. This sweep trains the
vanilla-safe setting (chat template with the Llama-2 safety prompt) at each learning rate through the same stack
(`safeft sweep`: Ray Train, 2 workers, the config's DeepSpeed stage, packing), WITHOUT safety probes, and
evaluates utility only: exact match on held-out
generated arithmetic and on GSM8K test, and the teacher-forced loss of GSM8K test answers. No harmful prompt is
generated here. The pick: the best held-out answer loss, unless the training loss curve diverges.

    .venv/bin/python bench/demo_lr.py [--lrs 5e-5 1e-4 2e-4] [--out runs] [--base DIR]   # ~15 min on 2 cores

--base: an aligned base built before (runs/smollm2/base/<key>); by default the demo's, built if missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from repo_root import REPO  # noqa: E402,F401 (safeft from this checkout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", nargs="+", default=["5e-5", "1e-4", "2e-4"])
    p.add_argument("--out", default="runs")
    p.add_argument("--base", default=None, help="an aligned base directory (default: the demo's, built if missing)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from safeft.config import load_config
    from safeft.demo import real
    from safeft.demo.flow import evaluate_base
    from safeft.sweep import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    root = Path(args.out).resolve() / "smollm2"
    base = args.base or real.build_base(root / "base", False, False, None)
    files = real.write_data(str(root / "data"), base, False)["files"]
    e = real.EVAL
    tasks = (f"[{{name: gsm8k, id: arithmetic, path: '{files['arithmetic']}', limit: {e['arithmetic']}, "
             f"max_new_tokens: {e['arithmetic_new_tokens']}}}, {{name: gsm8k, sample: {e['gsm8k']}, "
             f"max_new_tokens: {e['gsm8k_new_tokens']}}}, {{name: answer-loss, sample: {e['answer-loss']}}}]")
    lrs = ", ".join(f"{float(x):.1e}" for x in args.lrs)  # YAML reads 5.0e-05 as a number, 5e-5 as a string
    overrides = [f"output.dir={Path(args.out).resolve()}", "output.name=smollm2-lr", f"model.name_or_path={base}",
                 f"data.path={files['finetune']}", f"eval.tasks={tasks}", f"train.lr=[{lrs}]",
                 *real.machine_overrides()]
    cfg = load_config(str(real.CONFIG), overrides)
    base_eval = str(root / "base-eval-utility")
    evaluate_base(cfg.expand()[0][1], base, base_eval, [real.SAFE])  # the base: one point of the grid
    sweep = run_sweep(cfg, progress=False)
    rows = [("base", "-", _utility(base_eval), None)]
    for r in sweep["runs"]:
        lr = r["point"]["train.lr"]
        rows.append((f"lr {lr:g}", lr, _utility(os.path.join(r["run_dir"], "eval")), _losses(r["run_dir"])))
    print("| model | arithmetic EM | GSM8K EM | GSM8K answer loss | train loss first -> last 3 steps |")
    print("|---|---|---|---|---|")
    for name, _, u, losses in rows:
        curve = f"{losses[0]:.3f} -> {sum(losses[-3:]) / 3:.3f} ({len(losses)} steps)" if losses else "-"
        print(f"| {name} | {100 * u['arithmetic']:.1f} | {100 * u['gsm8k']:.1f} | {u['answer-loss']:.3f} | {curve} |")
    return 0


def _utility(eval_dir: str) -> dict:
    with open(os.path.join(eval_dir, "summary.json"), encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    key = {"arithmetic": "exact_match_strict", "gsm8k": "exact_match_strict", "answer-loss": "answer_loss"}
    return {r["task"]: r["metrics"][key[r["task"]]]["value"] for r in rows}


def _losses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "logs", "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


if __name__ == "__main__":
    raise SystemExit(main())
