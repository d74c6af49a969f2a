"""Generation engines without vLLM: transformers' continuous batching, or a token-budget batcher.

Both take prompts as token ids (rendered by the test template through `encode_prompt`) and return,
per prompt, the generated token ids (cut at EOS) and the text (cut at the first stop string).

budget: sort by prompt length (longest first), fill a batch while (longest prompt + max_new) x batch
        stays within the token budget, left-pad, `model.generate`. The budget is `eval.batch_tokens`,
        capped by `eval.kv_cache_gb` over the model's KV bytes per token (default: a share of the free
        GPU memory after the weights load), so a multi-head 13B and a GQA 8B get the budget they fit.
continuous: `model.generate_batch` (paged KV cache, requests join and leave the running batch).
auto: continuous on one CUDA device when the model has `generate_batch`, else budget (on CPU the
      continuous manager's per-step overhead outweighs its gain for small models; a replica over several
      GPUs gets budget, since the paged cache lives on one device).

Placement: one GPU per replica is `cuda:{LOCAL_RANK}` under launcher ranks and the first visible GPU
otherwise (a Ray actor sees only its own); a replica over several GPUs gets `device_map="auto"`
restricted (`max_memory`) to its own GPUs: launcher rank r owns GPUs [r*g, (r+1)*g).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


@dataclass
class GenSettings:
    engine: str = "auto"
    batch_tokens: int = 16384
    kv_cache_gb: Optional[float] = None  # None: KV_FREE_SHARE of the free GPU memory; no cap on CPU
    max_batch_size: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # weights: auto = bf16 on GPUs, fp32 on CPU (exact); float32; bfloat16
    share_prefix: bool = True  # prefill a batch's shared prompt prefix once (budget engine)
    gpus: int = 1
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, ev: Any, trust_remote_code: bool = False) -> "GenSettings":
        """The engine's share of the `eval` section (the engine never sees tasks, judges or gates)."""
        shared = ("engine", "batch_tokens", "kv_cache_gb", "max_batch_size", "do_sample", "temperature", "top_p",
                  "seed", "dtype", "share_prefix")
        return cls(**{k: getattr(ev, k) for k in shared}, stop=list(ev.stop), gpus=ev.gpus_per_replica,
                   trust_remote_code=trust_remote_code)

    def public(self) -> dict:
        """The settings that change outputs (recorded as provenance and in shard fingerprints)."""
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": self.stop, "dtype": self.dtype, "share_prefix": self.share_prefix}


