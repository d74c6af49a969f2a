"""A stand-in for `safeft.train.run` with the same contract, for Ray plumbing tests.

Selected in Ray workers with SAFEFT_TRAIN_FN=ray_standin:train (tests/ on PYTHONPATH). It uses the
real torch.distributed group Ray Train set up (an all-reduce checks the world), walks the real
`DistributedPackedSampler` schedule over STANDIN_ROWS rows, reports `rows` per step through `on_log`,
writes one shard file per rank per checkpoint and calls `on_checkpoint` on every rank, resumes from
`hooks.resume_from`, and rank 0 exports `<run_dir>/export/safeft_run.json`. STANDIN_STEP_SECONDS
slows steps so a test can kill a worker mid-run.
"""

from __future__ import annotations

import json
import os
import time

from safeft.data.pack import DistributedPackedSampler
from safeft.io import write_json

STANDIN_ROWS = 24


def _resume_step(resume_from):
    if not resume_from:
        return 0
    with open(os.path.join(resume_from, "state.json"), encoding="utf-8") as f:
        return json.load(f)["step"]


def train(cfg, hooks=None):
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    total = torch.ones(1)
    dist.all_reduce(total)
    assert int(total.item()) == world, "process group does not span the workers"
    tr = cfg.train
    sampler = DistributedPackedSampler([10 + i % 7 for i in range(STANDIN_ROWS)], world, rank,
                                       tr.micro_batch_size, tr.gradient_accumulation_steps, seed=tr.seed)
    blocks = sampler.step_blocks()
    steps = len(blocks) if tr.max_steps <= 0 else min(tr.max_steps, len(blocks))
    step = _resume_step(hooks.resume_from if hooks else None)
    delay = float(os.environ.get("STANDIN_STEP_SECONDS", "0"))
    ckpt_root = os.path.join(cfg.run_dir, "checkpoints")
    while step < steps:
        time.sleep(delay)
        rows = blocks[step][rank]
        step += 1
        if hooks and hooks.on_log:
            hooks.on_log({"step": step, "epoch": 0, "loss": 1.0 / step, "rows": rows})
        if step == steps or (tr.save_steps and step % tr.save_steps == 0):
            ckpt = os.path.join(ckpt_root, f"step-{step}")
            os.makedirs(ckpt, exist_ok=True)
            write_json(os.path.join(ckpt, f"shard-rank{rank}.json"), {"step": step})
            if rank == 0:
                write_json(os.path.join(ckpt, "state.json"), {"step": step})
            dist.barrier()
            if hooks and hooks.on_checkpoint:
                hooks.on_checkpoint(step, ckpt, {"loss": 1.0 / step})
    dist.barrier()
    if rank == 0:
        write_json(os.path.join(cfg.run_dir, "export", "safeft_run.json"),
                   {"steps": steps, "world_size": world, "template": cfg.template.train, "lr": cfg.train.lr})
    return {"steps": steps}


def slow_real_train(cfg, hooks=None):
    """The real `safeft.train.run` with each logged step slowed by STANDIN_STEP_SECONDS, so a test can kill a
    DeepSpeed worker between two checkpoints."""
    from safeft.train import TrainHooks, run

    delay = float(os.environ.get("STANDIN_STEP_SECONDS", "0"))
    on_log = hooks.on_log if hooks else None

    def slowed(metrics):
        time.sleep(delay)
        if on_log:
            on_log(metrics)

    hooks = hooks or TrainHooks()
    return run(cfg, TrainHooks(on_checkpoint=hooks.on_checkpoint, on_log=slowed, resume_from=hooks.resume_from))
