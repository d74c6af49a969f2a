"""Distributed environment and the DeepSpeed config: the only module that knows about process groups.

    env = dist_env()                      # RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, 1 process if unset
    check_train_config(cfg, env.world_size)   # launchers call this before spawning anything
    ds = build_ds_config(cfg, env.world_size)

A DeepSpeed JSON (train.deepspeed_config) is read as a base: its "auto" values are filled from the typed
config, and values the typed config also decides (batch sizes, ZeRO stage, offload) must agree with it.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional

from safeft.errors import ConfigError

# bf16 dense peak FLOP/s per device, for MFU; matched by substring of the device name.
# Ordered by specificity: the first key found in the name wins ("H100 PCIe" before "H100").
PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
              "A10G": 125e12, "L40S": 362e12, "L4": 121e12}
PINNED_DEVICE_ENV = "SAFEFT_CUDA_DEVICE"  # set by a launcher (Ray) that already chose this process's GPU
# torch.distributed's rendezvous variables. init() exports them into its own process; a child process started
# afterwards must not inherit them (that process group still holds the port), so spawners drop these.
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    port_is_ours: bool = False  # a lone process's free port, picked here: another may be picked if it is taken

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env() -> DistEnv:
    """Read the torch.distributed environment variables; a lone process gets a free localhost port."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    port = env.get("MASTER_PORT")
    return DistEnv(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(port) if port else (_free_port() if world == 1 else 29500),
        port_is_ours=not port and world == 1,
    )


def device_type() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()  # "cuda" or "cpu"


def init(env: DistEnv, timeout_minutes: float = 60.0) -> Any:
    """Export the env (DeepSpeed reads it), join the process group once, return this rank's device.

    The timeout bounds every collective wait (DeepSpeed's default is 10 minutes, less than rank 0 needs
    to write a 70B export or convert a checkpoint while the others wait).
    """
    from datetime import timedelta

    import deepspeed
    import torch

    kind = device_type()
    if kind == "cuda":
        # Under Ray the worker's GPU is Ray's choice, not LOCAL_RANK (Ray's ids are not in local-rank order).
        index = int(os.environ.get(PINNED_DEVICE_ENV, env.local_rank))
        torch.cuda.set_device(index)
    # A free port picked for a lone process can be taken (another process's outgoing connection) before the
    # store binds it: pick another. A port the launcher chose is never changed (every rank must agree on it).
    for attempt in range(3 if env.port_is_ours else 1):
        os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
        if torch.distributed.is_initialized():
            break
        try:
            deepspeed.init_distributed(dist_backend="nccl" if kind == "cuda" else "gloo", verbose=False,
                                       timeout=timedelta(minutes=timeout_minutes))
            break
        except torch.distributed.DistNetworkError:
            if attempt == 2 or not env.port_is_ours:
                raise
            env.master_port = _free_port()
    return torch.device("cuda", index) if kind == "cuda" else torch.device("cpu")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t):
    """Sum a tensor over all ranks in place (no-op without a process group); returns it."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_to_main(obj) -> Optional[list]:
    """Every rank's picklable `obj`, in rank order, on rank 0 (None elsewhere); [obj] without a process group.
    Small objects only (probe completions): it pickles through the process group's backend."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj):
    """Rank 0's picklable `obj` on every rank (a decision every rank must act on alike)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def bf16_supported() -> bool:
    import torch

    if device_type() == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True  # CPU autocast/DeepSpeed support bf16, just slowly


def peak_flops() -> Optional[float]:
    """bf16 dense peak of this device, None when unknown (CPU)."""
    import torch

    if device_type() != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for(torch.cuda.get_device_name())


def peak_flops_for(device_name: str) -> Optional[float]:
    """bf16 dense peak for a device name (the most specific PEAK_FLOPS key first), None when unknown."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX): only then is autocast faster."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(cfg, device):
    """The context the forward runs in: torch.autocast to bf16 under train.precision bf16-autocast, else none.
    Weights, gradients and the optimizer stay fp32 (DeepSpeed sees an fp32 model)."""
    import contextlib

    import torch

    if cfg.train.precision != "bf16-autocast":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_bf16(cfg, supported: Optional[bool] = None) -> bool:
    """precision auto: bf16 on GPUs that have it, fp32 on CPU (exact, reproducible tests)."""
    p = cfg.train.precision
    if p == "auto":
        return device_type() == "cuda" and (bf16_supported() if supported is None else supported)
    return p == "bf16"


