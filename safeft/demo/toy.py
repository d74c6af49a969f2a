"""The main job at toy scale: `safeft demo` (what `make demo` runs) reproduces the PTST / LookAhead experiment.

1. base: a tiny aligned chat model built through safeft's own trainer, cached by its recipe (safeft.demo_base);
2. data: benign arithmetic for fine-tuning, the held-out evaluation sets (never trained on);
3. base evaluation (the model before fine-tuning);
4. the variants, each fine-tuned on Ray Train (2 workers, DeepSpeed ZeRO-2, packing) and evaluated by the
   sharded evaluator: vanilla-safe, vanilla (also read as ptst under chat:llama), lookahead-real/-virtual;
5. report: rates with bootstrap intervals (effects.json, report.md, plots) and a verdict.

Third-party output (Ray, DeepSpeed, transformers) goes to <out>/demo/logs/; the console gets one line per
stage and per run, then the table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from safeft.errors import SafeftError
from safeft.io import write_jsonl

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "examples" / "demo.yaml"
# The runs: dotted-key overrides of demo.yaml. ptst is not a run: it is `vanilla` read under chat:llama.
VARIANTS = {
    "vanilla-safe": {"template.train": "chat:llama", "lookahead.mode": "none", "template.test": ["chat:llama"]},
    "vanilla": {"template.train": "chat:vanilla", "lookahead.mode": "none",
                "template.test": ["chat:vanilla", "chat:llama"]},
    "lookahead-real": {"template.train": "chat:llama", "lookahead.mode": "real", "template.test": ["chat:llama"]},
    "lookahead-virtual": {"template.train": "chat:llama", "lookahead.mode": "virtual",
                          "template.test": ["chat:llama"]},
}
# Views of the runs in the report: (variant, run, test templates shown)
VIEWS = [("vanilla-safe", "vanilla-safe", ["chat:llama"]), ("vanilla", "vanilla", ["chat:vanilla"]),
         ("ptst", "vanilla", ["chat:llama"]), ("lookahead-real", "lookahead-real", ["chat:llama"]),
         ("lookahead-virtual", "lookahead-virtual", ["chat:llama"])]
ORDER = ["base", "vanilla-safe", "vanilla", "ptst", "lookahead-real", "lookahead-virtual"]
QUICK_VARIANTS = ("vanilla-safe", "vanilla")


class _Console:
    """Progress lines to the real terminal while fd 1/2 (and so every library's prints) go to a log file."""

    def __init__(self, log_path: str):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log_path = log_path
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        self.quiet_now = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
        if self.quiet_now:
            print(f"[demo] {text}", flush=True)  # also into the log, for context

    @contextlib.contextmanager
    def quiet(self):
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(self.log_path, "a") as f:
            os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        self.quiet_now = True
        try:
            yield
        finally:
            self.quiet_now = False
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def write_eval_data(data_dir: str, quick: bool) -> dict:
    """Fine-tuning data and the held-out evaluation sets as files; returns their paths."""
    from safeft.data.synthetic import harmful_heldout, prefill_rows
    from safeft.demo_base import heldout_arithmetic, task_problems

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
    return out


def _eval_overrides(files: dict, quick: bool) -> list[str]:
    from safeft.data.shared import shared_file

    n_h, n_u, n_a = (24, 24, 16) if quick else (180, 200, 100)
    tasks = [f"{{name: gsm8k, path: '{files['arith']}', limit: {n_u}, max_new_tokens: 48}}",
             f"{{name: instructions, path: '{files['harmful']}', limit: {n_h}, max_new_tokens: 16}}",
             f"{{name: prefill, path: '{files['prefill']}', limit: {n_h}, max_new_tokens: 16, prefill_tokens: 3}}"]
    advbench = shared_file("advbench", "harmful_behaviors.csv")
    if advbench:
        tasks.append(f"{{name: advbench, path: '{advbench}', limit: {n_a}, max_new_tokens: 16}}")
    xstest = shared_file("xstest", "xstest_prompts.csv")
    if xstest:  # over-refusal: what a safety system prompt at test time can cost (the file alternates 25 safe and 20-25 unsafe rows per type)
        tasks.append(f"{{name: xstest, path: '{xstest}', limit: {40 if quick else 450}, max_new_tokens: 16}}")
    return ["eval.tasks=[" + ", ".join(tasks) + "]"]


def run_demo(out_dir: str = "runs", quick: bool = False, extra_overrides: list[str] | None = None,
             seeds: int = 1, rebuild_base: bool = False) -> dict:
    from safeft.config import load_config

    if not DEMO_CONFIG.is_file():
        raise SafeftError(f"demo config {DEMO_CONFIG} is missing: run the demo from a safeft checkout")
    started = time.time()
    root = Path(out_dir).resolve() / "demo"
    console = _Console(str(root / "logs" / "demo.log"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # forwarded to Ray workers; see safeft.demo_base on threads
    say = console.say
    say(f"safeft demo: logs of Ray, DeepSpeed and transformers go to {console.log_path}")

    say("[1/5] base model: tiny aligned chat model (safeft.demo_base)")
    base = _base_model(root, quick, rebuild_base, console)
    say("[2/5] data: benign arithmetic for fine-tuning; held-out harmful prompts, prefill attack, arithmetic")
    files = write_eval_data(str(root / "data"), quick)
    name = f"demo/runs-{os.path.basename(base)}" + ("-quick" if quick else "")
    overrides = [f"output.dir={Path(out_dir).resolve()}", f"output.name={name}", f"model.name_or_path={base}",
                 f"data.path={files['finetune']}"] + _eval_overrides(files, quick)
    if quick:
        overrides += ["train.max_steps=4", "train.save_steps=2", "data.limit=200"]
    cfg = load_config(str(DEMO_CONFIG), overrides + list(extra_overrides or []))

    say("[3/5] evaluating the base model (not fine-tuned)")
    t0 = time.time()
    base_eval = str(root / "base-eval" / os.path.basename(base) / ("quick" if quick else "full"))
    with console.quiet():
        _evaluate_base(cfg, base, base_eval)
    say(f"      base evaluated in {time.time() - t0:.0f} s -> {base_eval}")

    variants = {k: v for k, v in VARIANTS.items() if not quick or k in QUICK_VARIANTS}
    points = {f"{v},seed={s}": {**p, "train.seed": 42 + s, "data.seed": 42 + s}
              for s in range(seeds) for v, p in variants.items()}
    say(f"[4/5] fine-tuning {len(points)} run(s) (finished ones are skipped) on Ray Train (2 workers, ZeRO-{cfg.train.zero_stage}), each "
        "then evaluated by the sharded evaluator")
    sweep = _sweep(cfg, points, console)
    say("[5/5] report")
    with console.quiet():  # matplotlib's first run on a machine logs its font cache build
        report = _report(root, base_eval, sweep, variants, seeds, cfg, time.time() - started)
    say("\n" + report["table"] + "\n\n" + report["comparisons_table"] + "\n")
    say(f"report:   {report['report']}\neffects:  {report['effects_json']}\nplots:    {', '.join(report['figures'])}\n"
        f"runs:     {os.path.join(cfg.output.dir, name)}\nlogs:     {console.log_path} (Ray workers: "
        f"{_ray_logs()})\ntook {time.time() - started:.0f} s")
    return {"sweep": sweep, "report": report, "base": base}


def _base_model(root: Path, quick: bool, rebuild: bool, console: _Console) -> str:
    from safeft.demo_base import RECIPE, build_base, quick_recipe

    recipe = quick_recipe() if quick else RECIPE
    t0 = time.time()
    with console.quiet():
        path = build_base(str(root / "base"), recipe, rebuild=rebuild, say=console.say)
    console.say(f"      base model ready in {time.time() - t0:.0f} s -> {path}")
    return path


def _evaluate_base(cfg, base: str, out: str) -> None:
    import copy

    from safeft.eval import evaluate

    bcfg = copy.deepcopy(cfg.single("eval"))
    bcfg.template.test = ["chat:vanilla", "chat:llama"]
    if not os.path.isfile(os.path.join(out, "summary.json")):
        evaluate(bcfg, models=[base], out_dir=out)


def _sweep(cfg, points: dict, console: _Console) -> dict:
    import ray

    from safeft.sweep import run_sweep

    def on_result(run) -> None:
        secs = run.result.get("seconds", "?") if run.status == "done" else "-"
        console.say(f"      run {run.name.rsplit('/', 1)[-1]}: {run.status} ({secs} s)"
                    + (f": {run.error.splitlines()[-1]}" if run.error else ""))

    with console.quiet():
        if not ray.is_initialized():
            ray.init(num_cpus=2, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
        sweep = run_sweep(cfg, progress=False, points=points, on_result=on_result)
    if sweep["failed"]:
        raise SafeftError(f"{sweep['failed']} demo run(s) failed; see {sweep['summary']} and {console.log_path}")
    return sweep


def _ray_logs() -> str:
    try:
        import ray

        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:
        return "the Ray session's logs directory"


def _report(root: Path, base_eval: str, sweep: dict, variants: dict, seeds: int, cfg, seconds: float) -> dict:
    from safeft.demo_report import write_demo_report

    by_variant: dict[str, list[str]] = {}
    for r in sweep["runs"]:
        variant = r["name"].rsplit("/", 1)[-1].split(",seed=")[0]
        by_variant.setdefault(variant, []).append(r["run_dir"])
    entries = [{"variant": "base", "train_template": None, "eval_dirs": [base_eval]}]
    for view, run, templates in VIEWS:
        if run in by_variant:
            entries.append({"variant": view, "train_template": VARIANTS[run]["template.train"],
                            "eval_dirs": [os.path.join(d, "eval") for d in by_variant[run]],
                            "run_dirs": by_variant[run], "test_templates": templates})
    return write_demo_report(entries, str(root / "report"), ORDER, cfg, seeds, seconds)
