"""Data sources -> normalised examples.

A source is a Hugging Face hub dataset (`datasets.load_dataset`), a local file (json, jsonl, csv,
parquet) or a saved dataset directory (`save_to_disk`), or a preset (gsm8k, samsum, synthetic).
Every row becomes an `Example` whose `turns` are (user, assistant) pairs; single-turn data has one.

Local json/jsonl/csv files are parsed here with the standard library so that a bad row is reported
with the file, its 1-based line number and the field (datasets' own errors name none of them).
With `data.on_invalid: skip` bad rows are skipped and counted per reason instead.

Mixture semantics (`data.mixture`): each source is loaded on its own (its `limit` applies first),
then its weight w scales the number of examples taken from it to round(w * n):
  - w <= 1: a seeded sample of round(w * n) distinct examples (without replacement);
  - w > 1: every example floor(w) times, plus a seeded sample without replacement of
    round((w - floor(w)) * n) more. Repetition happens only for w > 1.
Sampling is seeded with `data.seed` and the source's position, so the mixture is reproducible.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional

from safeft.errors import DataError

PRESETS: dict[str, dict[str, Any]] = {
    "gsm8k": {"hub": "openai/gsm8k", "name": "main", "question_field": "question", "answer_field": "answer"},
    "samsum": {"hub": "Samsung/samsum", "name": None, "question_field": "dialogue", "answer_field": "summary",
               "question_format": "Summarize this dialog:\n{q}"},
    "synthetic": {"question_field": "question", "answer_field": "answer"},
}
SYNTHETIC_DEFAULT_COUNT = 500
FILE_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}

# Skip reasons (the keys of stats["skipped_by_reason"]).
MISSING_FIELD, EMPTY, NOT_STRING, INVALID_UTF8, MALFORMED_JSON, BAD_MESSAGES = (
    "missing_field", "empty_answer", "not_a_string", "invalid_utf8", "malformed_json", "bad_messages")


@dataclass
class Example:
    turns: list[tuple[str, str]]  # (user, assistant) pairs; loss on every assistant turn
    source: str  # the source's path, hub name or preset
    index: int  # 0-based row position in that source
    system: Optional[str] = None  # a leading system message of chat data, if any (kept for reference)
    train_system: Optional[str] = None  # the source's own train system prompt (data.mixture[].system), else None


@dataclass
class Source:
    """A fully resolved source: the mixture entry's fields with the `data` section's as defaults."""

    path: Optional[str]
    preset: Optional[str]
    name: Optional[str]
    split: str
    format: str
    question_field: str
    answer_field: str
    messages_field: Optional[str]
    csv_header: Optional[bool]
    limit: Optional[int]
    weight: float = 1.0
    question_format: Optional[str] = None  # e.g. samsum's "Summarize this dialog:\n{q}"
    system: Optional[str] = None  # mixture entries only: train under this system prompt (chat-template)

    @property
    def label(self) -> str:
        return self.path or self.preset or "?"


def resolve_sources(data: Any) -> list[Source]:
    """The sources of a `DataConfig`: the mixture entries (inheriting unset fields), or the section itself."""
    entries = data.mixture or [None]
    out = []
    for entry in entries:
        values = {}
        for f in fields(Source):
            own = getattr(entry, f.name, None) if entry is not None else None
            values[f.name] = own if own is not None else getattr(data, f.name, f.default)
        if entry is not None:
            values["weight"] = entry.weight
            # A mixture entry names its own source: path/preset are not inherited from `data`.
            values["path"], values["preset"] = entry.path, entry.preset
            values["system"] = entry.system
        src = Source(**values)
        preset = PRESETS.get(src.preset or "")
        if preset:
            defaults = {"question_field": "question", "answer_field": "answer"}
            for key in ("question_field", "answer_field"):
                own = getattr(entry, key, None) if entry is not None else None
                if own is None and getattr(src, key) == defaults[key]:
                    setattr(src, key, preset[key])
            src.question_format = preset.get("question_format")
            if src.path is None and "hub" in preset:
                src.path, src.name, src.format = preset["hub"], src.name or preset["name"], "hub"
        out.append(src)
    return out


# --- row validation ---------------------------------------------------------------------------------


class _Rows:
    """Collects examples of one source; a bad row raises DataError or is counted (on_invalid: skip)."""

    def __init__(self, src: Source, where: str, on_invalid: str, skipped: Counter):
        self.src, self.where, self.on_invalid, self.skipped = src, where, on_invalid, skipped
        self.examples: list[Example] = []

    def bad(self, reason: str, row: str, field: Optional[str], what: str) -> None:
        if self.on_invalid == "skip":
            self.skipped[reason] += 1
            return
        at = f", field {field!r}" if field else ""
        raise DataError(f"{self.where}: {row}{at}: {what} (set data.on_invalid: skip to skip such rows)")

    def add(self, record: Any, index: int, row: str) -> None:
        if not isinstance(record, dict):
            return self.bad(MALFORMED_JSON, row, None, f"expected an object with fields, got {type(record).__name__}")
        if self.src.messages_field:
            parsed = self._messages(record, row)
        else:
            parsed = self._single(record, row)
        if parsed is not None:
            turns, system = parsed
            self.examples.append(Example(turns, self.src.label, index, system, self.src.system))

    def _text(self, record: dict, field: str, row: str, answer: bool) -> Optional[str]:
        if field not in record or record[field] is None:
            return self.bad(MISSING_FIELD, row, field, f"missing field; the row has {sorted(map(str, record))}")
        value = record[field]
        if not isinstance(value, str):
            return self.bad(NOT_STRING, row, field, f"expected a string, got {type(value).__name__} {value!r:.60}")
        if _has_bad_bytes(value):
            return self.bad(INVALID_UTF8, row, field, "contains bytes that are not valid UTF-8")
        if answer and not value.strip():
            return self.bad(EMPTY, row, field, "empty answer")
        return value

    def _single(self, record: dict, row: str) -> Optional[tuple]:
        q = self._text(record, self.src.question_field, row, answer=False)
        if q is None:
            return None
        a = self._text(record, self.src.answer_field, row, answer=True)
        if a is None:
            return None
        if self.src.question_format:
            q = self.src.question_format.replace("{q}", q)
        return [(q, a)], None

    def _messages(self, record: dict, row: str) -> Optional[tuple]:
        field = self.src.messages_field
        msgs = record.get(field)
        if msgs is None:
            return self.bad(MISSING_FIELD, row, field, f"missing field; the row has {sorted(map(str, record))}")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            return self.bad(BAD_MESSAGES, row, field, "expected a list of {role, content} objects")
        system = None
        if msgs and msgs[0].get("role") == "system":
            system, msgs = msgs[0].get("content"), msgs[1:]
        if not msgs or len(msgs) % 2:
            return self.bad(BAD_MESSAGES, row, field, "expected alternating user/assistant messages ending with "
                                                      f"an assistant message, got {len(msgs)} after the system one")
        turns = []
        for k in range(0, len(msgs), 2):
            roles = (msgs[k].get("role"), msgs[k + 1].get("role"))
            if roles != ("user", "assistant"):
                return self.bad(BAD_MESSAGES, row, f"{field}[{k}]", f"expected roles user, assistant; got {roles}")
            u = self._text(msgs[k], "content", row + f" message {k}", answer=False)
            a = self._text(msgs[k + 1], "content", row + f" message {k + 1}", answer=True) if u is not None else None
            if a is None:
                return None
            turns.append((u, a))
        return turns, system


def _has_bad_bytes(text: str) -> bool:
    """Files are decoded with surrogateescape: undecodable bytes show up as lone surrogates."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# --- local files ------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"cannot read data file {path!r}: {e.strerror}") from None


