"""Token-wise constrained SFT (`train.method: constrained`; Qi et al. 2024, "Safety Alignment Should Be
Made More Than Just a Few Tokens Deep").

Per response token t the objective is `-(2/beta_t) * log sigmoid(beta_t * (logp_t - ref_logp_t))`, ref =
the model before fine-tuning. Its gradient is `w_t * grad(CE_t)` with `w_t = 2 * (1 - sigmoid(beta_t *
delta_t))` taken as a constant, so training stays a weighted token cross-entropy: the trainer passes `w`
as `token_weights` to the ordinary (or fused) loss. At step 0 (policy == reference) every w_t is 1, so the
loss equals plain SFT; tokens whose probability rose above the reference get less and less weight.
beta is large (2.0) on a response's first tokens, which keeps the safety-critical opening close to the
aligned model, and small (0.1) afterwards, which lets the rest learn the task.

Reference log-probs are computed once, in a no-grad pass over the packed training rows, and stored next
to the packed data set (a `ref_logp` column aligned with `labels`), so training never holds a second model.

Alignment convention: every per-token tensor here is aligned with the *unshifted* labels [B, T]:
position t holds the value for predicting labels[t] from the logits at t-1 (0 where labels[t] is -100).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Sequence

import torch

from safeft.data.tokenize import IGNORE_INDEX

DEFAULT_BETAS = (0.5, 2.0, 2.0, 2.0, 2.0)
DEFAULT_BETA_REST = 0.1
MIN_WEIGHT = 1e-3


def beta_schedule(labels: torch.Tensor, position_ids: torch.Tensor, betas: Sequence[float] = DEFAULT_BETAS,
                  beta_rest: float = DEFAULT_BETA_REST) -> torch.Tensor:
    """beta [B, T] fp32 for labels/position_ids [B, T] of packed rows (positions restart at 0 per document).

    The k-th label token (label != -100) of a document gets betas[k] (k from 0), later ones beta_rest;
    counting runs over the whole document, so in a multi-turn document the second answer continues where
    the first stopped. Non-label positions get 0 (they carry no loss).
    """
    is_label = labels != IGNORE_INDEX  # [B, T]
    seen = torch.cumsum(is_label.long(), dim=-1)  # label tokens up to and including t, over the whole row
    # label tokens before each document's start, carried forward over the document (non-decreasing: cummax)
    before_doc = torch.where(position_ids == 0, seen - is_label.long(), torch.zeros_like(seen))
    before_doc = torch.cummax(before_doc, dim=-1).values
    k = (seen - before_doc - 1).clamp(min=0)  # [B, T] index of the label token inside its document
    table = torch.tensor(list(betas) + [beta_rest], dtype=torch.float32, device=labels.device)
    beta = table[k.clamp(max=len(betas))]
    return torch.where(is_label, beta, torch.zeros_like(beta))


def constrained_weights(logp: torch.Tensor, ref_logp: torch.Tensor, beta: torch.Tensor,
                        min_weight: float = MIN_WEIGHT) -> torch.Tensor:
    """w = clamp(2 * (1 - sigmoid(beta * (logp - ref_logp))), min=min_weight), detached fp32, same shape."""
    delta = logp.detach().float() - ref_logp.detach().float()
    return (2.0 * torch.sigmoid(-beta.float() * delta)).clamp(min=min_weight)  # 1 - sigmoid(x) = sigmoid(-x)


def constrained_objective(logp: torch.Tensor, ref_logp: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The per-token objective -(2/beta) log sigmoid(beta (logp - ref)), differentiable in logp (for logging)."""
    beta = beta.float()
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(beta * (logp.float() - ref_logp.float()))


