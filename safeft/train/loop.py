"""`run(cfg, hooks)`: a full-parameter fine-tune with DeepSpeed ZeRO-2/3 on packed rows.

Each optimizer step takes this rank's `accum` micro-batches, all-reduces their label-token count once,
and backwards `sum_loss * accum * world / global_tokens` per micro-step: DeepSpeed divides by `accum`
and averages over ranks, so the gradient is exactly the mean token loss of the whole step, whatever
the split into ranks and micro-batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from safeft import distributed as dist
from safeft.errors import SafeftError
from safeft.train import checkpoint as ckpt
from safeft.train.metrics import MFU_CONVENTION, MetricsLogger, flops_per_step, matmul_params, peak_memory_gb
from safeft.train.probe import SafetyGate

log = logging.getLogger("safeft.train")
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


@dataclass
class TrainHooks:
    """Optional callbacks, called on every rank (Ray Train needs every worker to report)."""

    on_checkpoint: Optional[Callable[[int, str, dict], None]] = None  # (step, checkpoint dir, last metrics)
    on_log: Optional[Callable[[dict], None]] = None
    resume_from: Optional[str] = None  # a checkpoints root or one step directory; overrides train.resume


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step of this invocation
    last_checkpoint: Optional[str] = None
    export_dir: Optional[str] = None
    metrics: dict = field(default_factory=dict)
    stopped: Optional[dict] = None  # the safety gate ended the run: stopped_at_step, exported_step, why, checkpoint


@dataclass
class _Run:
    """What the step loop needs, built once by `_setup`."""

    cfg: Any
    env: Any
    device: Any
    engine: Any
    hf_model: Any
    tokenizer: Any
    loader: Any
    sampler: Any
    autocast: Any  # () -> the context the forward runs in (train.precision bf16-autocast)
    total_steps: int
    n_params: int
    fingerprint: Optional[str]
    keepalive: Any
    varlen: bool


def run(cfg, hooks: Optional[TrainHooks] = None) -> TrainResult:
    hooks = hooks or TrainHooks()
    cfg = cfg.single("train")
    env = dist.dist_env()
    ds_config = dist.check_train_config(cfg, env.world_size)
    dist.check_optimizer_ops(ds_config)  # before the process group: a missing compiler fails here, named
    t0 = time.perf_counter()
    device = dist.init(env, cfg.train.dist_timeout_minutes)
    _seed_everything(_first(cfg.train.seed))
    resume = _resume_point(cfg, hooks, env, ds_config)
    r = _setup(cfg, env, device, ds_config, started=t0)
    state = _resume(r, resume)
    metrics_log = MetricsLogger.open(cfg, env.is_main, state.step)
    try:
        result = _train(r, state, hooks, metrics_log)
    except BaseException:
        metrics_log.close(failed=True)
        raise
    metrics_log.close()
    return result


def _first(v):
    return v[0] if isinstance(v, list) else v


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup(cfg, env, device, ds_config, started: float) -> _Run:
    import deepspeed
    import torch

    from safeft.data.pack import DistributedPackedSampler, PackedCollator, PackedRows
    from safeft.loss import CausalLMWithLoss
    from safeft.model import load_model, load_tokenizer, resolve_model_path, select_attention, uses_varlen_kwargs
    from safeft.train.schedule import build_scheduler

    if env.is_main:
        os.makedirs(cfg.run_dir, exist_ok=True)
        from safeft.config import save_config

        save_config(cfg, os.path.join(cfg.run_dir, "config.yaml"))
    path = resolve_model_path(cfg.model.name_or_path, env.is_main, dist.barrier)
    mcfg = dataclasses.replace(cfg.model, name_or_path=path)
    tokenizer = load_tokenizer(cfg.model.tokenizer or path, cfg.model.trust_remote_code, cfg.model.revision)
    times: dict[str, float] = {}  # seconds of each part of the setup, in order

    def lap(part: str) -> None:
        times[part] = time.perf_counter() - started - sum(times.values())

    lap("process group and tokenizer")
    prepared = _prepare(cfg, tokenizer, env)
    lap("data")
    attn = select_attention(cfg.model.attention, device.type)
    if env.is_main:
        log.info("attention for packed rows: %s; MFU convention: %s", attn, MFU_CONVENTION)
    dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
    model, keepalive = load_model(mcfg, cfg.train.zero_stage, ds_config, dtype, attn)
    constrained = ((cfg.train.constrained_betas, cfg.train.constrained_beta_rest)
                   if cfg.train.method == "constrained" else None)
    wrapped = CausalLMWithLoss(model, cfg.train.loss, cfg.train.zero_stage, constrained)
    n_params = matmul_params(model)  # for MFU: torchtitan's N (no input embedding)

    rows = prepared.dataset.with_format(None)
    row_tokens = [len(x) for x in rows["input_ids"]]
    sampler = DistributedPackedSampler(row_tokens, env.world_size, env.rank, cfg.train.micro_batch_size,
                                       cfg.train.gradient_accumulation_steps, cfg.data.seed)
    loader = torch.utils.data.DataLoader(PackedRows(rows), batch_sampler=sampler,
                                         collate_fn=PackedCollator(tokenizer.pad_token_id), num_workers=0)
    steps_per_epoch = sampler.steps_per_epoch()
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * steps_per_epoch)
    lap("model")
    engine, *_ = deepspeed.initialize(
        model=wrapped, model_parameters=[p for p in wrapped.parameters() if p.requires_grad], config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, total, cfg.train))
    lap("DeepSpeed")
    if env.is_main:  # where a run's start goes (the demo starts seven): one line, seconds per part
        log.info("setup %.1f s: %s", sum(times.values()), ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    if cfg.train.zero_stage == 3 and env.is_main:
        log.info("ZeRO-3: %s", partition_summary(model))
    if constrained is not None:  # reference log-probs of the model before fine-tuning, once, cached
        from safeft.constrained import reference_loader

        with dist.autocast(cfg, device):  # the reference runs in the precision the policy trains in
            loader = reference_loader(cfg, model, rows, prepared, env, tokenizer.pad_token_id, sampler,
                                      "bf16-autocast" if cfg.train.precision == "bf16-autocast" else dtype)
    if env.is_main:
        _write_checkpoint_meta(cfg, model, tokenizer, prepared.fingerprint)
    return _Run(cfg, env, device, engine, model, tokenizer, loader, sampler, lambda: dist.autocast(cfg, device),
                total, n_params, prepared.fingerprint, keepalive, uses_varlen_kwargs(attn))


def partition_summary(model) -> str:
    """How many parameter tensors ZeRO-3 really partitions (below the persistence threshold they stay whole)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_tensor")]
    sharded = sum(1 for p in params if p.ds_tensor.numel() < p.ds_numel)
    return f"{sharded} of {len(params)} parameter tensors partitioned"


