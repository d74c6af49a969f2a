"""The trainer on one GPU: DeepSpeed ZeRO-2 (standard loss) and ZeRO-3 with partitioned parameters
(persistence threshold 0), the fused loss and gradient checkpointing; checkpoint, export, reload.

ZeRO-3 + fused + checkpointing must follow ZeRO-2 + standard step by step (same data, same seed, bf16),
and the export must reload as the trained model. torch's AdamW (`torch_adam`) keeps DeepSpeed's
FusedAdam JIT build (nvcc) out of the check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from helpers import REPO

pytestmark = pytest.mark.gpu
STEPS = 6


def _ds_json(path, stage: int) -> str:
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:  # every parameter is partitioned, gathered and released (tiny tensors would stay resident)
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
    cfg = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
           "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
           "zero_optimization": zero, "optimizer": {"type": "AdamW", "params": {"torch_adam": True}},
           "steps_per_print": 10 ** 9}
    path.write_text(json.dumps(cfg))
    return str(path)


def _train(tmp, model_dir, name, stage, **train) -> str:
    cfg = {"model": {"name_or_path": model_dir, "dtype": "bfloat16", "gradient_checkpointing": stage == 3},
           "data": {"preset": "synthetic", "limit": 96, "max_seq_len": 256, "num_proc": 1,
                    "cache_dir": str(tmp / "data"), "seed": 7},
           "template": {"train": "chat:vanilla", "test": ["chat:llama"]},
           "train": {"max_steps": STEPS, "save_steps": 3, "lr": 1e-3, "warmup_steps": 1, "precision": "bf16",
                     "zero_stage": stage, "deepspeed_config": _ds_json(tmp / f"{name}.json", stage), **train},
           "output": {"dir": str(tmp / "runs"), "name": name, "tensorboard": False}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "safeft.train", str(path)], cwd=REPO, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert r.returncode == 0, f"{name}:\n{r.stdout[-6000:]}"
    return str(tmp / "runs" / name)


def _losses(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "logs", "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("gpu-train")
    return {"z2": _train(tmp, tiny_model_dir, "z2", 2), "z3f": _train(tmp, tiny_model_dir, "z3f", 3, loss="fused"),
            "base": tiny_model_dir}


def test_zero3_fused_checkpointed_follows_zero2(runs):
    a, b = _losses(runs["z2"]), _losses(runs["z3f"])
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=3e-2), (a, b)  # bf16: same data, same seed, different reductions
    assert a[-1] < a[0]


@pytest.mark.parametrize("name", ["z2", "z3f"])
def test_checkpoint_export_and_reload(runs, name):
    import torch
    from transformers import AutoModelForCausalLM

    run = runs[name]
    ckpt = os.path.join(run, "checkpoints")
    assert os.path.isfile(os.path.join(ckpt, "latest")), os.listdir(run)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(run, "export"), dtype=torch.float32).cuda()
    tensors = dict(model.named_parameters())
    assert tensors and all(p.numel() > 0 and p.abs().sum() > 0 for p in tensors.values())
    ids = torch.arange(4, 40, device="cuda")[None]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    initial = AutoModelForCausalLM.from_pretrained(runs["base"], dtype=torch.float32)
    moved = [n for n, p in initial.named_parameters() if not torch.equal(p, tensors[n].detach().cpu())]
    assert moved, "the export equals the untrained model"