def _jsonl(path: str, rows: _Rows) -> Iterator[tuple[int, Any, str]]:
    decoder = json.JSONDecoder()
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = decoder.decode(line)
        except json.JSONDecodeError as e:
            rows.bad(MALFORMED_JSON, f"line {lineno}", None, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        yield lineno, record, f"line {lineno}"


def _json(path: str, split: str, rows: _Rows) -> Iterator[tuple[int, Any, str]]:
    """A JSON array, an object holding one array per split ({"test": [...]}), or JSON Lines under .json."""
    text = _read_text(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{"):
            yield from _jsonl(path, rows)  # JSON Lines under a .json name; bad lines reported one by one
            return
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(records, dict):
        # {"test": [...]} holds splits; any other object is a one-line JSON Lines file.
        records = records[split] if isinstance(records.get(split), list) else [records]
    elif not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(records).__name__}")
    for i, record in enumerate(records, 1):
        yield i, record, f"row {i} (array item)"


def _csv(path: str, src: Source, rows: _Rows) -> Iterator[tuple[int, Any, str]]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        first = next(reader)
    except StopIteration:
        return
    wanted = [src.messages_field] if src.messages_field else [src.question_field, src.answer_field]
    header = src.csv_header if src.csv_header is not None else all(w in first for w in wanted)
    names = first if header else [str(i) for i in range(len(first))]
    start = reader.line_num + 1 if header else 1
    records = [] if header else [(1, first)]
    line = start
    for values in reader:
        records.append((line, values))
        line = reader.line_num + 1
    for lineno, values in records:
        if len(values) != len(names):
            rows.bad(MISSING_FIELD, f"line {lineno}", None,
                     f"expected {len(names)} columns ({', '.join(names)}), got {len(values)}")
            continue
        yield lineno, dict(zip(names, values)), f"line {lineno}"


def _local_format(path: str, fmt: str) -> str:
    if fmt not in ("auto", None):
        return fmt
    if os.path.isdir(path):
        return "arrow"
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_FORMATS:
        raise DataError(f"data file {path!r}: cannot tell the format from {ext!r}; set data.format to one of "
                        "json, jsonl, csv, parquet, arrow")
    return FILE_FORMATS[ext]


def _looks_local(path: str) -> bool:
    return os.path.exists(path) or path.startswith((".", "/", "~")) or os.path.splitext(path)[1] in FILE_FORMATS


def _hf_records(dataset: Any) -> Iterator[tuple[int, Any, str]]:
    for i, record in enumerate(dataset, 1):
        yield i, record, f"row {i}"


def _load_disk(path: str, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a saved dataset directory (save_to_disk): {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r} (data.split); it has {sorted(loaded)}")
        loaded = loaded[split]
    return loaded


def _load_hub(src: Source) -> Any:
    import datasets

    try:
        return datasets.load_dataset(src.path, src.name, split=src.split)
    except Exception as e:  # offline, unknown name, missing split: all user-facing
        raise DataError(
            f"cannot load dataset {src.path!r} (config {src.name!r}, split {src.split!r}) with datasets.load_dataset: "
            f"{type(e).__name__}: {str(e)[:300]}. Offline? Point data.path to a local file or saved dataset."
        ) from None


def _records(src: Source, rows: _Rows) -> Iterator[tuple[int, Any, str]]:
    if src.preset == "synthetic" and src.path is None:
        from safeft.data.synthetic import arithmetic_problems

        return _hf_records(arithmetic_problems(src.limit or SYNTHETIC_DEFAULT_COUNT, seed=0))
    if src.format == "hub" or not _looks_local(src.path):
        return _hf_records(_load_hub(src))
    path = os.path.expanduser(src.path)
    if not os.path.exists(path):
        raise DataError(f"data file {src.path!r} does not exist (data.path)")
    fmt = _local_format(path, src.format)
    if fmt == "jsonl":
        return _jsonl(path, rows)
    if fmt == "json":
        return _json(path, src.split, rows)
    if fmt == "csv":
        return _csv(path, src, rows)
    if fmt == "parquet":
        import datasets

        try:
            return _hf_records(datasets.Dataset.from_parquet(path))
        except Exception as e:
            raise DataError(f"{path}: cannot read parquet: {e}") from None
    return _hf_records(_load_disk(path, src.split))


def read_records(path: str, split: str = "test", name: Optional[str] = None) -> Iterator[tuple[dict, str]]:
    """Raw rows of a local file, saved dataset or hub split, each with where it is ("f.jsonl: line 3").

    The readers `load_source` uses, for callers that want rows rather than examples (evaluation tasks,
    saved predictions). CSV files are read with their header row; a malformed row raises DataError.
    """
    local = _looks_local(path)
    if local and not os.path.exists(os.path.expanduser(path)):
        raise DataError(f"{path}: no such file")
    if not local and "/" not in path:
        raise DataError(f"{path!r}: no such file, and not a hub dataset name (owner/name)")
    src = Source(path=path, preset=None, name=name, split=split, format="auto", question_field="question",
                 answer_field="answer", messages_field=None, csv_header=True, limit=None)
    rows = _Rows(src, path, "error", Counter())
    for _, record, row in _records(src, rows):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {row}: expected a JSON object, got {type(record).__name__}")
        yield record, f"{path}: {row}"


def load_source(src: Source, on_invalid: str = "error", skipped: Optional[Counter] = None) -> list[Example]:
    """All valid examples of one source, the first `limit` rows only (synthetic: `limit` problems)."""
    skipped = skipped if skipped is not None else Counter()
    rows = _Rows(src, src.label, on_invalid, skipped)
    for n, (_, record, row) in enumerate(_records(src, rows)):
        if src.limit is not None and n >= src.limit:
            break
        rows.add(record, n, row)
    if not rows.examples:
        raise DataError(f"{src.label}: no usable examples (skipped: {dict(skipped) or 'none'})")
    return rows.examples


def apply_weight(examples: list[Example], weight: float, seed: int) -> list[Example]:
    """round(weight * n) examples: whole copies for the integer part, a seeded sample for the rest."""
    if weight == 1.0:
        return examples
    rng = random.Random(seed)
    whole = math.floor(weight)
    extra = round((weight - whole) * len(examples))
    picked = sorted(rng.sample(range(len(examples)), extra))
    return examples * whole + [examples[i] for i in picked]


def load_examples(data: Any, skipped: Optional[Counter] = None) -> list[Example]:
    """Every example of the `data` section (one source or a weighted mixture); bad rows counted in `skipped`."""
    skipped = skipped if skipped is not None else Counter()
    out: list[Example] = []
    for k, src in enumerate(resolve_sources(data)):
        examples = load_source(src, data.on_invalid, skipped)
        out.extend(apply_weight(examples, src.weight, data.seed + 1000 * k))
    return out


def source_identity(src: Source) -> dict:
    """What identifies a source's content for the cache key: file size + mtime, or hub name/config/split."""
    ident = {k: getattr(src, k) for k in ("path", "preset", "name", "split", "format", "question_field",
                                          "answer_field", "messages_field", "csv_header", "limit", "weight",
                                          "question_format", "system")}
    path = os.path.expanduser(src.path) if src.path else None
    if path and os.path.exists(path):
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        ident["files"] = [(os.path.relpath(f, path), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    return ident
