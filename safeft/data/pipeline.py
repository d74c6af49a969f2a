"""The fused data pipeline: load -> lookahead preview -> template -> tokenize -> fit length -> pack -> disk.

    prepared = prepare(cfg)            # Prepared(path, dataset, stats, fingerprint)

Tokenisation runs in `data.num_proc` forked processes over shards of examples (batched tokenizer
calls per shard). Packing is a subset-sum fill over the whole dataset (BFD plus a repair pass as a guard);
rows are assembled with numpy from flat token arrays and written as Arrow list<int32> columns, which yields exactly the
rows of `safeft.data.pack.pack` (or `no_packing`) without per-token Python work.

The output lives under `data.cache_dir/<fingerprint>` (or `out_dir`): a `save_to_disk` directory
with columns input_ids, labels, position_ids and a `stats.json`. The fingerprint hashes everything
that changes the rows (source identity, field mapping, tokenizer content, train template, lookahead,
length policy, packing, seed, DATA_FORMAT_VERSION); a directory holding the same fingerprint is
reused without any work ("cache hit"). Outputs are built in a temporary directory and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from safeft.data.load import Example, load_examples, resolve_sources, source_identity
from safeft.data.pack import best_fit_decreasing
from safeft.data.tokenize import IGNORE_INDEX, encode_single_batch, encode_turns, fit_length

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = 3  # bump when the row layout or the tokenisation rules change (2: repair, 3: subset-sum fill)
SHARD_SIZE = 1024  # examples per tokenizer call / progress step
MIN_PARALLEL = 4096  # below this many examples, forking costs more than it saves
STATS_FILE = "stats.json"


@dataclass
class Prepared:
    path: str  # a datasets.save_to_disk directory (with stats.json inside)
    dataset: Any  # datasets.Dataset with input_ids, labels, position_ids (int32 sequences)
    stats: dict
    fingerprint: str


# --- fingerprint -----------------------------------------------------------------------------------


def tokenizer_identity(tokenizer: Any) -> dict:
    """Name plus a hash of the tokenizer's full content (tokenizer.json for fast tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "name": getattr(tokenizer, "name_or_path", ""),
        "class": type(tokenizer).__name__,
        "content_sha256": hashlib.sha256(content.encode("utf-8")).hexdigest(),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id],
    }


def lookahead_identity(la: Any) -> dict:
    """Only the settings the mode uses, so e.g. changing `m` under mode 'virtual' keeps the cache."""
    if la.mode == "real":
        return {"mode": "real", "m": la.m, "connector": la.connector}
    if la.mode == "virtual":
        return {"mode": "virtual", "prefix": la.prefix, "connector": la.connector}
    return {"mode": la.mode}


def fingerprint(cfg: Any, tokenizer: Any) -> str:
    d = cfg.data
    key = {
        "version": DATA_FORMAT_VERSION,
        "sources": [source_identity(s) for s in resolve_sources(d)],
        "on_invalid": d.on_invalid,
        "seed": d.seed,
        "max_seq_len": d.max_seq_len,
        "overlong": d.overlong,
        "packing": d.packing,
        "tokenizer": tokenizer_identity(tokenizer),
        "template": [cfg.template.train, cfg.template.train_system],
        "lookahead": lookahead_identity(cfg.lookahead),
    }
    blob = json.dumps(key, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


# --- tokenisation (per shard, possibly in a forked worker) ----------------------------------------

_JOB: dict = {}  # set before forking: workers inherit it instead of unpickling tokenizer + examples


def _previewed(ex: Example, job: dict) -> list[tuple[str, str]]:
    from safeft.lookahead import preview

    la = job["lookahead"]
    if la.mode == "none":
        return ex.turns
    return [preview(q, a, la.mode, job["tokenizer"], m=la.m, prefix=la.prefix, connector=la.connector)
            for q, a in ex.turns]


def _encode_shard(bounds: tuple[int, int]) -> dict:
    """Tokenise examples[lo:hi]; return flat int32 arrays of the kept ones and the length-policy counts."""
    job = _JOB
    examples, tok = job["examples"][bounds[0]:bounds[1]], job["tokenizer"]
    templates = job["templates"]  # {source system prompt or None: template}
    turns = [_previewed(ex, job) for ex in examples]
    encoded: list = [None] * len(examples)
    for system, template in templates.items():  # batched tokenizer calls per template
        single = [k for k, t in enumerate(turns) if len(t) == 1 and examples[k].train_system == system]
        if single:
            batch = encode_single_batch(template, tok, [turns[k][0][0] for k in single],
                                        [turns[k][0][1] for k in single])
            for k, enc in zip(single, batch):
                encoded[k] = enc
    for k, t in enumerate(turns):
        if encoded[k] is None:
            encoded[k] = encode_turns(templates[examples[k].train_system], tok, t)
    counts: Counter = Counter()
    kept, ids, labels = [], [], []
    for k, enc in enumerate(encoded):
        overlong = len(enc.input_ids) > job["max_seq_len"]
        fitted = fit_length(enc, job["max_seq_len"], job["overlong"])
        if fitted is None:
            counts["overlong" if overlong and job["overlong"] == "drop" else "no_loss_tokens"] += 1
            continue
        counts["truncated"] += fitted.truncated
        counts["last_turn_only"] += fitted.last_turn_only
        kept.append(bounds[0] + k)
        ids.append(fitted.input_ids)
        labels.append(fitted.labels)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = lambda seqs: np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(lengths.sum()))  # noqa
    return {"kept": kept, "lengths": lengths, "ids": flat(ids), "labels": flat(labels), "counts": counts}


