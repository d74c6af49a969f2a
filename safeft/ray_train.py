"""Run the trainer's own `safeft.train.run()` on N Ray Train workers (`ray.train.torch.TorchTrainer`).

    result = train_on_ray(cfg)          # driver side: validates, then blocks until the run ends

Each worker gets the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) from Ray Train before `run()` starts DeepSpeed, so DeepSpeed reuses Ray's gloo/nccl
process group. The trainer's `on_checkpoint` hook reports each DeepSpeed checkpoint to Ray Train: with
`ray.shared_filesystem` (the default) as a small marker naming the checkpoint in `<run_dir>/checkpoints`,
so it is never copied twice; otherwise each node uploads its shards to `RunConfig.storage_path/<name>/step-<N>`.
When a worker dies, Ray Train restarts the
worker group (up to `ray.max_failures` times) and `ray.train.get_checkpoint()` hands the last reported
checkpoint back as `TrainHooks.resume_from`; a later `train_on_ray` with the same run name resumes the
same way (Ray Train V2 restores from the run's checkpoint-manager snapshot in storage).

Per rank, `<run_dir>/logs/consumed-rank<r>.jsonl` records the rows each optimizer step consumed (the
trainer's `on_log` metrics `rows` when present, else derived from the step number with the same
index-based `DistributedPackedSampler` schedule the trainer uses), so a restart can be audited: entries
past the restored step are dropped when the worker group restarts, leaving each row of an epoch once.

The trainer must call `on_checkpoint` on every rank (Ray's `report` is a barrier) and `on_log` for a
step before `on_checkpoint` for it. Without a shared filesystem Ray copies each reported checkpoint into
its storage: budget twice the checkpoint size on disk then (Ray keeps `train.keep_last` of them).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Callable, Optional

from safeft.config import Config, validate
from safeft.errors import ConfigError

log = logging.getLogger(__name__)

# Environment the workers need whatever node they land on (read at submit time on the driver).
# Tracker secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN) are not forwarded: Ray stores a runtime env where its
# dashboard shows it. Workers inherit them from the environment their Ray node started in.
FORWARDED_ENV = ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS",
                 "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "SAFEFT_TRAIN_FN", "PYTHONPATH",
                 "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI")
STEP_DIR = re.compile(r"step-(\d+)$")


# --- driver side ----------------------------------------------------------------------------------


def ray_run_name(cfg: Config) -> str:
    """A file-system-safe Ray run name from the output name (sweep names contain '/')."""
    name = cfg.output.name or "run"
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "--", name).strip("-") or "run"


def storage_path(cfg: Config) -> str:
    return cfg.ray.storage_path or os.path.join(os.path.abspath(cfg.run_dir), "ray")


def absolutize(cfg: Config) -> Config:
    """Make local paths absolute: Ray workers (and `ray job submit` drivers) run in another directory."""
    if "runtime_resources" in os.getcwd() and not os.path.isabs(cfg.output.dir):
        log.warning("output.dir %r is relative and this driver runs in Ray's uploaded working directory %s: "
                    "outputs land there; set an absolute (shared) output.dir", cfg.output.dir, os.getcwd())
    cfg.output.dir = os.path.abspath(cfg.output.dir)
    cfg.data.cache_dir = os.path.abspath(cfg.data.cache_dir)
    for task in cfg.eval.tasks:
        task.path = _abs_if_local(task.path)
    cfg.eval.models = [_abs_if_local(m) for m in cfg.eval.models]
    cfg.model.name_or_path = _abs_if_local(cfg.model.name_or_path)
    cfg.model.tokenizer = _abs_if_local(cfg.model.tokenizer)
    cfg.train.deepspeed_config = _abs_if_local(cfg.train.deepspeed_config)
    path = cfg.data.path
    cfg.data.path = [_abs_if_local(p) for p in path] if isinstance(path, list) else _abs_if_local(path)
    return cfg


def _abs_if_local(value):
    """An existing relative local path (or `tiny:DIR`) made absolute; hub names and None unchanged."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith("tiny:"):
        return "tiny:" + os.path.abspath(value[len("tiny:"):] or "runs/tiny-model")
    return os.path.abspath(value) if not os.path.isabs(value) and os.path.exists(value) else value


def check_before_workers(cfg: Config) -> Config:
    """Every check that can fail without a worker: config rules, then the trainer's batch/DeepSpeed rules."""
    validate(cfg)
    cfg = cfg.single("train --ray")
    if cfg.ray.use_gpu and cfg.ray.gpus_per_worker <= 0:
        raise ConfigError("config key 'ray.gpus_per_worker': expected > 0 when ray.use_gpu is true")
    check = _trainer_check()
    if check is not None:
        check(cfg, cfg.ray.num_workers)
    return cfg


