"""`safeft plan`: per-GPU memory of a ZeRO setup from a model config alone, and what to change if it does not fit.

Per GPU, four parts, printed separately (bf16 training, s = tokens of one micro-batch, h hidden, i MLP
width, kv = key/value width n_kv_heads x head_dim, L layers, V vocabulary):
- model states: DeepSpeed's own accounting (16-bit parameters 2, gradients 2 + 4 fp32, optimizer 4 fp32
  master + 8 moments bytes per parameter), so the totals equal `estimate_zero{2,3}_model_states_mem_needs`;
- activations of a Llama-style layer (RMSNorm with HF's fp32 upcast, RoPE copies, SwiGLU, memory-efficient
  attention without s^2 scores): A = 20 s h + 4 s kv + 8 s i bytes per layer, measured from the tensors a
  real layer saves for backward (tests/test_plan.py). Without checkpointing L x A; with it every layer keeps
  only its bf16 input (2 s h) and one layer is recomputed at a time: L x 2 s h + A;
- logits: standard loss 16 s V (bf16 logits 2, fp32 copy 4, fp32 log-softmax 4, its fp32 and bf16
  gradients 4 + 2); fused loss one chunk of C x V logits in place (C = safeft.kernels' default chunk,
  about s h / V; + 4 C V for the pure-torch rows) and the fp32 [V, h] accumulator of the weight gradient
  (+ its bf16 per-chunk product), 6 V h;
- buffers: DeepSpeed's communication buckets from the DeepSpeed config (ZeRO-2: reduce + allgather buckets,
  x 4.5 with overlap_comm, DeepSpeed's own rule; ZeRO-3: reduce bucket + prefetch bucket + max live
  parameters), 2 bytes per element, plus 2 GiB for the CUDA context and allocator fragmentation.
CPU memory per node is DeepSpeed's estimate; `--cpu-mem` drops advice that needs more.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from safeft import REPO
from safeft.errors import ConfigError

GiB = 2**30
MODELS_DIR = os.path.join(REPO, "configs", "models")
ALIASES = {
    "meta-llama/Llama-2-7b-hf": "Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf": "Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf": "Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf": "Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf": "Llama-2-70b-hf", "meta-llama/Llama-2-70b-chat-hf": "Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B": "Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct": "Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B": "Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct": "Meta-Llama-3-70B",
    "mistralai/Mistral-7B-Instruct-v0.2": "Mistral-7B-Instruct-v0.2",
}
OVERHEAD_BYTES = 2 * GiB  # CUDA context, allocator fragmentation
DS_DEFAULTS = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7,
               "stage3_max_live_parameters": 1e9, "overlap_comm": True}  # DeepSpeed 0.19's defaults
STATE_KEYS = ("parameters (16-bit)", "gradients", "optimizer states")


def resolve_model_config(name: str) -> dict:
    """A bundled config for a known hub name (no network), or a config.json file / model directory."""
    if os.path.isdir(name):
        name = os.path.join(name, "config.json")
    if os.path.isfile(name):
        with open(name, encoding="utf-8") as f:
            return json.load(f)
    short = ALIASES.get(name) or ALIASES.get(next((k for k in ALIASES if k.lower() == name.lower()), ""))
    short = short or (name.split("/")[-1] if os.path.isfile(os.path.join(MODELS_DIR, name.split("/")[-1] + ".json"))
                      else None)
    if short is None:
        known = ", ".join(sorted(ALIASES))
        raise ConfigError(f"--model {name!r}: not a config.json, a model directory, or a bundled model ({known})")
    with open(os.path.join(MODELS_DIR, short + ".json"), encoding="utf-8") as f:
        return json.load(f)


def count_params(c: dict) -> tuple[int, int]:
    """(total parameters, largest single module's parameters) of a Llama/Mistral-style decoder."""
    d, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o and k, v projections
    per_layer = attn + 3 * d * inter + 2 * d  # SwiGLU MLP, two RMSNorms
    embed = vocab * d
    total = embed + layers * per_layer + d + (0 if c.get("tie_word_embeddings") else embed)
    return total, max(embed, d * inter)


@dataclass
class Plan:
    model: str
    params: int
    gpus: int
    gpus_per_node: int
    zero: int
    offload: str
    seq_len: int
    micro_batch: int
    grad_checkpointing: bool
    gpu_mem_gib: float
    loss: str = "standard"
    cpu_mem_gib: Optional[float] = None
    per_gpu: dict = field(default_factory=dict)  # bytes per component
    cpu_per_node: int = 0
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_gpu.values())

    @property
    def fits_gpu(self) -> bool:
        return self.total <= self.gpu_mem_gib * GiB

    @property
    def fits_cpu(self) -> bool:
        return self.cpu_mem_gib is None or self.cpu_per_node <= self.cpu_mem_gib * GiB

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_cpu

    def render(self) -> str:
        head = (f"{self.model}: {self.params / 1e9:.2f}B params, {self.gpus} GPU(s) ({self.gpus_per_node}/node), "
                f"ZeRO-{self.zero}, offload {self.offload}, seq {self.seq_len} x micro-batch {self.micro_batch}, "
                f"gradient checkpointing {'on' if self.grad_checkpointing else 'off'}, loss {self.loss}")
        lines = [head, "per GPU:"]
        groups = (("model states", STATE_KEYS), ("activations", ("activations",)), ("logits", ("logits",)),
                  ("buffers", ("communication buckets", "CUDA context + fragmentation")))
        for title, keys in groups:
            part = sum(self.per_gpu.get(k, 0) for k in keys)
            lines.append(f"  {title:<32}{part / GiB:9.2f} GiB")
            if len(keys) > 1:
                lines += [f"    {k:<30}{self.per_gpu.get(k, 0) / GiB:9.2f} GiB" for k in keys]
        lines.append(f"  {'total':<32}{self.total / GiB:9.2f} GiB of {self.gpu_mem_gib:g} GiB -> "
                     f"{'fits' if self.fits_gpu else 'does NOT fit'}")
        cpu = f"CPU memory per node (DeepSpeed estimate): {self.cpu_per_node / GiB:.1f} GiB"
        if self.cpu_mem_gib is not None:
            cpu += f" of {self.cpu_mem_gib:g} GiB -> {'fits' if self.fits_cpu else 'does NOT fit'}"
        lines.append(cpu)
        lines += [f"  try: {a}" for a in self.advice]
        return "\n".join(lines)