def constrained_token_weights(batch: dict, logp: torch.Tensor, betas: Sequence[float] = DEFAULT_BETAS,
                              beta_rest: float = DEFAULT_BETA_REST) -> torch.Tensor:
    """token_weights [B, T] for a collated batch (labels, position_ids, ref_logp [B, T]) and the current
    policy's per-token log-probs logp [B, T] (aligned with labels; detached). 0 at non-label positions.

    The trainer computes logp in the micro-batch's forward pass (e.g. `-fused_linear_cross_entropy(...,
    reduction="none")`), then the loss `sum(token_weights * CE)` (see the module docstring).
    """
    labels = batch["labels"]
    beta = beta_schedule(labels, batch["position_ids"], betas, beta_rest)
    weights = constrained_weights(logp, batch["ref_logp"].to(logp.device), beta)
    return torch.where(labels != IGNORE_INDEX, weights, torch.zeros_like(weights))


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """logp [B, T] fp32 of labels [B, T] under logits [B, T, V] (position t-1 predicts labels[t]); 0 where no label.

    Works through `chunk` positions at a time so only [B, chunk, V] is ever upcast to fp32.
    """
    out = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)  # [B, T]
    targets = labels[:, 1:]  # [B, T-1]
    for s in range(0, targets.shape[1], chunk):
        tgt = targets[:, s:s + chunk]  # [B, c]
        logp = torch.log_softmax(logits[:, s:s + chunk].float(), dim=-1)  # [B, c, V]
        picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, c]
        out[:, 1 + s:1 + s + chunk] = torch.where(tgt != IGNORE_INDEX, picked, 0.0)
    return out


