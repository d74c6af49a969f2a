"""Loading tokenizers and models from a local directory or a hub name.

`trust_remote_code` stays off unless the config asks for it; weights load as safetensors.
"""

from __future__ import annotations

import logging
from typing import Any

from safeft.errors import SafeftError


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    from safeft.model_import import resolve_model

    name_or_path = resolve_model(name_or_path)  # a GGUF file or a named default: its imported directory
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise SafeftError(f"cannot load tokenizer {name_or_path!r}: {e}") from None
    if tok.pad_token_id is None:
        # Padding is only used by the evaluator's left-padded batches and the collator's padding slots.
        tok.pad_token = tok.eos_token if tok.unk_token is None else tok.unk_token
    return tok


# --- models for training --------------------------------------------------------------------------

TINY_PREFIX = "tiny:"
log = logging.getLogger(__name__)


def resolve_model_path(name_or_path: str, is_main: bool = True, barrier=None) -> str:
    """A directory `from_pretrained` loads: `tiny:DIR` builds a tiny random Llama at DIR; a GGUF file or a named
    default (`smollm2-135m-instruct`) is imported once into the model cache (safeft.model_import). Rank 0 first,
    then the others; anything else (a directory, a hub name) as is."""
    from safeft.model_import import NAMED_MODELS, is_gguf, resolve_model

    if name_or_path.startswith(TINY_PREFIX):
        path = name_or_path[len(TINY_PREFIX):] or "runs/tiny-model"
        if is_main:
            from safeft.tiny import build_tiny_model_dir

            build_tiny_model_dir(path)
    elif name_or_path in NAMED_MODELS or is_gguf(name_or_path):
        path = resolve_model(name_or_path) if is_main else None
    else:
        return name_or_path
    if barrier is not None:
        barrier()
    return path if path is not None else resolve_model(name_or_path)  # a cache hit on the other ranks


def select_attention(requested: str, device_type: str) -> str:
    """The attention for packed rows: flash-attn varlen, PyTorch varlen, or SDPA with the packed mask."""
    if requested == "auto":
        if device_type == "cuda" and flash_attn_usable():
            return "flash_attention_2"
        if device_type == "cuda" and _torch_varlen() is not None:
            return register_varlen_attention()
        return "sdpa"
    if requested == "flash_attn":
        if device_type != "cuda" or not flash_attn_usable():
            raise SafeftError("model.attention: flash_attn needs a flash-attn package that imports with its CUDA "
                              "extension, and a CUDA device; use auto")
        return "flash_attention_2"
    if requested == "varlen":
        if _torch_varlen() is None or device_type != "cuda":
            raise SafeftError("model.attention: varlen needs torch.nn.attention.varlen and a CUDA device; use auto")
        return register_varlen_attention()
    return requested  # sdpa | eager


def flash_attn_usable() -> bool:
    """Whether flash-attn really imports, CUDA extension included, and transformers agrees.

    `find_spec` is not enough: a wheel built for another torch or CUDA is found, then fails at the
    first forward with an undefined symbol (ImportError or OSError from the loader).
    """
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
        import flash_attn_2_cuda  # noqa: F401  (the compiled extension; the usual point of failure)
    except Exception as e:  # ImportError, OSError (undefined symbol), RuntimeError from its own checks
        log.warning("attention: flash-attn is installed but does not import (%s: %s); falling back to torch "
                    "varlen or SDPA", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return False
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        return True
    if not is_flash_attn_2_available():
        log.warning("attention: transformers does not accept this flash-attn (version or device); falling back")
        return False
    return True


def uses_varlen_kwargs(attn_implementation: str) -> bool:
    """Whether the collator's cu_seq_lens/max_length kwargs go to the model (else position_ids mark documents)."""
    return attn_implementation in ("flash_attention_2", VARLEN_ATTENTION)


VARLEN_ATTENTION = "safeft_torch_varlen"


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def register_varlen_attention() -> str:
    """Register PyTorch's FA2-based varlen attention with transformers' AttentionInterface; return its name."""
    import inspect

    from transformers import AttentionInterface

    varlen_attn = _torch_varlen()
    params = inspect.signature(varlen_attn).parameters
    # The causal flag moved between torch versions: `is_causal=True` earlier, `window_size=(-1, 0)` later.
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa_native = "enable_gqa" in params

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        # query [B=1, Hq, T, D], key/value [1, Hkv, T, D] -> varlen wants [T, H, D]
        q, k, v = (x.squeeze(0).transpose(0, 1) for x in (query, key, value))
        extra = dict(causal)
        if gqa_native:
            extra["enable_gqa"] = q.shape[1] != k.shape[1]
        elif q.shape[1] != k.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = varlen_attn(q, k, v, kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], int(kwargs["max_length_q"]),
                          int(kwargs["max_length_k"]), scale=scaling, **extra)  # [T, Hq, D]
        return out.unsqueeze(0), None  # [1, T, Hq, D]

    AttentionInterface.register(VARLEN_ATTENTION, attention)
    return VARLEN_ATTENTION


def load_model(mcfg: Any, zero_stage: int, ds_config: dict | None = None, dtype: Any = None,
               attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """AutoModelForCausalLM for training: use_cache off, chosen attention, optional gradient checkpointing.

    Under ZeRO-3 an HfDeepSpeedConfig is alive during from_pretrained, so transformers builds the model
    inside deepspeed.zero.Init and every rank holds only its shard. Returns (model, keepalive): keep the
    second object referenced for the whole run (transformers holds it weakly).
    """
    import torch
    from transformers import AutoModelForCausalLM

    keepalive = None
    if zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keepalive = HfDeepSpeedConfig(ds_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            mcfg.name_or_path, revision=mcfg.revision, dtype=dtype or torch.float32,
            trust_remote_code=mcfg.trust_remote_code, attn_implementation=attn_implementation, use_safetensors=None)
    except (OSError, ValueError) as e:
        raise SafeftError(f"config key 'model.name_or_path': cannot load {mcfg.name_or_path!r}: {e}") from None
    if zero_stage == 3 and not all(hasattr(p, "ds_id") for p in model.parameters()):
        log.warning("ZeRO-3: the model was not built inside deepspeed.zero.Init; every rank holds it whole")
    model.config.use_cache = False
    # from_pretrained returns eval mode, DeepSpeed never calls .train(), and transformers checkpoints a layer
    # only when `gradient_checkpointing and training`: without this, checkpointing is silently off.
    model.train()
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not any(getattr(m, "gradient_checkpointing", False) and m.training for m in model.modules()):
            raise SafeftError(f"config key 'model.gradient_checkpointing': {type(model).__name__} has no layer "
                              "that checkpoints in training mode; set it to false or use a model that supports it")
    log.info("model %s: attention %s, dtype %s, ZeRO-%d", mcfg.name_or_path, attn_implementation,
             dtype, zero_stage)
    return model, keepalive
