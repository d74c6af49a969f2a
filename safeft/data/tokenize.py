"""Tokenise templated examples into input ids and response-only labels.

Labels are -100 on every prompt token; each answer is followed by EOS. The prompt is tokenised on its
own and must be a token prefix of the tokenised training text: that is what makes the label mask
exact and what makes test-time prompts identical to training prompts. A tokenizer that breaks it
gets an error naming the template and the diverging tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from safeft.errors import TemplateError
from safeft.templates import ChatTemplate, PromptStyle

IGNORE_INDEX = -100
Turns = Sequence[tuple[str, str]]  # [(question, answer), ...]; one pair for single-turn data


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    last_turn_only: bool = False  # a multi-turn example whose template rewrites history (see below)

    @property
    def loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def encode_prompt(template: PromptStyle | ChatTemplate, tokenizer: Any, question: str) -> list[int]:
    """Token ids of a test-time prompt, exactly as the training side tokenises a prompt."""
    return tokenizer(template.prompt(question), add_special_tokens=template.add_special_tokens)["input_ids"]


def _check_prefix(template: Any, tokenizer: Any, prompt_ids: list[int], full_ids: list[int],
                  what: tuple[str, str] = ("the prompt", "training text")) -> None:
    n = len(prompt_ids)
    if full_ids[:n] == prompt_ids:
        return
    i = next((k for k, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(n, len(full_ids)))
    show = lambda ids: tokenizer.convert_ids_to_tokens(ids[max(0, i - 2): i + 3])  # noqa: E731
    raise TemplateError(
        f"template {template.name!r}: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} tokenises {what[0]} "
        f"differently alone than inside the {what[1]}, at token {i}: {what[0]} {show(prompt_ids)} vs "
        f"{what[1]} {show(full_ids)}. Use a template whose turns end at a token boundary."
    )


def _ptst_turns(template: PromptStyle, tokenizer: Any, turns: Turns) -> tuple[list[int], list[int]]:
    """Llama-2 convention: every turn is `<s> prompt answer </s>`; the system block only in the first."""
    ids: list[int] = []
    labels: list[int] = []
    prompts = [template.prompt(q, first_turn=i == 0) for i, (q, _) in enumerate(turns)]
    fulls = [template.full(q, a, first_turn=i == 0) for i, (q, a) in enumerate(turns)]
    enc = tokenizer(prompts + fulls, add_special_tokens=True)["input_ids"]
    for p_ids, f_ids in zip(enc[: len(turns)], enc[len(turns):]):
        _check_prefix(template, tokenizer, p_ids, f_ids)
        answer = f_ids[len(p_ids):] + [tokenizer.eos_token_id]
        ids += p_ids + answer
        labels += [IGNORE_INDEX] * len(p_ids) + answer
    return ids, labels


def _chat_template_turns(template: ChatTemplate, tokenizer: Any, turns: Turns) -> Encoded:
    """Render growing prefixes of the conversation; each assistant span (with its end marker) is trained.

    Some templates render an earlier answer differently once it is history: Qwen3 drops the (empty)
    `<think>` block that its generation prompt opens every answer with. The answer as generated and the
    answer as history cannot both be in one sequence, so such a conversation trains its LAST answer only,
    after the history exactly as the template renders it at that turn (what the model sees at inference),
    and is marked `last_turn_only` (counted in the data stats). Only a template that rewrites the history
    text gets this; where the text is kept but its tokens differ (a turn that does not end at a token
    boundary, an end-of-turn token the template does not render), it is an error naming the tokens."""
    boundaries: list[str] = []
    for k in range(len(turns)):
        prompt = template.render(template.messages(list(turns[:k]) + [(turns[k][0], None)]), True)
        full = template.render(template.messages(list(turns[: k + 1])), False)
        boundaries += [prompt, full]
    enc = tokenizer(boundaries, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    labels: list[int] = []
    for k in range(0, len(enc), 2):
        p_ids, f_ids = enc[k], enc[k + 1]
        if k and not boundaries[k].startswith(boundaries[k - 1]):  # the history is rendered differently
            return _last_turn_only(template, tokenizer, enc[-2], enc[-1])
        if k:
            _check_prefix(template, tokenizer, ids, p_ids, ("the conversation so far", "next turn's prompt"))
        _check_prefix(template, tokenizer, p_ids, f_ids)
        answer, trained = _answer_labels(template, tokenizer, f_ids[len(p_ids):])
        labels += [IGNORE_INDEX] * (len(p_ids) - len(ids)) + trained
        ids = p_ids + answer
    return Encoded(ids, labels)


def _answer_labels(template: ChatTemplate, tokenizer: Any, answer: list[int]) -> tuple[list[int], list[int]]:
    """(answer ids, their labels) for one answer span; an EOS is appended when the template has no end
    marker. Trained: the answer through its end-of-turn token; the template's separator after it (ChatML's
    "\n") stays in the input only, since generation stops at that token."""
    ends = {tokenizer.eos_token_id, template.end_token_id()} - {None}
    cut = max((j for j, t in enumerate(answer) if t in ends), default=None)
    if cut is None:
        answer = answer + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        cut = len(answer) - 1
    return answer, answer[: cut + 1] + [IGNORE_INDEX] * (len(answer) - cut - 1)


def _last_turn_only(template: ChatTemplate, tokenizer: Any, p_ids: list[int], f_ids: list[int]) -> Encoded:
    _check_prefix(template, tokenizer, p_ids, f_ids)
    answer, trained = _answer_labels(template, tokenizer, f_ids[len(p_ids):])
    return Encoded(p_ids + answer, [IGNORE_INDEX] * len(p_ids) + trained, last_turn_only=True)


def encode_turns(template: PromptStyle | ChatTemplate, tokenizer: Any, turns: Turns) -> Encoded:
    if not turns:
        raise TemplateError("an example needs at least one (question, answer) turn")
    if isinstance(template, ChatTemplate):
        return _chat_template_turns(template, tokenizer, turns)
    return Encoded(*_ptst_turns(template, tokenizer, turns))


def batch_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """`tokenizer(texts)["input_ids"]`, through the Rust tokenizer's offset-free batch call when it is safe.

    A plain fast tokenizer (no truncation, padding or split_special_tokens) gives the same ids either way;
    skipping offsets and BatchEncoding conversion makes the data pipeline's tokenisation ~1.5x faster.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None or backend.truncation or backend.padding or getattr(tokenizer, "split_special_tokens", False):
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]


