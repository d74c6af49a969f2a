"""The loss wrapper under ZeRO-3: the fused loss gathers lm_head.weight for itself only (review finding 19).

Correctness of the fused path under ZeRO-3 (2 ranks = 1 rank with accumulation) is in tests/test_train.py;
this checks where the weight is resident. Registered as an external parameter of the root wrapper, it was
gathered at the wrapper's first hook and held through the whole backbone forward and backward (2.1 GB for
Llama-3-70B); registered on the FusedLossHead, it is gathered around the head only.
"""

from __future__ import annotations

import json

import pytest

from helpers import launch, without_warnings

# DeepSpeed's prefetcher and reuse window would keep every tensor of a tiny model gathered; both are off
# so that what is resident is what the hooks ask for.
RANK_SCRIPT = '''
import json, sys
import deepspeed, torch
from safeft.config import ModelConfig
from safeft.loss import CausalLMWithLoss
from safeft.model import load_model

deepspeed.init_distributed(dist_backend="gloo")
ds = {"train_micro_batch_size_per_gpu": 1, "steps_per_print": 10**9,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                            "stage3_prefetch_bucket_size": 0, "stage3_max_reuse_distance": 0}}
model, keepalive = load_model(ModelConfig(name_or_path=sys.argv[1], dtype="float32"), 3, ds)
wrapped = CausalLMWithLoss(model, "fused", 3)
engine, *_ = deepspeed.initialize(model=wrapped, model_parameters=list(wrapped.parameters()), config=ds,
                                  optimizer=torch.optim.AdamW(wrapped.parameters(), lr=1e-3))
weight = model.get_output_embeddings().weight
seen = {"forward": [], "backward": [], "loss": []}
last = model.model.layers[-1]
last.register_forward_hook(lambda *a: seen["forward"].append(weight.ds_status.name))
last.register_full_backward_hook(lambda *a: seen["backward"].append(weight.ds_status.name))
torch.manual_seed(0)
ids = torch.randint(5, 100, (1, 24))  # [B=1, T=24]
for step in range(3):
    loss, n = engine(ids, torch.arange(24)[None], ids)
    engine.backward(loss)
    engine.step()
    seen["loss"].append(float(loss))
if torch.distributed.get_rank() == 0:
    print("RESIDENCY " + json.dumps(seen))
'''


@pytest.mark.slow
def test_zero3_fused_loss_gathers_lm_head_only_around_the_head(tiny_model_dir, tmp_path):
    script = tmp_path / "residency.py"
    script.write_text(RANK_SCRIPT)
    results = launch([str(script), tiny_model_dir], 2, timeout=300)
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank}:\n" + without_warnings(r.stdout)[-4000:]
    line = next(x for x in results[0].stdout.splitlines() if x.startswith("RESIDENCY "))
    seen = json.loads(line[len("RESIDENCY "):])
    # the last decoder layer runs (forward and backward) while lm_head.weight is still a shard
    assert seen["forward"] == ["NOT_AVAILABLE"] * 3, seen
    assert seen["backward"] == ["NOT_AVAILABLE"] * 3, seen
    assert seen["loss"][2] < seen["loss"][0]  # and the head's weight is still trained
