"""LookAhead Tuning (Liu et al. 2025): training data previews the start of the answer.

Applied to training data only, after field mapping and before the template; evaluation prompts are
never changed.
- real:    x' = x + connector + first m answer tokens (model tokenizer, joined back by the tokenizer);  y' = y
- virtual: x' = x + connector + prefix;  y' = prefix + y
An answer shorter than m tokens is previewed whole (the reference's `tokenize(y)[:m]` slice does the same);
that is not an error, since short GSM8K/SAMSum answers are ordinary data.
"""

from __future__ import annotations

from typing import Any, Optional

from safeft.errors import ConfigError

DEFAULT_PREFIX = "Let's solve this problem. "
DEFAULT_CONNECTOR = " The answer begins with: "


def preview(
    question: str,
    answer: str,
    mode: str,
    tokenizer: Optional[Any] = None,
    m: int = 6,
    prefix: str = DEFAULT_PREFIX,
    connector: str = DEFAULT_CONNECTOR,
) -> tuple[str, str]:
    """Return the (question, answer) pair a LookAhead mode trains on."""
    if mode == "none":
        return question, answer
    if mode == "virtual":
        return question + connector + prefix, prefix + answer
    if mode == "real":
        if tokenizer is None:
            raise ConfigError("lookahead.mode 'real' needs the model tokenizer to count answer tokens")
        head = tokenizer.convert_tokens_to_string(tokenizer.tokenize(answer)[:m])
        return question + connector + head, answer
    raise ConfigError(f"config key 'lookahead.mode': {mode!r} is not one of none, real, virtual")


def preview_batch(
    questions: list[str], answers: list[str], mode: str, tokenizer: Optional[Any] = None, **kwargs: Any
) -> tuple[list[str], list[str]]:
    """`preview` over lists (the data pipeline works in batches)."""
    pairs = [preview(q, a, mode, tokenizer, **kwargs) for q, a in zip(questions, answers)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