def encode_single_batch(
    template: PromptStyle | ChatTemplate, tokenizer: Any, questions: list[str], answers: list[str]
) -> list[Encoded]:
    """Single-turn examples in one tokenizer call (the fast path of the data pipeline)."""
    if isinstance(template, ChatTemplate):
        return [encode_turns(template, tokenizer, [(q, a)]) for q, a in zip(questions, answers)]
    prompts = [template.prompt(q) for q in questions]
    fulls = [template.full(q, a) for q, a in zip(questions, answers)]
    enc = batch_ids(tokenizer, prompts + fulls, add_special_tokens=True)
    n = len(prompts)
    eos = tokenizer.eos_token_id
    out = []
    for p_ids, f_ids in zip(enc[:n], enc[n:]):
        _check_prefix(template, tokenizer, p_ids, f_ids)
        answer = f_ids[len(p_ids):]
        answer.append(eos)
        out.append(Encoded(f_ids[: len(p_ids)] + answer, [IGNORE_INDEX] * len(p_ids) + answer))
    return out


def fit_length(example: Encoded, max_len: int, overlong: str) -> Optional[Encoded]:
    """Apply the length policy: None means drop (too long under 'drop', or nothing left to learn)."""
    if len(example.input_ids) > max_len:
        if overlong == "drop":
            return None
        example = Encoded(example.input_ids[:max_len], example.labels[:max_len], truncated=True,
                          last_turn_only=example.last_turn_only)
    if example.loss_tokens == 0:
        return None
    return example
