"""PTST templates byte for byte (ANCHORS.md section 1), the prompt-prefix property, and chat-template.

Expected strings are written out literally here, never taken from safeft.templates' constants, so a
typo in a system prompt fails the test.
"""

from __future__ import annotations

import string

import pytest

from safeft.data.tokenize import encode_turns
from safeft.errors import TemplateError
from safeft.templates import ChatTemplate, get_template, template_names

LLAMA_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
LLAMA_SHORT_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
)
MPT_SYS = "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers."
ALPACA_SYS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# The seven PTST styles with %s where the question goes (ANCHORS.md section 1).
EXPECTED = {
    "text:vanilla": "Question: %s\nAnswer:",
    "text:alpaca": ALPACA_SYS + "\n\n### Instruction:\n%s\n\n### Response:\n",
    "chat:vanilla": "[INST] Question: %s [/INST]",
    "chat:alpaca": "[INST] <<SYS>>\n" + ALPACA_SYS + "\n<</SYS>>\n\n### Instruction:\n%s\n\n### Response:\n [/INST]",
    "chat:llama": "[INST] <<SYS>>\n" + LLAMA_SYS + "\n<</SYS>>\n\nQuestion: %s [/INST]",
    "chat:llama-short": "[INST] <<SYS>>\n" + LLAMA_SHORT_SYS + "\n<</SYS>>\n\nQuestion: %s [/INST]",
    "chat:mpt": "[INST] <<SYS>>\n" + MPT_SYS + "\n<</SYS>>\n\nQuestion: %s [/INST]",
}
# What separates prompt and answer in the training text. Found: a space everywhere except
# text:alpaca, whose prompt ends in "\n" and is followed by the answer directly.
SEPARATOR = {name: "" if name == "text:alpaca" else " " for name in EXPECTED}

TRICKY = "100% of {} and {q} %s %d {0}\nline two\ttab — naïve café 日本語 🙂"
QA = [
    ("What is 2+2?", "It is 4.\n#### 4"),
    (TRICKY, "Ünïcode answer: {q} %s"),
    ("Ends with a newline\n", "\nstarts with a newline"),
    ("x", "-5 is negative"),
    ("Spaces  ", "  two leading spaces"),
    ("Punctuation?", "...and more!"),
]


def fill(pattern: str, question: str) -> str:
    return pattern.replace("%s", question)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prompt_strings_byte_for_byte(name):
    assert get_template(name).prompt("What is 2+2?") == fill(EXPECTED[name], "What is 2+2?")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_gsm_alias_is_the_same_template(name):
    assert get_template("gsm:" + name).prompt("Q") == fill(EXPECTED[name], "Q")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tricky_question_survives_verbatim(name):
    t = get_template(name)
    assert t.prompt(TRICKY) == fill(EXPECTED[name], TRICKY)
    assert t.full(TRICKY, "%s {q}") == fill(EXPECTED[name], TRICKY) + SEPARATOR[name] + "%s {q}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_training_text_is_prompt_separator_answer(name):
    t = get_template(name)
    answer = "It is 4.\n#### 4"
    assert t.full("What is 2+2?", answer) == fill(EXPECTED[name], "What is 2+2?") + SEPARATOR[name] + answer


def test_later_turns_carry_no_system_block():
    t = get_template("chat:llama")
    assert t.prompt("Q2", first_turn=False) == "[INST] Question: Q2 [/INST]"
    assert get_template("chat:alpaca").prompt("Q2", first_turn=False) == (
        "[INST] ### Instruction:\nQ2\n\n### Response:\n [/INST]"
    )


def test_harmful_instruction_uses_the_same_test_template():
    assert get_template("chat:llama").prompt("Do harm").endswith("\n<</SYS>>\n\nQuestion: Do harm [/INST]")


def test_unknown_template_suggests_a_close_name():
    with pytest.raises(TemplateError, match=r"unknown template 'chat:lama'.*did you mean 'chat:llama'"):
        get_template("chat:lama")


def test_ptst_style_rejects_a_system_argument():
    with pytest.raises(TemplateError, match="applies to 'chat-template' only"):
        get_template("chat:vanilla", system="llama2")


def test_non_string_question_is_a_template_error():
    with pytest.raises(TemplateError, match="question must be a string"):
        get_template("chat:vanilla").prompt(None)


def test_template_names_lists_every_style():
    assert set(EXPECTED) | {"chat-template"} == set(template_names())


# --- the prompt-prefix property -------------------------------------------------------------------


def _ids(tok, text, special):
    return tok(text, add_special_tokens=special)["input_ids"]


