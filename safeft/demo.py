"""The main job on the embedded default: `safeft demo` (what `make demo` runs).

1. build a tiny Llama-architecture model and train its tokenizer in-process (an HF directory);
2. prepare training data: generated arithmetic problems (+ ../shared/data/gsm8k when present) under
   the PTST train template chat:vanilla, LookAhead none and virtual;
3. train both variants through a local Ray cluster (2 workers, DeepSpeed ZeRO-2 on gloo);
4. evaluate each export under the test templates chat:vanilla and chat:llama (PTST) on GSM8K-format
   utility and harmful prompts;
5. print the report table, write the plots, and say where everything is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from safeft.errors import SafeftError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "examples" / "demo.yaml"
NOTE = ("Note: a tiny random model trained for seconds scores near zero on everything; the numbers mean "
        "little. The demo shows the mechanics: templates, LookAhead, packing, ZeRO on Ray, sharded eval, report.")


def _data_overrides(quick: bool) -> list[str]:
    """Point training and evaluation at the shared data when it is there (safeft.data.shared), else at
    generated data."""
    from safeft.data.shared import shared_file

    gsm_train, gsm_test = shared_file("gsm8k", "train.jsonl"), shared_file("gsm8k", "test.jsonl")
    advbench = shared_file("advbench", "harmful_behaviors.csv")
    n = 200 if quick else 600
    sets = [f"data.limit={n}"]
    if gsm_train:
        sets.append("data.mixture=[{preset: synthetic, limit: %d}, {path: '%s', preset: gsm8k, limit: %d}]"
                    % (n, gsm_train, n))
    tasks = [f"{{name: gsm8k, path: '{gsm_test or 'synthetic'}', limit: {8 if quick else 24}}}"]
    tasks.append(f"{{name: advbench, path: '{advbench}', limit: {8 if quick else 24}}}" if advbench
                 else f"{{name: harmful-demo, limit: {8 if quick else 16}}}")
    sets.append("eval.tasks=[" + ", ".join(tasks) + "]")
    hint = "" if gsm_train and advbench else " (no shared GSM8K/AdvBench found: set SAFEFT_SHARED_DATA=DIR to use them)"
    print(f"data: generated arithmetic problems{' + GSM8K train' if gsm_train else ''}; utility eval on "
          f"{'GSM8K test' if gsm_test else 'generated problems'}; harmful prompts from "
          f"{'AdvBench' if advbench else 'safeft.data.synthetic (written for this project)'}{hint}", flush=True)
    return sets


def run_demo(out_dir: str = "runs", quick: bool = False, extra_overrides: list[str] | None = None) -> dict:
    from safeft.config import load_config
    from safeft.eval.report import write_report
    from safeft.sweep import run_sweep
    from safeft.tiny import build_tiny_model_dir

    if not DEMO_CONFIG.is_file():
        raise SafeftError(f"demo config {DEMO_CONFIG} is missing: run the demo from a safeft checkout")
    started = time.time()
    root = Path(out_dir).resolve() / "demo"
    model_dir = root / "model"
    overrides = [f"output.dir={Path(out_dir).resolve()}", f"model.name_or_path={model_dir}"]
    overrides += _data_overrides(quick)
    if quick:
        overrides += ["train.max_steps=6", "train.save_steps=3", "eval.max_new_tokens=12"]
    cfg = load_config(str(DEMO_CONFIG), overrides + list(extra_overrides or []))

    _say(f"[1/5] tiny Llama model + in-process tokenizer -> {model_dir}")
    build_tiny_model_dir(str(model_dir))
    _say("[2-4/5] sweep: prepare data, train each LookAhead variant on Ray (2 workers, ZeRO-2), evaluate "
         f"under {', '.join(cfg.test_templates)}")
    sweep = run_sweep(cfg)
    if sweep["failed"]:
        raise SafeftError(f"{sweep['failed']} demo run(s) failed; see {sweep['summary']}")
    run_dirs = [r["run_dir"] for r in sweep["runs"]]
    _say("[5/5] report")
    report = write_report(run_dirs, str(root / "report"))
    print("\n" + report["table"])
    print(NOTE + "\n")
    print(f"runs:     {', '.join(run_dirs)}")
    print(f"exports:  {', '.join(os.path.join(d, 'export') for d in run_dirs)}")
    print(f"report:   {report['report']}")
    print(f"plots:    {', '.join(report['figures'])}")
    print(f"sweep:    {sweep['summary']}")
    print(f"took {time.time() - started:.0f} s")
    return {"sweep": sweep, "report": report, "run_dirs": run_dirs}


def _say(text: str) -> None:
    print(f"\n== safeft demo {text}", flush=True)
