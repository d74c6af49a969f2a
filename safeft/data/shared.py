"""Benchmark data kept beside a checkout (GSM8K, SAMSum test, AdvBench), never copied into the repository.

Looked up in `$SAFEFT_SHARED_DATA`, else in `shared/data` next to the checkout or next to any folder
above it (a clone in /work/ci/safeft finds /work/shared/data). Absent data is not an error: callers
fall back to generated data or skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from safeft import REPO

ENV_VAR = "SAFEFT_SHARED_DATA"


def shared_data_dir() -> Optional[Path]:
    """The shared data folder, or None when there is none."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def shared_file(*parts: str) -> Optional[str]:
    """The path of `shared/data/<parts...>` when that file exists, else None."""
    root = shared_data_dir()
    path = root.joinpath(*parts) if root else None
    return str(path) if path and path.is_file() else None


def shared_tokenizer(name: str) -> Optional[str]:
    """The folder `shared/data/tokenizers/<name>` (llama2, llama3.1, qwen3) when it holds a tokenizer, else None."""
    root = shared_data_dir()
    path = root / "tokenizers" / name if root else None
    return str(path) if path and (path / "tokenizer_config.json").is_file() else None
