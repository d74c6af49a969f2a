"""LookAhead Tuning previews (ANCHORS.md section 2) and how they compose with templates."""

from __future__ import annotations

import pytest

from safeft.data.tokenize import IGNORE_INDEX, encode_prompt, encode_turns
from safeft.errors import ConfigError
from safeft.lookahead import preview, preview_batch
from safeft.templates import get_template

CONNECTOR = " The answer begins with: "
PREFIX = "Let's solve this problem. "
Q = "Ava has 3 apples. Ben gives Ava 4 more. How many apples does Ava have now?"
A = "Ava has 3+4=<<3+4=7>>7 apples.\n#### 7"


def head(tok, text, m):
    return tok.convert_tokens_to_string(tok.tokenize(text)[:m])


def test_real_mode_previews_the_first_m_answer_tokens(tokenizer):
    expected_head = head(tokenizer, A, 6)
    assert len(tokenizer.tokenize(A)) > 6 and expected_head != A  # the preview really is partial
    assert A.startswith(expected_head)
    assert preview(Q, A, "real", tokenizer) == (Q + CONNECTOR + expected_head, A)


@pytest.mark.parametrize("m", [1, 3, 1000])
def test_real_mode_m_counts_subword_tokens(tokenizer, m):
    x, y = preview(Q, A, "real", tokenizer, m=m)
    assert x == Q + CONNECTOR + head(tokenizer, A, m) and y == A
    if m == 1000:
        assert x == Q + CONNECTOR + A  # an answer shorter than m is previewed whole


def test_real_mode_non_ascii_answer(tokenizer):
    answer = "Ünïcode café 日本語 is the answer"
    x, _ = preview(Q, answer, "real", tokenizer, m=4)
    assert x == Q + CONNECTOR + head(tokenizer, answer, 4)
    # Found: when m cuts a multi-byte character, a byte-level tokenizer joins the partial bytes into
    # U+FFFD, exactly as the paper's formula does; everything before it is the answer's start.
    shown = x[len(Q + CONNECTOR):]
    assert answer.startswith(shown.removesuffix("\ufffd")) and len(shown.removesuffix("\ufffd")) >= 2


def test_virtual_mode_uses_the_literal_defaults():
    assert preview(Q, A, "virtual") == (Q + CONNECTOR + PREFIX, PREFIX + A)


def test_custom_prefix_and_connector():
    assert preview("q", "a", "virtual", prefix="P: ", connector=" | ") == ("q | P: ", "P: a")


def test_none_mode_changes_nothing():
    assert preview(Q, A, "none") == (Q, A)


def test_real_mode_needs_a_tokenizer():
    with pytest.raises(ConfigError, match="needs the model tokenizer"):
        preview(Q, A, "real")


def test_unknown_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"lookahead.mode.*'reel'.*none, real, virtual"):
        preview(Q, A, "reel")


def test_preview_batch_matches_preview(tokenizer):
    qs, ans = ["q1", "q2"], ["first answer here", "second one"]
    xs, ys = preview_batch(qs, ans, "real", tokenizer, m=2)
    assert list(zip(xs, ys)) == [preview(q, a, "real", tokenizer, m=2) for q, a in zip(qs, ans)]


# --- composition with templates -------------------------------------------------------------------


def _trained_text(tok, enc):
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("name", ["chat:vanilla", "text:alpaca", "chat:llama"])
def test_real_preview_lands_inside_the_prompt(tokenizer, name):
    t = get_template(name)
    x, y = preview(Q, A, "real", tokenizer)
    prompt = t.prompt(x)
    assert (Q + CONNECTOR + head(tokenizer, A, 6)) in prompt
    if name.startswith("chat:"):
        assert prompt.endswith(CONNECTOR + head(tokenizer, A, 6) + " [/INST]")
    enc = encode_turns(t, tokenizer, [(x, y)])
    sep = "" if name == "text:alpaca" else " "
    assert _trained_text(tokenizer, enc) == sep + A + "</s>"  # the trained span is the unchanged answer


@pytest.mark.parametrize("name", ["chat:vanilla", "text:alpaca"])
def test_virtual_prefix_starts_the_trained_span(tokenizer, name):
    t = get_template(name)
    x, y = preview(Q, A, "virtual")
    enc = encode_turns(t, tokenizer, [(x, y)])
    sep = "" if name == "text:alpaca" else " "
    assert _trained_text(tokenizer, enc) == sep + PREFIX + A + "</s>"
    n_prompt = len(encode_prompt(t, tokenizer, x))
    assert tokenizer.decode(enc.input_ids[:n_prompt], skip_special_tokens=True) == t.prompt(Q + CONNECTOR + PREFIX)


def test_virtual_with_chat_template(tokenizer):
    t = get_template("chat-template", tokenizer=tokenizer, system="none")
    x, y = preview(Q, A, "virtual")
    enc = encode_turns(t, tokenizer, [(x, y)])
    assert _trained_text(tokenizer, enc) == " " + PREFIX + A + "</s>"
    assert t.prompt(x) == "<s>[INST] " + Q + CONNECTOR + PREFIX + " [/INST]"

