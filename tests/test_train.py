"""The DeepSpeed trainer: rank/accumulation equivalence under stage 0, ZeRO-2 and ZeRO-3, exact resume, export,
NaN stop.

The multi-process runs are shared by several tests through module fixtures: a 1-rank run with gradient
accumulation 2 is the reference; 2 ranks with different data per rank must give the same losses and weights.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from helpers import STEPS, launch, losses, partitioned, train_ok, write_config

def export_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "export", "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Reference (1 rank, accumulation 2), then 2 ranks: stage 0 (no ZeRO), ZeRO-2, ZeRO-3, ZeRO-3 + fused loss,
    ZeRO-3 + offload.

    The ZeRO-3 runs set the persistence threshold to 0: with DeepSpeed's default (1e5) no tensor of the tiny
    model would be partitioned, and loading, gathering, export and resume would run on whole parameters.
    """
    base = tmp_path_factory.mktemp("train")
    cache, out = base / "data", base / "runs"
    z3 = dict(zero_stage=3, zero3_param_persistence_threshold=0)
    cfgs = {
        "ref": write_config(base / "ref.yaml", tiny_model_dir, cache, out, "ref", gradient_accumulation_steps=2),
        # stage 0: whole fp32 optimizer on each rank, gradients accumulated in place, all-reduced once per step
        "z0": write_config(base / "z0.yaml", tiny_model_dir, cache, out, "z0", zero_stage=0),
        "z2": write_config(base / "z2.yaml", tiny_model_dir, cache, out, "z2", zero_stage=2),
        "z3": write_config(base / "z3.yaml", tiny_model_dir, cache, out, "z3", **z3),
        # fused loss under ZeRO-3: lm_head.weight is a 0-element shard unless gathered for our forward
        "z3f": write_config(base / "z3f.yaml", tiny_model_dir, cache, out, "z3f", loss="fused", **z3),
        # parameters and optimizer offloaded to the CPU (DeepSpeedCPUAdam instead of torch's AdamW)
        "z3off": write_config(base / "z3off.yaml", tiny_model_dir, cache, out, "z3off", offload="all", **z3),
    }
    stdout = {k: train_ok(cfgs[k], 1 if k == "ref" else 2) for k in cfgs}
    return {"base": base, "cfgs": cfgs, "stdout": stdout, **{k: out / k for k in cfgs}}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["z0", "z2", "z3", "z3f", "z3off"])
