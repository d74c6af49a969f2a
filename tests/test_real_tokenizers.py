"""Bad and unusual input with the real tokenizers: clear errors naming the key or file, or documented behaviour."""

from __future__ import annotations

import pytest

from helpers import shared_tokenizer_or_skip
from safeft.errors import TemplateError
from safeft.lookahead import DEFAULT_CONNECTOR, preview
from safeft.model import load_tokenizer
from safeft.templates import get_template

# A Mistral-style template that refuses a system turn, as some instruct models' templates do.
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
             "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


def test_chat_template_on_a_tokenizer_without_one_names_the_tokenizer():
    path = shared_tokenizer_or_skip("llama2")  # Llama-2's tokenizer ships no chat template
    with pytest.raises(TemplateError, match=r"has no chat template.*chat:vanilla") as e:
        get_template("chat-template", tokenizer=load_tokenizer(path))
    assert path in str(e.value)


def test_a_template_that_rejects_a_system_role_names_the_system_keys():
    tok = load_tokenizer(shared_tokenizer_or_skip("llama3.1"))
    tok.chat_template = NO_SYSTEM
    assert get_template("chat-template", tokenizer=tok).prompt("Hi").endswith("[/INST]")  # fine without one
    with pytest.raises(TemplateError, match=r"System role not supported.*template.train_system / template.test_system"):
        get_template("chat-template", tokenizer=tok, system="llama2").prompt("Hi")


@pytest.mark.parametrize("name,pad", [("llama2", "<unk>"), ("llama3.1", "<|eot_id|>"), ("qwen3", "<|endoftext|>")])
def test_a_tokenizer_without_pad_gets_one(name, pad):
    tok = load_tokenizer(shared_tokenizer_or_skip(name))  # Llama-2 and Llama-3.1 ship none
    assert tok.pad_token == pad and tok.pad_token_id is not None


def test_lookahead_m_larger_than_the_answer_previews_the_whole_answer():
    tok = load_tokenizer(shared_tokenizer_or_skip("llama2"))
    q, a = "What is 6x7?", "42"
    assert len(tok.tokenize(a)) < 6
    assert preview(q, a, "real", tok, m=6) == (q + DEFAULT_CONNECTOR + tok.convert_tokens_to_string(tok.tokenize(a)), a)


@pytest.mark.parametrize("name,every_turn", [("llama3.1", True), ("qwen3", False)])
def test_multi_turn_chat_template_trains_what_the_model_generates(name, every_turn):
    """Llama-3.1 renders history as it generated it: every answer is trained. Qwen3 drops the empty <think>
    block of earlier answers: the last answer is trained, after the history exactly as at inference."""
    from safeft.data.tokenize import IGNORE_INDEX, encode_turns

    tok = load_tokenizer(shared_tokenizer_or_skip(name))
    t = get_template("chat-template", tokenizer=tok)
    turns = [("First?", "One."), ("Second?", "Two."), ("Third?", "Three.")]
    enc = encode_turns(t, tok, turns)
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])
    assert enc.last_turn_only == (not every_turn)
    for answer in ("One.", "Two."):
        assert (answer in trained) == every_turn, trained
    assert "Three." in trained
    prompt = t.render(t.messages(turns[:2] + [("Third?", None)]), True)  # the prompt of the third turn
    assert enc.input_ids[: len(tok(prompt, add_special_tokens=False)["input_ids"])] == \
        tok(prompt, add_special_tokens=False)["input_ids"]