def _prepare(cfg, tokenizer, env):
    """Rank 0 builds the packed dataset; the others read the same cache after the barrier."""
    from safeft.data.pipeline import prepare

    prepared = prepare(cfg, tokenizer) if env.is_main else None
    dist.barrier()
    return prepared if prepared is not None else prepare(cfg, tokenizer)


def _write_checkpoint_meta(cfg, model, tokenizer, fingerprint) -> None:
    """Config + tokenizer + run record next to the checkpoints, so offline export needs nothing else."""
    from safeft.export import run_record
    from safeft.io import atomic_path, write_json

    root = os.path.join(cfg.run_dir, "checkpoints")
    with atomic_path(os.path.join(root, "hf")) as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:  # end-of-turn ids, for offline export
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(os.path.join(root, "safeft_run.json"), run_record(cfg, fingerprint, step=0))


def _resume_point(cfg, hooks: TrainHooks, env, ds_config: dict) -> Optional[tuple[str, str]]:
    """(root, tag) to resume from, or None. A checkpoint from another world size loads DeepSpeed's universal
    format: converted beforehand (`safeft ckpt to-universal`), else here on rank 0 when it is small."""
    source = hooks.resume_from or (cfg.train.resume if cfg.train.resume not in ("auto", "never") else None)
    root_default = os.path.join(cfg.run_dir, "checkpoints")
    if source is None and cfg.train.resume == "auto" and ckpt.latest_tag(root_default):
        source = root_default
    if source is None:
        return None
    root, tag = ckpt.locate(source)
    saved = ckpt.read_state(root, tag)
    if saved.data_seed != cfg.data.seed:
        raise SafeftError(f"checkpoint {source!r} used data.seed {saved.data_seed}, the config has {cfg.data.seed}")
    stage = cfg.train.zero_stage
    if 0 in (saved.zero_stage, stage) and saved.zero_stage != stage:  # stage 0 keeps no ZeRO partition files
        was = saved.zero_stage if saved.zero_stage is not None else "2 or 3 (an older safeft)"
        raise SafeftError(f"checkpoint {source!r} was saved with train.zero_stage: {was}, this run has {stage}: a "
                          "stage-0 checkpoint resumes only under stage 0, and the other way round")
    if saved.world_size == env.world_size:
        return root, tag
    rows_per_step = env.world_size * cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps
    if saved.step and saved.consumed_samples != saved.step * rows_per_step:
        raise SafeftError(
            f"checkpoint {source!r} consumed {saved.consumed_samples // max(saved.step, 1)} rows per step on "
            f"{saved.world_size} processes; this run takes {rows_per_step}: keep the global batch (micro_batch_size "
            f"x gradient_accumulation_steps x processes) when resuming at another world size")
    if stage == 0:  # the whole optimizer state is in the checkpoint: it loads at any world size
        log.info("checkpoint from %d processes, this run has %d: stage 0 loads it as it is", saved.world_size,
                 env.world_size)
        return root, tag
    if not ckpt.has_universal(root, tag):
        size = ckpt.dir_bytes(os.path.join(root, tag))
        if size > ckpt.IN_JOB_UNIVERSAL_MAX_BYTES:  # every rank decides alike: the checkpoint is on shared storage
            raise SafeftError(
                f"checkpoint {os.path.join(root, tag)!r} was saved by {saved.world_size} processes, this run has "
                f"{env.world_size}: it needs DeepSpeed's universal format, and converting {size / 2**30:.0f} GiB "
                f"inside the job would stall every rank. Convert it once, offline, then start again:\n"
                f"  safeft ckpt to-universal {os.path.join(root, tag)} --workers {min(16, os.cpu_count() or 1)}")
        if env.is_main:
            log.info("checkpoint from %d processes, this run has %d: converting to DeepSpeed's universal format",
                     saved.world_size, env.world_size)
            ckpt.to_universal(root, tag, workers=min(4, os.cpu_count() or 1))
        dist.barrier()
    else:
        log.info("checkpoint from %d processes, this run has %d: loading its universal format",
                 saved.world_size, env.world_size)
    ds_config["checkpoint"] = {"load_universal": True}
    return root, f"{tag}_universal"