def test_two_ranks_equal_one_rank_with_accumulation(runs, stage):
    import torch

    ref, got = losses(runs["ref"]), losses(runs[stage])
    if stage.startswith("z3"):  # really sharded: loading, gathering and the export below ran on partitions
        sharded, total = partitioned(runs["stdout"][stage])
        assert sharded == total > 0
    assert sorted(ref) == list(range(1, STEPS + 1)) == sorted(got)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-4), (step, got, ref)
    assert ref[STEPS] < ref[1]  # it learns: the comparison is not between two untrained models
    w_ref, w_got = export_weights(runs["ref"]), export_weights(runs[stage])
    assert w_ref.keys() == w_got.keys()
    for k in w_ref:
        torch.testing.assert_close(w_got[k], w_ref[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["ref", "z3"])
def test_export_reloads_with_the_trained_weights(runs, tmp_path, source):
    """The export equals the engine's final fp32 weights (from the checkpoint), logits and all; offline too.

    "z3": every parameter was partitioned over 2 ranks and gathered one unit at a time for the export."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    run_dir = runs[source]
    record = json.load(open(run_dir / "export" / "safeft_run.json"))
    assert record["train_template"] == "chat:vanilla" and record["test_template"] == "chat:llama"
    assert record["step"] == STEPS and record["data_fingerprint"]
    assert record["config"]["train"]["zero_stage"] == (2 if source == "ref" else 3)
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export", dtype=torch.float32).eval()
    engine_state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "export", dtype=torch.float32).eval()
    trained.load_state_dict({k.removeprefix("model."): v for k, v in engine_state.items()})
    base = AutoModelForCausalLM.from_pretrained(json.load(open(run_dir / "checkpoints" / "safeft_run.json"))
                                                ["base_model"], dtype=torch.float32).eval()
    ids = torch.arange(5, 45)[None]
    with torch.no_grad():
        got, want, before = (m(ids).logits for m in (exported, trained, base))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (got - before).abs().max() > 1e-3  # training changed the model

    from safeft.cli import main

    assert main(["export", str(run_dir / "checkpoints"), str(tmp_path / "offline"), "--dtype", "float32"]) == 0
    from safetensors.torch import load_file

    offline = load_file(tmp_path / "offline" / "model.safetensors")
    for k, v in export_weights(run_dir).items():
        torch.testing.assert_close(offline[k], v, atol=0, rtol=0, msg=k)
    assert json.load(open(tmp_path / "offline" / "safeft_run.json"))["step"] == STEPS
    # the end-of-turn ids travel through the checkpoint's hf/ folder into the offline export
    for d in (run_dir / "checkpoints" / "hf", tmp_path / "offline"):
        assert (json.load(open(d / "generation_config.json"))["eos_token_id"]
                == json.load(open(run_dir / "export" / "generation_config.json"))["eos_token_id"])


@pytest.mark.slow
def test_stage0_checkpoint_exports_offline_and_needs_no_conversion(runs, tmp_path):
    """A stage-0 checkpoint has no ZeRO partition files: the offline export reads its fp32 module state and
    equals the in-job export; converting it to the universal format is refused as needless."""
    import torch
    from safetensors.torch import load_file

    from safeft.cli import main
    from safeft.errors import SafeftError
    from safeft.train.checkpoint import to_universal

    ckpts = runs["z0"] / "checkpoints"
    assert not list((ckpts / f"step{STEPS:08d}").glob("*_optim_states.pt"))  # really stage 0
    assert main(["export", str(ckpts), str(tmp_path / "offline"), "--dtype", "float32"]) == 0
    offline = load_file(tmp_path / "offline" / "model.safetensors")
    for k, v in export_weights(runs["z0"]).items():
        torch.testing.assert_close(offline[k], v, atol=0, rtol=0, msg=k)
    with pytest.raises(SafeftError, match="nothing to convert"):
        to_universal(str(ckpts), f"step{STEPS:08d}")


def _interrupted_copy(runs, source: str, name: str, overrides: dict):
    """A copy of a finished run as a crash after the step-2 checkpoint leaves it, and a config to resume it."""
    resumed = runs["base"] / "runs" / name
    shutil.copytree(runs[source], resumed)
    ckpts = resumed / "checkpoints"
    shutil.rmtree(ckpts / "step00000004")
    shutil.rmtree(resumed / "export")
    (ckpts / "latest").write_text("step00000002")
    with open(resumed / "logs" / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line)["step"] <= 2]
    (resumed / "logs" / "metrics.jsonl").write_text("".join(kept))
    cfg = yaml.safe_load(open(runs["cfgs"][source]))
    cfg["output"]["name"] = name
    cfg["train"].update(overrides)
    path = runs["base"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return resumed, path


@pytest.mark.slow
@pytest.mark.parametrize("source", ["ref", "z0", "z2", "z3"])
def test_resume_continues_exactly(runs, source):
    """Resumed after the step-2 checkpoint on 1 rank: the same losses and weights as the uninterrupted run.

    From "z2" (2 ranks) the job converts to DeepSpeed's universal format itself (a small checkpoint); "z3"
    (2 ranks, every parameter partitioned) is converted offline first by `safeft ckpt to-universal`; "z0" (2 ranks,
    stage 0) holds the whole optimizer state and loads as it is.
    """
    import torch

    from safeft.cli import main

    resumed, path = _interrupted_copy(runs, source, f"resumed_{source}", {"gradient_accumulation_steps": 2})
    if source == "z3":
        assert main(["ckpt", "to-universal", str(resumed / "checkpoints"), "--workers", "2"]) == 0
        assert (resumed / "checkpoints" / "step00000002_universal" / "safeft_state.json").is_file()
    results = launch(["-m", "safeft.train", str(path), "--resume"], 1)
    assert results[0].returncode == 0, results[0].stdout[-4000:]
    assert "resumed from" in results[0].stdout and "at step 2" in results[0].stdout
    assert ("universal" in results[0].stdout) == (source in ("z2", "z3"))
    assert ("stage 0 loads it as it is" in results[0].stdout) == (source == "z0")
    assert ("converting to DeepSpeed's universal" in results[0].stdout) == (source == "z2")
    ref, got = losses(runs[source]), losses(resumed)
    for step in (3, 4):
        assert got[step] == pytest.approx(ref[step], abs=1e-5 if source == "ref" else 1e-4)
    w_ref, w_got = export_weights(runs[source]), export_weights(resumed)
    for k in w_ref:
        torch.testing.assert_close(w_got[k], w_ref[k], atol=1e-6 if source == "ref" else 1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_resume_refuses_a_zero2_checkpoint_under_stage0(runs):
    """Stage 0 keeps no ZeRO partition files: a ZeRO-2 checkpoint cannot resume under it, and the error says so."""
    _, path = _interrupted_copy(runs, "z2", "z2_as_z0", {"zero_stage": 0, "gradient_accumulation_steps": 2})
    result = launch(["-m", "safeft.train", str(path), "--resume"], 1)[0]
    assert result.returncode != 0
    assert "was saved with train.zero_stage: 2, this run has 0" in result.stdout, result.stdout[-3000:]


NAN_SCRIPT = """
import sys
import torch
from safeft.config import load_config
from safeft.errors import SafeftError
from safeft.loss import CausalLMWithLoss
from safeft.train import run

calls = {"n": 0}
forward = CausalLMWithLoss.forward
def poisoned(self, *a, **k):
    calls["n"] += 1
    loss, n = forward(self, *a, **k)
    return (loss * float("nan"), n) if calls["n"] == 3 else (loss, n)
CausalLMWithLoss.forward = poisoned
from safeft.train import TrainHooks
hooks = TrainHooks(on_checkpoint=lambda step, path, m: print("HOOK checkpoint", step, path, round(m["loss"], 4)),
                   on_log=lambda m: print("HOOK log", m["step"]))
try:
    run(load_config(sys.argv[1]), hooks)
except SafeftError as e:
    print("STOPPED:", e)
    sys.exit(3)
"""


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_model_dir):
    """The 3rd micro-step (step 2) returns NaN: the run stops before its optimizer step, step 1 stays latest."""
    cfg = write_config(tmp_path / "nan.yaml", tiny_model_dir, tmp_path / "data", tmp_path / "runs", "nan",
                       gradient_accumulation_steps=2, save_steps=1)
    script = tmp_path / "nan_run.py"
    script.write_text(NAN_SCRIPT)
    result = launch([str(script), cfg], 1)[0]
    assert result.returncode == 3, result.stdout[-4000:]
    assert "STOPPED: loss is nan at step 2" in result.stdout
    assert "HOOK log 1" in result.stdout and "HOOK log 2" not in result.stdout
    assert f"HOOK checkpoint 1 {tmp_path}/runs/nan/checkpoints/step00000001" in result.stdout
    ckpts = tmp_path / "runs" / "nan" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000001"
    assert not (ckpts / "step00000002").exists() and not (tmp_path / "runs" / "nan" / "export").exists()
    assert json.load(open(ckpts / "step00000001" / "safeft_state.json"))["step"] == 1
