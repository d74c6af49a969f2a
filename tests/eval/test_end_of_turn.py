"""Generation stops at every end-of-turn id (tokenizer EOS, generation_config list, chat-template marker),
with real tokenizers, on both engines (the token-budget batcher and transformers' continuous batching,
`model.generate_batch`, which runs on CPU too); records say why each generation stopped."""

from __future__ import annotations

import pytest

from helpers import shared_tokenizer_or_skip
from safeft.eval.generate import Engine, GenSettings, end_ids
from safeft.templates import get_template

# continuous: each generate_batch call sizes and fills a paged cache from the free memory (~15 s on CPU)
ENGINES = ("budget", pytest.param("continuous", marks=pytest.mark.slow))
MAX_NEW = {"budget": 48, "continuous": 12}  # continuous batching's CPU steps are slow: a shorter cap


def forced_model(tokenizer, emit: int, eos):
    """A tiny model of the tokenizer's real family whose greedy output is `emit` at every step."""
    import torch

    from safeft.tiny import tiny_real_model

    model, _ = tiny_real_model(tokenizer)
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    vocab = model.config.vocab_size
    head = torch.nn.Linear(model.config.hidden_size, vocab, bias=True)  # untied: the embedding stays as it is
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[emit] = 10.0
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model


def base_llama3_tokenizer():
    """The Llama-3.1 tokenizer as base Llama-3 repositories ship it: EOS <|end_of_text|>, turns end at <|eot_id|>."""
    from safeft.model import load_tokenizer

    tok = load_tokenizer(shared_tokenizer_or_skip("llama3.1"))
    tok.eos_token = "<|end_of_text|>"
    return tok


def run(tok, model, engine_name, stop=()):
    if engine_name == "continuous" and not callable(getattr(model, "generate_batch", None)):
        pytest.fail("this transformers has no model.generate_batch: the continuous engine is untested")
    engine = Engine(None, GenSettings(engine=engine_name, stop=list(stop)), model=model, tokenizer=tok)
    assert engine.engine == engine_name
    template = get_template("chat-template", tokenizer=tok)
    prompt = tok(template.prompt("What is 2+2?"), add_special_tokens=False)["input_ids"]
    return engine, engine.generate([prompt, prompt[:-3]], MAX_NEW[engine_name])


@pytest.mark.parametrize("engine_name", ENGINES)
def test_llama3_chat_template_stops_at_eot_even_when_eos_is_end_of_text(engine_name):
    tok = base_llama3_tokenizer()
    eot, end_of_text = tok.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    assert tok.eos_token_id == end_of_text != eot
    # The model config knows only <|end_of_text|> (a base repo): the template's marker alone must stop it.
    engine, outs = run(tok, forced_model(tok, eot, end_of_text), engine_name)
    assert eot in engine.end_ids and end_of_text in engine.end_ids
    for out in outs:  # before the fix: every token up to the cap, the scored text ran past the turn
        assert out["tokens"] == [] and out["completion"] == "" and out["stop"] == "eos"


@pytest.mark.parametrize("engine_name", ENGINES)
def test_generation_config_eos_list_stops_and_other_tokens_run_to_length(engine_name):
    tok = base_llama3_tokenizer()
    eom = 128008  # in Llama-3.1-Instruct's generation_config list only
    hi = tok.convert_tokens_to_ids(tok.tokenize("hi"))[0]
    _, outs = run(tok, forced_model(tok, eom, [128001, 128008, 128009]), engine_name)
    assert all(o["tokens"] == [] and o["stop"] == "eos" for o in outs)
    _, outs = run(tok, forced_model(tok, hi, [128001, 128008, 128009]), engine_name)
    assert all(o["tokens"] == [hi] * MAX_NEW[engine_name] and o["stop"] == "length" for o in outs)
    _, outs = run(tok, forced_model(tok, hi, 128001), engine_name, stop=["hihi"])
    assert all(o["completion"] == "" and o["stop"] == "stop" for o in outs)


@pytest.mark.parametrize("name,expected", [("llama2", {2}), ("llama3.1", {128001, 128008, 128009}),
                                           ("qwen3", {151643, 151645})])
def test_end_ids_of_the_real_families(real_tiny_model, name, expected):
    from transformers import AutoModelForCausalLM

    from safeft.model import load_tokenizer

    path = real_tiny_model(name)
    tok = load_tokenizer(path)
    assert set(end_ids(AutoModelForCausalLM.from_pretrained(path), tok)) == expected
    if name != "llama2":
        marker = {"llama3.1": "<|eot_id|>", "qwen3": "<|im_end|>"}[name]
        assert get_template("chat-template", tokenizer=tok).end_token_id() == tok.convert_tokens_to_ids(marker)
