"""The fused pipeline: rows against the reference steps, stats invariants, cache keys, lookahead, length policy, CLI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safeft.config import config_from_dict
from safeft.data import pipeline
from safeft.data.load import load_examples
from safeft.data.pack import no_packing, pack
from safeft.errors import DataError
from safeft.data.tokenize import IGNORE_INDEX, batch_ids, encode_single_batch, fit_length
from safeft.templates import get_template


def make_cfg(model_dir, tmp_path, **data):
    d = {"preset": "synthetic", "limit": 120, "max_seq_len": 256, "num_proc": 1, "cache_dir": str(tmp_path / "c")}
    d.update(data.pop("data", {}))
    return config_from_dict({"model": {"name_or_path": model_dir}, "data": d, **data})


def reference_docs(cfg, tok):
    """The unfused steps: load -> template -> encode_single_batch -> fit_length."""
    ex = load_examples(cfg.data)
    enc = encode_single_batch(get_template(cfg.template.train), tok, [e.turns[0][0] for e in ex],
                              [e.turns[0][1] for e in ex])
    fitted = [fit_length(e, cfg.data.max_seq_len, cfg.data.overlong) for e in enc]
    return [(f.input_ids, f.labels) for f in fitted if f is not None]


def split_docs(row):
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [(row["input_ids"][a:b], row["labels"][a:b], row["position_ids"][a:b]) for a, b in zip(starts, starts[1:])]


def test_rows_match_reference_and_stats_invariants(tiny_model_dir, tokenizer, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path)
    prepared = pipeline.prepare(cfg, tokenizer)
    rows = prepared.dataset.to_list()
    docs = reference_docs(cfg, tokenizer)
    assert rows == pack(docs, cfg.data.max_seq_len, cfg.data.seed)  # exactly the reference packer's rows
    seen = Counter()
    for row in rows:
        assert len(row["input_ids"]) <= cfg.data.max_seq_len
        for ids, labels, pos in split_docs(row):
            assert pos == list(range(len(ids))) and labels[0] == IGNORE_INDEX
            seen[tuple(ids)] += 1
    assert seen == Counter(tuple(ids) for ids, _ in docs)  # every example exactly once
    s = prepared.stats
    assert json.loads((tmp_path / "c" / prepared.fingerprint / "stats.json").read_text()) == s
    assert s["examples"] == 120 and s["documents"] == len(docs) == 120 and s["rows"] == len(rows)
    assert s["tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert s["loss_tokens"] == sum(t != IGNORE_INDEX for r in rows for t in r["labels"])
    assert s["loss_tokens"] == sum(sum(t != IGNORE_INDEX for t in lab[1:]) for _, lab in docs)
    assert s["packing_efficiency"] == pytest.approx(s["tokens"] / (s["rows"] * 256))
    assert s["rows"] < 120 and s["train_template"] == "chat:vanilla" and s["lookahead"] == "none"
    assert prepared.dataset.features["input_ids"].feature.dtype == "int32"


def test_no_packing_and_parallel_workers_give_same_rows(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_model_dir, tmp_path, data={"packing": False})
    rows = pipeline.prepare(cfg, tokenizer).dataset.to_list()
    assert rows == no_packing(reference_docs(cfg, tokenizer), cfg.data.seed)
    monkeypatch.setattr(pipeline, "MIN_PARALLEL", 1)
    monkeypatch.setattr(pipeline, "SHARD_SIZE", 16)
    par = make_cfg(tiny_model_dir, tmp_path / "p", data={"packing": False, "num_proc": 2})
    prepared = pipeline.prepare(par, tokenizer)
    assert prepared.stats["num_proc"] == 2 and prepared.dataset.to_list() == rows


def test_batch_ids_equals_tokenizer_call(tokenizer):
    texts = ["Question: 2+2?", "  spaces\n\nand</s> specials <s>", "héllo wörld", ""]
    for special in (True, False):
        assert batch_ids(tokenizer, texts, special) == tokenizer(texts, add_special_tokens=special)["input_ids"]


def test_cache_hit_and_invalidation(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_model_dir, tmp_path)
    first = pipeline.prepare(cfg, tokenizer)
    calls = []
    real = pipeline.encode_all
    monkeypatch.setattr(pipeline, "encode_all", lambda *a: calls.append(1) or real(*a))
    again = pipeline.prepare(cfg, tokenizer)
    assert not calls and again.fingerprint == first.fingerprint and again.stats == first.stats
    assert again.dataset.to_list() == first.dataset.to_list()
    keys = {first.fingerprint}
    changes = [{"template": {"train": "chat:alpaca"}}, {"lookahead": {"mode": "virtual"}},
               {"data": {"max_seq_len": 200}}, {"data": {"limit": 119}}]
    for change in changes:
        changed = make_cfg(tiny_model_dir, tmp_path, **change)
        prepared = pipeline.prepare(changed, tokenizer)
        keys.add(prepared.fingerprint)
    assert len(keys) == 1 + len(changes) and len(calls) == len(changes)
    # lookahead settings a mode does not use do not change the key
    unused = make_cfg(tiny_model_dir, tmp_path, lookahead={"m": 3})
    assert pipeline.fingerprint(unused, tokenizer) == first.fingerprint


def test_cache_key_follows_file_content(tiny_model_dir, tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    cfg = make_cfg(tiny_model_dir, tmp_path, data={"path": str(path), "preset": None, "limit": None})
    key = pipeline.fingerprint(cfg, tokenizer)
    path.write_text('{"question": "q", "answer": "ab"}\n')
    assert pipeline.fingerprint(cfg, tokenizer) != key


def decoded_docs(prepared, tok):
    return [tok.decode(ids) for row in prepared.dataset.to_list() for ids, _, _ in split_docs(row)]


@pytest.mark.parametrize("mode", ["virtual", "real"])
def test_lookahead_applied_before_template(tiny_model_dir, tokenizer, tmp_path, mode):
    cfg = make_cfg(tiny_model_dir, tmp_path, data={"limit": 5}, lookahead={"mode": mode, "m": 4})
    docs = decoded_docs(pipeline.prepare(cfg, tokenizer), tokenizer)
    conn, prefix = " The answer begins with: ", "Let's solve this problem. "
    want = []
    for ex in load_examples(cfg.data):
        q, a = ex.turns[0]
        if mode == "virtual":
            want.append(f"<s>[INST] Question: {q}{conn}{prefix} [/INST] {prefix}{a}</s>")
        else:
            head = tokenizer.convert_tokens_to_string(tokenizer.tokenize(a)[:4])
            want.append(f"<s>[INST] Question: {q}{conn}{head} [/INST] {a}</s>")
    assert sorted(docs) == sorted(want)


def test_overlong_truncate_vs_drop(tiny_model_dir, tokenizer, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, data={"max_seq_len": 45})
    ex = load_examples(cfg.data)
    enc = encode_single_batch(get_template("chat:vanilla"), tokenizer, [e.turns[0][0] for e in ex],
                              [e.turns[0][1] for e in ex])
    prompt_len = [lab.count(IGNORE_INDEX) for lab in (e.labels for e in enc)]
    over = [len(e.input_ids) > 45 for e in enc]
    no_room = sum(o and p >= 45 for o, p in zip(over, prompt_len))
    assert sum(over) > no_room > 0  # both cases occur: truncatable and no answer token left
    trunc = pipeline.prepare(cfg, tokenizer).stats
    assert trunc["truncated"] == sum(over) - no_room
    assert trunc["dropped"] == no_room and trunc["documents"] == 120 - no_room
    assert trunc["max_row_tokens"] <= 45
    over64 = sum(len(e.input_ids) > 64 for e in enc)
    drop = pipeline.prepare(make_cfg(tiny_model_dir, tmp_path, data={"max_seq_len": 64, "overlong": "drop"}),
                            tokenizer).stats
    assert 0 < over64 < 120 and drop["truncated"] == 0 and drop["dropped_by_reason"] == {"overlong": over64}
    assert drop["documents"] == 120 - over64 and drop["max_row_tokens"] <= 64
    with pytest.raises(DataError, match="no training example is left"):
        pipeline.prepare(make_cfg(tiny_model_dir, tmp_path, data={"max_seq_len": 45, "overlong": "drop"}), tokenizer)


def test_skipped_rows_reach_stats(tiny_model_dir, tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\nnot json\n')
    cfg = make_cfg(tiny_model_dir, tmp_path, data={"path": str(path), "preset": None, "limit": None,
                                                   "on_invalid": "skip"})
    s = pipeline.prepare(cfg, tokenizer).stats
    assert s["examples"] == 1 and s["skipped"] == 2
    assert s["skipped_by_reason"] == {"missing_field": 1, "malformed_json": 1}


def write_config(tmp_path, model_dir, **data) -> str:
    import yaml

    d = {"preset": "synthetic", "limit": 50, "max_seq_len": 256, "num_proc": 1, "cache_dir": str(tmp_path / "c")}
    d.update(data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": model_dir}, "data": d}))
    return str(path)


def test_cli_prepare_and_preview(tiny_model_dir, tmp_path, capsys):
    from safeft.cli import main

    cfg = write_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    assert main(["data", "prepare", cfg, "--out", str(out), "--set", "data.max_seq_len=200"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    printed = capsys.readouterr().out
    assert stats["examples"] == 50 and stats["max_seq_len"] == 200
    assert f"rows {stats['rows']} x 200" in printed and stats["fingerprint"] in printed
    assert main(["data", "preview", cfg, "-n", "2", "--set", "lookahead.mode=virtual"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("[[ Let's solve this problem.") == 2 and "The answer begins with" in printed
    bad = write_config(tmp_path, tiny_model_dir, preset=None, path=str(tmp_path / "nope.jsonl"))
    assert main(["data", "prepare", bad]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "does not exist" in err and "Traceback" not in err