def _trainer_check() -> Optional[Callable]:
    for module in ("safeft.train", "safeft.distributed"):
        try:
            mod = __import__(module, fromlist=["check_train_config"])
        except ImportError:
            continue
        if hasattr(mod, "check_train_config"):
            return mod.check_train_config
    return None


def build_trainer(cfg: Config, train_loop_config: Optional[dict] = None):
    """The TorchTrainer for `cfg`: scaling, backend, storage, failure policy."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    rc = cfg.ray
    resources = {"CPU": rc.cpus_per_worker}
    if rc.use_gpu:
        resources["GPU"] = rc.gpus_per_worker
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if not rc.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    return TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.to_dict(), **(train_loop_config or {})},
        scaling_config=ray.train.ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=rc.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if rc.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=ray_run_name(cfg), storage_path=storage_path(cfg),
            failure_config=ray.train.FailureConfig(max_failures=rc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_last),
            worker_runtime_env={"env_vars": env}),
    )


def connect(cfg: Config) -> None:
    """Join the cluster in `ray.address` / RAY_ADDRESS, or start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address  # inside `ray job submit`: the job's cluster
    if address and address.startswith("http"):  # a job-server URL: the cluster's GCS is what ray.init needs
        address = "auto"
    ray.init(address=address, log_to_driver=True)


def train_on_ray(cfg: Config) -> dict:
    """Validate, then run the training on Ray Train workers; returns where everything went."""
    cfg = absolutize(check_before_workers(cfg))
    connect(cfg)
    name, storage = ray_run_name(cfg), storage_path(cfg)
    print(f"safeft: Ray Train run '{name}' with {cfg.ray.num_workers} workers\n"
          f"  logs:        {os.path.join(cfg.run_dir, 'logs')}\n"
          f"  checkpoints: {os.path.join(cfg.run_dir, 'checkpoints')} (reported to {os.path.join(storage, name)})\n"
          f"  export:      {os.path.join(cfg.run_dir, 'export')}", flush=True)
    result = build_trainer(cfg).fit()
    if result.error is not None:
        raise result.error
    summary = {
        "run_dir": cfg.run_dir,
        "export": os.path.join(cfg.run_dir, "export"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "ray_storage": os.path.join(storage, name),
        "metrics": dict(result.metrics or {}),
    }
    print(f"safeft: done; export at {summary['export']}", flush=True)
    return summary


# --- worker side ----------------------------------------------------------------------------------


def resolve_train_fn() -> Callable:
    """`safeft.train.run`, or `module:function` from SAFEFT_TRAIN_FN (tests inject a stand-in this way)."""
    spec = os.environ.get("SAFEFT_TRAIN_FN")
    if spec:
        module, _, fn = spec.partition(":")
        return getattr(__import__(module, fromlist=[fn]), fn)
    from safeft.train import run

    return run


def restored_step(checkpoint_path: Optional[str]) -> int:
    m = STEP_DIR.search(os.path.basename(os.path.normpath(checkpoint_path))) if checkpoint_path else None
    return int(m.group(1)) if m else 0


def trim_consumed_log(path: str, after_step: int) -> None:
    """Drop entries past the restored step: those steps are trained again after the restart."""
    if not os.path.exists(path):
        return
    from safeft.io import write_text

    with open(path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= after_step]
    write_text(path, "".join(kept))


class _RayHooks:
    """Builds the TrainHooks callbacks for one worker."""

    def __init__(self, cfg: Config, rank: int, world_size: int, local_rank: int, restored: int):
        self.cfg, self.rank, self.world_size, self.local_rank = cfg, rank, world_size, local_rank
        self.consumed = os.path.join(cfg.run_dir, "logs", f"consumed-rank{rank}.jsonl")
        self.last_logged = restored  # steps up to here are already in the consumed log
        self._sampler = None

    def on_log(self, metrics: dict) -> None:
        if "step" not in metrics:
            return
        step = int(metrics["step"])
        if "rows" in metrics:  # the trainer's own record of this step's rows
            entries = [(step, [int(r) for r in metrics["rows"]])]
        else:  # on_log may skip steps (train.log_steps): derive every step since the last entry
            entries = [(s, self.scheduled_rows(s)) for s in range(self.last_logged + 1, step + 1)]
        with open(self.consumed, "a", encoding="utf-8") as f:  # small lines, one writer per file
            for s, rows in entries:
                f.write(json.dumps({"step": s, "rows": [r for r in rows if r >= 0]}) + "\n")
        self.last_logged = step

    def scheduled_rows(self, step: int) -> list[int]:
        """This rank's rows at global step `step` (1-based) under the trainer's index-based data order."""
        if self._sampler is None:
            from safeft.data.pack import DistributedPackedSampler
            from safeft.data.pipeline import prepare

            rows = prepare(self.cfg).dataset  # the trainer prepared it already: a cache hit
            tr = self.cfg.train
            self._sampler = DistributedPackedSampler([len(x) for x in rows["input_ids"]], self.world_size,
                                                     self.rank, tr.micro_batch_size, tr.gradient_accumulation_steps,
                                                     self.cfg.data.seed)
            self._blocks: dict[int, list] = {}
        epoch, index = divmod(step - 1, self._sampler.steps_per_epoch())
        if epoch not in self._blocks:
            self._sampler.set_epoch(epoch)
            self._blocks = {epoch: self._sampler.step_blocks()}
        return self._blocks[epoch][index][self.rank]

    def on_checkpoint(self, step: int, ckpt_dir: str, metrics: dict) -> None:
        import tempfile

        import ray.train

        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        if self.cfg.ray.shared_filesystem:
            # Every node sees run_dir: Ray gets a marker naming the checkpoint, not a second copy of it
            # (about 1 TB per save for 70B, and `report` is a barrier while it copies).
            with tempfile.TemporaryDirectory(prefix="safeft-marker-") as marker:
                if self.rank == 0:
                    write_marker(marker, ckpt_dir, step)
                checkpoint = ray.train.Checkpoint.from_directory(marker) if self.rank == 0 else None
                ray.train.report({**scalars, "step": step}, checkpoint=checkpoint,
                                 checkpoint_dir_name=f"step-{step:08d}")
            return
        # Otherwise each node uploads the shards it wrote.
        checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir) if self.local_rank == 0 else None
        ray.train.report({**scalars, "step": step}, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:08d}",
                         delete_local_checkpoint_after_upload=False)  # the trainer prunes its own checkpoints