# --- DeepSpeed config ---------------------------------------------------------------------------


def _typed_ds_config(cfg, world_size: int, bf16: bool, cpu: bool) -> dict:
    tr = cfg.train
    offload_opt = tr.offload in ("optimizer", "all")
    zero: dict[str, Any] = {"stage": tr.zero_stage}
    if tr.zero_stage > 0:  # stage 0 has no buckets to overlap or partition buffer to keep contiguous
        zero.update(overlap_comm=not cpu, contiguous_gradients=True)
    if offload_opt:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
    if tr.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    if tr.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if tr.zero3_param_persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = tr.zero3_param_persistence_threshold
    opt_params: dict[str, Any] = {"lr": _first(tr.lr), "betas": list(tr.adam_betas), "eps": tr.adam_eps,
                                  "weight_decay": tr.weight_decay}
    if optimizer_kind(tr) == "torch":  # torch AdamW: no compiled DeepSpeed op
        opt_params["torch_adam"] = True
        if not cpu and not offload_opt:
            opt_params["fused"] = True  # torch's fused CUDA AdamW (foreach is the default elsewhere)
        if offload_opt:
            zero["zero_force_ds_cpu_optimizer"] = False  # torch AdamW on the offloaded fp32 states
    return {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "train_batch_size": tr.micro_batch_size * tr.gradient_accumulation_steps * world_size,
        "gradient_clipping": tr.max_grad_norm,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": opt_params},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _first(v):
    return v[0] if isinstance(v, list) else v


def optimizer_kind(tr) -> str:
    """'torch' (AdamW, nothing to compile) or 'deepspeed' (FusedAdam / DeepSpeedCPUAdam) for train.optimizer."""
    if tr.optimizer != "auto":
        return tr.optimizer
    return "deepspeed" if tr.offload in ("optimizer", "all") else "torch"  # CPUAdam is far faster offloaded


def check_optimizer_ops(ds_config: dict, cpu: Optional[bool] = None) -> None:
    """Fail before start, naming the key, when the DeepSpeed optimizer op this run needs cannot be built here."""
    if ds_config.get("optimizer", {}).get("params", {}).get("torch_adam"):
        return
    cpu = device_type() == "cpu" if cpu is None else cpu
    offloaded = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
    name = "CPUAdamBuilder" if offloaded else "FusedAdamBuilder"
    problem = _op_problem(name, cpu)
    if problem:
        raise ConfigError(f"config key 'train.optimizer': DeepSpeed's {name.replace('Builder', '')} is needed "
                          f"but {problem}; set train.optimizer: torch (torch AdamW, nothing to compile), or "
                          f"install a DeepSpeed built with DS_BUILD_{'CPU_ADAM' if offloaded else 'FUSED_ADAM'}=1")


def _op_problem(builder_name: str, cpu: bool) -> Optional[str]:
    from deepspeed.accelerator import get_accelerator

    try:
        from deepspeed.git_version_info import installed_ops
    except ImportError:
        installed_ops = {}
    builder = get_accelerator().get_op_builder(builder_name)
    if builder is None:
        return f"the {get_accelerator().device_name()} accelerator has no {builder_name}"
    op = builder()
    if installed_ops.get(op.name):
        return None  # prebuilt into the wheel
    if not op.is_compatible(verbose=False):
        return "its op builder reports it incompatible with this machine (is_compatible() is False)"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "it is not prebuilt and compiling it at start needs ninja, which is not installed"
    if not cpu and cpp_extension.CUDA_HOME is None:
        return "it is not prebuilt and compiling it at start needs the CUDA toolkit (nvcc, CUDA_HOME), not found"
    return None


def _fill_auto(base: Any, typed: Any) -> Any:
    """The JSON with every "auto" replaced by the typed value at the same key; typed keys it lacks are added.

    An "auto" the typed config has no value for is dropped, leaving DeepSpeed's default.
    """
    if isinstance(base, dict):
        sub = typed if isinstance(typed, dict) else {}
        out = {k: _fill_auto(v, sub.get(k)) for k, v in base.items() if not (v == "auto" and sub.get(k) is None)}
        out.update({k: copy.deepcopy(v) for k, v in sub.items() if k not in base})
        return out
    return copy.deepcopy(typed) if base == "auto" else base


def read_ds_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"config key 'train.deepspeed_config': cannot read {path!r}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


def build_ds_config(cfg, world_size: int, bf16: Optional[bool] = None, cpu: Optional[bool] = None) -> dict:
    """The DeepSpeed config for this run (typed config, or the JSON with its "auto" values resolved)."""
    cpu = device_type() == "cpu" if cpu is None else cpu
    bf16 = use_bf16(cfg) if bf16 is None else bf16
    typed = _typed_ds_config(cfg, world_size, bf16, cpu)
    if not cfg.train.deepspeed_config:
        return typed
    path = cfg.train.deepspeed_config
    merged = _fill_auto(read_ds_json(path), typed)
    _check_json_agrees(path, merged, typed)
    return merged


def _check_json_agrees(path: str, merged: dict, typed: dict) -> None:
    problems = []
    pairs = {
        "train_micro_batch_size_per_gpu": "train.micro_batch_size",
        "gradient_accumulation_steps": "train.gradient_accumulation_steps",
        "train_batch_size": "train.micro_batch_size x gradient_accumulation_steps x world size",
    }
    for key, ours in pairs.items():
        if merged.get(key) != typed[key]:
            problems.append(f"{key}={merged.get(key)} but {ours} gives {typed[key]}")
    stage = merged.get("zero_optimization", {}).get("stage")
    if stage != typed["zero_optimization"]["stage"]:
        problems.append(f"zero_optimization.stage={stage} but train.zero_stage={typed['zero_optimization']['stage']}")
    zero = merged.get("zero_optimization", {})
    for section, want in (("offload_optimizer", "offload_optimizer" in typed["zero_optimization"]),
                          ("offload_param", "offload_param" in typed["zero_optimization"])):
        has = zero.get(section, {}).get("device", "none") not in ("none", None)
        if has != want:
            problems.append(f"zero_optimization.{section} {'is set' if has else 'is not set'} but train.offload "
                            f"asks {'for' if want else 'against'} it")
    if "scheduler" in merged:
        problems.append("has a 'scheduler' section: the schedule comes from train.scheduler/warmup_*; remove it")
    if problems:
        raise ConfigError(f"{path}: contradicts the safeft config:\n  " + "\n  ".join(problems))


def check_train_config(cfg, world_size: int, has_bf16: Optional[bool] = None) -> dict:
    """Reject contradictions before any worker starts; return the DeepSpeed config they would use."""
    tr = cfg.train
    problems = []
    if world_size < 1:
        problems.append(f"world size {world_size}: expected at least 1 process")
    if tr.global_batch_size is not None:
        got = tr.micro_batch_size * tr.gradient_accumulation_steps * world_size
        if got != tr.global_batch_size:
            problems.append(
                f"config key 'train.global_batch_size': {tr.global_batch_size} != micro_batch_size "
                f"{tr.micro_batch_size} x gradient_accumulation_steps {tr.gradient_accumulation_steps} x "
                f"{world_size} processes = {got}")
    if tr.offload == "all" and tr.zero_stage != 3:
        problems.append("config key 'train.offload': 'all' offloads parameters, which needs train.zero_stage: 3")
    supported = has_bf16 if has_bf16 is not None else bf16_supported()
    if tr.precision == "bf16" and not supported:
        problems.append("config key 'train.precision': bf16 requested but this device has no bf16; use auto or fp32")
    if tr.precision == "bf16-autocast" and device_type() == "cpu" and not cpu_bf16_native():
        problems.append("config key 'train.precision': bf16-autocast on a CPU without native bf16 (AVX512-BF16 or "
                        "AMX) is slower than fp32; use fp32")
    if problems:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(problems))
    return build_ds_config(cfg, world_size, bf16=use_bf16(cfg, supported))


def stage_name(zero_stage: int) -> str:
    """How messages name `train.zero_stage`: "stage 0 (no ZeRO)", "ZeRO-2", "ZeRO-3"."""
    return "stage 0 (no ZeRO)" if zero_stage == 0 else f"ZeRO-{zero_stage}"
