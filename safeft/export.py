"""Export a trained model as a Hugging Face directory: safetensors weights, config, tokenizer, safeft_run.json.

From a live engine every rank takes part in the ZeRO-3 16-bit consolidation (a collective; rank 0 gets
the full state dict and writes). Offline, `export_checkpoint` consolidates a DeepSpeed checkpoint with
`deepspeed.utils.zero_to_fp32`. `safeft_run.json` tells the evaluator how the model was trained and which
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


def _fits_in_memory(n_bytes: int) -> bool:
    import psutil

    free = psutil.virtual_memory().available
    if n_bytes * 1.2 > free:
        log.error("export needs about %.1f GiB of CPU memory, %.1f GiB are free", n_bytes / 2**30, free / 2**30)
        return False
    return True


def export_from_engine(engine, hf_model, tokenizer, out_dir: str, record: dict, dtype, zero_stage: int,
                       rank: int, all_reduce_sum) -> Optional[str]:
    """Every rank calls this. Returns out_dir on rank 0, None elsewhere."""
    import torch

    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in hf_model.parameters())
    ok = torch.tensor([float(rank != 0 or _fits_in_memory(n_params * dtype.itemsize))])
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if float(all_reduce_sum(ok)) < world:  # every rank stops together instead of hanging in the collective
        raise SafeftError(f"export to {out_dir!r}: not enough free CPU memory on rank 0 to consolidate "
                          f"{n_params / 1e9:.1f}B parameters; export offline with 'safeft export CHECKPOINT OUT'")
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0 only
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank != 0:
        return None
    state = {k: _own_storage(v.detach().to("cpu", dtype)) for k, v in _strip(state).items()}
    _write_hf_dir(out_dir, hf_model.config, tokenizer, state, record, dtype, _parameter_names(hf_model))
    return out_dir


def _own_storage(t):
    """ZeRO-2 parameters are views into one flat buffer; safetensors needs each tensor to own its storage."""
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def _write_hf_dir(out_dir: str, config, tokenizer, state: dict, record: dict, dtype, expected: set) -> None:
    """Write safetensors shards + config without building a model (under ZeRO-3 that would be a collective)."""
    from huggingface_hub import save_torch_state_dict

    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
        expected = expected - {"lm_head.weight"}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise SafeftError(f"export: weights do not match {config.architectures}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    config = config.__class__.from_dict(config.to_dict())
    config.use_cache = True  # inference default
    config.dtype = dtype
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_torch_state_dict(state, tmp, max_shard_size="5GB", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(os.path.join(tmp, "safeft_run.json"), record)
    log.info("exported %s (%s)", out_dir, dtype)


def _parameter_names(model) -> set:
    return {n for n, _ in model.named_parameters()}


def export_checkpoint(checkpoint: str, out_dir: str, dtype: str = "bfloat16") -> str:
    """Offline: a DeepSpeed checkpoint (root with `latest`, or one step dir) -> an HF directory."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoTokenizer

    from safeft.train.checkpoint import locate

    if dtype not in DTYPES:
        raise SafeftError(f"export dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    root, tag = locate(checkpoint)
    hf_dir = os.path.join(root, "hf")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise SafeftError(f"checkpoint {root!r} has no hf/config.json: was it written by safeft train?")
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    record_path = os.path.join(root, "safeft_run.json")
    record: dict[str, Any] = read_json(record_path) if os.path.isfile(record_path) else {}
    record["step"] = read_json(os.path.join(root, tag, "safeft_state.json"))["step"]
    state = get_fp32_state_dict_from_zero_checkpoint(root, tag)
    torch_dtype = getattr(torch, dtype)
    state = {k: _own_storage(v.to(torch_dtype)) for k, v in _strip(state).items()}
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        names = _parameter_names(AutoModelForCausalLM.from_config(config))
    _write_hf_dir(out_dir, config, tokenizer, state, record, torch_dtype, names)
    return out_dir