def _shards(n: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + SHARD_SIZE, n)) for lo in range(0, n, SHARD_SIZE)]


def _workers(num_proc: int, n: int) -> int:
    procs = num_proc or os.cpu_count() or 1
    if n < MIN_PARALLEL or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(procs, len(_shards(n))))


def train_templates(cfg: Any, tokenizer: Any, examples: list[Example]) -> dict:
    """{source system prompt or None: template}: the run's train template, plus one per system prompt that a
    mixture source sets for itself (data.mixture[].system)."""
    from safeft.templates import get_template

    out = {None: get_template(cfg.template.train, tokenizer=tokenizer, system=cfg.template.train_system)}
    for system in sorted({ex.train_system for ex in examples if ex.train_system is not None}):
        out[system] = get_template(cfg.template.train, tokenizer=tokenizer, system=system)
    return out


def encode_all(examples: list[Example], templates: Any, tokenizer: Any, cfg: Any) -> dict:
    """Tokenise every example (in parallel processes when worth it) with a progress bar. `templates`: one
    template, or {source system prompt or None: template} (train_templates)."""
    from tqdm.auto import tqdm

    if not isinstance(templates, dict):
        templates = {None: templates}
    _JOB.update(examples=examples, templates=templates, tokenizer=tokenizer, lookahead=cfg.lookahead,
                max_seq_len=cfg.data.max_seq_len, overlong=cfg.data.overlong)
    shards = _shards(len(examples))
    procs = _workers(cfg.data.num_proc, len(examples))
    parts = []
    try:
        with tqdm(total=len(examples), desc="tokenize", unit="ex", disable=None) as bar:
            if procs > 1:
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker tokenises one shard
                with multiprocessing.get_context("fork").Pool(procs) as pool:
                    for part in pool.imap(_encode_shard, shards):
                        parts.append(part)
                        bar.update(len(part["lengths"]) + sum(part["counts"][k] for k in ("overlong", "no_loss_tokens")))
            else:
                for shard in shards:
                    parts.append(_encode_shard(shard))
                    bar.update(shard[1] - shard[0])
    finally:
        _JOB.clear()
    counts = sum((p["counts"] for p in parts), Counter())
    return {
        "kept": [i for p in parts for i in p["kept"]],
        "lengths": np.concatenate([p["lengths"] for p in parts]) if parts else np.zeros(0, np.int64),
        "ids": np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, np.int32),
        "labels": np.concatenate([p["labels"] for p in parts]) if parts else np.zeros(0, np.int32),
        "counts": counts,
        "procs": procs,
    }


# --- packing into Arrow rows ----------------------------------------------------------------------


def row_order(lengths: np.ndarray, max_seq_len: int, packing: bool, seed: int) -> list[list[int]]:
    """Documents per row, in the exact order `pack.pack` / `pack.no_packing` produce."""
    if packing:
        bins = best_fit_decreasing(lengths.tolist(), max_seq_len)
        random.Random(seed).shuffle(bins)
        return [sorted(b) for b in bins]
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [[i] for i in order]


