"""Response-only label masks, EOS, multi-turn masks and the length policy."""

from __future__ import annotations

import pytest

from safeft.data.tokenize import IGNORE_INDEX, Encoded, encode_prompt, encode_single_batch, encode_turns, fit_length
from safeft.errors import TemplateError
from safeft.templates import get_template

PTST = ["text:vanilla", "text:alpaca", "chat:vanilla", "chat:alpaca", "chat:llama", "chat:llama-short", "chat:mpt"]
QA = [("What is 2+2?", "It is 4.\n#### 4"), ("Name a colour", "Blue."), ("Ünïcode {q} %s?", "Ja, naïve.")]


def segments(enc: Encoded) -> list[tuple[bool, list[int]]]:
    """Maximal runs of (trained?, ids)."""
    out: list[tuple[bool, list[int]]] = []
    for i, lab in zip(enc.input_ids, enc.labels):
        trained = lab != IGNORE_INDEX
        if out and out[-1][0] == trained:
            out[-1][1].append(i)
        else:
            out.append((trained, [i]))
    return out


def _templates(tok):
    return [get_template(n) for n in PTST] + [get_template("chat-template", tokenizer=tok, system="llama2")]


@pytest.mark.parametrize("question,answer", QA)
def test_single_turn_mask_and_eos(tokenizer, question, answer):
    for t in _templates(tokenizer):
        enc = encode_turns(t, tokenizer, [(question, answer)])
        prompt = encode_prompt(t, tokenizer, question)
        n = len(prompt)
        assert enc.input_ids[:n] == prompt, t.name
        assert enc.labels[:n] == [IGNORE_INDEX] * n, t.name
        assert enc.labels[n:] == enc.input_ids[n:], t.name  # every answer token is trained
        assert enc.input_ids[-1] == tokenizer.eos_token_id and enc.input_ids.count(tokenizer.eos_token_id) == 1
        sep = "" if t.name == "text:alpaca" else " "
        assert tokenizer.decode(enc.input_ids[n:]) == sep + answer + "</s>", t.name
        assert enc.loss_tokens == len(enc.input_ids) - n


def test_prompt_starts_with_exactly_one_bos(tokenizer):
    for t in _templates(tokenizer):
        ids = encode_turns(t, tokenizer, [QA[0]]).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id, t.name


def test_single_batch_equals_encode_turns(tokenizer):
    qs, ans = [q for q, _ in QA], [a for _, a in QA]
    for t in _templates(tokenizer):
        batch = encode_single_batch(t, tokenizer, qs, ans)
        for enc, (q, a) in zip(batch, QA):
            ref = encode_turns(t, tokenizer, [(q, a)])
            assert (enc.input_ids, enc.labels) == (ref.input_ids, ref.labels), t.name


def test_multi_turn_ptst_trains_every_assistant_turn_and_nothing_else(tokenizer):
    t = get_template("chat:llama")
    turns = [("First?", "One."), ("Second?", "Two.\n#### 2"), ("Third?", "Three.")]
    enc = encode_turns(t, tokenizer, turns)
    segs = segments(enc)
    assert [trained for trained, _ in segs] == [False, True] * 3
    dec = [tokenizer.decode(ids) for _, ids in segs]
    assert dec[1::2] == [" One.</s>", " Two.\n#### 2</s>", " Three.</s>"]
    assert dec[0].startswith("<s>[INST] <<SYS>>\nYou are a helpful") and dec[0].endswith("Question: First? [/INST]")
    assert dec[2::2] == ["<s>[INST] Question: Second? [/INST]", "<s>[INST] Question: Third? [/INST]"]


def test_multi_turn_chat_template_trains_every_assistant_turn_and_nothing_else(tokenizer):
    t = get_template("chat-template", tokenizer=tokenizer, system="mpt")
    turns = [("First?", "One."), ("Second?", "Two."), ("Third?", "Three.")]
    enc = encode_turns(t, tokenizer, turns)
    segs = segments(enc)
    assert [trained for trained, _ in segs] == [False, True] * 3
    dec = [tokenizer.decode(ids) for _, ids in segs]
    assert dec[1::2] == [" One.</s>", " Two.</s>", " Three.</s>"]
    assert dec[0] == "<s>[INST] <<SYS>>\nA conversation between a user and an LLM-based AI assistant. The assistant " \
        "gives helpful and honest answers.\n<</SYS>>\n\nFirst? [/INST]"
    assert dec[2::2] == ["<s>[INST] Second? [/INST]", "<s>[INST] Third? [/INST]"]
    # the whole sequence is the tokenised rendering of the conversation, with no EOS added twice
    full = t.render(t.messages(turns), add_generation_prompt=False)
    assert enc.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_chat_template_without_eos_in_template_gets_one(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tok.chat_template.replace(" + eos_token", "")
    enc = encode_turns(get_template("chat-template", tokenizer=tok), tok, [("Q", "A.")])
    assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id


def test_multi_turn_history_that_tokenises_differently_is_an_error_not_a_last_turn_fallback(tokenizer):
    """Only a template that rewrites the history TEXT (Qwen3 dropping <think>) trains the last answer alone.
    Here the text is kept, but each answer gets an EOS the template does not render, so the history's tokens
    differ from the next prompt's: an error naming the template and the tokens (it was silently last-turn)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tok.chat_template.replace(" + eos_token", "")
    t = get_template("chat-template", tokenizer=tok)
    with pytest.raises(TemplateError) as e:
        encode_turns(t, tok, [("First?", "One."), ("Second?", "Two.")])
    msg = str(e.value)
    assert msg.startswith("template 'chat-template") and "the conversation so far [" in msg and "'</s>'" in msg
    assert not encode_turns(t, tok, [("First?", "One.")]).last_turn_only  # one turn: nothing to compare


def test_no_turns_is_an_error(tokenizer):
    with pytest.raises(TemplateError, match="at least one"):
        encode_turns(get_template("chat:vanilla"), tokenizer, [])


# --- fit_length -----------------------------------------------------------------------------------


def _example(n_prompt: int, n_answer: int) -> Encoded:
    ids = list(range(10, 10 + n_prompt + n_answer))
    return Encoded(ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:])


def test_fit_length_keeps_examples_that_fit():
    ex = _example(5, 3)
    assert fit_length(ex, 8, "truncate") is ex
    assert fit_length(ex, 8, "drop") is ex


def test_fit_length_truncates_from_the_end():
    out = fit_length(_example(5, 10), 8, "truncate")
    assert out.truncated and out.input_ids == list(range(10, 18))
    assert out.labels == [IGNORE_INDEX] * 5 + [15, 16, 17] and out.loss_tokens == 3


def test_fit_length_drops_overlong_under_drop():
    assert fit_length(_example(5, 10), 8, "drop") is None


def test_fit_length_drops_examples_with_nothing_left_to_learn():
    assert fit_length(_example(8, 4), 8, "truncate") is None  # truncation removed every answer token
    assert fit_length(_example(3, 0), 8, "truncate") is None  # nothing to learn at all
