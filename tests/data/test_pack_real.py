"""Packing with the real tokenizers reaches the lower bound ceil(tokens / max_seq_len) itself on GSM8K train and
SAMSum test, for every LookAhead mode at 2048, 4096 and 8192 tokens: the BENCHMARKS.md table "Real tokenizers:
packing against the lower bound" (bench/packing_bound.py), its token counts included."""

from __future__ import annotations

from collections import Counter

import pytest

from helpers import GSM8K_TRAIN, REAL_TOKENIZERS, SAMSUM_TEST, shared_tokenizer_or_skip, skip_without_shared
from safeft.config import config_from_dict
from safeft.data import pipeline
from safeft.data.load import load_examples
from safeft.data.pack import best_fit_decreasing
from safeft.model import load_tokenizer
from safeft.templates import get_template

LENGTHS = (2048, 4096, 8192)
SOURCES = {"gsm8k": {"path": str(GSM8K_TRAIN)}, "samsum": {"path": str(SAMSUM_TEST), "preset": "samsum"}}


# (tokenizer, data, lookahead) -> tokens, template chat:vanilla, as BENCHMARKS.md lists them (bench/packing_bound.py)
TOKENS = {
    ("llama2", "gsm8k", "none"): 1_508_909, ("llama2", "gsm8k", "real"): 1_591_112,
    ("llama2", "gsm8k", "virtual"): 1_658_369, ("llama2", "samsum", "none"): 177_031,
    ("llama2", "samsum", "real"): 186_036, ("llama2", "samsum", "virtual"): 193_411,
    ("llama3.1", "gsm8k", "none"): 1_250_114, ("llama3.1", "gsm8k", "real"): 1_331_719,
    ("llama3.1", "gsm8k", "virtual"): 1_384_628, ("llama3.1", "samsum", "none"): 151_062,
    ("llama3.1", "samsum", "real"): 159_749, ("llama3.1", "samsum", "virtual"): 165_804,
    ("qwen3", "gsm8k", "none"): 1_420_581, ("qwen3", "gsm8k", "real"): 1_502_184,
    ("qwen3", "gsm8k", "virtual"): 1_555_095, ("qwen3", "samsum", "none"): 150_679,
    ("qwen3", "samsum", "real"): 159_365, ("qwen3", "samsum", "virtual"): 165_421,
}


def lower_bound(tokens: int, max_seq_len: int) -> int:
    return -(-tokens // max_seq_len)


def doc_lengths(tok, source: str, mode: str, tmp_path):
    cfg = config_from_dict({"model": {"name_or_path": "unused"}, "lookahead": {"mode": mode},
                            "data": {**SOURCES[source], "max_seq_len": max(LENGTHS), "num_proc": 2,
                                     "cache_dir": str(tmp_path)}})
    enc = pipeline.encode_all(load_examples(cfg.data), get_template(cfg.template.train, tokenizer=tok), tok, cfg)
    return enc["lengths"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_rows_reach_the_lower_bound(name, tmp_path):
    skip_without_shared(GSM8K_TRAIN, SAMSUM_TEST)
    tok = load_tokenizer(shared_tokenizer_or_skip(name))
    for source in SOURCES:
        for mode in ("none", "real", "virtual"):
            lengths = doc_lengths(tok, source, mode, tmp_path)  # tokenised once, packed at every length
            assert sum(lengths) == TOKENS[name, source, mode], (name, source, mode)  # the table's data
            assert max(lengths) <= min(LENGTHS)  # no document is truncated at any of the lengths
            for cap in LENGTHS:
                bins = best_fit_decreasing(lengths, cap)
                case = f"{name} {source} lookahead={mode} max_seq_len={cap}"
                assert len(bins) == lower_bound(sum(lengths), cap), case
                assert Counter(i for b in bins for i in b) == Counter(range(len(lengths))), case  # each doc once
                assert max(sum(lengths[i] for i in b) for b in bins) <= cap, case


@pytest.mark.slow
def test_prepared_llama2_gsm8k_rows_hold_every_document_intact(tmp_path):
    """The configuration issue 14 measured (785 rows where the bound is 777): the pipeline's own rows reach 777."""
    skip_without_shared(GSM8K_TRAIN)
    tok = load_tokenizer(shared_tokenizer_or_skip("llama2"))
    cfg = config_from_dict({"model": {"name_or_path": "unused"}, "lookahead": {"mode": "real"},
                            "data": {"path": str(GSM8K_TRAIN), "max_seq_len": 2048, "num_proc": 2,
                                     "cache_dir": str(tmp_path)}})
    prepared = pipeline.prepare(cfg, tok)
    s = prepared.stats
    assert s["tokens"] == TOKENS["llama2", "gsm8k", "real"]
    assert s["rows"] == lower_bound(s["tokens"], 2048) == 777 and s["max_row_tokens"] <= 2048
    enc = pipeline.encode_all(load_examples(cfg.data), get_template("chat:vanilla"), tok, cfg)
    starts = [0, *enc["lengths"].cumsum().tolist()]
    expected = Counter(tuple(enc["ids"][a:b].tolist()) for a, b in zip(starts, starts[1:]))
    seen = Counter()
    for ids, pos in zip(prepared.dataset["input_ids"], prepared.dataset["position_ids"]):
        cut = [k for k, p in enumerate(pos) if p == 0] + [len(pos)]
        seen.update(tuple(ids[a:b]) for a, b in zip(cut, cut[1:]))
    assert seen == expected