def model_state_bytes(params: int, largest: int, gpus: int, zero: int, offload: str) -> dict:
    """Per-GPU bytes of parameters, gradients and optimizer states, DeepSpeed's accounting."""
    if zero == 2:
        sharded = {"gradients": 6 * params // gpus, "optimizer states": 12 * params // gpus}
        if offload != "none":
            sharded = {"gradients": 0, "optimizer states": 0}  # on the CPU
        return {"parameters (16-bit)": 2 * params, **sharded}
    gather = 4 * largest  # the largest module's parameters gathered for its forward/backward
    if offload == "all":
        return {"parameters (16-bit)": gather, "gradients": 0, "optimizer states": 0}
    if offload == "optimizer":
        return {"parameters (16-bit)": gather + 2 * params // gpus, "gradients": 0, "optimizer states": 0}
    return {"parameters (16-bit)": gather + 2 * params // gpus, "gradients": 4 * params // gpus,
            "optimizer states": 12 * params // gpus}


def layer_activation_bytes(c: dict, tokens: int) -> int:
    """Bytes one Llama-style decoder layer saves for backward in bf16 (see the module docstring)."""
    d, inter, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads) * (c.get("head_dim") or d // heads)
    return tokens * (20 * d + 4 * kv + 8 * inter)


def activation_bytes(c: dict, seq: int, micro: int, grad_ckpt: bool) -> int:
    d, layers = c["hidden_size"], c["num_hidden_layers"]
    tokens = seq * micro
    per_layer = layer_activation_bytes(c, tokens)
    return layers * 2 * tokens * d + per_layer if grad_ckpt else layers * per_layer


def _next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def logits_bytes(c: dict, seq: int, micro: int, loss: str) -> int:
    d, vocab = c["hidden_size"], c["vocab_size"]
    tokens = seq * micro
    if loss == "standard":
        return 16 * tokens * vocab
    chunk = max(16, min(_next_pow2(-(-tokens * d // vocab)), _next_pow2(tokens)))  # = kernels' default chunk
    return 6 * chunk * vocab + 6 * vocab * d


def bucket_bytes(zero: int, ds_json: Optional[dict] = None) -> int:
    """DeepSpeed's communication buffers per GPU from the zero_optimization section (defaults when absent)."""
    z = dict(DS_DEFAULTS)
    for k, v in ((ds_json or {}).get("zero_optimization") or {}).items():
        if v != "auto":
            z[k] = v
    if zero == 2:
        both = float(z["reduce_bucket_size"]) + float(z["allgather_bucket_size"])
        return int(2 * both * (4.5 if z["overlap_comm"] else 1.0))
    return int(2 * (float(z["reduce_bucket_size"]) + float(z["stage3_prefetch_bucket_size"])
                    + float(z["stage3_max_live_parameters"])))


def ds_estimates(params: int, largest: int, gpus: int, per_node: int, zero: int, offload: str) -> tuple[int, int]:
    """DeepSpeed's own (CPU per node, GPU) model-state estimates for this setup."""
    nodes = max(1, gpus // per_node)
    if zero == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=offload != "none")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes,
                                                        cpu_offload=offload != "none",
                                                        cpu_offload_params=offload == "all", zero_init=True)
    return cpu, gpu


def make_plan(model: str, gpus: int, gpus_per_node: int, zero: int, offload: str, seq_len: int, micro_batch: int,
              grad_checkpointing: bool, gpu_mem_gib: float, advise: bool = True, loss: str = "standard",
              cpu_mem_gib: Optional[float] = None, ds_json: Optional[dict] = None) -> Plan:
    if gpus < 1 or gpus_per_node < 1 or gpus % gpus_per_node:
        raise ConfigError(f"--gpus {gpus} must be a positive multiple of --gpus-per-node {gpus_per_node}")
    if zero not in (2, 3):
        raise ConfigError(f"--zero {zero}: expected 2 or 3")
    if offload == "all" and zero != 3:
        raise ConfigError("--offload all offloads parameters, which needs --zero 3")
    if loss not in ("standard", "fused"):
        raise ConfigError(f"--loss {loss!r}: expected standard or fused")
    c = resolve_model_config(model)
    params, largest = count_params(c)
    plan = Plan(model, params, gpus, gpus_per_node, zero, offload, seq_len, micro_batch, grad_checkpointing,
                gpu_mem_gib, loss, cpu_mem_gib)
    plan.per_gpu = model_state_bytes(params, largest, gpus, zero, offload)
    plan.per_gpu["activations"] = activation_bytes(c, seq_len, micro_batch, grad_checkpointing)
    plan.per_gpu["logits"] = logits_bytes(c, seq_len, micro_batch, loss)
    plan.per_gpu["communication buckets"] = bucket_bytes(zero, ds_json)
    plan.per_gpu["CUDA context + fragmentation"] = OVERHEAD_BYTES
    plan.cpu_per_node = ds_estimates(params, largest, gpus, gpus_per_node, zero, offload)[0]
    if advise and not plan.fits:
        plan.advice = _advice(plan, ds_json)
    return plan


def _advice(p: Plan, ds_json: Optional[dict]) -> list[str]:
    """Changes that make it fit on the GPU and (with --cpu-mem) in CPU memory, cheapest first (each re-planned)."""
    base = dict(model=p.model, gpus=p.gpus, gpus_per_node=p.gpus_per_node, zero=p.zero, offload=p.offload,
                seq_len=p.seq_len, micro_batch=p.micro_batch, grad_checkpointing=p.grad_checkpointing,
                gpu_mem_gib=p.gpu_mem_gib, advise=False, loss=p.loss, cpu_mem_gib=p.cpu_mem_gib, ds_json=ds_json)
    gc = dict(grad_checkpointing=True)
    options = [("--grad-checkpointing", gc),
               ("--grad-checkpointing --loss fused", dict(gc, loss="fused")),
               ("--micro-batch 1 --grad-checkpointing", dict(gc, micro_batch=1)),
               ("--zero 3 --grad-checkpointing", dict(gc, zero=3)),
               ("--zero 3 --grad-checkpointing --loss fused", dict(gc, zero=3, loss="fused")),
               ("--zero 3 --offload optimizer --grad-checkpointing", dict(gc, zero=3, offload="optimizer")),
               ("--zero 3 --offload all --grad-checkpointing", dict(gc, zero=3, offload="all"))]
    out = [flag for flag, change in options
           if any(base[k] != v for k, v in change.items()) and make_plan(**{**base, **change}).fits]
    for n in (n for n in (2, 4, 8, 16, 32, 64, 128, 256) if n > p.gpus):
        per_node = min(p.gpus_per_node, n)
        if n % per_node == 0 and make_plan(**{**base, "gpus": n, "gpus_per_node": per_node}).fits:
            out.append(f"--gpus {n} (same settings)")
            break
    if not out:
        return ["nothing in reach fits: shorten --seq-len or use GPUs (or nodes) with more memory"]
    return out[:4]


def add_plan_args(p) -> None:
    p.add_argument("--model", required=True, help="hub name of a bundled model, a config.json, or a model dir")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: min(--gpus, 8)")
    p.add_argument("--zero", type=int, choices=[2, 3], default=3)
    p.add_argument("--offload", choices=["none", "optimizer", "all"], default="none")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--loss", choices=["standard", "fused"], default="standard", help="train.loss")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--cpu-mem", type=float, default=None, help="GiB of CPU memory per node; advice must fit it")
    p.add_argument("--deepspeed-config", default=None, help="a DeepSpeed JSON: its bucket sizes (default: "
                                                             "DeepSpeed's)")


def plan_from_args(args) -> Plan:
    per_node: Optional[int] = args.gpus_per_node or min(args.gpus, 8)
    ds_json = None
    if args.deepspeed_config:
        from safeft.distributed import read_ds_json

        ds_json = read_ds_json(args.deepspeed_config)
    return make_plan(args.model, args.gpus, per_node, args.zero, args.offload, args.seq_len, args.micro_batch,
                     args.grad_checkpointing, args.gpu_mem, loss=args.loss, cpu_mem_gib=args.cpu_mem, ds_json=ds_json)
