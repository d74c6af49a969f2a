"""The model-with-loss wrapper the DeepSpeed engine runs: response-only, summed token cross-entropy.

Returning the *sum* and the token count (not a mean) lets the trainer normalise by the number of label
tokens of the whole optimizer step over all ranks, so short and long documents weigh the same whatever
micro-batch they land in. The fused loss runs inside this forward (in its own FusedLossHead module)
because under ZeRO-3 the lm_head weight is a 0-element shard outside a forward the engine runs.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from safeft.data.tokenize import IGNORE_INDEX


class FusedLossHead(nn.Module):
    """The fused loss as a module of its own. Under ZeRO-3, lm_head.weight is registered as this module's
    external parameter, so DeepSpeed gathers it around this module's forward and backward and releases it
    after each; registered on the wrapper instead, the weight would stay gathered from the wrapper's first
    hook to the end of the step (2.1 GB for Llama-3-70B). The weight is read through `weight_of`, not held as
    a submodule: the checkpoint and export keys stay those of the HF model."""

    def __init__(self, weight_of):
        super().__init__()
        self.weight_of = weight_of  # a function, not a module: adds no parameter or state_dict key

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, token_weights: Optional[torch.Tensor],
                reduction: str) -> torch.Tensor:
        """hidden [B, T-1, H], targets [B, T-1] -> the summed loss [] ("sum") or per-token losses [B, T-1]."""
        from safeft.kernels import fused_linear_cross_entropy

        return fused_linear_cross_entropy(hidden, self.weight_of(), targets, ignore_index=IGNORE_INDEX,
                                          token_weights=token_weights, reduction=reduction,
                                          grad_weight_dtype=torch.float32)


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
        self.head = FusedLossHead(self._lm_head_weight) if loss == "fused" else None
        if self.head is not None and zero_stage == 3:
            import deepspeed

            # The head reads lm_head.weight without calling lm_head: ZeRO-3 gathers it for the head only.
            deepspeed.zero.register_external_parameter(self.head, self.lm_head.weight)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def _lm_head_weight(self) -> torch.Tensor:  # a bound method: a deepcopy of the wrapper reads its own copy
        return self.lm_head.weight

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
        if self.head is not None and self.constrained is None:
            # the cheapest path: the summed loss computes both gradients in its forward (3 GEMMs per chunk)
            weights = token_weights[:, 1:] if token_weights is not None else None
            return self.head(hidden, targets, weights, "sum"), n_tokens
        per_token = self._token_losses(hidden, targets)  # [B, T-1] fp32, 0 where no label
        if self.constrained is not None:
            if ref_logp is None:
                raise ValueError("constrained SFT needs ref_logp (the reference model's per-token log-probs)")
            token_weights = self._constrained_weights(per_token.detach(), labels, position_ids, ref_logp)
        if token_weights is not None:
            per_token = per_token * token_weights[:, 1:].to(per_token.dtype)
        return per_token.sum(), n_tokens

    def _token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            # per-token losses (constrained SFT needs them for its weights): logits recomputed in backward
            return self.head(hidden, targets, None, "none")  # [B, T-1]
        # Logits only where there is a label: prompts (a third to a half of chat SFT tokens) never need the
        # vocabulary projection, its fp32 softmax or their gradients. Same loss and gradients as the full logits.
        mask = targets != IGNORE_INDEX  # [B, T-1]
        logits = self.lm_head(hidden[mask]).float()  # [N, V], N = label tokens
        per_token = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)  # [B, T-1]
        per_token[mask] = nn.functional.cross_entropy(logits, targets[mask], reduction="none")
        return per_token

    def _constrained_weights(self, ce: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                             ref_logp: torch.Tensor) -> torch.Tensor:
        """token_weights [B, T] from the policy's detached per-token CE [B, T-1] (logp = -CE)."""
        from safeft.constrained import constrained_token_weights

        logp = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)  # [B, T], aligned with labels
        logp[:, 1:] = -ce
        batch = {"labels": labels, "position_ids": position_ids, "ref_logp": ref_logp}
        return constrained_token_weights(batch, logp, *self.constrained)
