"""Evaluation tasks: what to ask (questions), what a good answer is (references), how to score.

A task is a list of items `{"question", "reference"?, "category"?, "prefill"?, "label"?, "type"?}` plus its
kind: `utility` (scored against references), `safety` (harmful prompts, scored by judges) or `refusal`
(XSTest: safe and unsafe prompts, refusal rates both ways). Items keep their file order;
that order is the index every shard line and merged output is keyed by.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from safeft.config import EvalTaskConfig
from safeft.data.load import read_records
from safeft.data.shared import shared_file
from safeft.errors import ConfigError, DataError
from safeft.eval.names import ALL_TASKS, DEFAULT_PATHS, SHARED_FILES, task_kind

log = logging.getLogger(__name__)
DEFAULT_SPLITS = {"gsm8k": "test", "samsum": "test", "directharm4": "test", "gsm-danger": "test"}
HUB_CONFIG = {"openai/gsm8k": "main"}
XSTEST_LABELS = ("safe", "unsafe")
SAMSUM_PROMPT = "Summarize this dialog:\n{dialogue}"
SYNTHETIC = "synthetic"  # gsm8k task path: generated problems, no files needed


@dataclass
class Task:
    name: str  # the kind of task (gsm8k, advbench, ...): how it is loaded and scored
    kind: str  # utility | safety | refusal | loss
    items: list[dict] = field(default_factory=list)
    max_new_tokens: int = 512
    source: str = ""
    id: str = ""  # what its outputs and summary rows are called (eval.tasks[].id, default name)

    def __post_init__(self):
        self.id = self.id or self.name

    @property
    def questions(self) -> list[str]:
        return [it["question"] for it in self.items]


def load_task(tc: EvalTaskConfig, default_max_new: int = 512) -> Task:
    """Items of one task. New tokens: the task's `max_new_tokens`, else `eval.max_new_tokens` (every task)."""
    name = tc.name
    if name not in ALL_TASKS:
        raise ConfigError(f"config key 'eval.tasks[].name': unknown task {name!r}; known: {', '.join(ALL_TASKS)}")
    path = tc.path or _shared_default(name) or DEFAULT_PATHS.get(name)
    items, source = _LOADERS[name](tc, path)
    if tc.label is not None:
        items = [it for it in items if it.get("label") == tc.label]
    if tc.limit is not None:
        items = items[: tc.limit]
    if tc.sample is not None:
        items = evenly_spaced(items, tc.sample)
    if not items:
        raise DataError(f"task {name!r}: {source} holds no items")
    return Task(name, task_kind(name), items, tc.max_new_tokens or default_max_new, source, tc.id or name)


def evenly_spaced(items: list, n: int) -> list:
    """n items at evenly spaced positions, in file order (all of them when there are no more than n).
    Deterministic, and spread over files sorted by category or type (HEx-PHI, XSTest, AdvBench)."""
    if n >= len(items):
        return list(items)
    return [items[(k * len(items)) // n] for k in range(n)]


def _shared_default(name: str) -> Optional[str]:
    """The shared data folder's copy (GSM8K test = openai/gsm8k main test; no network needed)."""
    parts = SHARED_FILES.get(name)
    return shared_file(*parts) if parts else None


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
    """`{"instruction", "category"?}` rows: DirectHarm4, GSM-Danger, HEx-PHI (330 rows, 11 categories)."""
    if not path:
        where = f" (or the shared data file {'/'.join(SHARED_FILES[tc.name])})" if tc.name in SHARED_FILES else ""
        raise ConfigError(f"config key 'eval.tasks[].path': task {tc.name!r} needs a dataset path{where}")
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
    """Harmful (user, assistant) pairs; the answer's first tokens are prefilled. Rows are either objects
    `{"messages": [{user}, {assistant}], "category"?}` or, as Harmful-HEx-PHI is published, a bare list
    `[{user}, {assistant}]` per line. Rows without a category take HEx-PHI's when the shared HEx-PHI file
    holds the same user turns in the same order (the published pair of files does)."""
    if not path:
        raise ConfigError("config key 'eval.tasks[].path': task 'prefill' needs a JSONL of harmful "
                          "[{user}, {assistant}] rows (or the shared data file hexphi/Harmful-HEx-PHI.jsonl)")
    items = []
    for i, (x, where) in enumerate(_rows_allowing_lists(path, tc.split)):
        msgs = x if isinstance(x, list) else x.get(tc.question_field or "messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise DataError(f"{where}: expected a list of {{role, content}} (or a field 'messages' holding one)")
        user = next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        answer = next((m.get("content") for m in msgs if m.get("role") == "assistant"), None)
        if not user or not answer:
            raise DataError(f"{where}: needs one user and one assistant turn")
        item = {"question": user, "prefill": answer}
        if isinstance(x, dict) and x.get("category") is not None:
            item["category"] = str(x["category"])
        items.append(item)
    return _join_hexphi_categories(items), path


def _rows_allowing_lists(path: str, split: Optional[str]):
    """(row, where) of a local JSONL whose rows may be JSON lists; other formats through read_records."""
    if not (path.endswith(".jsonl") and os.path.isfile(os.path.expanduser(path))):
        yield from read_records(path, split or "test")
        return
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line), f"{path}: line {n}"
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: invalid JSON ({e.msg})") from None


def _join_hexphi_categories(items: list[dict]) -> list[dict]:
    if all("category" in it for it in items):
        return items
    hexphi = shared_file(*SHARED_FILES["hexphi"])
    if not hexphi:
        return items
    rows = read_rows(hexphi)
    if len(rows) != len(items) or any(str(r.get("instruction")) != it["question"] for r, it in zip(rows, items)):
        return items
    return [{**it, "category": str(r["category"])} if r.get("category") is not None and "category" not in it else it
            for r, it in zip(rows, items)]


def _xstest(tc: EvalTaskConfig, path: Optional[str]):
    """XSTest prompts CSV `id,prompt,type,label,focus,note`: label `safe` (should be answered) or `unsafe`."""
    if not path:
        raise ConfigError("config key 'eval.tasks[].path': task 'xstest' needs the XSTest prompts CSV "
                          "(id,prompt,type,label,focus,note), or the shared data file xstest/xstest_prompts.csv")
    q = tc.question_field or "prompt"
    items = []
    for i, x in enumerate(read_rows(path, tc.split)):
        where = f"{path} row {i}"
        label = _field(x, "label", where).strip()
        if label not in XSTEST_LABELS:
            raise DataError(f"{where}: field 'label' is {label!r}; expected one of {', '.join(XSTEST_LABELS)}")
        items.append({"question": _field(x, q, where), "label": label, "type": _field(x, "type", where)})
    return items, path


def _answer_loss(tc: EvalTaskConfig, path: Optional[str]):
    """(question, answer) rows whose answers are scored teacher-forced (GSM8K test by default)."""
    rows = read_rows(path, tc.split or "test") if path else []
    q, r = tc.question_field or "question", tc.reference_field or "answer"
    return [{"question": _field(x, q, f"{path} row {i}"), "reference": _field(x, r, f"{path} row {i}")}
            for i, x in enumerate(rows)], path


_LOADERS = {
    "answer-loss": _answer_loss,
    "gsm8k": _gsm8k, "samsum": _samsum, "generic": _generic, "advbench": _advbench,
    "harmful-demo": _harmful_demo, "instructions": _instructions, "directharm4": _instructions,
    "gsm-danger": _instructions, "prefill": _prefill, "hexphi": _instructions, "xstest": _xstest,
}
