"""Trainer pieces that need no process group: config checks, DeepSpeed JSON resolution, schedule, loss."""

from __future__ import annotations

import json

import pytest

from safeft.config import config_from_dict
from safeft.distributed import build_ds_config, check_train_config
from safeft.errors import ConfigError
from safeft.train.schedule import lr_factor

from helpers import REPO


def cfg(**train):
    return config_from_dict({"model": {"name_or_path": "x"}, "train": train})


def test_global_batch_must_multiply_out():
    check_train_config(cfg(micro_batch_size=2, gradient_accumulation_steps=4, global_batch_size=64), 8)
    with pytest.raises(ConfigError, match=r"global_batch_size.*64 != micro_batch_size 2 x .* 4 x 4 processes = 32"):
        check_train_config(cfg(micro_batch_size=2, gradient_accumulation_steps=4, global_batch_size=64), 4)


def test_bf16_on_a_device_without_it_is_rejected():
    with pytest.raises(ConfigError, match="train.precision.*bf16"):
        check_train_config(cfg(precision="bf16"), 1, has_bf16=False)
    ds = check_train_config(cfg(precision="auto"), 1, has_bf16=False)
    assert ds["bf16"]["enabled"] is False


def test_offload_all_needs_zero3():
    with pytest.raises(ConfigError, match="zero_stage: 3"):
        cfg(offload="all", zero_stage=2)


def test_typed_ds_config():
    ds = build_ds_config(cfg(micro_batch_size=2, gradient_accumulation_steps=3, zero_stage=3, offload="optimizer",
                             lr=2e-5, adam_betas=[0.5, 0.999], max_grad_norm=0.5), 4, bf16=True, cpu=False)
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in ds["zero_optimization"]
    assert ds["optimizer"]["params"]["betas"] == [0.5, 0.999] and ds["optimizer"]["params"]["lr"] == 2e-5


def test_stage0_ds_config_has_no_zero_buffers():
    """Stage 0: DeepSpeed's plain data parallel; the ZeRO bucket options mean nothing there and are left out."""
    ds = build_ds_config(cfg(zero_stage=0, micro_batch_size=1, gradient_accumulation_steps=2), 2, bf16=False,
                         cpu=True)
    assert ds["zero_optimization"] == {"stage": 0} and ds["train_batch_size"] == 4
    assert build_ds_config(cfg(zero_stage=2), 2, bf16=False, cpu=True)["zero_optimization"]["contiguous_gradients"]


@pytest.mark.parametrize("name,stage,offload", [("zero2", 2, "none"), ("zero3", 3, "none"),
                                                ("zero3_offload", 3, "all")])
def test_shipped_json_resolves_auto(name, stage, offload):
    path = str(REPO / "configs" / "deepspeed" / f"{name}.json")
    ds = build_ds_config(cfg(deepspeed_config=path, zero_stage=stage, offload=offload, micro_batch_size=2,
                             gradient_accumulation_steps=2, lr=1e-4), 2, bf16=True, cpu=False)
    assert "auto" not in json.dumps(ds)
    assert ds["train_batch_size"] == 8 and ds["optimizer"]["params"]["lr"] == 1e-4 and ds["bf16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == stage


def test_json_contradicting_the_config_is_rejected(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3},
                                "scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError) as e:
        build_ds_config(cfg(deepspeed_config=str(path), zero_stage=2), 1, bf16=False, cpu=True)
    msg = str(e.value)
    assert str(path) in msg and "train_micro_batch_size_per_gpu=4" in msg and "stage=3" in msg and "scheduler" in msg
    path.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError, match=r"ds.json:1:\d+: not valid JSON"):
        build_ds_config(cfg(deepspeed_config=str(path)), 1, bf16=False, cpu=True)


def test_schedule():
    assert [lr_factor(s, 10, 2, "constant") for s in range(3)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5) and lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)