MARKER = "safeft_checkpoint.json"


def write_marker(directory: str, ckpt_dir: str, step: int) -> None:
    from safeft.io import write_json

    write_json(os.path.join(directory, MARKER), {"path": os.path.abspath(ckpt_dir), "step": step})


def resolve_checkpoint(path: str) -> str:
    """The trainer checkpoint a Ray checkpoint stands for: the marker's target, else the directory itself."""
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        return path
    with open(marker, encoding="utf-8") as f:
        target = json.load(f)["path"]
    if not os.path.isdir(target):
        raise ConfigError(f"Ray checkpoint {path!r} names {target!r}, which no longer exists (ray.shared_filesystem "
                          "is true: every node must see the run directory)")
    return target


def _worker_loop(config: dict) -> None:
    import ray.train

    from safeft.config import config_from_dict

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, local_rank = ctx.get_world_rank(), ctx.get_local_rank()
    # Ray Train already set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (TorchConfig init_method=env);
    # assert it, since DeepSpeed reads the world size from there.
    assert int(os.environ["WORLD_SIZE"]) == ctx.get_world_size() and int(os.environ["RANK"]) == rank
    _pin_device()
    logs = os.path.join(cfg.run_dir, "logs")
    os.makedirs(os.path.join(logs, "pids"), exist_ok=True)
    with open(os.path.join(logs, "pids", f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    checkpoint = ray.train.get_checkpoint()
    ray_path = checkpoint.path if checkpoint is not None else None
    restored = restored_step(ray_path) if ray_path else _trainer_auto_resume_step(cfg)
    hooks_impl = _RayHooks(cfg, rank, ctx.get_world_size(), local_rank, restored)
    trim_consumed_log(hooks_impl.consumed, hooks_impl.last_logged)
    resume_from = resolve_checkpoint(ray_path) if ray_path else None
    if resume_from:
        print(f"safeft[rank {rank}]: resuming from {ray_path} ({resume_from})", flush=True)
    resolve_train_fn()(cfg, _make_hooks(hooks_impl, resume_from))


def _trainer_auto_resume_step(cfg: Config) -> int:
    """The step `train.resume: auto` will continue from when Ray has no checkpoint for this run name."""
    if cfg.train.resume != "auto":
        return 0
    try:
        from safeft.train import checkpoint as ckpt
    except ImportError:
        return 0
    root = os.path.join(cfg.run_dir, "checkpoints")
    tag = ckpt.latest_tag(root) if os.path.isdir(root) else None
    return ckpt.read_state(root, tag).step if tag else 0


def _make_hooks(impl: _RayHooks, resume_from: Optional[str]) -> Any:
    try:
        from safeft.train import TrainHooks
    except ImportError:  # a stand-in trainer (tests) takes any object with these attributes
        from types import SimpleNamespace as TrainHooks
    return TrainHooks(on_checkpoint=impl.on_checkpoint, on_log=impl.on_log, resume_from=resume_from)


def _pin_device() -> None:
    """TorchTrainer shows each worker every GPU of its node: use the one Ray assigned (its ids are not in
    local-rank order), and tell `safeft.distributed.init` to keep it instead of cuda:LOCAL_RANK."""
    import torch

    if torch.cuda.is_available():
        from ray.train.torch import get_device

        from safeft.distributed import PINNED_DEVICE_ENV

        device = get_device()
        torch.cuda.set_device(device)
        os.environ[PINNED_DEVICE_ENV] = str(device.index)
