"""Export a trained model as a Hugging Face directory: safetensors weights, config, tokenizer, safeft_run.json.

Both paths stream: from a live engine every rank gathers one decoder layer (or shard-sized unit) at a
time and rank 0 appends it to the current safetensors shard; offline, `export_checkpoint` merges one
tensor at a time from DeepSpeed's memory-mapped fp32 partitions (`zero_to_fp32` lazy mode), or, for an fp32
stage-0 checkpoint, reads its memory-mapped module state.
`safeft_run.json` tells the evaluator how the model was trained and which
template to test it with (PTST: the safety prompt at test time).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from safeft.errors import SafeftError
from safeft.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)
DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def run_record(cfg, fingerprint: Optional[str], step: int) -> dict:
    from safeft import __version__

    return {
        "safeft_version": __version__,
        "method": cfg.train.method,
        "base_model": cfg.model.name_or_path,
        "train_template": cfg.template.train,
        "train_system": cfg.template.train_system,
        "test_template": cfg.test_templates[0],  # recommended: PTST tests with the safety prompt
        "test_templates": cfg.test_templates,
        "test_system": cfg.template.test_system,
        "lookahead": {"mode": cfg.lookahead.mode, "m": cfg.lookahead.m, "prefix": cfg.lookahead.prefix,
                      "connector": cfg.lookahead.connector},
        "data_fingerprint": fingerprint,
        "step": step,
        "config": cfg.to_dict(),
    }


def _strip(state: dict, prefix: str = "model.") -> dict:
    """Keys of the CausalLMWithLoss wrapper -> keys of the HF model."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


SHARD_BYTES = 5 * 2**30  # the Hub's usual shard size


class ShardWriter:
    """Appends tensors to safetensors shards of at most `max_shard_bytes`, each written as soon as it fills.

    At most one shard's tensors are held (`held_bytes`; its peak in `peak_bytes`); `close()` names the files
    like `save_pretrained` does (model.safetensors, or model-0000i-of-0000n.safetensors + index).
    """

    def __init__(self, out_dir: str, max_shard_bytes: int = SHARD_BYTES):
        self.dir, self.max_bytes = out_dir, max_shard_bytes
        self.pending: dict = {}
        self.held_bytes = self.peak_bytes = self.total_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)

    def add(self, name: str, tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        if self.pending and self.held_bytes + n > self.max_bytes:
            self.flush()
        self.pending[name] = _own_storage(tensor.contiguous())
        self.held_bytes += n
        self.total_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"shard-{len(self.shards):05d}.partial"
        save_file(self.pending, os.path.join(self.dir, name), metadata={"format": "pt"})
        self.shards.append((name, list(self.pending)))
        self.pending, self.held_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, (tmp, names) in enumerate(self.shards):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.dir, tmp), os.path.join(self.dir, final))
            weight_map.update({k: final for k in names})
        if n > 1:
            write_json(os.path.join(self.dir, "model.safetensors.index.json"),
                       {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})


