"""The demos' shared flow: base -> data -> base evaluation -> fine-tuning runs -> report, one line per stage.

    run_demo(spec, out_dir)        # spec: safeft.demo.real.SPEC (SmolLM2, the main job) or safeft.demo.toy.SPEC

A spec says what differs between demos (the base and how it is built, the data, the evaluation tasks, the
variants and the claims to test); this module runs any of them through safeft's real stack: the base
evaluated by the sharded evaluator, each variant fine-tuned by `safeft.sweep` on Ray Train (DeepSpeed ZeRO,
packing) and evaluated under its test templates, then `safeft.eval.effects` measures the claims. Finished runs
(DONE) are skipped on a re-run; third-party output goes to <out>/demo/logs/demo.log.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from safeft.demo.console import Console, eta
from safeft.errors import SafeftError
from safeft.eval.effects import Comparison


@dataclass
class DemoSpec:
    name: str  # directory under <out>/demo/ ("smollm2", "toy")
    title: str  # the report's title
    config: Path  # the fine-tuning config the variants override
    variants: dict[str, dict]  # run name -> dotted-key overrides of `config`
    views: list[tuple[str, str, list[str]]]  # (variant shown, run it reads, test templates shown)
    order: list[str]  # variants in table order
    metrics: dict[str, tuple[str, str]]  # eval task id -> (metric, dataset) in effects.json
    columns: list[tuple[str, str, str]]  # (metric, dataset, heading) of the table and plot
    comparisons: list[Comparison]
    safety_template: str  # the test template with the safety prompt (drawn in red)
    base_templates: list[str]  # the base is evaluated under these
    build_base: Callable[..., str]  # (root, quick, rebuild, console, model or None) -> the base model's directory
    write_data: Callable[..., dict]  # (data_dir, base, quick) -> {"files": {...}, "facts": [lines for the report]}
    eval_overrides: Callable[..., list[str]]  # (files, quick) -> `--set` lines for eval.tasks
    run_overrides: Callable[..., dict] = lambda run, files, quick: {}  # per-run overrides that need the data files
    quick_variants: tuple = ()
    quick_overrides: list[str] = field(default_factory=list)
    describe: Callable[..., list[str]] = lambda cfg, seeds: []  # report lines on what was run
    expected_s: dict = field(default_factory=dict)  # measured stage times on 2 quiet cores: base, base_eval, run


def run_demo(spec: DemoSpec, out_dir: str = "runs", quick: bool = False, extra_overrides: list[str] | None = None,
             seeds: int = 1, rebuild_base: bool = False, model: str | None = None) -> dict:
    from safeft.config import load_config

    if not spec.config.is_file():
        raise SafeftError(f"demo config {spec.config} is missing: run the demo from a safeft checkout")
    started = time.time()
    root = Path(out_dir).resolve() / spec.name
    console = Console(str(root / "logs" / "demo.log"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: Ray workers and replicas share 2 cores
    say = console.say
    say(f"safeft demo ({spec.name}): logs of Ray, DeepSpeed and transformers go to {console.log_path}")

    # One local Ray instance for every stage, started here without log streaming: otherwise the first stage to
    # need Ray (the evaluator's replicas) starts it streaming, and Ray Train's background actors' warnings then
    # reach the console between stages. Their logs stay in the Ray session folder (printed at the end).
    with console.quiet():
        _start_ray()
    expected = {} if quick else spec.expected_s
    say("[1/5] base model" + _expect(expected, "base", "if it is not cached"))
    t0 = time.time()
    base = spec.build_base(root / "base", quick, rebuild_base, console, model)
    say(f"      base model ready in {time.time() - t0:.0f} s -> {base}")
    say("[2/5] data: fine-tuning set and held-out evaluation sets")
    data = spec.write_data(str(root / "data"), base, quick)
    for line in data.get("facts", []):
        say(f"      {line}")
    name = f"{spec.name}/runs-{os.path.basename(base)}" + ("-quick" if quick else "")
    overrides = [f"output.dir={Path(out_dir).resolve()}", f"output.name={name}", f"model.name_or_path={base}",
                 f"data.path={data['files']['finetune']}"] + spec.eval_overrides(data["files"], quick)
    overrides += (spec.quick_overrides if quick else []) + list(extra_overrides or [])
    with console.quiet():  # the first DeepSpeed import logs its accelerator choice
        cfg = load_config(str(spec.config), overrides)

    say(f"[3/5] evaluating the base model (not fine-tuned) under {', '.join(spec.base_templates)}"
        + _expect(expected, "base_eval", "if not done before"))
    t0 = time.time()
    base_eval = str(root / "base-eval" / os.path.basename(base) / _eval_key(cfg, spec.base_templates))
    with console.quiet():
        evaluate_base(cfg, base, base_eval, spec.base_templates)
    say(f"      base evaluated in {time.time() - t0:.0f} s -> {base_eval}")

    variants = {k: v for k, v in spec.variants.items() if not quick or k in spec.quick_variants}
    points = {f"{v},seed={s}": {**p, **spec.run_overrides(v, data["files"], quick), "train.seed": 42 + s,
                                "data.seed": 42 + s}
              for s in range(seeds) for v, p in variants.items()}
    from safeft.distributed import stage_name

    say(f"[4/5] fine-tuning {len(points)} run(s) on Ray Train ({cfg.ray.num_workers} workers, DeepSpeed "
        f"{stage_name(cfg.train.zero_stage)}, packing), each evaluated by the sharded evaluator; finished runs are "
        "skipped"
        + ("" if "run" not in expected else f" (about {len(points) * expected['run'] / 60:.0f} min on 2 cores)"))
    sweep = _sweep(cfg, points, console)
    say("[5/5] report")
    from safeft.demo.report import write_demo_report

    with console.quiet():  # matplotlib's first run on a machine logs its font cache build
        report = write_demo_report(spec, _entries(spec, base_eval, sweep), str(root / "report"), cfg, seeds,
                                   time.time() - started, data.get("facts", []), base)
    say("\n" + report["tables"].results + "\n\n" + report["tables"].comparisons + "\n")
    say(f"report:   {report['report']}\neffects:  {report['effects_json']}\nplots:    {', '.join(report['figures'])}\n"
        f"runs:     {os.path.join(cfg.output.dir, name)}\nlogs:     {console.log_path} (Ray workers: "
        f"{_ray_logs()})\ntook {time.time() - started:.0f} s")
    return {"sweep": sweep, "report": report, "base": base}


def _expect(expected: dict, stage: str, when: str) -> str:
    """' (about N min on 2 cores, if ...)' from the spec's measured stage times ('' when unknown)."""
    secs = expected.get(stage)
    return f" (about {secs / 60:.0f} min on 2 cores, {when})" if secs else ""