def _docs(tokenizer):
    from safeft.data.pack import build_row
    from safeft.data.tokenize import encode_single_batch
    from safeft.templates import get_template

    enc = encode_single_batch(get_template("chat:vanilla"), tokenizer, ["What is 2+3?", "Add 10 and 7."],
                              ["2+3=5\n#### 5", "10+7=17\n#### 17"])
    docs = [(e.input_ids, e.labels) for e in enc]
    return docs, build_row(docs)


def test_packed_loss_equals_per_document_loss(tiny_model_dir, tokenizer):
    """Packed rows must not attend across documents (position_ids + attention_mask None + no cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    from safeft.data.pack import PackedCollator
    from safeft.loss import CausalLMWithLoss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    wrapped = CausalLMWithLoss(model).eval()
    docs, row = _docs(tokenizer)
    batch = PackedCollator(tokenizer.pad_token_id)([row, None])  # a padding slot adds no loss
    with torch.no_grad():
        packed, n_packed = wrapped(batch["input_ids"], batch["position_ids"], batch["labels"])
        want, n_want = 0.0, 0
        for ids, labels in docs:
            labels = torch.tensor([-100] + labels[1:])[None]
            out = model(torch.tensor(ids)[None], labels=labels, use_cache=False)  # HF mean over its targets
            n = int((labels[:, 1:] != -100).sum())
            want, n_want = want + out.loss * n, n_want + n
        weighted, _ = wrapped(batch["input_ids"], batch["position_ids"], batch["labels"],
                              token_weights=torch.full(batch["labels"].shape, 0.5))
    assert int(n_packed) == n_want
    torch.testing.assert_close(packed, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(weighted, packed * 0.5)


def test_fused_loss_matches_standard(tiny_model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from safeft.data.pack import PackedCollator
    from safeft.loss import CausalLMWithLoss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    _, row = _docs(tokenizer)
    batch = PackedCollator(tokenizer.pad_token_id)([row])
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(batch["labels"].shape, generator=g)  # plain SFT with token weights: the "sum" path
    out, grads = {}, {}
    for loss in ("standard", "fused"):
        model.zero_grad()
        out[loss] = CausalLMWithLoss(model, loss)(batch["input_ids"], batch["position_ids"], batch["labels"],
                                                  token_weights=weights)
        out[loss][0].backward()
        grads[loss] = (model.lm_head.weight.grad.clone(), model.model.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(out["fused"][0], out["standard"][0], atol=1e-3, rtol=1e-4)
    assert int(out["fused"][1]) == int(out["standard"][1])
    for a, b in zip(grads["fused"], grads["standard"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_optimizer_needs_no_compiler_by_default():
    """auto: torch AdamW (fused on CUDA) unless the optimizer is offloaded; deepspeed ops are checked, named."""
    from safeft import distributed

    gpu = build_ds_config(cfg(), 8, bf16=True, cpu=False)
    assert gpu["optimizer"]["params"]["torch_adam"] is True and gpu["optimizer"]["params"]["fused"] is True
    off = build_ds_config(cfg(zero_stage=3, offload="optimizer"), 8, bf16=True, cpu=False)
    assert "torch_adam" not in off["optimizer"]["params"]  # DeepSpeedCPUAdam: much faster than torch on the CPU
    forced = build_ds_config(cfg(zero_stage=3, offload="optimizer", optimizer="torch"), 8, bf16=True, cpu=False)
    assert forced["optimizer"]["params"]["torch_adam"]
    assert forced["zero_optimization"]["zero_force_ds_cpu_optimizer"] is False
    ds = build_ds_config(cfg(optimizer="deepspeed"), 8, bf16=True, cpu=False)
    assert "torch_adam" not in ds["optimizer"]["params"]
    distributed.check_optimizer_ops(gpu, cpu=False)  # torch AdamW: nothing to check
    orig = distributed._op_problem
    distributed._op_problem = lambda name, cpu: "it is not prebuilt and compiling it needs the CUDA toolkit"
    try:
        with pytest.raises(ConfigError, match=r"train.optimizer.*FusedAdam.*CUDA toolkit.*train.optimizer: torch"):
            distributed.check_optimizer_ops(ds, cpu=False)
    finally:
        distributed._op_problem = orig


def test_zero3_persistence_threshold_and_timeout_keys():
    ds = build_ds_config(cfg(zero_stage=3, zero3_param_persistence_threshold=0), 2, bf16=False, cpu=True)
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    default = build_ds_config(cfg(zero_stage=3), 2, bf16=False, cpu=True)
    assert "stage3_param_persistence_threshold" not in default["zero_optimization"]  # DeepSpeed's default
    path = str(REPO / "configs" / "deepspeed" / "zero3.json")
    shipped = build_ds_config(cfg(deepspeed_config=path, zero_stage=3, zero3_param_persistence_threshold=0), 2,
                              bf16=False, cpu=True)
    assert shipped["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    with pytest.raises(ConfigError, match="train.zero3_param_persistence_threshold"):
        cfg(zero_stage=3, zero3_param_persistence_threshold=-1)
    with pytest.raises(ConfigError, match="train.dist_timeout_minutes"):
        cfg(dist_timeout_minutes=0)


def test_mfu_convention_and_peak_table(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from safeft.distributed import peak_flops_for
    from safeft.train.metrics import matmul_params

    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12 and peak_flops_for("NVIDIA H100 NVL") == 835e12
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops_for("NVIDIA H200") == 989e12
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total = sum(p.numel() for p in model.parameters())
    assert matmul_params(model) == total - model.config.vocab_size * model.config.hidden_size


def test_check_only_cli(tmp_path, capsys):
    """What launchers run before spawning: the config checked for the world size they will create."""
    from safeft.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: x}\ntrain: {micro_batch_size: 2, global_batch_size: 8}\n")
    assert main(["train", str(path), "--check-only", "--world-size", "4"]) == 0
    assert "ok for 4 process(es)" in capsys.readouterr().out
    assert main(["train", str(path), "--check-only", "--world-size", "2"]) == 2
    assert "global_batch_size': 8 != micro_batch_size 2" in capsys.readouterr().err


def test_train_mfu_bench_smoke(tmp_path, monkeypatch):
    """bench/train_mfu.py --smoke: both variants run on the same documents and report real tokens."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # as `python bench/train_mfu.py` has it (bench/repo_root.py)
    spec = importlib.util.spec_from_file_location("train_mfu", REPO / "bench" / "train_mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mfu.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["padded+sdpa", "packed+varlen"]
    assert all(r["real_tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows) and rows[1]["speedup_vs_padded"] > 0


def _reference_varlen(old_api: bool):
    """A CPU stand-in with torch's varlen_attn signature: causal SDPA per document (the real one is CUDA-only)."""
    import torch

    def attend(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, gqa):
        out = torch.empty_like(q)  # [T, Hq, D]
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            o = torch.nn.functional.scaled_dot_product_attention(
                q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=causal,
                scale=scale, enable_gqa=gqa)
            out[s:e] = o.transpose(0, 1)
        return out

    if old_api:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, scale=None):
            return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, is_causal, False)
    else:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1), enable_gqa=False):
            return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, tuple(window_size) == (-1, 0),
                          enable_gqa)
    return varlen_attn


