"""The trainer on a real pretrained chat model: SmolLM2-135M-Instruct fine-tuned on real GSM8K train rows.

A short single-process ZeRO-2 run and a 2-rank ZeRO-3 run (every parameter partitioned) must bring the
training loss below a threshold set from runs measured on this machine kind (2-core CPU, bf16 autocast where
the CPU has native bf16, else fp32), below the loss of a run that does not update its weights; the ZeRO-2 run's export is reloaded and
generates under the chat template, stopping at <|im_end|>.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from helpers import GSM8K_TRAIN, losses, partitioned, skip_without_shared, train_ok

STEPS = 6
# Measured 2026-12-06 on this machine kind (2-core CPU with native bf16, so bf16-autocast; data order fixed by
# the seed): step-1 loss 1.748 on both runs; mean of the last two steps 1.145 (ZeRO-2, 1 rank, accumulation 2)
# and 1.146 (ZeRO-3, 2 ranks). The same six steps with lr 1e-12 (weights unchanged) give 1.515 on the last
# two: batches differ in difficulty, so the bar is that control, not step 1. Threshold midway between the
# control and the trained runs: a run that does not learn fails it.
NO_UPDATE_FINAL = 1.515
FINAL_LOSS_MAX = 1.33


def _precision() -> str:
    from safeft.distributed import cpu_bf16_native

    return "bf16-autocast" if cpu_bf16_native() else "fp32"


@pytest.fixture(scope="module")
def smollm2() -> str:
    from safeft.model_import import resolve_model

    return resolve_model("smollm2-135m-instruct")


def _config(tmp_path, model_dir: str, name: str, **train) -> str:
    skip_without_shared(GSM8K_TRAIN)
    cfg = {"model": {"name_or_path": model_dir, "dtype": "float32"},
           "data": {"path": str(GSM8K_TRAIN), "limit": 48, "max_seq_len": 512, "num_proc": 1,
                    "cache_dir": str(tmp_path / "cache"), "seed": 5},
           "template": {"train": "chat-template:llama2", "test": ["chat-template:llama2"]},
           "train": {"max_steps": STEPS, "micro_batch_size": 1, "lr": 1e-4, "scheduler": "constant", "warmup_steps": 0,
                     "precision": _precision(), "save_steps": 0, "resume": "never", **train},
           "output": {"dir": str(tmp_path / "runs"), "name": name, "tensorboard": False}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _final_loss(run_dir) -> tuple[float, float]:
    by_step = losses(run_dir)
    return by_step[1], (by_step[STEPS - 1] + by_step[STEPS]) / 2


@pytest.mark.slow
def test_zero2_fine_tune_learns_exports_and_stops_at_end_of_turn(smollm2, tmp_path):
    from safeft.data.tokenize import encode_prompt
    from safeft.eval.generate import Engine, GenSettings
    from safeft.templates import get_template

    train_ok(_config(tmp_path, smollm2, "zero2", zero_stage=2, gradient_accumulation_steps=2), 1)
    run = tmp_path / "runs" / "zero2"
    first, final = _final_loss(run)
    print(f"ZeRO-2 loss {first:.3f} -> {final:.3f}")
    assert final <= FINAL_LOSS_MAX < NO_UPDATE_FINAL, (first, final)

    export = run / "export"
    assert json.load(open(export / "generation_config.json"))["eos_token_id"] == [2]
    engine = Engine(str(export), GenSettings())
    template = get_template("chat-template:llama2", tokenizer=engine.tokenizer)
    # General questions: after six steps on GSM8K, the 135M model loops on word problems until the token limit
    # (measured: "Tom has 3 + 4 = 7 apples" repeated), which says nothing about where generation stops.
    questions = ["What is the capital of France?", "Name three primary colors."]
    outs = engine.generate([encode_prompt(template, engine.tokenizer, q) for q in questions], 160)
    assert engine.end_ids == [2]
    for out in outs:  # each answer ends at <|im_end|> (cut there, not at the token limit), nothing after it
        assert out["stop"] == "eos" and len(out["tokens"]) < 160 and 2 not in out["tokens"], out
    assert "Paris" in outs[0]["completion"]


@pytest.mark.slow
def test_two_rank_zero3_fine_tune_with_every_parameter_partitioned_learns(smollm2, tmp_path):
    cfg = _config(tmp_path, smollm2, "zero3", zero_stage=3, zero3_param_persistence_threshold=0, export=False)
    stdout = train_ok(cfg, 2)
    done, total = partitioned(stdout)
    assert done == total == 272  # 30 layers x 9 tensors + embedding + final norm; tied head: no lm_head
    first, final = _final_loss(tmp_path / "runs" / "zero3")
    print(f"ZeRO-3 (2 ranks) loss {first:.3f} -> {final:.3f}")
    assert final <= FINAL_LOSS_MAX < NO_UPDATE_FINAL, (first, final)
    assert os.path.isdir(tmp_path / "runs" / "zero3" / "checkpoints")
