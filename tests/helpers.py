"""Test helpers shared by every test module (import from here; define nothing twice)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"
GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"
SAMSUM_TEST = SHARED_DATA / "samsum" / "test.json"
ADVBENCH = SHARED_DATA / "advbench" / "harmful_behaviors.csv"


def have_shared_data() -> bool:
    return GSM8K_TRAIN.is_file()


def cpu_env(**extra: str) -> dict:
    """Environment for subprocesses: DeepSpeed on CPU, the repo importable, quiet tokenizers."""
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env