# The share of free GPU memory (after the weights load) the budget engine's KV cache may take: the rest
# covers DynamicCache's torch.cat growth (old and new cache alive at once), prefill activations and logits.
KV_FREE_SHARE = 0.4


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """KV-cache bytes one token holds: K and V for every layer and KV head, 2 * L * n_kv * head_dim * bytes."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads  # MHA configs may leave it unset
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def token_budget(batch_tokens: int, bytes_per_token: int, kv_cache_bytes: Optional[float]) -> int:
    """Tokens per batch: `batch_tokens`, capped by the KV bytes available (None: no cap)."""
    if kv_cache_bytes is None:
        return batch_tokens
    return max(1, min(batch_tokens, int(kv_cache_bytes // bytes_per_token)))


def replica_gpus(gpus: int, cuda_count: int, local_rank: int = 0, world: int = 1) -> list[int]:
    """The CUDA indices one replica uses: launcher rank r of a node owns [r*gpus, (r+1)*gpus); a lone
    process (or a Ray actor, which sees only its own GPUs) takes the first `gpus`."""
    from safeft.errors import SafeftError

    first = local_rank * gpus if world > 1 else 0
    if first + gpus > cuda_count:
        where = f"launcher local rank {local_rank} of {world}" if world > 1 else "this process"
        raise SafeftError(f"config key 'eval.gpus_per_replica': {where} needs GPUs {first}..{first + gpus - 1} "
                          f"but {cuda_count} are visible; start one rank per {gpus} GPUs or lower it")
    return list(range(first, first + gpus))


def _placement(settings: "GenSettings") -> tuple[Any, list[int], dict]:
    """(first device, this replica's GPU indices, from_pretrained kwargs) for the settings and environment."""
    import torch

    if not (torch.cuda.is_available() and settings.device in ("auto", "cuda")):
        return torch.device("cpu"), [], {"dtype": torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    gpus = replica_gpus(settings.gpus, torch.cuda.device_count(), local_rank, world)
    kwargs: dict = {"dtype": torch.float32 if settings.dtype == "float32" else torch.bfloat16}
    if len(gpus) > 1:  # one replica over its own GPUs only; other ranks' GPUs get nothing
        kwargs.update(device_map="auto", max_memory={i: torch.cuda.mem_get_info(i)[0] for i in gpus})
    else:
        torch.cuda.set_device(gpus[0])
    return torch.device("cuda", gpus[0]), gpus, kwargs


def budget_batches(lengths: list[int], max_new: int, batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Positions into `lengths`, longest first, grouped so (longest + max_new) x size <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = lengths[cur[0]] + max_new  # the batch's longest prompt comes first
            if len(cur) < max_batch and width * (len(cur) + 1) <= batch_tokens:
                cur.append(i)
                continue
        batches.append([i])
    return batches


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def left_pad(prompts: list[list[int]], pad: int):
    """(ids [B, L], attention mask [B, L]) of prompts left-padded to the longest, L = its length."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, L]
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


MIN_SHARED_PREFIX = 16  # tokens: below this a separate prefill of the prefix saves less than it costs


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares (a test template's system prompt and header), leaving each
    prompt at least one token of its own; 0 when shorter than MIN_SHARED_PREFIX."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    k = next((i for i in range(n) if any(p[i] != first[i] for p in prompts)), max(n, 0))
    return k if k >= MIN_SHARED_PREFIX else 0


def prefix_pad(prompts: list[list[int]], prefix: int, pad: int):
    """(ids [B, P + S], attention mask [B, P + S]): the shared prefix (P tokens) first, then each prompt's own
    tokens left-padded to the longest (S); the padding sits between them, masked, so positions stay contiguous."""
    import torch

    ids, mask = left_pad([p[prefix:] for p in prompts], pad)  # [B, S]
    head = torch.tensor(prompts[0][:prefix], dtype=torch.long).expand(len(prompts), prefix)  # [B, P]
    return torch.cat([head, ids], dim=1), torch.cat([torch.ones_like(head), mask], dim=1)


def finish_tokens(tokens: list[int], end: list[int], tokenizer: Any, stop: list[str]) -> dict:
    """Cut at the first end-of-turn id (and the padding after it), decode, cut at the first stop string.
    `stop`: 'eos' (an end id ended it), 'stop' (a stop string did), else 'length'."""
    cut = next((k for k, t in enumerate(tokens) if t in end), None)
    tokens = tokens if cut is None else tokens[:cut]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    completion = truncate_at_stop(text, stop)
    reason = "eos" if cut is not None else ("stop" if completion != text else "length")
    return {"tokens": tokens, "completion": completion, "stop": reason}


def end_ids(model: Any, tokenizer: Any, template: Any = None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS, `generation_config.eos_token_id` (an int or a
    list, as Llama-3.1-Instruct's [128001, 128008, 128009]) and the chat template's end marker
    (`<|eot_id|>`, `<|im_end|>`), taken from `template` or else from the tokenizer's own chat template.
    Base Llama-3 repositories have `<|end_of_text|>` as EOS while their turns end at `<|eot_id|>`."""
    ids: list = [tokenizer.eos_token_id]
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(cfg, "eos_token_id", None)
        ids += eos if isinstance(eos, (list, tuple)) else [eos]
    if template is None and getattr(tokenizer, "chat_template", None):
        from safeft.templates import ChatTemplate

        template = ChatTemplate(tokenizer)
    end = getattr(template, "end_token_id", None)
    if callable(end):
        try:
            ids.append(end())
        except Exception as e:  # a template that cannot render a plain user/assistant pair
            log.warning("no end-of-turn marker from the chat template: %s", e)
    return sorted({int(i) for i in ids if i is not None})


class Engine:
    """One model replica: loads the model once, then runs generate or next-token jobs on prompt ids."""

    def __init__(self, model_path: Optional[str], settings: GenSettings, model: Any = None, tokenizer: Any = None):
        """Load `model_path`, or wrap an already loaded `model` and `tokenizer` (benchmarks)."""
        from transformers import AutoModelForCausalLM

        from safeft.model import load_tokenizer

        self.settings = settings
        self.device, self.gpus, kwargs = _placement(settings) if model is None else (None, [], {})
        self.tokenizer = tokenizer or load_tokenizer(model_path, settings.trust_remote_code)
        self.model = (model or AutoModelForCausalLM.from_pretrained(
            model_path, trust_remote_code=settings.trust_remote_code, **kwargs)).eval()
        if "device_map" not in kwargs and model is None:
            self.model.to(self.device)
        self.device = next(self.model.parameters()).device
        self.eos = self.tokenizer.eos_token_id
        self.end_ids = end_ids(self.model, self.tokenizer)  # generation stops at any of them
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self.engine = self._pick_engine(settings.engine)
        self.batch_tokens = self._token_budget()
        # The generate()/forward keyword of a KV cache: `cache` in newer transformers, `past_key_values` before
        import inspect

        params = inspect.signature(type(self.model).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.share_prefix = settings.share_prefix and ("cache" in params or "past_key_values" in params)
        self._prefix_caches: dict = {}

    def _token_budget(self) -> int:
        """`batch_tokens` capped by the KV bytes this replica may use (logged: it decides the batch sizes)."""
        import torch

        s, dtype = self.settings, next(self.model.parameters()).dtype
        per_token = kv_bytes_per_token(self.model.config, torch.finfo(dtype).bits // 8)
        cap = None if s.kv_cache_gb is None else s.kv_cache_gb * 2 ** 30
        if cap is None and self.device.type == "cuda":
            gpus = self.gpus or [self.device.index or 0]
            cap = KV_FREE_SHARE * sum(torch.cuda.mem_get_info(i)[0] for i in gpus)
        budget = token_budget(s.batch_tokens, per_token, cap)
        log.info("eval engine %s on %s: KV %d bytes/token, budget %d tokens per batch%s", self.engine,
                 self.device, per_token, budget, "" if cap is None else f" ({cap / 2 ** 30:.1f} GiB of KV)")
        return budget

    def _pick_engine(self, wanted: str) -> str:
        from safeft.errors import ConfigError

        has_cb = callable(getattr(self.model, "generate_batch", None))
        if wanted == "continuous" and not has_cb:
            raise ConfigError("config key 'eval.engine': 'continuous' needs transformers with model.generate_batch; "
                              "use 'budget' or 'auto'")
        if wanted == "continuous" and len(self.gpus) > 1:  # the paged cache is one tensor on one device
            raise ConfigError("config key 'eval.engine': 'continuous' serves one GPU per replica; "
                              "use 'budget' or 'auto' with eval.gpus_per_replica > 1")
        if wanted == "auto":
            return "continuous" if has_cb and self.device.type == "cuda" and len(self.gpus) <= 1 else "budget"
        return wanted

    # -- generation --------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new: int,
                 on_batch: Optional[Callable[[list[int], list[dict]], None]] = None) -> list[dict]:
        """Outputs in prompt order: {"tokens": [...], "completion": str}. `on_batch(positions, outputs)`
        runs after every finished batch (the shard writer)."""
        import torch

        if self.settings.do_sample:
            torch.manual_seed(self.settings.seed)
        if self.engine == "continuous":
            return self._generate_continuous(prompts, max_new, on_batch)
        out: list[Optional[dict]] = [None] * len(prompts)
        s = self.settings
        for batch in budget_batches([len(p) for p in prompts], max_new, self.batch_tokens, s.max_batch_size):
            results = self._generate_padded([prompts[i] for i in batch], max_new)
            for i, r in zip(batch, results):
                out[i] = r
            if on_batch:
                on_batch(batch, results)
        return out  # type: ignore[return-value]

    def _generate_padded(self, prompts: list[list[int]], max_new: int) -> list[dict]:
        """One left-padded batch. Prompts that share a long prefix (a test template's system prompt) have its
        keys and values computed once and copied into the batch's cache: only their own tokens are prefilled."""
        import torch

        prefix = shared_prefix(prompts) if self.share_prefix else 0
        ids, mask = prefix_pad(prompts, prefix, self.pad) if prefix else left_pad(prompts, self.pad)  # [B, L]
        width = ids.shape[1]
        s = self.settings
        kwargs: dict = {"max_new_tokens": max_new, "do_sample": s.do_sample, "eos_token_id": self.end_ids,
                        "pad_token_id": self.pad}
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if s.stop:
            kwargs.update(stop_strings=s.stop, tokenizer=self.tokenizer)
        with torch.no_grad():
            if prefix:
                kwargs[self.cache_arg] = self._prefix_cache(tuple(prompts[0][:prefix]), len(prompts))
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        return [self._finish(row[width:].tolist()) for row in gen.cpu()]  # gen: [B, L + new]

    def _prefix_cache(self, prefix: tuple, batch: int):
        """A fresh KV cache holding `prefix` (computed once per prefix, then copied) for a batch of `batch`."""
        import copy

        import torch

        if prefix not in self._prefix_caches:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            self._prefix_caches = {prefix: getattr(out, self.cache_arg)}  # one template at a time: keep the last
        cache = copy.deepcopy(self._prefix_caches[prefix])
        cache.batch_repeat_interleave(batch)
        return cache

    def _generate_continuous(self, prompts, max_new, on_batch) -> list[dict]:
        from transformers import GenerationConfig

        s = self.settings
        gc = GenerationConfig(max_new_tokens=max_new, do_sample=s.do_sample, eos_token_id=self.end_ids,
                              pad_token_id=self.pad, **({"temperature": s.temperature, "top_p": s.top_p}
                                                        if s.do_sample else {}))
        out: list[dict] = []
        # Chunks bound the work lost to a crash: each chunk is written to the shard when it finishes.
        chunk = max(1, s.max_batch_size * 4)
        for start in range(0, len(prompts), chunk):
            part = prompts[start: start + chunk]
            res = self.model.generate_batch(part, generation_config=gc, max_new_tokens=max_new)
            ordered = list(res.values())
            if len(ordered) != len(part) or any(r.error for r in ordered):
                raise RuntimeError(f"generate_batch returned {len(ordered)} of {len(part)} results or errors")
            results = [self._finish(list(r.generated_tokens)) for r in ordered]
            out += results
            if on_batch:
                on_batch(list(range(start, start + len(part))), results)
        return out

    def _finish(self, tokens: list[int]) -> dict:
        return finish_tokens(tokens, self.end_ids, self.tokenizer, self.settings.stop)

    # -- next-token probabilities (classifier judges) ----------------------------------------------
    def next_token_probs(self, prompts: list[list[int]], token_ids: list[int],
                         on_batch: Optional[Callable[[list[int], list[dict]], None]] = None) -> list[dict]:
        """Softmax over the next-token logits after each prompt, read at `token_ids`."""
        import torch

        out: list[Optional[dict]] = [None] * len(prompts)
        s = self.settings
        for batch in budget_batches([len(p) for p in prompts], 1, self.batch_tokens, s.max_batch_size):
            ids, mask = left_pad([prompts[i] for i in batch], self.pad)  # [B, L]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L] positions that ignore the left padding
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=pos.to(self.device)).logits[:, -1, :]  # [B, V]
            probs = torch.softmax(logits.float(), dim=-1)[:, token_ids].cpu()  # [B, len(token_ids)]
            results = [{"probs": row.tolist()} for row in probs]
            for i, r in zip(batch, results):
                out[i] = r
            if on_batch:
                on_batch(batch, results)
        return out  # type: ignore[return-value]


    # -- teacher-forced answer loss (the `answer-loss` task) ------------------------------------------
    def answer_nll(self, prompts: list[list[int]], labels: list[list[int]],
                   on_batch: Optional[Callable[[list[int], list[dict]], None]] = None) -> list[dict]:
        """Per sequence, the summed negative log-likelihood of its label tokens (labels != -100, aligned with
        the ids as the trainer's) and their count: the training loss, measured on held-out answers."""
        import torch

        out: list[Optional[dict]] = [None] * len(prompts)
        backbone = getattr(self.model, self.model.base_model_prefix)
        head = self.model.get_output_embeddings()
        for batch in budget_batches([len(p) for p in prompts], 0, self.batch_tokens, self.settings.max_batch_size):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)  # [B, L] right-padded
            target = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, L]
            mask = torch.zeros_like(ids)  # [B, L]
            for row, i in enumerate(batch):
                ids[row, :len(prompts[i])] = torch.tensor(prompts[i])
                target[row, :len(prompts[i])] = torch.tensor(labels[i])
                mask[row, :len(prompts[i])] = 1
            with torch.no_grad():
                hidden = backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                shifted = target[:, 1:].to(self.device)  # [B, L-1]: position t predicts token t+1
                keep = shifted != -100  # [B, L-1]
                logp = torch.log_softmax(head(hidden[:, :-1][keep]).float(), dim=-1)  # [N, V], N label tokens
                nll = -logp.gather(1, shifted[keep][:, None])[:, 0]  # [N]
                per_row = torch.zeros(len(batch), dtype=torch.float64, device=self.device)
                per_row.index_add_(0, keep.nonzero()[:, 0], nll.double())  # [B]
            counts = keep.sum(1).tolist()
            results = [{"nll_sum": float(v), "label_tokens": int(c)} for v, c in zip(per_row.cpu(), counts)]
            for i, r in zip(batch, results):
                out[i] = r
            if on_batch:
                on_batch(batch, results)
        return out  # type: ignore[return-value]


class Throughput:
    """A tqdm bar per replica with generated tokens/s in its postfix."""

    def __init__(self, total: int, desc: str, position: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, position=position, unit="prompt", leave=False, mininterval=1.0)
        self.tokens, self.t0 = 0, time.perf_counter()

    def update(self, prompts: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
        self.bar.update(prompts)

    def close(self) -> None:
        self.bar.close()
