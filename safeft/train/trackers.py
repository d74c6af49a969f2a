"""Experiment trackers (train.report_to): jsonl, tensorboard, wandb, mlflow, through their own Python clients.

One class per tracker behind one small interface, driven by `safeft.train.metrics.MetricsLogger` on rank 0
(whatever launched the process: the deepspeed launcher, torchrun / Slurm, a Ray Train worker):

    log_params(config)                   the config (nested dict), once per run
    log_metrics(section, values, step)   section: train (each logged step), safety (probes), eval (after evaluation)
    log_artifacts(paths, name)           files: the run summary and safety curve, the evaluator's outputs
    close(failed)
    record() -> dict                     how to reopen the same tracker run (kept in <run_dir>/logs/trackers.json)

`log_evaluation(run_dir, eval_dir)` reopens the recorded runs after an evaluation of the run's export (sweeps,
`safeft eval`) and adds the evaluator's metrics and files to them. A resumed training run reopens them too.

wandb never prompts: mode `auto` is online only when WANDB_API_KEY is set, else offline (files under
`<run_dir>/wandb`, upload later with `wandb sync`). mlflow uses train.mlflow.tracking_uri, else
MLFLOW_TRACKING_URI, else a SQLite store in `<run_dir>/mlflow` (MLflow 3 refuses its old file store).
The trackers' own log lines go to `<run_dir>/logs/trackers.log`, not to the console.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Optional

from safeft.io import read_json, write_json

log = logging.getLogger("safeft.train")
RECORD = os.path.join("logs", "trackers.json")
THIRD_PARTY_LOGGERS = ("wandb", "mlflow", "alembic", "sqlalchemy.engine", "huey")


def metric_key(*parts: str) -> str:
    """`safety/chat-llama/harmful_rate`: the characters every tracker accepts (MLflow is the strictest)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", p.replace(":", "-")) for p in "/".join(parts).split("/"))