def _resume(r: _Run, point: Optional[tuple[str, str]]) -> ckpt.TrainState:
    if point is None:
        return ckpt.TrainState(data_seed=r.cfg.data.seed, world_size=r.env.world_size,
                               zero_stage=r.cfg.train.zero_stage)
    root, tag = point
    state = ckpt.load(r.engine, root, tag, r.env.rank)
    state.world_size, state.zero_stage = r.env.world_size, r.cfg.train.zero_stage
    if r.env.is_main:
        log.info("resumed from %s at step %d (epoch %d, step %d of it)", os.path.join(root, tag), state.step,
                 state.epoch, state.step_in_epoch)
    return state


def _train(r: _Run, state: ckpt.TrainState, hooks: TrainHooks, metrics_log: MetricsLogger) -> TrainResult:
    from tqdm import tqdm

    cfg, env = r.cfg, r.env
    result = TrainResult(run_dir=cfg.run_dir, steps=state.step)
    accum = cfg.train.gradient_accumulation_steps
    t_start = time.perf_counter()
    gate = SafetyGate.build(r, state.step, metrics_log, r.autocast)  # None: no safety probe; generates in the
    # precision the model trains in
    stop = gate.probe_step(state) if gate and gate.due(state.step, r.total_steps) else None
    bar = tqdm(total=r.total_steps, initial=state.step, desc="train", disable=not env.is_main, dynamic_ncols=True)
    metrics: dict = {}
    step_seconds = 0.0  # optimizer steps alone (data loading included), the probes' cost is compared with it
    while stop is None and state.step < r.total_steps:
        r.sampler.set_epoch(state.epoch, state.step_in_epoch)
        batches = iter(r.loader)
        for _ in range(r.sampler.steps_per_epoch() - state.step_in_epoch):
            if state.step >= r.total_steps:
                break
            t_step = time.perf_counter()
            metrics = _step(r, [next(batches) for _ in range(accum)], state.step)
            step_seconds += time.perf_counter() - t_step
            state.step += 1
            state.step_in_epoch += 1
            state.consumed_samples += r.sampler.rows_per_step
            metrics.update(step=state.step, epoch=state.epoch + state.step_in_epoch / r.sampler.steps_per_epoch())
            result.losses.append(metrics["loss"])
            bar.update(1)
            if state.step % cfg.train.log_steps == 0 or state.step == r.total_steps:
                metrics_log.log(metrics, console=bar)
                if hooks.on_log:
                    hooks.on_log(metrics)
            if cfg.train.save_steps and state.step % cfg.train.save_steps == 0 and state.step < r.total_steps:
                result.last_checkpoint = _save(r, state, hooks, metrics)
            if gate and gate.due(state.step, r.total_steps):
                stop = gate.probe_step(state)
                if stop is not None:
                    break
        else:
            state.epoch += 1
            state.step_in_epoch = 0
    bar.close()
    result.steps, result.metrics = state.step, metrics
    if stop is not None:
        _export_last_safe(r, stop, result)
    else:
        _finish(r, state, hooks, metrics, result)
    _write_summary(r, result, gate, time.perf_counter() - t_start, step_seconds, metrics_log)
    return result


