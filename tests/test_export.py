"""Streaming export: shards written as they fill, bytes held bounded by a shard, the result reloads exactly.

The ZeRO-3 path (parameters gathered one unit at a time on 2 ranks) runs in tests/test_train.py's fixture.
"""

from __future__ import annotations

import json

import pytest
import torch

from safeft.export import ShardWriter, export_from_engine


def test_shard_writer_holds_at_most_one_shard(tmp_path):
    writer = ShardWriter(str(tmp_path), max_shard_bytes=4000)
    tensors = {f"t{i}": torch.full((100 + 50 * (i % 3),), float(i)) for i in range(12)}  # 400-1000 bytes each
    for name, t in tensors.items():
        writer.add(name, t)
        assert writer.held_bytes <= 4000
    writer.close()
    assert writer.peak_bytes <= 4000 and writer.total_bytes == sum(t.numel() * 4 for t in tensors.values())
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(writer.shards) >= 2 and set(index["weight_map"]) == set(tensors)
    from safetensors.torch import load_file

    got = {}
    for f in set(index["weight_map"].values()):
        got.update(load_file(tmp_path / f))
    for name, t in tensors.items():
        torch.testing.assert_close(got[name], t, atol=0, rtol=0)


@pytest.mark.parametrize("shard_bytes", [2**30, 60_000])
def test_export_streams_and_reloads(tiny_model_dir, tmp_path, shard_bytes):
    """The live-engine export (ZeRO-2 layout: whole parameters) reloads with the same weights, sharded or not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    out = tmp_path / "export"
    assert export_from_engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), str(out), {"step": 1},
                              torch.float32, 2, 0, max_shard_bytes=shard_bytes) == str(out)
    assert (out / "model.safetensors.index.json").exists() == (shard_bytes < 2**30)
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    want = model.state_dict()
    assert back.state_dict().keys() == want.keys()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, want[k], atol=0, rtol=0, msg=k)
    assert json.load(open(out / "safeft_run.json")) == {"step": 1}
    assert not list(out.glob("*.partial"))


def test_export_keeps_the_end_of_turn_ids(tiny_model_dir, tmp_path):
    """generation_config.json travels with the weights: a Llama-3.1-style eos list survives the export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[2, 5, 7], bos_token_id=1)
    out = tmp_path / "export"
    export_from_engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), str(out), {"step": 1}, torch.float32, 2, 0)
    assert GenerationConfig.from_pretrained(out).eos_token_id == [2, 5, 7]