def build_table(enc: dict, rows: list[list[int]]) -> Any:
    """Gather documents into rows with numpy; labels -100 at each document's first token; positions restart."""
    import pyarrow as pa

    lengths = enc["lengths"]  # [docs]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # [docs] offset in flat arrays
    doc_order = np.fromiter((d for r in rows for d in r), dtype=np.int64, count=len(lengths))  # [docs]
    ordered_len = lengths[doc_order]  # [docs]
    out_starts = np.concatenate([[0], np.cumsum(ordered_len)[:-1]]).astype(np.int64)  # [docs] in output
    total = int(ordered_len.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(out_starts, ordered_len)  # [tokens] position in doc
    gather = np.repeat(starts[doc_order], ordered_len) + within  # [tokens] index into flat arrays
    input_ids = enc["ids"][gather]
    labels = enc["labels"][gather]
    labels[out_starts[ordered_len > 0]] = IGNORE_INDEX
    row_len = np.fromiter((sum(int(lengths[d]) for d in r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = pa.array(np.concatenate([[0], np.cumsum(row_len)]).astype(np.int32))
    column = lambda values: pa.ListArray.from_arrays(offsets, pa.array(values, pa.int32()))  # noqa: E731
    return pa.table({"input_ids": column(input_ids), "labels": column(labels),
                     "position_ids": column(within.astype(np.int32))}), row_len


# --- prepare ---------------------------------------------------------------------------------------


def _load_tokenizer(cfg: Any) -> Any:
    from safeft.model import load_tokenizer, resolve_model_path

    name = resolve_model_path(cfg.model.tokenizer or cfg.model.name_or_path)  # "tiny:DIR" builds DIR if missing
    return load_tokenizer(name, cfg.model.trust_remote_code, cfg.model.revision)


def _cached(path: str, key: str) -> Optional[Prepared]:
    stats_file = os.path.join(path, STATS_FILE)
    if not os.path.isfile(stats_file):
        return None
    try:
        with open(stats_file, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return None
    if stats.get("fingerprint") != key:
        return None
    import datasets

    return Prepared(path, datasets.load_from_disk(path), stats, key)


def _stats(cfg: Any, examples: list, skipped: Counter, enc: dict, row_len: np.ndarray, labels: np.ndarray,
           key: str, tokenizer: Any, elapsed: float) -> dict:
    counts = enc["counts"]
    tokens = int(row_len.sum())
    dropped = {k: counts[k] for k in ("overlong", "no_loss_tokens") if counts[k]}
    return {
        "examples": len(examples),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(skipped),
        "truncated": counts["truncated"],
        "last_turn_only": counts["last_turn_only"],  # multi-turn examples whose template rewrites history
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "documents": len(enc["lengths"]),
        "tokens": tokens,
        "loss_tokens": int((labels != IGNORE_INDEX).sum()),
        "rows": len(row_len),
        "max_row_tokens": int(row_len.max()) if len(row_len) else 0,
        "max_seq_len": cfg.data.max_seq_len,
        "packing": cfg.data.packing,
        "packing_efficiency": tokens / (len(row_len) * cfg.data.max_seq_len) if len(row_len) else 0.0,
        "train_template": cfg.template.train,
        "train_system": cfg.template.train_system,
        "lookahead": cfg.lookahead.mode,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "sources": [s.label for s in resolve_sources(cfg.data)],
        "num_proc": enc["procs"],
        "fingerprint": key,
        "data_format_version": DATA_FORMAT_VERSION,
        "elapsed_s": round(elapsed, 3),
    }


def prepare(cfg: Any, tokenizer: Any = None, out_dir: Optional[str] = None) -> Prepared:
    """Build (or reuse) the packed training set of `cfg`; see the module docstring."""
    import datasets

    from safeft.io import atomic_path, write_json

    cfg = cfg.single("data prepare")
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(cfg)
    key = fingerprint(cfg, tokenizer)
    path = out_dir or os.path.join(cfg.data.cache_dir, key)
    hit = _cached(path, key)
    if hit is not None:
        log.info("data cache hit: %s (%d rows)", path, hit.stats.get("rows", len(hit.dataset)))
        return hit
    log.info("preparing data into %s (fingerprint %s)", path, key)
    t0 = time.perf_counter()
    skipped: Counter = Counter()
    examples = load_examples(cfg.data, skipped)
    enc = encode_all(examples, train_templates(cfg, tokenizer, examples), tokenizer, cfg)
    if not len(enc["lengths"]):
        from safeft.errors import DataError

        raise DataError(f"no training example is left after the length policy (data.max_seq_len "
                        f"{cfg.data.max_seq_len}, data.overlong {cfg.data.overlong}): {dict(enc['counts'])}")
    rows = row_order(enc["lengths"], cfg.data.max_seq_len, cfg.data.packing, cfg.data.seed)
    table, row_len = build_table(enc, rows)
    stats = _stats(cfg, examples, skipped, enc, row_len, table.column("labels").combine_chunks().flatten().to_numpy(),
                   key, tokenizer, time.perf_counter() - t0)
    with atomic_path(path) as tmp:
        datasets.Dataset(table).save_to_disk(str(tmp))
        write_json(os.path.join(tmp, STATS_FILE), stats)
    return Prepared(path, datasets.load_from_disk(path), stats, key)