def _finish(r: _Run, state: ckpt.TrainState, hooks: TrainHooks, metrics: dict, result: TrainResult) -> None:
    """The end of a run that was not stopped: the final checkpoint, then the export. With
    `train.keep_checkpoints: false` no final checkpoint is written, as the export is what the run keeps; a crash
    during the export then resumes from the last periodic checkpoint, or starts over where there is none."""
    cfg = r.cfg
    root = os.path.join(cfg.run_dir, "checkpoints")
    if not cfg.train.keep_checkpoints:
        result.last_checkpoint = None
    elif ckpt.latest_tag(root) != ckpt.tag_for(state.step):  # else resumed at the end: nothing new to save
        result.last_checkpoint = _save(r, state, hooks, metrics)
    else:
        result.last_checkpoint = os.path.join(root, ckpt.tag_for(state.step))
    if cfg.train.export:
        result.export_dir = export(r, state.step)
        dist.barrier()  # the export is complete when any rank returns


def _export_last_safe(r: _Run, stop, result: TrainResult) -> None:
    """The safety gate stopped the run: load the last passing checkpoint back on every rank and export it."""
    result.stopped = {"stopped_at_step": stop.step, "exported_step": None, "why": stop.why,
                      "checkpoint": stop.safe_checkpoint}
    if stop.safe_checkpoint is None:
        return
    root, tag = os.path.split(stop.safe_checkpoint)
    ckpt.load(r.engine, root, tag, r.env.rank)  # every rank: under ZeRO-3 each loads its own partition
    result.last_checkpoint = stop.safe_checkpoint
    if r.cfg.train.export:
        result.export_dir = export(r, stop.safe_step)
        dist.barrier()
        result.stopped["exported_step"] = stop.safe_step


def _write_summary(r: _Run, result: TrainResult, gate, seconds: float, step_seconds: float,
                   metrics_log: MetricsLogger) -> None:
    """<run_dir>/train_summary.json (rank 0, atomic): steps, final metrics, probes and their cost, the stop."""
    from safeft.train.summary import curve_path, write_train_summary

    if not r.env.is_main:
        return
    train_s = seconds - (gate.seconds + gate.save_seconds if gate else 0.0)  # steps, logs, checkpoints, export
    summary = {
        "steps": result.steps, "total_steps": r.total_steps, "final_metrics": result.metrics,
        "seconds": round(seconds, 2), "train_seconds": round(train_s, 2), "step_seconds": round(step_seconds, 2),
        "safety_probe": gate.summary(train_s, step_seconds) if gate else None,
        "stopped": result.stopped, "last_checkpoint": result.last_checkpoint, "export_dir": result.export_dir,
    }
    path = write_train_summary(r.cfg.run_dir, summary)
    metrics_log.log_artifacts([path, curve_path(r.cfg.run_dir)], "train")


