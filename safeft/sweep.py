"""`safeft sweep`: expand a config's grid into runs, train them on Ray concurrently, evaluate each.

    runs = plan_sweep(cfg)                  # names, run dirs, status; no Ray needed
    summary = run_sweep(cfg)                # schedules the runs that are not DONE

Run names read like the grid point: `<name>/train=chat-vanilla,lookahead=virtual`. A run is complete
when `<run_dir>/DONE` exists (written atomically after export and evaluation), so a second
`safeft sweep` schedules only what is missing; an unfinished run resumes from its last checkpoint
(Ray Train restores the run of the same name; the trainer's `train.resume: auto` does the rest).
`<output.dir>/<name>/sweep.json` lists every run with its status.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

from safeft.config import Config, config_from_dict, validate
from safeft.errors import ConfigError, SafeftError
from safeft.io import read_json, write_json

# Short axis names used in run names; other grid keys use their last dotted part.
AXIS_LABELS = {"template.train": "train", "lookahead.mode": "lookahead", "train.lr": "lr",
               "train.seed": "seed", "data.path": "data"}
DONE = "DONE"


@dataclass
class SweepRun:
    name: str
    point: dict
    cfg: Config
    status: str = "pending"  # pending | done | failed
    error: Optional[str] = None
    result: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    def record(self) -> dict:
        return {"name": self.name, "point": self.point, "run_dir": self.run_dir, "status": self.status,
                "error": self.error, **self.result}


def _value_label(key: str, value) -> str:
    if key == "data.path" and isinstance(value, str):
        value = os.path.splitext(os.path.basename(value.rstrip("/")))[0] or value
    text = str(value).replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_label(point: dict) -> str:
    """`train=chat-vanilla,lookahead=virtual`: readable and safe as one directory name."""
    if not point:
        return "single"
    return ",".join(f"{AXIS_LABELS.get(k, k.rsplit('.', 1)[-1])}={_value_label(k, v)}" for k, v in point.items())


def sweep_dir(cfg: Config) -> str:
    return cfg.run_dir


def explicit_points(cfg: Config, points: dict[str, dict]) -> list[tuple[str, dict, Config]]:
    """Named runs given as dotted-key overrides of a grid-free `cfg` (e.g. the demo's variants), not a grid.
    Each run's config is rebuilt from the overridden dict, so values are typed and validated as in a file."""
    from safeft.configtools import set_in_dict

    axes = cfg.grid_axes()
    if axes:  # a point overrides keys of one configuration; a grid under it would be a sweep of sweeps
        key, values = next(iter(axes.items()))
        raise ConfigError(f"config key '{key}' lists {len(values)} values {values}, but the named runs "
                          f"({', '.join(points)}) each override one configuration: give '{key}' one value, "
                          "or set it in each named run")
    base = cfg.expand()[0][1].to_dict()
    out = []
    for label, point in points.items():
        data = copy.deepcopy(base)
        for key, value in point.items():
            set_in_dict(data, key.split("."), copy.deepcopy(value), f"run {label!r} key {key!r}")
        out.append((label, point, config_from_dict(data)))
    return out


def plan_sweep(cfg: Config, points: Optional[dict[str, dict]] = None) -> list[SweepRun]:
    """One SweepRun per grid point (or per named entry of `points`), named and placed under
    `<output.dir>/<name>/`, with DONE status read."""
    validate(cfg)
    base = cfg.output.name or "sweep"
    runs, seen = [], {}
    planned = (explicit_points(cfg, points) if points is not None
               else [(run_label(point), point, run_cfg) for point, run_cfg in cfg.expand()])
    for label, point, run_cfg in planned:
        if label in seen:  # e.g. two data files with the same basename: disambiguate by the full values
            label += "," + hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:8]
        seen[label] = point
        run_cfg.output.name = f"{base}/{label}"
        run = SweepRun(name=run_cfg.output.name, point=point, cfg=run_cfg)
        if is_done(run.run_dir):
            run.status, run.result = "done", read_json(os.path.join(run.run_dir, DONE))
        runs.append(run)
    return runs


def is_done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, DONE))