def numeric(values: dict) -> dict:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and k != "step"}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-5}} -> {"train.lr": 1e-5}; lists stay values."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def route_third_party_logs(run_dir: str) -> None:
    """The trackers' loggers write to <run_dir>/logs/trackers.log instead of the console (replacing their
    handlers, as MLflow configures its own)."""
    path = os.path.join(run_dir, "logs", "trackers.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            if isinstance(old, logging.FileHandler):
                old.close()
        logger.addHandler(handler)
        logger.propagate = False


class Tracker:
    """The interface; a tracker implements what it supports (TensorBoard and jsonl keep no artifacts)."""

    name = ""

    def log_params(self, config: dict) -> None:
        pass

    def log_metrics(self, section: str, values: dict, step: int) -> None:
        pass

    def log_artifacts(self, paths: list[str], name: str) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass

    def record(self) -> dict:
        return {}


class JsonlTracker(Tracker):
    """logs/metrics.jsonl: one line per logged step, as it ends (probes: logs/safety_curve.jsonl, always)."""

    name = "jsonl"

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "logs", "metrics.jsonl")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def log_metrics(self, section: str, values: dict, step: int) -> None:
        if section == "train":
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**values, "step": step}) + "\n")


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = os.path.join(run_dir, "tensorboard")
        self.writer = SummaryWriter(self.dir, purge_step=purge_step)  # a resumed run drops the steps it redoes

    def log_params(self, config: dict) -> None:
        import yaml

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def log_metrics(self, section: str, values: dict, step: int) -> None:
        for k, v in numeric(values).items():
            self.writer.add_scalar(metric_key(section, k), v, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()

    def record(self) -> dict:
        return {"dir": self.dir}

    @classmethod
    def reopen(cls, record: dict, run_dir: str) -> "TensorBoardTracker":
        return cls(run_dir)


def wandb_mode(mode: str) -> str:
    """auto: WANDB_MODE when it says offline/disabled, else online with WANDB_API_KEY, else offline (no prompt)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "")
    if env in ("offline", "dryrun", "disabled"):
        return "disabled" if env == "disabled" else "offline"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: str, project: str, name: Optional[str], entity: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list] = None, mode: str = "auto",
                 run_id: Optional[str] = None):
        import wandb

        self.mode = wandb_mode(mode)
        if self.mode == "online" and not os.environ.get("WANDB_API_KEY"):
            from safeft.errors import ConfigError

            raise ConfigError("config key 'train.wandb.mode': 'online' needs WANDB_API_KEY in the environment "
                              "(safeft never prompts for a login)")
        settings = wandb.Settings(silent=True, console="off", save_code=False, disable_git=True)
        self.run = wandb.init(project=project, entity=entity, name=name, group=group, tags=tags or None,
                              dir=os.path.abspath(run_dir), mode=self.mode, id=run_id,
                              resume="allow" if run_id else None, settings=settings)
        self.project, self.entity = project, entity

    def log_params(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, section: str, values: dict, step: int) -> None:
        self.run.log({metric_key(section, k): v for k, v in numeric(values).items()}, step=step)

    def log_artifacts(self, paths: list[str], name: str) -> None:
        import wandb

        artifact = wandb.Artifact(name=re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.id}-{name}"), type=name)
        for p in paths:
            artifact.add_file(p, name=os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p))
        self.run.log_artifact(artifact)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def record(self) -> dict:
        return {"id": self.run.id, "project": self.project, "entity": self.entity, "mode": self.mode,
                "dir": os.path.dirname(self.run.dir)}

    @classmethod
    def reopen(cls, record: dict, run_dir: str) -> "WandbTracker":
        return cls(run_dir, record["project"], None, record.get("entity"), mode=record.get("mode", "auto"),
                   run_id=record["id"])


def mlflow_store(tracking_uri: Optional[str], run_dir: str) -> tuple[str, Optional[str]]:
    """(tracking URI, artifact location or None for the server's): the configured URI, MLFLOW_TRACKING_URI, else
    SQLite under <run_dir>/mlflow with artifacts beside it."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = Path(run_dir).resolve() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


class MlflowTracker(Tracker):
    name = "mlflow"
    PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits

    def __init__(self, run_dir: str, experiment: str, run_name: Optional[str], tracking_uri: Optional[str] = None,
                 tags: Optional[dict] = None, run_id: Optional[str] = None):
        from mlflow.tracking import MlflowClient

        self.uri, artifacts = mlflow_store(tracking_uri, run_dir)
        route_third_party_logs(run_dir)  # importing mlflow reinstalled its console handlers
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp = self._experiment(experiment, artifacts)
            self.run_id = self.client.create_run(exp, run_name=run_name, tags=tags or {}).info.run_id
        self.resumed = run_id is not None

    def _experiment(self, name: str, artifacts: Optional[str]) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # another run created it meanwhile (a sweep on a shared server)
            return self.client.get_experiment_by_name(name).experiment_id

    def log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        if self.resumed:  # MLflow params are immutable; the resumed run logged them at its start
            return
        params = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(config).items()]
        for i in range(0, len(params), self.PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i: i + self.PARAMS_PER_CALL])

    def log_metrics(self, section: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(section, k), v, now, step) for k, v in numeric(values).items()]
        for i in range(0, len(metrics), self.METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[i: i + self.METRICS_PER_CALL])

    def log_artifacts(self, paths: list[str], name: str) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, p, artifact_path=name)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")

    def record(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    @classmethod
    def reopen(cls, record: dict, run_dir: str) -> "MlflowTracker":
        return cls(run_dir, "", None, tracking_uri=record["tracking_uri"], run_id=record["run_id"])


REOPEN = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(cfg, resumed_step: int = 0) -> list[Tracker]:
    """The trackers of train.report_to for this run (rank 0 only). A resumed run (resumed_step > 0) reopens the
    tracker runs recorded in <run_dir>/logs/trackers.json; a fresh one starts new ones and records them."""
    from safeft.config import active_trackers

    run_dir = cfg.run_dir
    names = active_trackers(cfg)
    if any(n in ("wandb", "mlflow") for n in names):
        route_third_party_logs(run_dir)
    saved = read_record(run_dir) if resumed_step > 0 else {}
    out: list[Tracker] = []
    for name in names:
        try:
            out.append(_open(name, cfg, saved.get(name) or {}, resumed_step))
        except Exception as e:  # noqa: BLE001  rank 0 alone opens trackers: raising here would hang the other ranks
            log.warning("tracker %s could not start (%s: %s); this run goes on without it", name, type(e).__name__, e)
    write_json(os.path.join(run_dir, RECORD), {t.name: t.record() for t in out if t.record()})
    return out


def _open(name: str, cfg, prior: dict, resumed_step: int) -> Tracker:
    run_dir = cfg.run_dir
    if name == "jsonl":
        return JsonlTracker(run_dir)
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, purge_step=resumed_step + 1 if resumed_step else None)
    if name == "wandb":
        wc = cfg.train.wandb
        group = wc.group or (cfg.output.name.split("/")[0] if cfg.output.name and "/" in cfg.output.name else None)
        return WandbTracker(run_dir, wc.project, wc.name or cfg.output.name, wc.entity, group, wc.tags, wc.mode,
                            run_id=prior.get("id"))
    mc = cfg.train.mlflow
    tags = {"safeft.run_dir": os.path.abspath(run_dir), "safeft.train_template": str(cfg.template.train)}
    return MlflowTracker(run_dir, mc.experiment, mc.run_name or cfg.output.name, mc.tracking_uri, tags,
                         run_id=prior.get("run_id"))