@pytest.mark.parametrize("old_api", [False, True])
def test_varlen_attention_plumbing_matches_packed_sdpa(tiny_model_dir, tokenizer, monkeypatch, old_api):
    """The registered varlen attention gets the collator's cu_seq_lens and the right causal/GQA arguments."""
    import torch
    from transformers import AutoModelForCausalLM

    import safeft.model as m
    from safeft.data.pack import PackedCollator

    monkeypatch.setattr(m, "_torch_varlen", lambda: _reference_varlen(old_api))
    name = m.select_attention("varlen", "cuda")
    assert name == m.VARLEN_ATTENTION and m.uses_varlen_kwargs(name)
    _, row = _docs(tokenizer)
    b = PackedCollator(tokenizer.pad_token_id)([row, row])
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=name)
    with torch.no_grad():
        want = sdpa(b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        got = varlen(b["input_ids"], position_ids=b["position_ids"], use_cache=False,
                     **{k: b[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert m.select_attention("auto", "cpu") == "sdpa"


def test_launcher_rejects_a_bad_config_before_spawning(tmp_path):
    """launcher/deepspeed/train.sh checks the config for the world size it will create, then launches."""
    import subprocess
    import sys

    from helpers import cpu_env

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: x}\ntrain: {micro_batch_size: 1, global_batch_size: 4}\n")
    out = subprocess.run([str(REPO / "launcher" / "deepspeed" / "train.sh"), str(path), "--num_gpus", "3"],
                         env=cpu_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "global_batch_size': 4 != micro_batch_size 1 x gradient_accumulation_steps 1 x 3 processes" in out.stderr
    assert "deepspeed" not in out.stdout.lower()
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two nodes\nnode1 slots=2\nnode2 slots=2\n")
    path.write_text("model: {name_or_path: x}\ntrain: {micro_batch_size: 1, global_batch_size: 2}\n")
    out = subprocess.run([str(REPO / "launcher" / "deepspeed" / "train.sh"), str(path), "--hostfile", str(hosts)],
                         env=cpu_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "x 4 processes = 4" in out.stderr, out.stderr


def test_tiny_prefix_builds_the_model_dir_once(tmp_path):
    from safeft.model import resolve_model_path

    calls = []
    path = resolve_model_path(f"tiny:{tmp_path}/m", is_main=True, barrier=lambda: calls.append(1))
    assert path == f"{tmp_path}/m" and (tmp_path / "m" / "config.json").is_file() and calls == [1]
    assert resolve_model_path("meta-llama/Llama-2-7b-chat-hf") == "meta-llama/Llama-2-7b-chat-hf"


def test_export_of_a_missing_checkpoint_says_what_was_expected(tmp_path, capsys):
    from safeft.cli import main

    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "expected a checkpoints directory with 'latest' or one step directory" in capsys.readouterr().err


@pytest.mark.parametrize("pinned,want", [(None, 1), ("3", 3)])
def test_init_keeps_the_gpu_a_launcher_pinned(monkeypatch, pinned, want):
    """Under Ray the worker's GPU is Ray's (SAFEFT_CUDA_DEVICE), not cuda:LOCAL_RANK."""
    import torch

    from safeft import distributed

    chosen = []
    monkeypatch.setattr(distributed, "device_type", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    if pinned is None:
        monkeypatch.delenv(distributed.PINNED_DEVICE_ENV, raising=False)
    else:
        monkeypatch.setenv(distributed.PINNED_DEVICE_ENV, pinned)
    for key in distributed.RENDEZVOUS_VARS:
        monkeypatch.delenv(key, raising=False)
    device = distributed.init(distributed.DistEnv(rank=1, world_size=2, local_rank=1))
    assert chosen == [want] and device == torch.device("cuda", want)


def test_a_lone_process_whose_free_port_was_taken_picks_another():
    """Between picking a free port and binding it, another process can take it; a lone process retries."""
    import subprocess
    import sys

    from tests.helpers import cpu_env, held_port

    with held_port() as port:
        code = ("import os, torch.distributed as d; from safeft import distributed as s\n"
                f"s.init(s.DistEnv(master_port={port}, port_is_ours=True)); print(os.environ['MASTER_PORT'])\n"
                "d.destroy_process_group()")
        r = subprocess.run([sys.executable, "-c", code], env=cpu_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert int(r.stdout.split()[-1]) != port
        # A port the launcher chose is every rank's: never changed, the error surfaces.
        code = code.replace("port_is_ours=True", "port_is_ours=False")
        r = subprocess.run([sys.executable, "-c", code], env=cpu_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "EADDRINUSE" in r.stderr