def _save(r: _Run, state: ckpt.TrainState, hooks: TrainHooks, metrics: dict) -> str:
    root = os.path.join(r.cfg.run_dir, "checkpoints")
    path = ckpt.save(r.engine, root, state, r.env.rank, r.cfg.train.keep_last, dist.barrier)
    if hooks.on_checkpoint:
        hooks.on_checkpoint(state.step, path, metrics)
    return path


def export(r: _Run, step: int) -> Optional[str]:
    import torch

    from safeft.export import export_from_engine, run_record

    dtype = r.cfg.train.export_dtype
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else next(r.engine.module.parameters()).dtype
    out = os.path.join(r.cfg.run_dir, "export")
    return export_from_engine(r.hf_model, r.tokenizer, out, run_record(r.cfg, r.fingerprint, step), torch_dtype,
                              r.cfg.train.zero_stage, r.env.rank)


def _step(r: _Run, micro_batches: list[dict], step: int) -> dict:
    """One optimizer step over this rank's micro-batches; returns its metrics (same on every rank)."""
    import torch

    t0 = time.perf_counter()
    lr = r.engine.get_lr()[0]  # the lr this step uses; the scheduler advances inside engine.step()
    world, accum = r.env.world_size, len(micro_batches)
    local = torch.zeros(3, dtype=torch.float64)  # label tokens, real tokens, sum of squared document lengths
    for b in micro_batches:
        cu = b["cu_seq_lens_q"].to(torch.float64)
        local += torch.stack([(b["labels"][:, 1:] != -100).sum().double(), torch.tensor(b["input_ids"].numel(),
                              dtype=torch.float64), ((cu[1:] - cu[:-1]) ** 2).sum()])
    totals = dist.all_reduce_sum(local.to(r.device)).cpu()  # one collective per step, before the micro-steps
    label_tokens = max(float(totals[0]), 1.0)
    scale = accum * world / label_tokens
    loss_sum = torch.zeros((), dtype=torch.float64, device=r.device)
    for k, batch in enumerate(micro_batches):
        inputs = _to_device(batch, r.device, r.varlen)
        with r.autocast():
            summed, _ = r.engine(**inputs)
        r.engine.backward(summed * scale)
        loss_sum += summed.detach().double()
        if k == accum - 1:
            total_loss = float(dist.all_reduce_sum(loss_sum.clone()))
            if not math.isfinite(total_loss):
                raise SafeftError(f"loss is {total_loss} at step {step + 1}: training stopped before the optimizer "
                                  f"step; the last checkpoint is intact. Lower train.lr or check the data.")
        r.engine.step()
    seconds = time.perf_counter() - t0
    grad_norm = r.engine.get_global_grad_norm()
    grad_norm = float(grad_norm) if grad_norm is not None else None
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise SafeftError(f"gradient norm is {grad_norm} at step {step + 1}: stopped without saving; the last "
                          f"checkpoint is intact")
    return _step_metrics(r, total_loss / label_tokens, lr, grad_norm, totals, seconds)


def _to_device(batch: dict, device, varlen: bool) -> dict:
    out = {k: batch[k].to(device) for k in ("input_ids", "labels", "position_ids")}
    for key in ("token_weights", "ref_logp"):
        if key in batch:
            out[key] = batch[key].to(device)
    if varlen:
        out.update({k: (batch[k].to(device) if hasattr(batch[k], "to") else batch[k]) for k in VARLEN_KEYS})
    return out


def _step_metrics(r: _Run, loss: float, lr: float, grad_norm, totals, seconds: float) -> dict:
    cfg = r.hf_model.config
    flops = flops_per_step(r.n_params, cfg.num_hidden_layers, cfg.hidden_size, float(totals[1]), float(totals[2]))
    peak = dist.peak_flops()
    return {
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": int(totals[1]),  # tokens of the step over all ranks: no padding but 1 per empty slot
        "tokens_per_s": float(totals[1]) / seconds,
        # real tokens / (rows x max_seq_len) of the step, padding slots counted as rows
        "packing_efficiency": float(totals[1]) / (r.sampler.rows_per_step * r.cfg.data.max_seq_len),
        "label_tokens": int(totals[0]),
        "mfu": flops / seconds / (peak * r.env.world_size) if peak else None,
        "peak_mem_gb": round(peak_memory_gb(r.device), 3),
    }