def read_record(run_dir: str) -> dict:
    path = os.path.join(run_dir, RECORD)
    return read_json(path) if os.path.isfile(path) else {}


def eval_files(eval_dir: str) -> list[str]:
    """The evaluator's summary and merged, scored predictions (not its shard files)."""
    files = [os.path.join(eval_dir, "summary.json")] if os.path.isfile(os.path.join(eval_dir, "summary.json")) else []
    for tag in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
        sub = os.path.join(eval_dir, tag)
        if os.path.isdir(sub):
            files += sorted(os.path.join(sub, f) for f in os.listdir(sub) if f.endswith(".jsonl"))
    return files


def eval_metrics(summary: dict) -> dict:
    """{"<model>/<task>/<template>/<metric>": value} of an evaluator summary."""
    return {f"{where}/{metric}": value for where, metrics in summary.get("metrics", {}).items()
            for metric, value in metrics.items()}


def log_evaluation(run_dir: str, eval_dir: Optional[str] = None, step: Optional[int] = None) -> list[str]:
    """Add an evaluation of the run's export to the tracker runs its training recorded; returns their names.
    Nothing happens when the run recorded none. Tracker errors are logged, never raised: the evaluation stands."""
    eval_dir = eval_dir or os.path.join(run_dir, "eval")
    saved = read_record(run_dir)
    summary_path = os.path.join(eval_dir, "summary.json")
    if not saved or not os.path.isfile(summary_path):
        return []
    if step is None:
        from safeft.train.summary import read_train_summary

        step = (read_train_summary(run_dir) or {}).get("steps", 0)
    values = eval_metrics(read_json(summary_path))
    done = []
    for name, record in saved.items():
        if name not in REOPEN:
            continue
        try:
            tracker = REOPEN[name].reopen(record, run_dir)
            tracker.log_metrics("eval", values, step)
            tracker.log_artifacts(eval_files(eval_dir), "eval")
            tracker.close()
            done.append(name)
        except Exception as e:  # a tracker server that is down must not fail a finished evaluation
            log.warning("tracker %s: could not add the evaluation of %s: %s", name, run_dir, e)
    return done


__all__ = ["Tracker", "JsonlTracker", "TensorBoardTracker", "WandbTracker", "MlflowTracker", "open_trackers",
           "log_evaluation", "read_record", "metric_key", "flatten", "wandb_mode", "mlflow_store"]
