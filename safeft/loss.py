"""The model-with-loss wrapper the DeepSpeed engine runs: response-only, summed token cross-entropy.

Returning the *sum* and the token count (not a mean) lets the trainer normalise by the number of label
tokens of the whole optimizer step over all ranks, so short and long documents weigh the same whatever
micro-batch they land in. The fused loss runs inside this forward because under ZeRO-3 the lm_head
weight is a 0-element shard outside a forward the engine runs.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from safeft.data.tokenize import IGNORE_INDEX


class CausalLMWithLoss(nn.Module):
    """`constrained=(betas, beta_rest)`: token-wise constrained SFT, weighted by the batch's `ref_logp`
    (see safeft.constrained); every forward then needs ref_logp."""

    def __init__(self, model: nn.Module, loss: str = "standard", zero_stage: int = 2,
                 constrained: Optional[tuple[Sequence[float], float]] = None):
        super().__init__()
        if loss not in ("standard", "fused"):
            raise ValueError(f"loss {loss!r}: expected 'standard' or 'fused'")
        self.model = model
        self.loss = loss
        self.constrained = (list(constrained[0]), float(constrained[1])) if constrained is not None else None
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
        """input_ids/position_ids/labels [B, T] (labels unshifted, -100 = no loss); token_weights and ref_logp
        [B, T] aligned with labels, or None.

        Returns (summed weighted token loss [], number of label tokens []).
        """
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                            use_cache=False, **varlen_kwargs)
        hidden = out.last_hidden_state[:, :-1]  # [B, T-1, H]: position t predicts token t+1
        targets = labels[:, 1:]  # [B, T-1]
        n_tokens = (targets != IGNORE_INDEX).sum()
        if self.loss == "fused" and self.constrained is None:
            # the cheapest path: the summed loss computes both gradients in its forward (3 GEMMs per chunk)
            from safeft.kernels import fused_linear_cross_entropy

            weights = token_weights[:, 1:] if token_weights is not None else None
            return fused_linear_cross_entropy(hidden, self.lm_head.weight, targets, ignore_index=IGNORE_INDEX,
                                              token_weights=weights, reduction="sum",
                                              grad_weight_dtype=torch.float32), n_tokens
        per_token = self._token_losses(hidden, targets)  # [B, T-1] fp32, 0 where no label
        if self.constrained is not None:
            if ref_logp is None:
                raise ValueError("constrained SFT needs ref_logp (the reference model's per-token log-probs)")
            token_weights = self._constrained_weights(per_token.detach(), labels, position_ids, ref_logp)
        if token_weights is not None:
            per_token = per_token * token_weights[:, 1:].to(per_token.dtype)
        return per_token.sum(), n_tokens

    def _token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss == "fused":
            from safeft.kernels import fused_linear_cross_entropy

            # per-token losses (constrained SFT needs them for its weights): logits recomputed in backward
            return fused_linear_cross_entropy(hidden, self.lm_head.weight, targets, ignore_index=IGNORE_INDEX,
                                              reduction="none", grad_weight_dtype=torch.float32)  # [B, T-1]
        logits = self.lm_head(hidden).float()  # [B, T-1, V]
        per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="none")  # [B*(T-1)]
        return per_token.view(targets.shape)

    def _constrained_weights(self, ce: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                             ref_logp: torch.Tensor) -> torch.Tensor:
        """token_weights [B, T] from the policy's detached per-token CE [B, T-1] (logp = -CE)."""
        from safeft.constrained import constrained_token_weights

        logp = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)  # [B, T], aligned with labels
        logp[:, 1:] = -ce
        batch = {"labels": labels, "position_ids": position_ids, "ref_logp": ref_logp}
        return constrained_token_weights(batch, logp, *self.constrained)
