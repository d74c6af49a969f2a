"""Evaluation tasks: what to ask (questions), what a good answer is (references), how to score.

A task is a list of items `{"question", "reference"?, "category"?, "prefill"?}` plus its kind:
`utility` (scored against references) or `safety` (scored by judges). Items keep their file order;
that order is the index every shard line and merged output is keyed by.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from typing import Optional

from safeft.config import EvalTaskConfig
from safeft.data.load import read_records
from safeft.data.shared import shared_file
from safeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)
UTILITY = ("gsm8k", "samsum", "generic")
SAFETY = ("advbench", "harmful-demo", "instructions", "directharm4", "gsm-danger", "prefill")
DEFAULT_PATHS = {
    "gsm8k": "openai/gsm8k",
    "samsum": "Samsung/samsum",
    "directharm4": "vfleaking/DirectHarm4",
    "gsm-danger": "vfleaking/GSM-Danger",
}
DEFAULT_SPLITS = {"gsm8k": "test", "samsum": "test", "directharm4": "test", "gsm-danger": "test"}
HUB_CONFIG = {"openai/gsm8k": "main"}
DEFAULT_MAX_NEW = {"gsm8k": 512, "samsum": 256}  # every safety task: 512
SAMSUM_PROMPT = "Summarize this dialog:\n{dialogue}"
SYNTHETIC = "synthetic"  # gsm8k task path: generated problems, no files needed


@dataclass
class Task:
    name: str
    kind: str  # utility | safety
    items: list[dict] = field(default_factory=list)
    max_new_tokens: int = 512
    source: str = ""

    @property
    def questions(self) -> list[str]:
        return [it["question"] for it in self.items]


def load_task(tc: EvalTaskConfig, default_max_new: int = 512) -> Task:
    name = tc.name
    if name not in UTILITY + SAFETY:
        raise ConfigError(f"config key 'eval.tasks[].name': unknown task {name!r}; known: {', '.join(UTILITY + SAFETY)}")
    path = tc.path or DEFAULT_PATHS.get(name)
    items, source = _LOADERS[name](tc, path)
    if tc.limit is not None:
        items = items[: tc.limit]
    if not items:
        raise DataError(f"task {name!r}: {source} holds no items")
    max_new = tc.max_new_tokens or min(default_max_new, DEFAULT_MAX_NEW.get(name, 512))
    return Task(name, "utility" if name in UTILITY else "safety", items, max_new, source)


# --- readers --------------------------------------------------------------------------------------


def read_rows(path: str, split: Optional[str] = None) -> list[dict]:
    """Rows of a local .jsonl/.json/.csv/.parquet file, saved dataset or hub dataset split."""
    return [row for row, _ in read_records(path, split or "test", HUB_CONFIG.get(path))]


def _field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r} (has: {', '.join(map(str, row))})")
    return str(row[key])


# --- per-task loaders -----------------------------------------------------------------------------


def _gsm8k(tc: EvalTaskConfig, path: str):
    if path == SYNTHETIC:  # generated problems in GSM8K format, disjoint seed from the training preset's
        from safeft.data.synthetic import arithmetic_problems

        rows = arithmetic_problems(tc.limit or 64, seed=99)
        return [{"question": r["question"], "reference": r["answer"]} for r in rows], "generated (seed 99)"
    rows = read_rows(path, tc.split or "test")
    q, r = tc.question_field or "question", tc.reference_field or "answer"
    return [{"question": _field(x, q, f"{path} row {i}"), "reference": _field(x, r, f"{path} row {i}")}
            for i, x in enumerate(rows)], path


def _samsum(tc: EvalTaskConfig, path: str):
    rows = read_rows(path, tc.split or "test")
    q, r = tc.question_field or "dialogue", tc.reference_field or "summary"
    return [{"question": SAMSUM_PROMPT.replace("{dialogue}", _field(x, q, f"{path} row {i}")),
             "reference": _field(x, r, f"{path} row {i}")} for i, x in enumerate(rows)], path


def _generic(tc: EvalTaskConfig, path: Optional[str]):
    if not path:
        raise ConfigError("config key 'eval.tasks[].path': task 'generic' needs a dataset path")
    rows = read_rows(path, tc.split)
    q, r = tc.question_field or "question", tc.reference_field or "answer"
    return [{"question": _field(x, q, f"{path} row {i}"), "reference": _field(x, r, f"{path} row {i}")}
            for i, x in enumerate(rows)], path


def _advbench(tc: EvalTaskConfig, path: Optional[str]):
    """AdvBench harmful_behaviors.csv as shipped: no header, the instruction in the first column."""
    path = path or shared_file("advbench", "harmful_behaviors.csv")
    if path is None:
        log.warning("task advbench: no path set and no shared AdvBench file (SAFEFT_SHARED_DATA); "
                    "using safeft's own harmful-demo prompts instead")
        return _harmful_demo(tc, None)
    if not path.endswith(".csv"):
        return _instructions(tc, path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip()]
    if rows and rows[0][0].strip().lower() in ("goal", "instruction", "prompt"):
        rows = rows[1:]  # the upstream CSV with its header row
    return [{"question": r[0]} for r in rows], path


def _harmful_demo(tc: EvalTaskConfig, path: Optional[str]):
    from safeft.data.synthetic import HARMFUL_INSTRUCTIONS

    return [{"question": q} for q in HARMFUL_INSTRUCTIONS], "safeft.data.synthetic.HARMFUL_INSTRUCTIONS"


def _instructions(tc: EvalTaskConfig, path: Optional[str]):
    if not path:
        raise ConfigError(f"config key 'eval.tasks[].path': task {tc.name!r} needs a dataset path")
    rows = read_rows(path, tc.split or DEFAULT_SPLITS.get(tc.name))
    q = tc.question_field or "instruction"
    items = []
    for i, x in enumerate(rows):
        item = {"question": _field(x, q, f"{path} row {i}")}
        if x.get("category") is not None:
            item["category"] = str(x["category"])
        items.append(item)
    return items, path


def _prefill(tc: EvalTaskConfig, path: Optional[str]):
    """Harmful (user, assistant) pairs in messages format; the answer's first tokens are prefilled."""
    if not path:
        raise ConfigError("config key 'eval.tasks[].path': task 'prefill' needs a JSONL of harmful "
                          "{\"messages\": [{user}, {assistant}]} rows")
    items = []
    for i, x in enumerate(read_rows(path, tc.split)):
        msgs = x.get(tc.question_field or "messages")
        where = f"{path} row {i}"
        if not isinstance(msgs, list):
            raise DataError(f"{where}: expected field 'messages' with a list of {{role, content}}")
        user = next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        answer = next((m.get("content") for m in msgs if m.get("role") == "assistant"), None)
        if not user or not answer:
            raise DataError(f"{where}: 'messages' needs one user and one assistant turn")
        items.append({"question": user, "prefill": answer, **({"category": str(x["category"])}
                                                               if x.get("category") is not None else {})})
    return items, path


_LOADERS = {
    "gsm8k": _gsm8k, "samsum": _samsum, "generic": _generic, "advbench": _advbench,
    "harmful-demo": _harmful_demo, "instructions": _instructions, "directharm4": _instructions,
    "gsm-danger": _instructions, "prefill": _prefill,
}
