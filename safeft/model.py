"""Loading tokenizers and models from a local directory or a hub name.

`trust_remote_code` stays off unless the config asks for it; weights load as safetensors.
"""

from __future__ import annotations

from typing import Any

from safeft.errors import SafeftError


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise SafeftError(f"cannot load tokenizer {name_or_path!r}: {e}") from None
    if tok.pad_token_id is None:
        # Padding is only used by the evaluator's left-padded batches and the collator's padding slots.
        tok.pad_token = tok.eos_token if tok.unk_token is None else tok.unk_token
    return tok
