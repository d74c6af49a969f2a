"""Data sources: every format, presets, mixtures, and a clear error (file, row, field) for every bad row."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safeft.config import DataConfig, SourceConfig
from safeft.data.load import apply_weight, load_examples
from safeft.errors import DataError
from helpers import GSM8K_TRAIN, SAMSUM_TEST, needs_shared

ROWS = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(6)]


def data(**kw) -> DataConfig:
    return DataConfig(**kw)


def pairs(examples) -> list[tuple[str, str]]:
    return [ex.turns[0] for ex in examples]


def expected(rows=ROWS):
    return [(r["question"], r["answer"]) for r in rows]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_and_json_array(tmp_path):
    assert pairs(load_examples(data(path=write_jsonl(tmp_path / "d.jsonl", ROWS)))) == expected()
    (tmp_path / "d.json").write_text(json.dumps(ROWS, indent=1))
    assert pairs(load_examples(data(path=str(tmp_path / "d.json")))) == expected()
    assert pairs(load_examples(data(path=str(tmp_path / "d.json"), limit=2))) == expected()[:2]


def test_csv_with_and_without_header(tmp_path):
    body = "".join(f'"{r["question"]}","{r["answer"]}"\n' for r in ROWS)
    (tmp_path / "h.csv").write_text("question,answer\n" + body)
    (tmp_path / "n.csv").write_text(body)
    assert pairs(load_examples(data(path=str(tmp_path / "h.csv")))) == expected()  # header detected
    headerless = data(path=str(tmp_path / "n.csv"), question_field="0", answer_field="1")
    assert pairs(load_examples(headerless)) == expected()  # detected: no header
    headerless.csv_header = False
    assert pairs(load_examples(headerless)) == expected()
    forced = data(path=str(tmp_path / "h.csv"), csv_header=True)
    assert pairs(load_examples(forced)) == expected()


def test_csv_multiline_field_keeps_line_numbers(tmp_path):
    (tmp_path / "m.csv").write_text('question,answer\n"two\nlines","ok"\n"x",""\n')
    with pytest.raises(DataError, match=r"m\.csv: line 4, field 'answer': empty answer"):
        load_examples(data(path=str(tmp_path / "m.csv")))


def test_parquet_and_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert pairs(load_examples(data(path=str(tmp_path / "d.parquet")))) == expected()
    ds.save_to_disk(str(tmp_path / "saved"))
    assert pairs(load_examples(data(path=str(tmp_path / "saved")))) == expected()
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert pairs(load_examples(data(path=str(tmp_path / "dd"), split="test"))) == expected()[:1]
    with pytest.raises(DataError, match="no split 'dev'"):
        load_examples(data(path=str(tmp_path / "dd"), split="dev"))


def test_messages_multi_turn_with_system(tmp_path):
    conv = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": conv}])
    (ex,) = load_examples(data(path=path, messages_field="messages"))
    assert ex.turns == [("hi", "hello"), ("2+2?", "4")] and ex.system == "be nice"
    bad = write_jsonl(tmp_path / "b.jsonl", [{"messages": conv[1:4]}])
    with pytest.raises(DataError, match=r"b\.jsonl: line 1, field 'messages': expected alternating"):
        load_examples(data(path=bad, messages_field="messages"))


def test_preset_synthetic():
    from safeft.data.synthetic import arithmetic_problems

    syn = load_examples(data(preset="synthetic", limit=7))
    assert pairs(syn) == expected(arithmetic_problems(7, seed=0))


@needs_shared(GSM8K_TRAIN, SAMSUM_TEST)
def test_presets_gsm8k_samsum_on_shared_files():
    gsm = load_examples(data(preset="gsm8k", path=str(GSM8K_TRAIN), limit=4))
    lines = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:4]]
    assert pairs(gsm) == [(r["question"], r["answer"]) for r in lines]
    sam = load_examples(data(preset="samsum", path=str(SAMSUM_TEST), limit=3))
    raw = json.loads(SAMSUM_TEST.read_text())[:3]
    assert pairs(sam) == [("Summarize this dialog:\n" + r["dialogue"], r["summary"]) for r in raw]


def test_hub_offline_is_a_clear_error():
    with pytest.raises(DataError, match=r"cannot load dataset 'nobody/none'.*load_dataset.*Offline"):
        load_examples(data(path="nobody/none", format="hub"))
    with pytest.raises(DataError, match="does not exist"):
        load_examples(data(path="./missing.jsonl"))


def test_mixture_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": f"a{i}", "answer": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"q": f"b{i}", "ans": "y"} for i in range(4)])
    cfg = data(mixture=[SourceConfig(path=a, weight=0.5),
                        SourceConfig(path=b, weight=2.5, question_field="q", answer_field="ans")])
    got = load_examples(cfg)
    counts = Counter(ex.source for ex in got)
    assert counts == {a: 5, b: 10}  # round(0.5 * 10), round(2.5 * 4)
    assert len({ex.index for ex in got if ex.source == a}) == 5  # w <= 1: without replacement
    per_b = Counter(ex.index for ex in got if ex.source == b)
    assert sorted(per_b.values()) == [2, 2, 3, 3]  # two whole copies + 2 of 4 sampled once more
    assert [(e.source, e.index) for e in load_examples(cfg)] == [(e.source, e.index) for e in got]  # seeded
    assert len(apply_weight(list(range(3)), 1.0, 0)) == 3


BAD_CASES = [
    ("missing_field", b'{"question": "q", "answer": "a"}\n{"question": "q2"}\n', 2, "answer", "missing field"),
    ("empty_answer", b'{"question": "q", "answer": "a"}\n{"question": "q", "answer": "  "}\n', 2, "answer",
     "empty answer"),
    ("not_a_string", b'{"question": 7, "answer": "a"}\n', 1, "question", "expected a string, got int"),
    ("invalid_utf8", b'{"question": "ok", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n', 2,
     "question", "not valid UTF-8"),
    ("malformed_json", b'{"question": "ok", "answer": "a"}\n{"question": "q", "answer": \n', 2, None,
     "not valid JSON"),
]


@pytest.mark.parametrize("reason,content,line,field,what", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_rows_error_or_skip(tmp_path, reason, content, line, field, what):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content + b'{"question": "last", "answer": "fine"}\n')
    with pytest.raises(DataError) as err:
        load_examples(data(path=str(path)))
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg and what in msg
    if field:
        assert f"field {field!r}" in msg
    skipped = Counter()
    got = load_examples(data(path=str(path), on_invalid="skip"), skipped)
    assert skipped == {reason: 1}
    assert pairs(got)[-1] == ("last", "fine") and len(got) == content.count(b"\n")


def test_csv_bad_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"question,answer\nq1,a1\nq2\nq3,\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: expected 2 columns"):
        load_examples(data(path=str(path)))
    skipped = Counter()
    assert pairs(load_examples(data(path=str(path), on_invalid="skip"), skipped)) == [("q1", "a1")]
    assert skipped == {"missing_field": 1, "empty_answer": 1}


def test_read_records_formats_and_errors(tmp_path):
    from safeft.data.load import read_records

    split_obj = tmp_path / "splits.json"
    split_obj.write_text(json.dumps({"train": ROWS[:2], "test": ROWS[2:]}))
    assert [r for r, _ in read_records(str(split_obj), split="test")] == ROWS[2:]
    jsonl_as_json = tmp_path / "lines.json"
    write_jsonl(jsonl_as_json, ROWS[:3])
    assert [r for r, _ in read_records(str(jsonl_as_json))] == ROWS[:3]
    (tmp_path / "h.csv").write_text("instruction,category\nsay hi,greeting\n")
    assert list(read_records(str(tmp_path / "h.csv"))) == [({"instruction": "say hi", "category": "greeting"},
                                                            f"{tmp_path / 'h.csv'}: line 2")]
    (tmp_path / "bad.jsonl").write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: expected a JSON object, got list"):
        list(read_records(str(tmp_path / "bad.jsonl")))
    with pytest.raises(DataError, match="not a hub dataset name"):
        list(read_records("no_such_file"))


def test_shared_data_dir_from_environment(tmp_path, monkeypatch):
    from safeft.data.shared import shared_data_dir, shared_file

    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "harmful_behaviors.csv").write_text("goal,target\n")
    monkeypatch.setenv("SAFEFT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert shared_file("advbench", "harmful_behaviors.csv") == str(tmp_path / "advbench" / "harmful_behaviors.csv")
    assert shared_file("gsm8k", "train.jsonl") is None