def compute_reference_logprobs(model: Any, dataset: Any, batch_size: int = 1, pad_token_id: int = 0,
                               rank: int = 0, world_size: int = 1, progress: bool = True) -> dict[int, list[float]]:
    """{row index: ref_logp list aligned with that row's labels} for rows rank, rank+world, ... of `dataset`.

    `dataset` holds packed rows (input_ids, labels, position_ids). `batch_size` rows are flattened into
    one packed sequence (PackedCollator); the model sees position_ids and no attention mask, so documents
    never attend to each other. The model's own forward produces the logits: under ZeRO-3 pass the
    engine's module, whose forward gathers the sharded lm_head. Run by every rank (sharded by row index)
    then `gather_reference_logprobs`, or by rank 0 alone with world_size=1.
    """
    from tqdm.auto import tqdm

    from safeft.data.pack import PackedCollator

    collate = PackedCollator(pad_token_id)
    device = next(model.parameters()).device
    indices: list[Optional[int]] = list(range(rank, len(dataset), world_size))
    # Under ZeRO-3 every forward is a collective (parameter all-gathers): every rank must run the same
    # number of forwards, so the shorter shards are padded with dummy rows (None) whose results are dropped.
    indices += [None] * (-(-len(dataset) // world_size) - len(indices))
    result: dict[int, list[float]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in tqdm(range(0, len(indices), batch_size), desc="reference log-probs", disable=not progress):
                idx = indices[s:s + batch_size]
                rows = [dataset[i] if i is not None else None for i in idx]
                batch = collate(rows)  # a None row becomes one pad token
                logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                               attention_mask=None, use_cache=False).logits  # [1, T, V]
                logp = token_logprobs(logits, batch["labels"].to(device))[0].cpu()  # [T]
                offset = 0
                for i, row in zip(idx, rows):
                    n = len(row["input_ids"]) if row is not None else 1
                    if i is not None:
                        result[i] = logp[offset:offset + n].tolist()
                    offset += n
    finally:
        model.train(was_training)
    return result


def gather_reference_logprobs(local: dict[int, list[float]], n_rows: int) -> Optional[list[list[float]]]:
    """All ranks' shards as one list in row order on rank 0 (None on the other ranks); needs torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local[i] for i in range(n_rows)]
    shards: list[Optional[dict]] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, local)
    if dist.get_rank() != 0:
        return None
    merged = {i: v for shard in shards for i, v in shard.items()}
    return [merged[i] for i in range(n_rows)]


def reference_key(model_id: str, data_fingerprint: str, dtype: Any) -> str:
    """Cache key of one reference pass: the model, the packed data and the precision it ran in."""
    return hashlib.sha256(f"{model_id}|{data_fingerprint}|{dtype}".encode()).hexdigest()[:16]


def reference_path(packed_path: str, key: str) -> str:
    """Where the ref_logp set for `key` lives: beside the packed data set directory."""
    return os.path.join(os.path.dirname(os.path.abspath(packed_path)), f"ref_logp-{key}")


def ensure_reference_logprobs(model: Any, dataset: Any, packed_path: str, key: str, batch_size: int = 1,
                              pad_token_id: int = 0, rank: int = 0, world_size: int = 1) -> str:
    """Compute (sharded over ranks) and save the ref_logp set once; return its path. Cached by `key`.

    Every rank must call it (it gathers and synchronises when world_size > 1); rank 0 writes atomically.
    """
    import datasets

    from safeft.io import atomic_path

    path = reference_path(packed_path, key)
    if not os.path.isdir(path):
        local = compute_reference_logprobs(model, dataset, batch_size, pad_token_id, rank, world_size,
                                           progress=rank == 0)
        rows = gather_reference_logprobs(local, len(dataset)) if world_size > 1 else [local[i] for i in range(len(dataset))]
        if rank == 0:
            features = datasets.Features({"ref_logp": datasets.Sequence(datasets.Value("float32"))})
            with atomic_path(path) as tmp:
                datasets.Dataset.from_dict({"ref_logp": rows}, features=features).save_to_disk(tmp)
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    return path


def attach_reference_logprobs(dataset: Any, path: str) -> Any:
    """The packed dataset with a `ref_logp` column from `path` (row-aligned; lengths checked)."""
    import datasets

    from safeft.errors import DataError

    ref = datasets.load_from_disk(path)
    if len(ref) != len(dataset):
        raise DataError(f"reference log-probs {path!r} have {len(ref)} rows, the packed data {len(dataset)}: "
                        "delete that directory to recompute it")
    return datasets.concatenate_datasets([dataset, ref], axis=1)


class ConstrainedCollator:
    """Wraps a PackedCollator: also flattens `ref_logp` into a [1, T] fp32 tensor (a padding slot -> 0.0)."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, rows: Sequence[Optional[dict]]) -> dict:
        batch = self.base(rows)
        ref: list[float] = []
        for row in rows:
            ref.extend(row["ref_logp"] if row is not None else [0.0])
        batch["ref_logp"] = torch.tensor(ref, dtype=torch.float32)[None]
        if batch["ref_logp"].shape != batch["labels"].shape:
            raise ValueError(f"ref_logp {tuple(batch['ref_logp'].shape)} does not match labels "
                             f"{tuple(batch['labels'].shape)}: the reference set belongs to other packed data")
        return batch


__all__ = [
    "beta_schedule", "constrained_weights", "constrained_objective", "constrained_token_weights", "token_logprobs",
    "compute_reference_logprobs", "gather_reference_logprobs", "reference_key", "reference_path",
    "ensure_reference_logprobs", "attach_reference_logprobs", "ConstrainedCollator",
]


def reference_loader(cfg: Any, hf_model: Any, rows: Any, prepared: Any, env: Any, pad_token_id: int, sampler: Any,
                     dtype: Any) -> Any:
    """The trainer's DataLoader for train.method 'constrained': rows with ref_logp, ConstrainedCollator.

    Call after deepspeed.initialize (under ZeRO-3 the engine's hooks then gather the weights in hf_model's
    forward), before the first step: hf_model is still the model before fine-tuning.
    """
    from safeft.data.pack import PackedCollator, PackedRows

    key = reference_key(str(cfg.model.name_or_path) + f"@{cfg.model.revision}", prepared.fingerprint, dtype)
    path = ensure_reference_logprobs(hf_model, rows, prepared.path, key, cfg.train.micro_batch_size, pad_token_id,
                                     env.rank, env.world_size)
    with_ref = attach_reference_logprobs(rows, path)
    return torch.utils.data.DataLoader(PackedRows(with_ref), batch_sampler=sampler,
                                       collate_fn=ConstrainedCollator(PackedCollator(pad_token_id)), num_workers=0)
