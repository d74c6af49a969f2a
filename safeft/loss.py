"""The model-with-loss wrapper the DeepSpeed engine runs: response-only, summed token cross-entropy.

Returning the *sum* and the token count (not a mean) lets the trainer normalise by the number of label
tokens of the whole optimizer step over all ranks, so short and long documents weigh the same whatever
micro-batch they land in. The fused loss runs inside this forward because under ZeRO-3 the lm_head
weight is a 0-element shard outside a forward the engine runs.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from safeft.data.tokenize import IGNORE_INDEX


class CausalLMWithLoss(nn.Module):
    def __init__(self, model: nn.Module, loss: str = "standard", zero_stage: int = 2,
                 constrained: Optional[tuple[list[float], float]] = None):
        super().__init__()
        if loss not in ("standard", "fused"):
            raise ValueError(f"loss {loss!r}: expected 'standard' or 'fused'")
        self.model = model
        self.loss = loss
        self.constrained = constrained  # (betas, beta_rest) for train.method: constrained (safeft/constrained.py)
        if loss == "fused" and zero_stage == 3:
            import deepspeed

            # We read lm_head.weight without calling lm_head: tell ZeRO-3 to gather it for our forward.
            deepspeed.zero.register_external_parameter(self, self.lm_head.weight)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, self.model.base_model_prefix)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor,
                token_weights: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None,
                **varlen_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids/position_ids/labels [B, T] (labels unshifted, -100 = no loss); token_weights [B, T] or None;
        ref_logp [B, T]: the reference model's label log-probs, needed when self.constrained is set.

        Returns (summed weighted token loss [], number of label tokens []).
        """
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                            use_cache=False, **varlen_kwargs)
        hidden = out.last_hidden_state[:, :-1]  # [B, T-1, H]: position t predicts token t+1
        targets = labels[:, 1:]  # [B, T-1]
        weights = token_weights[:, 1:] if token_weights is not None else None
        n_tokens = (targets != IGNORE_INDEX).sum()
        if self.constrained is not None:
            return self._constrained_loss(hidden, input_ids, position_ids, labels, ref_logp, weights), n_tokens
        if self.loss == "fused":
            from safeft.kernels import fused_linear_cross_entropy

            flat_w = weights.reshape(-1) if weights is not None else None
            total = fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight,
                                               targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                               token_weights=flat_w, reduction="sum")
            return total, n_tokens
        logits = self.lm_head(hidden).float()  # [B, T-1, V]
        per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="none")  # [B*(T-1)]
        if weights is not None:
            per_token = per_token * weights.reshape(-1).to(per_token.dtype)
        return per_token.sum(), n_tokens

    def _constrained_loss(self, hidden, input_ids, position_ids, labels, ref_logp, weights) -> torch.Tensor:
        """sum(w * CE) with w = the token-wise constrained SFT weights (times token_weights, if any)."""
        from safeft.constrained import constrained_token_weights

        if ref_logp is None:
            raise ValueError("train.method 'constrained' needs ref_logp in every batch (ConstrainedCollator)")
        targets = labels[:, 1:]  # [B, T-1]
        if self.loss == "fused":
            from safeft.kernels import fused_linear_cross_entropy

            per_token = fused_linear_cross_entropy(hidden, self.lm_head.weight, targets, ignore_index=IGNORE_INDEX,
                                                   reduction="none")  # [B, T-1], differentiable
        else:
            logits = self.lm_head(hidden).float()  # [B, T-1, V]
            per_token = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                    reduction="none")  # [B, T-1]
        logp = nn.functional.pad(-per_token.detach(), (1, 0))  # [B, T], aligned with labels
        betas, beta_rest = self.constrained
        batch = {"labels": labels, "position_ids": position_ids, "ref_logp": ref_logp}
        w = constrained_token_weights(batch, logp, betas, beta_rest)[:, 1:]  # [B, T-1]
        if weights is not None:
            w = w * weights.float()
        return (w * per_token).sum()
