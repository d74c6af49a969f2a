"""Show what the model is trained on: rendered examples with the trained (loss) span marked."""

from __future__ import annotations

from typing import Any, Iterator

from safeft.data.tokenize import IGNORE_INDEX

OPEN, CLOSE = "[[", "]]"


def spans(tokenizer: Any, input_ids: list[int], labels: list[int]) -> Iterator[tuple[str, bool]]:
    """(text, trained) pieces: consecutive tokens with the same trained flag decoded together."""
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            yield text, labels[start] != IGNORE_INDEX
            start = i


def plain(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """Trained spans wrapped in [[...]] (for logs and non-terminals)."""
    return "".join(f"{OPEN}{t}{CLOSE}" if trained else t for t, trained in spans(tokenizer, input_ids, labels))


def rich_text(tokenizer: Any, input_ids: list[int], labels: list[int]) -> Any:
    """A rich Text: prompt dim, trained tokens highlighted."""
    from rich.text import Text

    out = Text()
    for text, trained in spans(tokenizer, input_ids, labels):
        out.append(text, style="bold green" if trained else "dim")
    return out


def preview_examples(cfg: Any, n: int, tokenizer: Any) -> list[dict]:
    """The first `n` training examples after lookahead, template and length policy (no packing)."""
    import copy

    from safeft.data.load import load_examples
    from safeft.data.pipeline import _previewed
    from safeft.data.tokenize import encode_turns, fit_length
    from safeft.templates import get_template

    data = copy.deepcopy(cfg.data)
    if not data.mixture:
        data.limit = min(data.limit or n, n)
    template = get_template(cfg.template.train, tokenizer=tokenizer, system=cfg.template.train_system)
    job = {"lookahead": cfg.lookahead, "tokenizer": tokenizer}
    out = []
    for ex in load_examples(data)[:n]:
        enc = encode_turns(template, tokenizer, _previewed(ex, job))
        fitted = fit_length(enc, data.max_seq_len, data.overlong)
        out.append({"example": ex, "encoded": fitted, "tokens": len(enc.input_ids)})
    return out
