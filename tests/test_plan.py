"""`safeft plan`: parameter counts of real architectures, and ZeRO model-state figures equal DeepSpeed's."""

from __future__ import annotations

import pytest

from safeft.errors import ConfigError
from safeft.plan import (STATE_KEYS, GiB, count_params, ds_estimates, layer_activation_bytes, make_plan,
                         resolve_model_config)


@pytest.mark.parametrize("name,billions", [
    ("meta-llama/Llama-2-7b-chat-hf", 6.738), ("meta-llama/Llama-2-13b-hf", 13.016),
    ("meta-llama/Llama-2-70b-hf", 68.977), ("meta-llama/Meta-Llama-3-8B-Instruct", 8.030),
    ("meta-llama/Meta-Llama-3-70B", 70.554), ("mistralai/Mistral-7B-Instruct-v0.2", 7.242)])
def test_bundled_configs_have_the_published_sizes(name, billions):
    total, _ = count_params(resolve_model_config(name))
    assert total / 1e9 == pytest.approx(billions, abs=0.002)


def test_param_count_equals_a_real_model(tiny_model_dir):
    import json
    import os

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = json.load(open(os.path.join(tiny_model_dir, "config.json")))
    assert count_params(config)[0] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("zero,offload", [(2, "none"), (2, "optimizer"), (3, "none"), (3, "optimizer"), (3, "all")])
@pytest.mark.parametrize("gpus,per_node", [(1, 1), (4, 4), (16, 8)])
def test_model_states_equal_deepspeed_estimators(zero, offload, gpus, per_node):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    name = "meta-llama/Llama-2-7b-hf"
    params, largest = count_params(resolve_model_config(name))
    plan = make_plan(name, gpus, per_node, zero, offload, 512, 1, True, 80)
    states = sum(plan.per_gpu[k] for k in STATE_KEYS)
    nodes = gpus // per_node
    if zero == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=offload != "none")
    else:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes,
                                                            cpu_offload=offload != "none",
                                                            cpu_offload_params=offload == "all")
    assert abs(states - gpu) <= 8  # integer division per component
    assert plan.cpu_per_node == cpu == ds_estimates(params, largest, gpus, per_node, zero, offload)[0]


def test_does_not_fit_and_says_what_to_change():
    plan = make_plan("meta-llama/Llama-2-70b-chat-hf", 8, 8, 2, "none", 4096, 1, False, 80)
    assert not plan.fits
    assert any("--zero 3" in a for a in plan.advice)
    for advice in plan.advice:  # every suggestion really fits
        if advice.startswith("--zero 3 --offload all"):
            assert make_plan("meta-llama/Llama-2-70b-chat-hf", 8, 8, 3, "all", 4096, 1, True, 80).fits
    text = plan.render()
    assert "does NOT fit" in text and "try:" in text
    small = make_plan("meta-llama/Llama-2-7b-hf", 4, 4, 2, "none", 512, 4, False, 80)
    assert small.fits and small.total < 80 * GiB and not small.advice


def test_unknown_model_and_bad_flags():
    with pytest.raises(ConfigError, match="not a config.json, a model directory, or a bundled model"):
        resolve_model_config("someone/unknown-model")
    with pytest.raises(ConfigError, match="--offload all .* --zero 3"):
        make_plan("meta-llama/Llama-2-7b-hf", 1, 1, 2, "all", 512, 1, False, 80)
    with pytest.raises(ConfigError, match="multiple of --gpus-per-node"):
        make_plan("meta-llama/Llama-2-7b-hf", 6, 4, 3, "none", 512, 1, False, 80)


def test_cli_exit_code(capsys):
    from safeft.cli import main

    assert main(["plan", "--model", "meta-llama/Meta-Llama-3-8B", "--gpus", "4", "--zero", "3",
                 "--seq-len", "2048", "--grad-checkpointing"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["plan", "--model", "meta-llama/Meta-Llama-3-70B", "--gpus", "1", "--zero", "2"]) == 1


@pytest.mark.parametrize("hidden,inter,heads,kv_heads", [(256, 688, 4, 4), (256, 896, 4, 1)])
def test_layer_activations_match_a_real_layer(hidden, inter, heads, kv_heads):
    """The per-layer formula against the bytes a real bf16 LlamaDecoderLayer saves for backward (MHA, GQA)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    c = dict(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv_heads)
    config = LlamaConfig(**c, num_hidden_layers=1, vocab_size=64)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16).train()
    tokens = 512
    x = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)  # [1, s, h]
    pos = torch.arange(tokens)[None]
    cos, sin = (t.detach() for t in LlamaRotaryEmbedding(config)(x, pos))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    inputs = {t.untyped_storage().data_ptr() for t in (x, cos, sin, *layer.parameters())}
    measured = sum(n for ptr, n in saved.items() if ptr not in inputs)
    assert layer_activation_bytes(c, tokens) == pytest.approx(measured, rel=0.1)


def test_plan_prints_parts_and_cpu_filter():
    """70B on 8 x 80 GB: ZeRO-3 + optimizer offload would fit the GPUs but needs ~1.6 TB of CPU RAM per node."""
    args = ("meta-llama/Meta-Llama-3-70B", 8, 8, 3, "none", 2048, 1, True, 80)
    free = make_plan(*args)
    assert "--zero 3 --offload optimizer --grad-checkpointing" in free.advice
    bounded = make_plan(*args, cpu_mem_gib=1024)
    assert not any("offload" in a for a in bounded.advice) and bounded.advice
    text = bounded.render()
    for part in ("model states", "activations", "logits", "buffers", "of 1024 GiB"):
        assert part in text
    # the fused loss holds a chunk + the fp32 [V, h] weight-gradient accumulator (6 V h): it pays off at long rows
    long_args = args[:5] + (8192,) + args[6:]
    fused, standard = make_plan(*long_args, loss="fused"), make_plan(*long_args)
    assert fused.per_gpu["logits"] < standard.per_gpu["logits"] / 2
    no_ckpt = make_plan(*args[:-2], False, 80)
    assert no_ckpt.per_gpu["activations"] > 15 * free.per_gpu["activations"]  # 80 layers kept vs 1 + inputs
