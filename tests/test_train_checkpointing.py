"""Gradient checkpointing is really on when `model.gradient_checkpointing: true` (the model is loaded by
`load_model`, the trainer's own loader): layers recompute in backward, peak memory falls, the loss is the same."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO, cpu_env

# One process measures both settings. Large blocks are mmap'ed (MALLOC_MMAP_THRESHOLD_), so freed
# activations go back to the OS and each setting's peak RSS (VmHWM, reset through clear_refs) is its own.
SCRIPT = r"""
import json, sys
import torch
from types import SimpleNamespace
from safeft.loss import CausalLMWithLoss
from safeft.model import load_model

def rss_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

def run(checkpointing):
    mcfg = SimpleNamespace(name_or_path=sys.argv[1], revision=None, trust_remote_code=False,
                           gradient_checkpointing=checkpointing)
    model, _ = load_model(mcfg, 2, None, torch.float32, "sdpa")
    calls = []
    for layer in model.model.layers:  # the MLP inside each checkpointed layer: its forward reruns in backward
        layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    wrapped = CausalLMWithLoss(model, "standard")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (1, int(sys.argv[2])), generator=g)  # [1, T]
    pos = torch.arange(ids.shape[1])[None]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    before = rss_kib("VmRSS:")
    loss, _ = wrapped(input_ids=ids, position_ids=pos, labels=ids)
    loss.backward()
    peak = rss_kib("VmHWM:") - before
    grad = model.model.layers[0].mlp.down_proj.weight.grad.clone()
    return {"loss": float(loss), "peak_kib": peak, "layer_calls": len(calls), "grad_sum": float(grad.abs().sum()),
            "training": model.training}

print("RESULT", json.dumps({"off": run(False), "on": run(True)}))
"""


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory):
    from safeft.tiny import tiny_llama

    path = tmp_path_factory.mktemp("deep") / "model"
    tiny_llama(512, layers=16, hidden=128, heads=4, kv_heads=2, intermediate=344, max_positions=4096).save_pretrained(
        path, safe_serialization=True)
    return str(path)


@pytest.mark.slow
def test_gradient_checkpointing_recomputes_and_saves_memory(deep_model_dir):
    """16 layers at 2048 tokens: every layer runs twice (forward + recompute), peak RSS of forward+backward is
    at least 20% lower, loss and gradients are identical. Before the fix the model stayed in eval mode."""
    layers = 16
    out = subprocess.run([sys.executable, "-c", SCRIPT, deep_model_dir, "2048"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=cpu_env(MALLOC_MMAP_THRESHOLD_="65536"))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:])
    off, on = res["off"], res["on"]
    assert off["training"] and on["training"], res
    assert off["layer_calls"] == layers and on["layer_calls"] == 2 * layers, res
    assert on["loss"] == off["loss"] and on["grad_sum"] == pytest.approx(off["grad_sum"], rel=1e-6)
    assert on["peak_kib"] <= 0.8 * off["peak_kib"], res


def test_checkpointing_that_no_layer_takes_up_fails_at_setup_naming_the_key(tiny_model_dir, monkeypatch):
    """The setup check's failing path: a model whose layers never checkpoint (here: enabling it is a no-op, as
    for an architecture without support) stops load_model with the config key, not a run without it."""
    import torch
    from transformers import PreTrainedModel

    from safeft.errors import SafeftError
    from safeft.model import load_model

    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", lambda self, **kw: None)
    mcfg = SimpleNamespace(name_or_path=tiny_model_dir, revision=None, trust_remote_code=False,
                           gradient_checkpointing=True)
    with pytest.raises(SafeftError, match=r"config key 'model\.gradient_checkpointing': LlamaForCausalLM has no layer"):
        load_model(mcfg, 2, None, torch.float32, "sdpa")
    mcfg.gradient_checkpointing = False
    model, _ = load_model(mcfg, 2, None, torch.float32, "sdpa")
    assert model.training  # without the option the same model loads, in train mode


def test_checkpoints_are_dropped_only_once_the_export_is_complete(tmp_path):
    """train.keep_checkpoints: false (drop_after_export, called by sweeps and `safeft train`): an unfinished
    export (no safeft_run.json, the file its renamed directory always holds) keeps the checkpoints that could
    rebuild it."""
    from safeft.config import config_from_dict
    from safeft.train.checkpoint import drop_after_export

    run = tmp_path / "r"
    (run / "checkpoints" / "step00000004").mkdir(parents=True)
    (run / "export").mkdir()
    keep = config_from_dict({"output": {"dir": str(tmp_path), "name": "r"}})
    drop = config_from_dict({"output": {"dir": str(tmp_path), "name": "r"}, "train": {"keep_checkpoints": False}})
    assert drop_after_export(drop) is None and (run / "checkpoints").is_dir()  # export incomplete
    (run / "export" / "safeft_run.json").write_text("{}")
    assert drop_after_export(keep) is None and (run / "checkpoints").is_dir()  # the default keeps them
    assert drop_after_export(drop) == str(run / "checkpoints") and not (run / "checkpoints").exists()
    assert (run / "export" / "safeft_run.json").is_file()