def _eval_key(cfg: Any, templates: list[str]) -> str:
    """The base evaluation's directory name: a hash of what it measures (tasks, generation settings, judges),
    so a changed evaluation never reads an old summary."""
    import hashlib
    import json

    ev = cfg.eval
    what = {"tasks": [vars(t) for t in ev.tasks], "templates": templates, "dtype": ev.dtype, "judges": ev.judges,
            "max_new_tokens": ev.max_new_tokens, "stop": ev.stop, "test_system": cfg.template.test_system}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def evaluate_base(cfg: Any, base: str, out: str, templates: list[str]) -> None:
    from safeft.eval import evaluate

    bcfg = copy.deepcopy(cfg.single("eval"))
    bcfg.template.test = list(templates)
    if not os.path.isfile(os.path.join(out, "summary.json")):
        evaluate(bcfg, models=[base], out_dir=out)


def _sweep(cfg: Any, points: dict, console: Console) -> dict:
    from safeft.sweep import run_sweep

    started, finished = time.time(), []

    def on_result(run) -> None:
        finished.append(run)
        secs = run.result.get("seconds", "?") if run.status == "done" else "-"
        left = eta(len(finished), len(points), started)
        console.say(f"      run {run.name.rsplit('/', 1)[-1]}: {run.status} ({secs} s) [{len(finished)}/{len(points)}"
                    f"{', ' + left if left else ''}]" + (f": {run.error.splitlines()[-1]}" if run.error else ""))

    with console.quiet():
        _start_ray()
        sweep = run_sweep(cfg, progress=False, points=points, on_result=on_result)
    if sweep["failed"]:
        raise SafeftError(f"{sweep['failed']} demo run(s) failed; see {sweep['summary']} and {console.log_path}")
    return sweep


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)


def _entries(spec: DemoSpec, base_eval: str, sweep: dict) -> list[dict]:
    """The report's rows: the base, then each view of the runs (several seeds of a run = one entry)."""
    by_variant: dict[str, list[str]] = {}
    for r in sweep["runs"]:
        variant = r["name"].rsplit("/", 1)[-1].split(",seed=")[0]
        by_variant.setdefault(variant, []).append(r["run_dir"])
    entries = [{"variant": "base", "train_template": None, "eval_dirs": [base_eval]}]
    for view, run, templates in spec.views:
        if run in by_variant:
            entries.append({"variant": view, "train_template": spec.variants[run]["template.train"],
                            "eval_dirs": [os.path.join(d, "eval") for d in by_variant[run]],
                            "run_dirs": by_variant[run], "test_templates": templates})
    return entries


def _ray_logs() -> str:
    try:
        import ray

        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:
        return "the Ray session's logs directory"