def _all_templates(tok):
    out = [get_template(name) for name in EXPECTED]
    out += [get_template("chat-template", tokenizer=tok, system=s) for s in ("none", "llama2", "Be brief. {q} %s")]
    return out


@pytest.mark.parametrize("question,answer", QA)
def test_prompt_tokens_are_a_prefix_of_training_tokens(tokenizer, question, answer):
    for t in _all_templates(tokenizer):
        p = _ids(tokenizer, t.prompt(question), t.add_special_tokens)
        f = _ids(tokenizer, t.full(question, answer), t.add_special_tokens)
        assert f[: len(p)] == p, t.name
        assert len(f) > len(p), t.name
        # encode_turns enforces the same property; it must accept every template here
        assert encode_turns(t, tokenizer, [(question, answer)]).input_ids[: len(p)] == p


def boundary_merging_tokenizer():
    """Character-level BPE whose only merge, '] ', crosses the '[/INST]' | ' answer' boundary."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + chars + ["] "])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("]", " ")], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.mark.parametrize("name", ["chat:vanilla", "chat:llama", "gsm:chat:mpt"])
def test_tokenizer_that_merges_across_the_boundary_is_rejected(name):
    tok = boundary_merging_tokenizer()
    t = get_template(name)
    p, f = _ids(tok, t.prompt("hi"), True), _ids(tok, t.full("hi", "A."), True)
    assert f[: len(p)] != p  # the construction really breaks the property
    with pytest.raises(TemplateError) as e:
        encode_turns(t, tok, [("hi", "A.")])
    msg = str(e.value)
    assert f"template {t.name!r}" in msg
    assert "prompt [" in msg and "']'" in msg and "'] '" in msg  # the diverging tokens are shown


def test_merging_tokenizer_is_fine_where_the_boundary_is_not_merged():
    tok = boundary_merging_tokenizer()  # text:vanilla ends in ':' which the tokenizer never merges
    enc = encode_turns(get_template("text:vanilla"), tok, [("hi", "A.")])
    trained = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert tok.convert_ids_to_tokens(trained) == [" ", "A", ".", "</s>"]


# --- chat-template --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "system,block",
    [
        ("none", ""),
        ("llama2", "<<SYS>>\n" + LLAMA_SYS + "\n<</SYS>>\n\n"),
        ("llama2-short", "<<SYS>>\n" + LLAMA_SHORT_SYS + "\n<</SYS>>\n\n"),
        ("mpt", "<<SYS>>\n" + MPT_SYS + "\n<</SYS>>\n\n"),
        ("alpaca", "<<SYS>>\n" + ALPACA_SYS + "\n<</SYS>>\n\n"),
        ("Answer in French. {q} %s", "<<SYS>>\nAnswer in French. {q} %s\n<</SYS>>\n\n"),
    ],
)
def test_chat_template_renders_with_each_system(tokenizer, system, block):
    t = get_template("chat-template", tokenizer=tokenizer, system=system)
    assert isinstance(t, ChatTemplate)
    assert t.prompt(TRICKY) == "<s>[INST] " + block + TRICKY + " [/INST]"
    assert t.full("Q", "A.") == "<s>[INST] " + block + "Q [/INST] A.</s>"
    assert t.add_special_tokens is False


def test_chat_template_names_and_inline_system(tokenizer):
    assert get_template("chat-template", tokenizer=tokenizer).name == "chat-template"
    inline = get_template("chat-template:llama2", tokenizer=tokenizer)
    assert inline.name == "chat-template:llama2"
    assert inline.prompt("Q") == get_template("chat-template", tokenizer=tokenizer, system="llama2").prompt("Q")


def test_chat_template_second_turn_has_history(tokenizer):
    t = get_template("chat-template", tokenizer=tokenizer, system="mpt")
    assert t.prompt("Q2", history=(("Q1", "A1"),)) == (
        "<s>[INST] <<SYS>>\n" + MPT_SYS + "\n<</SYS>>\n\nQ1 [/INST] A1</s><s>[INST] Q2 [/INST]"
    )


def test_chat_template_needs_a_tokenizer_with_a_chat_template():
    with pytest.raises(TemplateError, match="needs a tokenizer"):
        get_template("chat-template")
    with pytest.raises(TemplateError, match="has no chat template.*chat:vanilla"):
        get_template("chat-template", tokenizer=boundary_merging_tokenizer())


def test_chat_template_jinja_failure_is_a_template_error():
    tok = boundary_merging_tokenizer()
    tok.chat_template = "{{ raise_exception('no system role') if messages[0]['role'] == 'system' else '' }}"
    with pytest.raises(TemplateError, match="chat template failed: no system role"):
        get_template("chat-template", tokenizer=tok, system="llama2").prompt("Q")