def _units(module, prefix: str, budget: int, seen: set):
    """[(name, tensor)] groups of `module`'s parameters of at most `budget` elements (or one module's own),
    walking down the module tree: a decoder layer is usually one unit. Tied parameters come once."""
    size = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if id(p) not in seen)
    children = list(module.named_children())
    if size <= budget or not children:
        group = [(prefix + n, p) for n, p in module.named_parameters() if id(p) not in seen]
        seen.update(id(p) for _, p in group)
        if group:
            yield group
        return
    own = [(prefix + n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
    seen.update(id(p) for _, p in own)
    if own:
        yield own
    for name, child in children:
        yield from _units(child, f"{prefix}{name}.", budget, seen)


def _persistent_buffers(model) -> dict:
    out = {}
    for mod_name, mod in model.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if buf is not None and name not in mod._non_persistent_buffers_set:
                out[f"{mod_name}.{name}" if mod_name else name] = buf
    return out


def export_from_engine(hf_model, tokenizer, out_dir: str, record: dict, dtype, zero_stage: int, rank: int,
                       max_shard_bytes: int = SHARD_BYTES) -> Optional[str]:
    """Every rank calls this. Returns out_dir on rank 0, None elsewhere.

    Streams: under ZeRO-3 every rank gathers one unit (about a decoder layer, at most a shard) at a time,
    rank 0 copies it to the CPU in `dtype` and appends it to the current shard, which is written when full.
    Rank 0 holds at most one shard plus one unit, never the model (ZeRO-2 parameters are whole on every rank).
    """
    import contextlib

    import deepspeed

    budget = max(1, max_shard_bytes // dtype.itemsize)
    buffers = _persistent_buffers(hf_model)
    units = list(_units(hf_model, "", budget, set()))
    names = {n for unit in units for n, _ in unit} | set(buffers)
    if rank == 0:
        _check_names(hf_model.config, names, _parameter_names(hf_model) | set(buffers))
    tmp_ctx = atomic_path(out_dir) if rank == 0 else contextlib.nullcontext(None)
    with tmp_ctx as tmp:
        writer = None
        if rank == 0:
            tmp.mkdir()
            writer = ShardWriter(str(tmp), max_shard_bytes)
        for unit in units:
            params = [p for _, p in unit]
            gather = (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if zero_stage == 3
                      else contextlib.nullcontext())
            with gather:  # a collective under ZeRO-3: every rank, same order
                if writer is not None:
                    for name, p in unit:
                        writer.add(name, p.detach().to("cpu", dtype, copy=True))
        if writer is None:
            return None
        for name, buf in buffers.items():
            writer.add(name, buf.detach().to("cpu", dtype if buf.is_floating_point() else buf.dtype, copy=True))
        writer.close()
        _write_metadata(tmp, hf_model.config, tokenizer, record, dtype, getattr(hf_model, "generation_config", None))
    log.info("exported %s (%s, %d shard(s), at most %.2f GiB held)", out_dir, dtype, len(writer.shards),
             writer.peak_bytes / 2**30)
    return out_dir


def _own_storage(t):
    """ZeRO-2 parameters are views into one flat buffer; safetensors needs each tensor to own its storage."""
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def _check_names(config, names: set, expected: set) -> None:
    if getattr(config, "tie_word_embeddings", False):
        names, expected = names - {"lm_head.weight"}, expected - {"lm_head.weight"}
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        raise SafeftError(f"export: weights do not match {config.architectures}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")


def _write_metadata(tmp, config, tokenizer, record: dict, dtype, generation_config=None) -> None:
    """config (inference defaults), generation_config, tokenizer and safeft_run.json beside the weights.
    generation_config carries the end-of-turn ids (Llama-3.1: eos [128001, 128008, 128009]): without it,
    `generate` and servers reading the directory stop only at the tokenizer's EOS and run past `<|eot_id|>`."""
    config = config.__class__.from_dict(config.to_dict())
    config.use_cache = True  # inference default
    config.dtype = dtype
    config.save_pretrained(tmp)
    if generation_config is not None:
        generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    write_json(os.path.join(tmp, "safeft_run.json"), record)


def _fp32_state(root: str, tag: str) -> dict:
    """The fp32 weights of a checkpoint, memory-mapped. ZeRO (and DeepSpeed's bf16 optimizer) keeps them in
    optimizer partition files, merged lazily one tensor at a time; an fp32 stage-0 run has none: its module state
    is the fp32 weights, read without unpickling code objects (weights_only)."""
    import glob

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if glob.glob(os.path.join(root, tag, "*_optim_states.pt")):
        return get_fp32_state_dict_from_zero_checkpoint(root, tag, lazy_mode=True)
    path = os.path.join(root, tag, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise SafeftError(f"checkpoint {os.path.join(root, tag)!r} has neither ZeRO optimizer files nor {path!r}")
    module = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["module"]
    if any(t.dtype != torch.float32 for t in module.values() if t.is_floating_point()):
        raise SafeftError(f"checkpoint {path!r}: its weights are not fp32 and it has no fp32 optimizer copy")
    return module


def _parameter_names(model) -> set:
    return {n for n, _ in model.named_parameters()}


def export_checkpoint(checkpoint: str, out_dir: str, dtype: str = "bfloat16",
                      max_shard_bytes: int = SHARD_BYTES) -> str:
    """Offline: a DeepSpeed checkpoint (root with `latest`, or one step dir) -> an HF directory, one tensor at a
    time (DeepSpeed's lazy mode), so memory holds one shard, not the model."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from safeft.train.checkpoint import locate

    if dtype not in DTYPES:
        raise SafeftError(f"export dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    root, tag = locate(checkpoint)
    hf_dir = os.path.join(root, "hf")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise SafeftError(f"checkpoint {root!r} has no hf/config.json: was it written by safeft train?")
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    generation_config = (GenerationConfig.from_pretrained(hf_dir)
                         if os.path.isfile(os.path.join(hf_dir, "generation_config.json")) else None)
    record_path = os.path.join(root, "safeft_run.json")
    record: dict[str, Any] = read_json(record_path) if os.path.isfile(record_path) else {}
    record["step"] = read_json(os.path.join(root, tag, "safeft_state.json"))["step"]
    torch_dtype = getattr(torch, dtype)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        names = _parameter_names(AutoModelForCausalLM.from_config(config))
    state = _strip(_fp32_state(root, tag))
    tied = getattr(config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    _check_names(config, set(state), names)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writer = ShardWriter(str(tmp), max_shard_bytes)
        for name in list(state):
            writer.add(name, state.pop(name).contiguous().to(torch_dtype))
        writer.close()
        _write_metadata(tmp, config, tokenizer, record, torch_dtype, generation_config)
    log.info("exported %s (%s, %d shard(s), at most %.2f GiB held)", out_dir, dtype, len(writer.shards),
             writer.peak_bytes / 2**30)
    return out_dir
