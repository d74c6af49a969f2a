"""The shipped example and experiment configs run offline with local paths (the real shared tokenizers and
shared GSM8K / SAMSum): `config check` passes, and the data + tokenizer steps of every grid point run."""

from __future__ import annotations

import glob
import os

import pytest

from helpers import GSM8K_TRAIN, REPO, SAMSUM_TEST, shared_tokenizer_or_skip, skip_without_shared
from safeft.config import load_config
from safeft.data import pipeline

# The shared tokenizer standing in for each config's hub model (Mistral-7B has Llama-2's 32k SentencePiece
# vocabulary but a chat template of its own; the shared Llama-2 tokenizer has none, so Llama-3.1's stands in).
STAND_IN = {"meta-llama/Llama-2-7b-chat-hf": "llama2", "meta-llama/Meta-Llama-3-8B-Instruct": "llama3.1",
            "mistralai/Mistral-7B-Instruct-v0.2": "llama3.1"}
CONFIGS = sorted(glob.glob(str(REPO / "configs" / "experiments" / "*.yaml"))) + [
    str(REPO / "configs" / "examples" / "gsm8k_prepare.yaml")]


def _with_llama2_chat_template(tok_dir: str, out: str) -> str:
    """The hub's Llama-2-chat tokenizer carries a Llama-2 chat template; the shared copy does not: add one."""
    from transformers import AutoTokenizer

    from safeft.tiny import LLAMA2_STYLE_CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tok_dir)
    if not tok.chat_template:
        tok.chat_template = LLAMA2_STYLE_CHAT_TEMPLATE
        tok.save_pretrained(out)
        return out
    return tok_dir


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_runs_its_data_steps_offline(path, tmp_path, shared_data_with_hexphi):
    skip_without_shared(GSM8K_TRAIN, SAMSUM_TEST)
    cfg = load_config(path)  # the config as shipped passes validation (`safeft config check`)
    tok = shared_tokenizer_or_skip(STAND_IN[cfg.model.name_or_path])
    if "chat-template" in str(cfg.template.train):
        tok = _with_llama2_chat_template(tok, str(tmp_path / "tokenizer"))
    local = str(SAMSUM_TEST if cfg.data.preset == "samsum" else GSM8K_TRAIN)
    overrides = [f"model.tokenizer={tok}", f"data.path={local}", "data.limit=24", "data.num_proc=1",
                 f"data.cache_dir={tmp_path}"]
    cfg = load_config(path, overrides)
    points = cfg.expand()
    assert points
    for _, point in points:
        prepared = pipeline.prepare(point)
        assert prepared.stats["documents"] == 24 and prepared.stats["rows"] >= 1
