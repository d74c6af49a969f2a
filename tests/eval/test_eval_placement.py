"""Evaluator on GPUs, checked without one: device per rank, Ray's GPU accounting, KV-byte budget, engine choice.

The CUDA-dependent parts are pure functions or take `torch.cuda` through monkeypatching, so the same
decisions that run on a GPU node are asserted here against hand-computed figures.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers import LlamaConfig

from safeft.errors import ConfigError, SafeftError
from safeft.eval import generate as G
from safeft.eval import shard as S

GIB = 2 ** 30
LLAMA2_13B = dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)  # MHA: kv heads left unset


@pytest.mark.parametrize("shape,bf16_bytes", [
    (LLAMA2_13B, 2 * 40 * 40 * 128 * 2),   # 819200 = 800 KiB per token (multi-head)
    (LLAMA3_8B, 2 * 32 * 8 * 128 * 2),     # 131072 = 128 KiB per token (GQA, 8 KV heads)
    (LLAMA2_7B, 2 * 32 * 32 * 128 * 2),    # 524288 = 512 KiB per token
])
def test_kv_bytes_per_token(shape, bf16_bytes):
    cfg = LlamaConfig(**shape)
    assert G.kv_bytes_per_token(cfg, 2) == bf16_bytes
    assert G.kv_bytes_per_token(cfg, 4) == 2 * bf16_bytes


def test_byte_budget_caps_the_token_budget():
    per_13b, per_8b = 819200, 131072
    # the review's figure: 65536 tokens of Llama-2-13B KV is 50 GiB (52.4 GB) beside 26 GB of weights
    assert 65536 * per_13b == 50 * GIB
    assert G.token_budget(65536, per_13b, 20 * GIB) == 26214  # floor(21474836480 / 819200)
    assert G.token_budget(65536, per_8b, 20 * GIB) == 65536  # GQA: 163840 fit; batch_tokens is the bound
    assert G.token_budget(65536, per_13b, None) == 65536  # no cap (CPU)
    assert G.token_budget(65536, per_13b, 1000) == 1  # always at least one token (a batch of one)


def test_engine_budget_from_kv_cache_gb(tiny_model_dir):
    """The real Engine derives its batch budget from the model config (tiny: 2 layers, 2 KV heads, head 16, fp32)."""
    per_token = 2 * 2 * 2 * 16 * 4
    e = G.Engine(tiny_model_dir, G.GenSettings(engine="budget", batch_tokens=4096, kv_cache_gb=300 * per_token / GIB))
    assert e.batch_tokens == 300
    assert G.Engine(tiny_model_dir, G.GenSettings(engine="budget", batch_tokens=4096)).batch_tokens == 4096


@pytest.mark.parametrize("gpus,count,local_rank,world,want", [
    (1, 8, 3, 8, [3]),          # launcher rank 3 of 8 on one node: its own GPU, not cuda:0
    (2, 8, 3, 4, [6, 7]),       # 4 ranks x 2 GPUs: disjoint subsets
    (4, 4, 0, 1, [0, 1, 2, 3]),  # one process (or a Ray actor that sees only its GPUs)
    (1, 1, 0, 1, [0]),
])
def test_replica_gpus(gpus, count, local_rank, world, want):
    assert G.replica_gpus(gpus, count, local_rank, world) == want


@pytest.mark.parametrize("gpus,count,local_rank,world", [(2, 8, 4, 8), (1, 4, 5, 8), (2, 1, 0, 1)])
def test_replica_gpus_refuses_overlap(gpus, count, local_rank, world):
    with pytest.raises(SafeftError, match="eval.gpus_per_replica"):
        G.replica_gpus(gpus, count, local_rank, world)


@pytest.fixture
def fake_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: ((10 + i) * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(i))
    return calls


def test_placement_one_gpu_per_launcher_rank(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    device, gpus, kwargs = G._placement(G.GenSettings(gpus=1))
    assert device == torch.device("cuda", 3) and gpus == [3] and fake_cuda == [3]
    assert kwargs == {"dtype": torch.bfloat16}


def test_placement_multi_gpu_replica_uses_only_its_gpus(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    device, gpus, kwargs = G._placement(G.GenSettings(gpus=2))
    assert device == torch.device("cuda", 2) and gpus == [2, 3]
    assert kwargs["device_map"] == "auto" and kwargs["max_memory"] == {2: 12 * GIB, 3: 13 * GIB}


def test_placement_cpu_when_asked(fake_cuda):
    device, gpus, kwargs = G._placement(G.GenSettings(device="cpu"))
    assert device.type == "cpu" and gpus == [] and kwargs == {"dtype": torch.float32}


def _engine_stub(gpus, device="cuda"):
    e = object.__new__(G.Engine)
    e.model = types.SimpleNamespace(generate_batch=lambda *a, **k: None)
    e.gpus, e.device = gpus, torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    return e


def test_multi_gpu_replica_gets_the_budget_engine():
    assert _engine_stub([0])._pick_engine("auto") == "continuous"
    assert _engine_stub([0, 1])._pick_engine("auto") == "budget"  # the paged cache would live on cuda:0 only
    assert _engine_stub([], "cpu")._pick_engine("auto") == "budget"
    with pytest.raises(ConfigError, match="eval.engine"):
        _engine_stub([0, 1])._pick_engine("continuous")


def test_config_rejects_continuous_over_several_gpus_and_bad_kv_budget():
    from safeft.config import config_from_dict, validate

    with pytest.raises(ConfigError, match="eval.engine"):
        validate(config_from_dict({"eval": {"engine": "continuous", "gpus_per_replica": 2}}))
    with pytest.raises(ConfigError, match="eval.kv_cache_gb"):
        validate(config_from_dict({"eval": {"kv_cache_gb": 0}}))
    assert config_from_dict({}, ["eval.kv_cache_gb=20"]).eval.kv_cache_gb == 20


@pytest.mark.parametrize("backend,replicas,world,use_gpu,cluster_gpus,want", [
    ("auto", 1, 1, True, 0, "ray"),     # the default one replica, on a GPU run: inside Ray's accounting
    ("auto", 1, 1, False, 8, "ray"),    # already in a Ray cluster with GPUs (a sweep task)
    ("auto", 1, 1, False, 0, "local"),  # CPU-only: in process
    ("auto", 4, 1, False, 0, "ray"),
    ("auto", 1, 8, True, 8, "ranks"),   # launcher ranks shard among themselves
    ("local", 1, 1, True, 8, "local"),
    ("ray", 1, 1, False, 0, "ray"),
])
def test_dispatch(backend, replicas, world, use_gpu, cluster_gpus, want):
    assert S.dispatch(backend, replicas, world, use_gpu, cluster_gpus) == want


def test_actor_options():
    assert S.actor_options(1, 8) == {"num_cpus": 1, "num_gpus": 1, "max_restarts": 0}
    assert S.actor_options(4, 8)["num_gpus"] == 4
    assert S.actor_options(2, 0)["num_gpus"] == 0  # a CPU cluster: no GPU request that could never be met
    with pytest.raises(SafeftError, match="eval.gpus_per_replica"):
        S.actor_options(4, 2)


def test_one_replica_gpu_run_requests_its_gpus_from_ray(monkeypatch):
    """run_jobs with the default one replica on a GPU run builds a Ray actor with num_gpus=gpus_per_replica."""
    seen = {}

    class Actor:
        def __init__(self):
            self.run = types.SimpleNamespace(remote=lambda *a: {"prompts": 2, "tokens": 5, "seconds": 0.1})

    class ActorClass:
        def options(self, **kw):
            seen.update(kw)
            return types.SimpleNamespace(remote=Actor)

    fake = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 16, "GPU": 8},
                                 remote=lambda cls: ActorClass(), put=lambda x: x, get=lambda refs: list(refs),
                                 kill=lambda a: None, exceptions=types.SimpleNamespace(RayError=RuntimeError))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    job = S.Job("/nonexistent", [[1, 2]], fingerprint="x")
    stats = S.run_jobs("model", G.GenSettings(), [job], "auto", 1, gpus_per_replica=2, use_gpu=True)
    assert seen["num_gpus"] == 2 and stats["prompts"] == 2