def concurrency(cfg: Config, cluster_resources: dict) -> int:
    """How many runs train at once: `ray.max_concurrent_runs`, else as many as the cluster's CPUs/GPUs fit."""
    if cfg.ray.max_concurrent_runs > 0:
        return cfg.ray.max_concurrent_runs
    rc = cfg.ray
    fits = int(cluster_resources.get("CPU", 1) // (rc.num_workers * rc.cpus_per_worker))
    if rc.use_gpu:
        fits = min(fits, int(cluster_resources.get("GPU", 0) // (rc.num_workers * rc.gpus_per_worker)))
    return max(1, fits)


def evaluate_run(run_cfg: Config, export: str, enabled: bool = True) -> dict:
    """Evaluate one run's export under every test template, or say why it was skipped."""
    if not enabled:
        return {"eval": "skipped (--no-eval)"}
    try:
        from safeft.eval import evaluate
    except ImportError as e:
        return {"eval": f"skipped: evaluator not importable ({e})"}
    summary = evaluate(run_cfg, models=[export], out_dir=None)
    return {"eval": "done", "eval_summary": summary}


def execute_run(cfg_dict: dict, evaluate: bool) -> dict:
    """Train (resuming if unfinished), evaluate, then write DONE. Runs inside a Ray task."""
    from safeft.io import write_json as _write
    from safeft.ray_train import train_on_ray

    run_cfg = config_from_dict(cfg_dict)
    started = time.time()
    export = os.path.join(run_cfg.run_dir, "export")
    if os.path.isfile(os.path.join(export, "safeft_run.json")):  # trained before; only evaluation was missing
        train = {"export": export, "checkpoint": None, "metrics": {"skipped": "export exists"}}
    else:
        train = train_on_ray(run_cfg)
    outcome = train_outcome(run_cfg.run_dir)
    result = {"export": train["export"], "checkpoint": train["checkpoint"], "train_metrics": train["metrics"],
              **outcome}
    if outcome["stopped"] and outcome["stopped"].get("exported_step") is None:
        result.update(export=None, eval="skipped: the safety gate stopped the run before any probe passed")
    else:
        result.update(evaluate_run(run_cfg, train["export"], evaluate))
        if result.get("eval") == "done":
            from safeft.train.trackers import log_evaluation

            log_evaluation(run_cfg.run_dir)  # the evaluator's metrics and files join the training's tracker runs
    from safeft.train.checkpoint import drop_after_export

    if drop_after_export(run_cfg):
        result["checkpoint"] = None  # train.keep_checkpoints: false; the export is the run's model
    result["seconds"] = round(time.time() - started, 1)
    _write(os.path.join(run_cfg.run_dir, DONE), result)
    return result


def train_outcome(run_dir: str) -> dict:
    """What the trainer's train_summary.json says about a run: whether the safety gate stopped it (stopped_at_step,
    exported_step, why) and its probes' final harmful rates per test template."""
    from safeft.train.summary import read_train_summary

    summary = read_train_summary(run_dir) or {}
    probe = summary.get("safety_probe") or {}
    last = {}
    for line in probe.get("results", []):
        last[line["template"]] = {"step": line["step"], "harmful_rate": line["harmful_rate"], "ci95": line["ci95"]}
    return {"stopped": summary.get("stopped"), "safety_probe": last or None}


def write_summary(cfg: Config, runs: list[SweepRun]) -> str:
    path = os.path.join(sweep_dir(cfg), "sweep.json")
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "failed", "pending")}
    stopped = [r.name for r in runs if r.result.get("stopped")]  # ended by the safety gate (train.safety_probe)
    write_json(path, {"name": cfg.output.name, "axes": cfg.grid_axes(), "counts": counts,
                      "stopped": stopped, "runs": [r.record() for r in runs]})
    return path


def run_sweep(cfg: Config, evaluate: bool = True, progress: bool = True, points: Optional[dict[str, dict]] = None,
              on_result=None) -> dict:
    """Schedule every run not yet DONE on the Ray cluster; returns the summary (also in sweep.json).

    points: named runs instead of the grid (see explicit_points); on_result(run): called as each run ends.
    """
    import ray

    from safeft.ray_train import FORWARDED_ENV, absolutize, check_before_workers, connect

    cfg = absolutize(cfg)
    runs = plan_sweep(cfg, points)
    todo = [r for r in runs if r.status != "done"]
    for r in todo:  # every run's config is checked before any worker starts
        check_before_workers(r.cfg)
    print(f"safeft sweep '{cfg.output.name}': {len(runs)} runs, {len(runs) - len(todo)} already done, "
          f"{len(todo)} to run", flush=True)
    scheduled = 0
    if todo:
        connect(cfg)
        limit = concurrency(cfg, ray.cluster_resources())
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        task = ray.remote(num_cpus=0, max_retries=0)(execute_run).options(runtime_env={"env_vars": env})
        scheduled = _schedule(task, todo, limit, evaluate, progress, on_result)
    path = write_summary(cfg, runs)
    failed = [r for r in runs if r.status == "failed"]
    print(f"safeft sweep: {sum(r.status == 'done' for r in runs)}/{len(runs)} done, {len(failed)} failed; "
          f"summary {path}", flush=True)
    return {"summary": path, "scheduled": scheduled, "runs": [r.record() for r in runs], "failed": len(failed)}


def _schedule(task, todo: list[SweepRun], limit: int, evaluate: bool, progress: bool, on_result=None) -> int:
    import ray
    from tqdm import tqdm

    pending = list(todo)
    running: dict = {}
    bar = tqdm(total=len(todo), desc="sweep runs", unit="run", disable=not progress)
    while pending or running:
        while pending and len(running) < limit:
            run = pending.pop(0)
            running[task.remote(run.cfg.to_dict(), evaluate)] = run
        ready, _ = ray.wait(list(running), num_returns=1)
        run = running.pop(ready[0])
        try:
            run.result, run.status = ray.get(ready[0]), "done"
        except Exception as e:  # one failed run must not stop the others; the summary says why
            run.status, run.error = "failed", _error_text(e)
        bar.update(1)
        bar.set_postfix_str(f"{run.name}: {run.status}")
        if on_result is not None:
            on_result(run)
    bar.close()
    return len(todo)


def _error_text(e: Exception) -> str:
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, SafeftError):
        return str(cause)
    return "".join(traceback.format_exception_only(type(cause), cause)).strip()[-2000:]


__all__ = ["SweepRun", "plan_sweep", "run_sweep", "run_label", "concurrency", "is_done", "execute_run", "train_outcome"]
